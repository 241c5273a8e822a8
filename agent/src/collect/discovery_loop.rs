//! The discovery loop: scans /proc every `discovery.interval` and reconciles
//! the collector with what it finds, logging each change once.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::SharedCollector;
use crate::discover::{self, DiscoveryConfig};
use crate::worker::{Shutdown, Worker};

/// Starts the loop on a thread named `discovery`. `after_scan` runs after
/// every scan, failed or not (the supervisor marks the agent ready on the first).
pub fn spawn(
    collector: SharedCollector,
    cfg: &DiscoveryConfig,
    after_scan: impl Fn() + Send + 'static,
) -> std::io::Result<Worker> {
    let interval = cfg.interval.as_duration();
    let proc_root = cfg.proc_path.clone();
    Worker::spawn_thread("discovery", move |stop| {
        run(collector, interval, proc_root, after_scan, stop)
    })
}

fn run(collector: SharedCollector, interval: Duration, proc_root: PathBuf, after_scan: impl Fn(), stop: Shutdown) {
    let mut saw_none_logged = false;
    let mut last_error: Option<String> = None;
    loop {
        let started = Instant::now();
        let scan = discover::scan(&proc_root);
        let took = started.elapsed();
        {
            let mut c = collector.lock();
            match scan {
                Ok(instances) => {
                    last_error = None;
                    let report = c.apply_scan(instances, took, Instant::now());
                    for d in &report.discovered {
                        info!(instance = %d, "nginx instance discovered");
                    }
                    for d in &report.restarted {
                        info!(instance = %d, "nginx instance running again");
                    }
                    for d in &report.stopped {
                        warn!(instance = %d, "nginx instance stopped");
                    }
                    for d in &report.forgotten {
                        info!(instance = %d, "stopped nginx instance forgotten after retention");
                    }
                    for e in &report.errors {
                        warn!("{e}");
                    }
                    if c.instance_count() == 0 {
                        if !saw_none_logged {
                            info!("no nginx running yet; watching for it");
                            saw_none_logged = true;
                        }
                    } else {
                        saw_none_logged = false;
                    }
                }
                Err(e) => {
                    c.scan_failed(took);
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!("discovery scan failed: {msg}");
                        last_error = Some(msg);
                    }
                }
            }
        }
        after_scan();
        if stop.wait_timeout(interval) {
            return;
        }
    }
}
