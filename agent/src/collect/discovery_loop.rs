//! The discovery loop: scans /proc every `discovery.interval` and reconciles
//! the collector with what it finds, logging each change once.
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{ScanReport, SharedCollector};
use crate::discover::{DiscoveryConfig, Scanner};
use crate::worker::{Shutdown, Worker};

/// Starts the loop on a thread named `discovery`. `after_scan` runs after
/// every scan, failed or not (the supervisor marks the agent ready on the first).
pub fn spawn(
    collector: SharedCollector,
    cfg: &DiscoveryConfig,
    after_scan: impl Fn() + Send + 'static,
) -> std::io::Result<Worker> {
    let interval = cfg.interval.as_duration();
    let scanner = Scanner::new(cfg);
    Worker::spawn_thread("discovery", move |stop| {
        run(collector, interval, scanner, after_scan, stop)
    })
}

/// See `memory::release_free_memory`: a few ms of CPU at most, on this
/// thread, which sleeps most of the time.
const RELEASE_EVERY: Duration = Duration::from_secs(10);

fn run(collector: SharedCollector, interval: Duration, mut scanner: Scanner, after_scan: impl Fn(), stop: Shutdown) {
    let mut saw_none_logged = false;
    let mut last_error: Option<String> = None;
    let mut fd_limit_seen: Option<Instant> = None;
    let mut last_release = Instant::now();
    loop {
        let started = Instant::now();
        let scan = scanner.scan();
        let took = started.elapsed();
        let mut changed = false;
        {
            let mut c = collector.lock();
            match scan {
                Ok(outcome) => {
                    last_error = None;
                    let report = c.apply_scan(outcome, took, Instant::now());
                    log_report(&report);
                    changed = !(report.discovered.is_empty()
                        && report.stopped.is_empty()
                        && report.restarted.is_empty()
                        && report.forgotten.is_empty());
                    for line in c.unparsed_news() {
                        warn!("{line}");
                    }
                    log_fd_limit(report.news.fd_limit, &mut fd_limit_seen);
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
                    c.scan_failed(took, &e);
                    log_fd_limit(e.is_fd_limit(), &mut fd_limit_seen);
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!("discovery scan failed: {msg}");
                        last_error = Some(msg);
                    }
                }
            }
        }
        // Listener diagnostics: sock_diag in each instance's namespace,
        // outside the lock (readers are not held up by the netlink dumps).
        let polled = collector.lock().listen_targets().poll();
        for line in collector.lock().apply_listen(polled) {
            warn!("{line}");
        }
        // Free heap pages go back after a change (executables read,
        // uprobes attached, series dropped) and every RELEASE_EVERY for
        // what the other loops freed (rule evaluation, store compaction).
        if changed || last_release.elapsed() >= RELEASE_EVERY {
            crate::memory::release_free_memory();
            last_release = Instant::now();
        }
        after_scan();
        if stop.wait_timeout(interval) {
            return;
        }
    }
}

/// One line per change. Instance names and refusal subjects are already
/// quoted and escaped (they come from other processes).
fn log_report(report: &ScanReport) {
    for d in &report.discovered {
        info!("nginx instance discovered: {d}");
    }
    for d in &report.restarted {
        info!("nginx instance running again: {d}");
    }
    for d in &report.stopped {
        warn!("nginx instance stopped: {d}");
    }
    for d in &report.forgotten {
        info!("stopped nginx instance forgotten: {d}");
    }
    for e in &report.errors {
        warn!("{e}");
    }
    for a in &report.per_request.attached {
        info!("{a}");
    }
    for r in &report.per_request.refused {
        warn!("{r}");
    }
    for d in report.per_request.detached.iter().chain(&report.per_request.config) {
        info!("{d}");
    }
    for u in &report.per_request.config_unknown {
        warn!("{u}");
    }
    for h in &report.h2c {
        info!("{h}");
    }
    for h in &report.h2c_unknown {
        warn!("{h}");
    }
    let news = &report.news;
    for r in &news.refused {
        warn!(reason = r.reason.as_str(), "not tracked: {}: {}", r.subject, r.detail);
    }
    if news.refused_unlisted > 0 {
        warn!(
            "{} more processes or instances not tracked (see ngxprobe_discovery_refused_total)",
            news.refused_unlisted
        );
    }
    for e in &news.unreadable {
        warn!("skipped a process that cannot be read: {e}");
    }
    if news.unreadable_unlisted > 0 {
        warn!(
            "{} more processes skipped because they cannot be read (see ngxprobe_discovery_errors_total)",
            news.unreadable_unlisted
        );
    }
}

/// Quiet time after which running out of descriptors again is a new episode.
const FD_LIMIT_EPISODE: Duration = Duration::from_secs(600);

/// Running out of file descriptors is the agent's own problem, not the
/// scanned process's: said once per episode, with what to do about it.
fn log_fd_limit(hit: bool, last_seen: &mut Option<Instant>) {
    if !hit {
        return;
    }
    let now = Instant::now();
    let new_episode = last_seen.is_none_or(|t| now.duration_since(t) > FD_LIMIT_EPISODE);
    *last_seen = Some(now);
    if new_episode {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes into the struct we own.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.to_string()
        } else {
            "unknown".into()
        };
        error!(
            "ngxprobe ran out of file descriptors (EMFILE/ENFILE, open-file limit {limit}): discovery skips \
             processes until descriptors are free again; raise the limit (LimitNOFILE=, ulimit -n) or find what holds them"
        );
    }
}
