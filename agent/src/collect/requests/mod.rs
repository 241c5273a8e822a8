//! Per-request RED metrics: records from the uprobe on nginx's
//! ngx_http_free_request (probe stage) become OpenTelemetry-named histograms
//! per instance. This module owns the `per_request:` config section, the
//! ring buffer's consumer thread and the uprobe's attachments.
mod aggregate;
mod attach;
mod config;
pub(super) mod families;

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    sync::{Arc, Mutex, MutexGuard},
};

use agent_common::RequestRecord;
use aya::maps::{MapData, RingBuf};

pub use aggregate::{Aggregator, SOCKET_UNLABELLED};
pub use attach::{AttachNews, Attachments};
pub use config::{PerRequestConfig, UprobeMode};

use crate::worker::Worker;

/// The aggregator shared by the consumer thread (writer) and the collector.
#[derive(Clone)]
pub struct SharedAggregator(Arc<Mutex<Aggregator>>);

impl SharedAggregator {
    pub fn lock(&self) -> MutexGuard<'_, Aggregator> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ring buffer of request records, shared by the consumer thread and
/// the collector, which drains it before it reads the aggregator (so a
/// scrape sees every request finished before it, not those of up to
/// [`POLL_MS`] earlier). Lock order: the ring, then the aggregator.
#[derive(Clone)]
pub struct SharedRing(Arc<Mutex<RingBuf<MapData>>>);

impl SharedRing {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        SharedRing(Arc::new(Mutex::new(ring)))
    }

    /// Moves every record waiting in the ring into the aggregator.
    pub fn drain_into(&self, agg: &SharedAggregator) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        drain(&mut ring, agg);
    }
}

/// What the consumer thread needs: the ring buffer and the aggregator.
pub type RequestFeed = (SharedRing, SharedAggregator);

/// The collector's per-request state (present when enabled).
pub struct PerRequest {
    pub cfg: PerRequestConfig,
    pub agg: SharedAggregator,
    pub attachments: Attachments,
    /// Master pid → whether its executable carries the uprobe (last scan).
    pub attached: HashMap<u32, bool>,
    /// The records' ring, drained before the families are read.
    pub ring: Option<SharedRing>,
    /// Config reads that could not tell what an instance needs, by reason
    /// (discover::nginx_conf::UNKNOWN_REASONS).
    pub conf_unknown: std::collections::BTreeMap<&'static str, u64>,
}

impl PerRequest {
    pub fn new(cfg: PerRequestConfig, proc_root: std::path::PathBuf) -> Self {
        let agg = SharedAggregator(Arc::new(Mutex::new(Aggregator::new(&cfg, proc_root))));
        PerRequest {
            cfg,
            agg,
            attachments: Attachments::default(),
            attached: HashMap::new(),
            ring: None,
            conf_unknown: Default::default(),
        }
    }

    /// Takes in the records waiting in the ring (before a collection).
    pub fn drain_now(&self) {
        if let Some(ring) = &self.ring {
            ring.drain_into(&self.agg);
        }
    }
}

/// Longest wait for records before checking for shutdown; also how late a
/// record may be seen: the uprobe and the socket probes wake the consumer
/// only once many records wait (agent-ebpf/src/request_uprobe.rs
/// WAKEUP_BYTES).
const POLL_MS: i32 = 200;

/// Starts the thread that drains the ring buffer into the aggregator.
pub fn spawn_consumer(ring: SharedRing, agg: SharedAggregator) -> std::io::Result<Worker> {
    // The fd stays open as long as the ring (the collector holds it too).
    let fd = ring.0.lock().unwrap_or_else(|p| p.into_inner()).as_raw_fd();
    Worker::spawn_thread("requests", move |stop| {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one pollfd we own; a failure (EINTR) just loops.
            unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
            ring.drain_into(&agg);
            if stop.is_triggered() {
                return;
            }
        }
    })
}

fn drain(ring: &mut RingBuf<MapData>, agg: &SharedAggregator) {
    let mut a = agg.lock();
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<RequestRecord>() {
            continue;
        }
        // SAFETY: the program writes whole RequestRecords (repr(C), Pod);
        // read_unaligned copes with the ring's 8-byte alignment.
        let rec = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RequestRecord>()) };
        a.record(&rec);
    }
}
