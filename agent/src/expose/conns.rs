//! The table of open connections: what each is doing, its timeouts, and who
//! makes room when the table is full.
//!
//! A connection is *waiting* (accepted or between keep-alive requests, no
//! byte of a request read yet), reading *headers* (bytes arrived, request
//! not parsed yet) or *handling* a request (from the parsed head until the
//! response is handed to hyper). Waiting ends after `web.idle_timeout`,
//! headers after `web.header_read_timeout` (slowloris); the table is swept
//! a few times a second.
//!
//! At `web.max_connections` a new connection closes the oldest waiting or
//! headers connection (nginx reuses idle keep-alive connections the same
//! way), so any number of idle or slow-header clients cannot lock a scraper
//! out: its request is parsed within a round trip of connecting, long
//! before `max_connections` newer connections could push it out. A new
//! connection is refused only when every open one is handling a request,
//! and `web.max_api_requests` keeps some of those for /metrics and health.
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::http_stats::{ConnRefusal, HttpStats};

/// How often timeouts are checked: the resolution of both timeouts.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Waiting = 0,
    Headers = 1,
    Handling = 2,
}

/// One connection's phase and when it began, packed in one atomic so a
/// reader never sees a phase with another phase's start time.
pub struct Slot {
    id: u64,
    epoch: Instant,
    /// `(ms since epoch << 2) | phase`.
    state: AtomicU64,
    /// Signalled when the table closes this connection (eviction, timeout).
    close: tokio::sync::Notify,
}

