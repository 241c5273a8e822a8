//! Admission of API queries: at most `max_concurrency` run at once, each on
//! its own thread with a stack sized for `max_depth` (parse, evaluation and
//! JSON encoding never run on the async workers, so /metrics and /healthz
//! keep answering while the API is saturated); up to `max_queued` more wait
//! for a slot until their deadline (Prometheus: "query timed out in query
//! queue", 503); beyond that, 503 at once. A slot is held until the answer
//! has been handed to the connection (see [`SlotBody`]), so the answers in
//! memory are bounded too. Every refusal is counted by reason.
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Family, MetricType, MetricsSource};

/// Why a request was refused (the `reason` label of
/// `ngxprobe_query_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Expression nested deeper than `query.max_depth`.
    Depth,
    /// More samples than `query.max_samples`.
    Samples,
    /// The deadline passed during evaluation.
    Timeout,
    /// No slot: the queue was full or the deadline passed in it.
    Concurrency,
    /// Text or body longer than `query.max_query_length` allows.
    Size,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::Depth,
        Refusal::Samples,
        Refusal::Timeout,
        Refusal::Concurrency,
        Refusal::Size,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Depth => "depth",
            Refusal::Samples => "samples",
            Refusal::Timeout => "timeout",
            Refusal::Concurrency => "concurrency",
            Refusal::Size => "size",
        }
    }
}

/// Why a request did not get a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// `max_queued` requests are already waiting.
    QueueFull { running: usize, queued: usize },
    /// The deadline passed while waiting.
    Timeout,
    /// The OS refused a thread.
    Thread(String),
}

pub struct Admission {
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    max_queued: usize,
    stack_size: usize,
    /// Requests holding a ticket (waiting or running).
    admitted: AtomicUsize,
    waiting: AtomicUsize,
    running: AtomicUsize,
    refused: [AtomicU64; Refusal::ALL.len()],
    queries: AtomicU64,
    query_micros: AtomicU64,
}

impl Admission {
    pub fn new(max_concurrency: usize, max_queued: usize, stack_size: usize) -> Arc<Self> {
        let max_concurrency = max_concurrency.max(1);
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            max_queued,
            stack_size,
            admitted: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            refused: Default::default(),
            queries: AtomicU64::new(0),
            query_micros: AtomicU64::new(0),
        })
    }

    pub fn refuse(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].load(Relaxed)
    }

    /// A place in line, or `QueueFull` at once. Taken before the request's
    /// body is read, so waiting requests hold at most their text.
    pub fn ticket(self: &Arc<Self>) -> Result<Ticket, NoSlot> {
        let limit = self.max_concurrency + self.max_queued;
        let taken = self
            .admitted
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1));
        match taken {
            Ok(_) => Ok(Ticket(self.clone())),
            Err(_) => {
                self.refuse(Refusal::Concurrency);
                Err(NoSlot::QueueFull {
                    running: self.running.load(Relaxed),
                    queued: self.waiting.load(Relaxed),
                })
            }
        }
    }

    /// Waits for a slot until `deadline`, then runs `job` on a new thread
    /// with the query stack. The slot comes back with the result and is held
    /// by the caller until the answer is sent; if the caller goes away
    /// first, it is released when the job ends.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        ticket: Ticket,
        deadline: Instant,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(std::thread::Result<T>, Slot), NoSlot> {
        self.waiting.fetch_add(1, Relaxed);
        let wait = deadline.saturating_duration_since(Instant::now());
        let permit = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Relaxed);
        let permit = match permit {
            Ok(Ok(p)) => p,
            // Timed out, or the semaphore was closed (never: it is not).
            _ => {
                self.refuse(Refusal::Concurrency);
                return Err(NoSlot::Timeout);
            }
        };
        self.running.fetch_add(1, Relaxed);
        let slot = Slot {
            admission: self.clone(),
            _permit: permit,
            _ticket: ticket,
            started: Instant::now(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("query".into())
            .stack_size(self.stack_size)
            .spawn(move || {
                let out = std::panic::catch_unwind(AssertUnwindSafe(job));
                // The caller may be gone (client disconnected): the slot is
                // then dropped here, after the work is done.
                let _ = tx.send((out, slot));
            });
        if let Err(e) = spawned {
            self.refuse(Refusal::Concurrency);
            return Err(NoSlot::Thread(e.to_string()));
        }
        rx.await
            .map_err(|_| NoSlot::Thread("the query thread ended without an answer".into()))
    }
}

/// A place among the admitted requests (running or waiting).
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Relaxed);
    }
}

/// A running query's slot; released on drop.
pub struct Slot {
    admission: Arc<Admission>,
    _permit: OwnedSemaphorePermit,
    _ticket: Ticket,
    started: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let a = &self.admission;
        a.running.fetch_sub(1, Relaxed);
        a.queries.fetch_add(1, Relaxed);
        let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        a.query_micros.fetch_add(us, Relaxed);
    }
}

/// Frames handed to the connection at a time: the connection asks for the
/// next only once it has written the previous one, so a slot stays held
/// while the client reads.
const FRAME_BYTES: usize = 64 * 1024;

/// A response body that holds its query's slot until the connection has
/// taken the last frame (or drops the body). A client that reads so slowly
/// that `send_deadline` passes gets its connection cut.
pub struct SlotBody {
    rest: Bytes,
    slot: Option<Slot>,
    send_deadline: Instant,
}

