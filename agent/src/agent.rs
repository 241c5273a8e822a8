//! Runs the agent: config → preflight → probe → discovery loop → HTTP server.
use std::{
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use crate::{
    alerts::AlertSink,
    collect::Collector,
    config::{self, Config, ConfigError},
    discover, expose, logging,
    metrics::Family,
    notify::{FanoutSink, ForwardingSink, Notifier},
    preflight,
    probe::Probe,
    query,
    rules::{self, RuleManager},
    series::{SeriesReader, SeriesWriter},
    store::Store,
};

/// Where the agent's configuration comes from: a file (or the embedded
/// defaults) and the command-line flags that override it.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    pub config: Option<std::path::PathBuf>,
    pub overrides: config::Overrides,
}

/// Config file (or embedded defaults) with command-line flags applied.
pub fn effective_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut cfg = match &args.config {
        Some(path) => config::load(path)?,
        None => Config::default(),
    };
    cfg.apply(args.overrides.clone())?;
    Ok(cfg)
}

/// The collect stage as the expose stage sees it.
struct Source(Arc<Mutex<Collector>>);

impl expose::MetricsSource for Source {
    fn families(&self) -> Vec<Family> {
        match self.0.lock() {
            Ok(c) => c.families(),
            // A panic elsewhere poisoned the lock: keep serving what we have.
            Err(p) => p.into_inner().families(),
        }
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    let cfg = match effective_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ngxprobe: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(cfg.log.level.as_str(), cfg.log.format) {
        eprintln!("ngxprobe: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let pre = preflight::run();
    for n in &pre.notes {
        debug!("{n}");
    }
    for w in &pre.warnings {
        warn!("{w}");
    }
    if !pre.fatal.is_empty() {
        for f in &pre.fatal {
            error!("{f}");
        }
        return ExitCode::FAILURE;
    }
    let probe = match Probe::load(cfg.ebpf.max_seeded_connections.get()) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    release_load_time_memory();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        programs = probe.programs_loaded(),
        "eBPF programs loaded and attached"
    );
    let labels = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
        .collect();
    let collector = Arc::new(Mutex::new(Collector::new(
        probe,
        cfg.discovery.proc_path.clone(),
        cfg.discovery.stopped_instance_retention.as_duration(),
        labels,
    )));
    let store = if cfg.storage.enabled {
        match Store::open(&cfg.storage) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let health = Arc::new(expose::Health::default());
    health.set_not_ready("first discovery scan has not finished");
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let discovery = {
        let collector = collector.clone();
        let health = health.clone();
        let interval = cfg.discovery.interval.as_duration();
        let proc_root = cfg.discovery.proc_path.clone();
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || discovery_loop(collector, health, interval, proc_root, stop_rx))
    };
    let discovery = match discovery {
        Ok(h) => h,
        Err(e) => {
            error!("cannot start the discovery thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    let collect: Arc<dyn expose::MetricsSource> = Arc::new(Source(collector));

    // notify: the built-in notifier and/or forwarding to external Alertmanagers.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut sinks: Vec<Arc<dyn AlertSink>> = Vec::new();
    let mut tasks = Vec::new();
    let notifier = match cfg.alertmanager.clone() {
        Some(am) => {
            let dir = cfg.storage.path.join("notify");
            let n = match runtime.block_on(async { Notifier::new(am, &dir) }) {
                Ok(n) => n,
                Err(e) => {
                    error!("notifier: {e}");
                    return ExitCode::FAILURE;
                }
            };
            n.set_external_url(&external_url(&cfg));
            sinks.push(Arc::new(n.clone()));
            let (n2, rx) = (n.clone(), shutdown_rx.clone());
            tasks.push(runtime.spawn(async move { n2.run(wait_shutdown(rx)).await }));
            Some(n)
        }
        None => None,
    };
    let forwarder = if cfg.alerting.alertmanagers.is_empty() {
        None
    } else {
        let f = match runtime.block_on(async { ForwardingSink::new(&cfg.alerting) }) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                error!("alerting.alertmanagers: {e}");
                return ExitCode::FAILURE;
            }
        };
        sinks.push(f.clone());
        let (f2, rx) = (f.clone(), shutdown_rx.clone());
        tasks.push(runtime.spawn(async move { f2.run(wait_shutdown(rx)).await }));
        Some(f)
    };

    // rules: need the store (they read history and write ALERTS / recordings).
    let mut api = axum::Router::new();
    let mut rules_thread = None;
    let rules = match &store {
        Some(store) => {
            let reader: Arc<dyn SeriesReader> = store.clone();
            let writer: Arc<dyn SeriesWriter> = store.clone();
            let sink: Arc<dyn AlertSink> = Arc::new(FanoutSink(sinks));
            // Rules read history plus the probes' live values (see live.rs).
            let rules_reader: Arc<dyn SeriesReader> =
                Arc::new(crate::live::LiveReader::new(reader.clone(), collect.clone()));
            let m = Arc::new(RuleManager::new(rules_reader, writer, sink, cfg.rules.clone()));
            match m.load_configured() {
                Ok(n) => info!(rules = n, "rules loaded"),
                Err(e) => {
                    error!("rules: {e}");
                    return ExitCode::FAILURE;
                }
            }
            match m.spawn() {
                Ok(t) => rules_thread = Some(t),
                Err(e) => {
                    error!("cannot start the rules thread: {e}");
                    return ExitCode::FAILURE;
                }
            }
            api = api
                .merge(query::api::api_router(reader, query::QueryOptions::default()))
                .merge(rules::rules_router(m.clone()));
            Some(m)
        }
        None => {
            if !cfg.rules.rule_files.is_empty() {
                warn!("storage is disabled: rules are not evaluated (they need the store)");
            }
            None
        }
    };

    let source: Arc<dyn expose::MetricsSource> = Arc::new(Pipeline {
        collect,
        store: store.clone(),
        rules,
        notifier,
        forwarder,
    });
    let (sampler_stop, sampler) = match &store {
        Some(store) => match start_sampler(store.clone(), source.clone(), cfg.storage.interval.as_duration()) {
            Ok((tx, h)) => (Some(tx), Some(h)),
            Err(e) => {
                error!("cannot start the sampler thread: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => (None, None),
    };
    let result = runtime.block_on(expose::serve(
        cfg.web.listen_address,
        cfg.web.telemetry_path.clone(),
        source,
        health,
        api,
        shutdown_signal(),
    ));
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = runtime.block_on(t);
    }
    if let Some((h, tx)) = rules_thread {
        let _ = tx.send(());
        let _ = h.join();
    }
    let _ = stop_tx.send(());
    let _ = discovery.join();
    if let (Some(tx), Some(h)) = (sampler_stop, sampler) {
        let _ = tx.send(());
        let _ = h.join();
    }
    if let Some(store) = store {
        match Arc::try_unwrap(store) {
            Ok(s) => {
                if let Err(e) = s.close() {
                    warn!("closing the store: {e}");
                }
            }
            Err(s) => s.flush(),
        }
    }
    match result {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// /metrics: the collect stage's families plus every later stage's own.
struct Pipeline {
    collect: Arc<dyn expose::MetricsSource>,
    store: Option<Arc<Store>>,
    rules: Option<Arc<RuleManager>>,
    notifier: Option<Notifier>,
    forwarder: Option<Arc<ForwardingSink>>,
}

impl expose::MetricsSource for Pipeline {
    fn families(&self) -> Vec<Family> {
        let mut f = self.collect.families();
        if let Some(s) = &self.store {
            f.extend(s.self_families());
        }
        if let Some(r) = &self.rules {
            f.extend(r.families());
        }
        if let Some(n) = &self.notifier {
            f.extend(n.self_families());
        }
        if let Some(fw) = &self.forwarder {
            f.extend(fw.self_families());
        }
        f
    }
}

/// Samples everything /metrics shows into the store every `interval`, at
/// timestamps aligned to the interval (regular timestamps compress to nothing).
fn start_sampler(
    store: Arc<Store>,
    source: Arc<dyn expose::MetricsSource>,
    interval: Duration,
) -> std::io::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let step = i64::try_from(interval.as_millis()).unwrap_or(1000).max(1);
    let h = std::thread::Builder::new().name("sampler".into()).spawn(move || {
        loop {
            let now = now_ms();
            let next = (now / step + 1) * step;
            let wait = Duration::from_millis((next - now).max(0) as u64);
            match rx.recv_timeout(wait) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let mut families = source.families();
            families.extend(expose::process_families());
            let report = store.ingest(&families, next);
            debug!(?report, "sampled into the store");
        }
    })?;
    Ok((tx, h))
}

/// Resolves when the shutdown flag flips (or its sender is gone).
async fn wait_shutdown(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What templates and generator URLs use to link back to this agent.
fn external_url(cfg: &Config) -> String {
    if !cfg.rules.external_url.is_empty() {
        return cfg.rules.external_url.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let port = match cfg.web.listen_address {
        config::ListenAddress::AllInterfaces { port } => port,
        config::ListenAddress::Socket(a) => a.port(),
    };
    format!("http://{host}:{port}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Loading parses the kernel's whole BTF (several MB) twice; the heap keeps
/// those pages after they are freed. Hand them back so the agent stays small.
fn release_load_time_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    info!("shutting down");
}

/// Scans /proc every `interval` and reconciles the collector with what it finds.
fn discovery_loop(
    collector: Arc<Mutex<Collector>>,
    health: Arc<expose::Health>,
    interval: Duration,
    proc_root: std::path::PathBuf,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let mut saw_none_logged = false;
    let mut last_error: Option<String> = None;
    loop {
        let started = Instant::now();
        let scan = discover::scan(&proc_root);
        let took = started.elapsed();
        {
            let mut c = match collector.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
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
                    health.set_ready(true);
                }
                Err(e) => {
                    c.scan_failed(took);
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!("discovery scan failed: {msg}");
                        last_error = Some(msg);
                    }
                    health.set_ready(true);
                }
            }
        }
        match stop.recv_timeout(interval) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

/// `ngxprobe query EXPR`: against a running agent (--addr, default the
/// configured listen address on loopback) or a data directory (--data-dir).
pub fn query_cli(
    args: &RunArgs,
    expr: &str,
    time: Option<&str>,
    addr: Option<String>,
    data_dir: Option<std::path::PathBuf>,
) -> ExitCode {
    let mut out = std::io::stdout();
    let result = match data_dir {
        Some(dir) => {
            let mut sc = crate::store::StorageConfig::default();
            sc.path = dir;
            match Store::open(&sc) {
                Ok(store) => query::cli::run_query_cli(query::cli::QueryTarget::Reader(&store), expr, time, &mut out),
                Err(e) => Err(e.to_string()),
            }
        }
        None => {
            let addr = match addr {
                Some(a) => a,
                None => match effective_config(args) {
                    Ok(c) => match c.web.listen_address {
                        config::ListenAddress::AllInterfaces { port } => format!("127.0.0.1:{port}"),
                        config::ListenAddress::Socket(a) => a.to_string(),
                    },
                    Err(e) => {
                        eprintln!("ngxprobe: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            query::cli::run_query_cli(query::cli::QueryTarget::Http(addr), expr, time, &mut out)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ngxprobe query: {e}");
            ExitCode::FAILURE
        }
    }
}