impl Slot {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
    }

    fn pack(phase: Phase, ms: u64) -> u64 {
        (ms << 2) | phase as u64
    }

    pub fn phase(&self) -> Phase {
        Self::unpack(self.state.load(Ordering::Acquire)).0
    }

    fn unpack(v: u64) -> (Phase, u64) {
        let phase = match v & 3 {
            0 => Phase::Waiting,
            1 => Phase::Headers,
            _ => Phase::Handling,
        };
        (phase, v >> 2)
    }

    fn set(&self, phase: Phase) {
        self.state.store(Self::pack(phase, self.now_ms()), Ordering::Release);
    }

    /// The request head is parsed; the handler runs.
    pub fn request_started(&self) {
        self.set(Phase::Handling);
    }

    /// The response is with hyper; the connection waits for the next request.
    pub fn request_done(&self) {
        self.set(Phase::Waiting);
    }

    /// Bytes arrived: a waiting connection now reads a request's headers.
    fn bytes_read(&self) {
        let cur = self.state.load(Ordering::Acquire);
        if Self::unpack(cur).0 == Phase::Waiting {
            // Lost race: the phase moved on by itself, which is fine.
            let _ = self.state.compare_exchange(
                cur,
                Self::pack(Phase::Headers, self.now_ms()),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Completes when the table has closed this connection.
    pub async fn closed(&self) {
        self.close.notified().await
    }
}

/// Removes its connection from the table when the connection's task ends.
pub struct SlotGuard {
    table: Arc<ConnTable>,
    pub slot: Arc<Slot>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = self.table.lock();
        slots.remove(&self.slot.id);
        self.table.publish_open(&slots);
    }
}

pub struct ConnTable {
    epoch: Instant,
    max: usize,
    header_timeout_ms: u64,
    idle_timeout_ms: u64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    stats: Arc<HttpStats>,
}

impl ConnTable {
    pub fn new(max: usize, header_timeout: Duration, idle_timeout: Duration, stats: Arc<HttpStats>) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ConnTable {
            epoch: Instant::now(),
            max: max.max(1),
            header_timeout_ms: ms(header_timeout),
            idle_timeout_ms: ms(idle_timeout),
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_open(&self, slots: &HashMap<u64, Arc<Slot>>) {
        self.stats.open.store(slots.len() as u64, Ordering::Relaxed);
    }

    /// A slot for a new connection, making room if the table is full;
    /// `None` (counted) when every open connection is handling a request.
    pub fn admit(self: &Arc<Self>) -> Option<SlotGuard> {
        let mut slots = self.lock();
        if slots.len() >= self.max {
            let victim = slots
                .values()
                .filter_map(|s| match Slot::unpack(s.state.load(Ordering::Acquire)) {
                    (Phase::Handling, _) => None,
                    (_, since) => Some((since, s.id)),
                })
                .min()
                .map(|(_, id)| id);
            match victim.and_then(|id| slots.remove(&id)) {
                Some(v) => {
                    v.close.notify_one();
                    self.stats.conn_refused(ConnRefusal::Evicted);
                }
                None => {
                    self.stats.conn_refused(ConnRefusal::MaxConnections);
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id,
            epoch: self.epoch,
            state: AtomicU64::new(0),
            close: tokio::sync::Notify::new(),
        });
        slot.set(Phase::Waiting);
        slots.insert(id, slot.clone());
        self.publish_open(&slots);
        Some(SlotGuard {
            table: self.clone(),
            slot,
        })
    }

    /// Closes connections past their phase's timeout.
    pub fn sweep(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut slots = self.lock();
        slots.retain(|_, s| {
            let (phase, since) = Slot::unpack(s.state.load(Ordering::Acquire));
            let limit = match phase {
                Phase::Waiting => self.idle_timeout_ms,
                Phase::Headers => self.header_timeout_ms,
                // API requests have web.api_timeout; telemetry answers at once.
                Phase::Handling => return true,
            };
            if now.saturating_sub(since) < limit {
                return true;
            }
            s.close.notify_one();
            match phase {
                Phase::Headers => self.stats.conn_refused(ConnRefusal::HeaderTimeout),
                _ => {
                    self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                }
            }
            false
        });
        self.publish_open(&slots);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's socket, telling its slot when request bytes arrive.
pub struct TrackedIo<T> {
    inner: T,
    slot: Arc<Slot>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, slot: Arc<Slot>) -> Self {
        TrackedIo { inner, slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.bytes_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    fn table(max: usize, header_ms: u64, idle_ms: u64) -> (Arc<ConnTable>, Arc<HttpStats>) {
        let stats = Arc::new(HttpStats::default());
        let t = ConnTable::new(
            max,
            Duration::from_millis(header_ms),
            Duration::from_millis(idle_ms),
            stats.clone(),
        );
        (Arc::new(t), stats)
    }

    fn refused(stats: &HttpStats, reason: &str) -> f64 {
        let fams = stats.families();
        let f = fams
            .iter()
            .find(|f| f.name == "ngxprobe_http_connections_refused_total")
            .expect("family");
        f.samples
            .iter()
            .find(|s| s.labels.iter().any(|(k, v)| k == "reason" && v == reason))
            .map(|s| s.value)
            .expect("reason")
    }

    #[test]
    fn full_table_evicts_the_oldest_idle_connection_first() {
        let (t, stats) = table(3, 10_000, 10_000);
        let a = t.admit().expect("a");
        std::thread::sleep(Duration::from_millis(5));
        let b = t.admit().expect("b");
        let c = t.admit().expect("c");
        a.slot.request_started();
        // Full: b (waiting longest, a is busy) makes room.
        let d = t.admit().expect("d admitted by evicting b");
        assert_eq!(t.len(), 3);
        let evicted = |s: &SlotGuard| {
            let waker = futures_noop_waker();
            let mut cx = Context::from_waker(&waker);
            let fut = s.slot.closed();
            let mut fut = std::pin::pin!(fut);
            fut.as_mut().poll(&mut cx).is_ready()
        };
        assert!(evicted(&b), "b was the oldest non-busy connection");
        assert!(!evicted(&c) && !evicted(&d));
        assert_eq!(refused(&stats, "evicted"), 1.0);
        // Everybody busy: the next one is refused and counted.
        c.slot.request_started();
        d.slot.request_started();
        assert!(t.admit().is_none());
        assert_eq!(refused(&stats, "max_connections"), 1.0);
        drop(a);
        assert_eq!(t.len(), 2, "a closed connection frees its slot");
        assert!(t.admit().is_some());
    }

    #[test]
    fn sweep_closes_connections_past_their_phase_timeout() {
        let (t, stats) = table(10, 30, 60);
        let headers = t.admit().expect("slot");
        let idle = t.admit().expect("slot");
        let busy = t.admit().expect("slot");
        headers.slot.bytes_read();
        busy.slot.request_started();
        assert_eq!(headers.slot.phase(), Phase::Headers);
        std::thread::sleep(Duration::from_millis(40));
        t.sweep();
        assert_eq!(t.len(), 2, "headers timed out first");
        assert_eq!(refused(&stats, "header_timeout"), 1.0);
        std::thread::sleep(Duration::from_millis(30));
        t.sweep();
        assert_eq!(t.len(), 1, "then the idle one; the busy one stays");
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
        drop((headers, idle, busy));
        assert_eq!(t.len(), 0);
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