impl SlotBody {
    pub fn body(body: Bytes, slot: Slot, send_time: Duration) -> Body {
        Body::new(SlotBody {
            rest: body,
            slot: Some(slot),
            send_deadline: Instant::now() + send_time,
        })
    }
}

impl HttpBody for SlotBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.rest.is_empty() {
            self.slot = None;
            return Poll::Ready(None);
        }
        if Instant::now() > self.send_deadline {
            self.slot = None;
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client too slow to read the query answer",
            ))));
        }
        let n = self.rest.len().min(FRAME_BYTES);
        let frame = self.rest.split_to(n);
        Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

impl MetricsSource for Admission {
    fn families(&self) -> Vec<Family> {
        let mut refused = Family::new(
            "ngxprobe_query_refused_total",
            "API queries refused, by reason: depth (query.max_depth), samples (query.max_samples), timeout \
             (query.timeout), concurrency (no slot: query.max_concurrency, query.max_queued), size \
             (query.max_query_length).",
            MetricType::Counter,
        );
        for r in Refusal::ALL {
            refused.push(&[("reason", r.label())], self.refused(r) as f64);
        }
        let mut out = vec![refused];
        let mut one = |name: &str, help: &str, kind: MetricType, v: f64| {
            let mut f = Family::new(name, help, kind);
            f.push(&[], v);
            out.push(f);
        };
        one(
            "ngxprobe_query_inflight",
            "API queries running now.",
            MetricType::Gauge,
            self.running.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_query_queued",
            "API queries waiting for a slot.",
            MetricType::Gauge,
            self.waiting.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_query_concurrency_max",
            "API queries that may run at once (query.max_concurrency).",
            MetricType::Gauge,
            self.max_concurrency as f64,
        );
        one(
            "ngxprobe_queries_total",
            "API queries that got a slot and finished (answered, failed or abandoned).",
            MetricType::Counter,
            self.queries.load(Relaxed) as f64,
        );
        one(
            "ngxprobe_query_seconds_total",
            "Time finished API queries held their slot (evaluation and sending the answer); divided by \
             ngxprobe_queries_total, the mean query time.",
            MetricType::Counter,
            self.query_micros.load(Relaxed) as f64 / 1e6,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn gauge(a: &Admission, name: &str) -> f64 {
        a.families().iter().find(|f| f.name == name).unwrap().samples[0].value
    }

    #[test]
    fn one_slot_one_queued_then_refused_at_once() {
        let rt = runtime();
        let a = Admission::new(1, 1, 1 << 20);
        let (release, hold) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let far = Instant::now() + Duration::from_secs(60);
        rt.block_on(async {
            let first = {
                let a = a.clone();
                let t = a.ticket().unwrap();
                tokio::spawn(async move {
                    a.run(t, far, move || {
                        started.send(()).unwrap();
                        hold.recv_timeout(Duration::from_secs(30)).unwrap();
                        7
                    })
                    .await
                })
            };
            // The job runs on its own thread while this one waits.
            tokio::task::spawn_blocking(move || running.recv_timeout(Duration::from_secs(30)).unwrap())
                .await
                .unwrap();
            assert_eq!(gauge(&a, "ngxprobe_query_inflight"), 1.0);
            // A second request gets a ticket but waits; its deadline passes.
            let t2 = a.ticket().unwrap();
            // A third finds the line full.
            assert!(matches!(a.ticket(), Err(NoSlot::QueueFull { running: 1, .. })));
            let soon = Instant::now() + Duration::from_millis(100);
            let r = a.run(t2, soon, || 0).await;
            assert!(matches!(r, Err(NoSlot::Timeout)), "{:?}", r.map(|x| x.0.is_ok()));
            release.send(()).unwrap();
            let (out, slot) = first.await.unwrap().unwrap();
            assert_eq!(out.unwrap(), 7);
            // The slot is held until the answer is dropped (sent).
            assert_eq!(gauge(&a, "ngxprobe_query_inflight"), 1.0);
            drop(slot);
        });
        assert_eq!(gauge(&a, "ngxprobe_query_inflight"), 0.0);
        assert_eq!(a.refused(Refusal::Concurrency), 2);
        assert_eq!(gauge(&a, "ngxprobe_queries_total"), 1.0);
        // Everything released: a new request runs at once.
        let t = a.ticket().unwrap();
        let (out, _slot) = rt.block_on(a.run(t, far, || 1)).unwrap();
        assert_eq!(out.unwrap(), 1);
    }

    #[test]
    fn a_panicking_job_is_an_error_and_frees_its_slot() {
        let rt = runtime();
        let a = Admission::new(1, 0, 1 << 20);
        let far = Instant::now() + Duration::from_secs(60);
        let t = a.ticket().unwrap();
        let (out, slot) = rt.block_on(a.run(t, far, || -> u8 { panic!("boom") })).unwrap();
        assert!(out.is_err());
        drop(slot);
        assert!(a.ticket().is_ok());
    }

    #[test]
    fn slot_body_sends_everything_in_frames() {
        let rt = runtime();
        let a = Admission::new(1, 0, 1 << 20);
        let far = Instant::now() + Duration::from_secs(60);
        let text: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let t = a.ticket().unwrap();
        let (_, slot) = rt.block_on(a.run(t, far, || ())).unwrap();
        let body = SlotBody::body(Bytes::from(text.clone()), slot, Duration::from_secs(60));
        let got = rt.block_on(axum::body::to_bytes(body, usize::MAX)).unwrap();
        assert_eq!(got.as_ref(), text.as_slice());
        assert_eq!(gauge(&a, "ngxprobe_query_inflight"), 0.0);
    }
}
