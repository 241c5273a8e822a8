//! The supervisor: starts the stages in pipeline order, keeps one
//! [`Worker`] handle per loop, serves HTTP until a signal, then stops the
//! loops in order and closes the store. Stages own their loops; nothing here
//! knows a stage's internals, only the typed interfaces between stages.
mod load;
mod pipeline;
mod web_info;

pub use load::{RunArgs, check_config, effective_config, load_file, web_security};

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use crate::alerts::AlertSink;
use crate::collect::{self, Collector, SharedCollector};
use crate::config::{Config, ConfigError};
use crate::live::LiveReader;
use crate::metrics::MetricsSource;
use crate::notify::{FanoutSink, ForwardingSink, Notifier};
use crate::probe::Probe;
use crate::remote_write::RemoteWrite;
use crate::rules::{self, RuleManager};
use crate::series::{SeriesReader, SeriesWriter};
use crate::store::{self, Store};
use crate::worker::Worker;
use crate::{expose, kubernetes, logging, memory, preflight, privilege, query, web};
use pipeline::{Pipeline, Sampled};

/// Why the agent did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration (file or flags) is wrong: exit code 2, like a usage error.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// This host cannot run the agent (the reasons were logged one per line).
    #[error("this host cannot run ngxprobe (see the errors above)")]
    Preflight,
    /// A stage could not start.
    #[error("{stage}: {message}")]
    Start { stage: &'static str, message: String },
    /// The HTTP server failed.
    #[error(transparent)]
    Serve(#[from] expose::ServeError),
}

impl RunError {
    fn start(stage: &'static str, e: impl std::fmt::Display) -> Self {
        RunError::Start {
            stage,
            message: e.to_string(),
        }
    }

    /// The process exit code for this error: 2 for configuration, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub fn run(args: RunArgs) -> Result<(), RunError> {
    // First: before any thread exists (see memory.rs).
    let malloc_settings = memory::tune_allocator();
    let cfg = effective_config(&args)?;
    let security = web_security(&cfg)?;
    logging::init(cfg.log.level.as_str(), cfg.log.format).map_err(|e| RunError::start("logging", e))?;
    debug!(settings = ?malloc_settings, "malloc settings");
    // Capabilities are per thread and inherited: see privilege.rs for the order.
    privilege::restrict_process().map_err(|e| RunError::start("privileges", e))?;
    check_host()?;
    let probe = Probe::load(cfg.ebpf.max_seeded_connections.get()).map_err(|e| RunError::start("probe", e))?;
    privilege::probes_loaded();
    memory::release_free_memory();
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
    let mut collector = Collector::new(
        probe,
        cfg.discovery.proc_path.clone(),
        cfg.discovery.stopped_instance_retention.as_duration(),
        labels,
    );
    let request_feed = collector.enable_per_request(cfg.per_request.clone());
    let collector = SharedCollector::new(collector);
    let store = match cfg.storage.enabled {
        true => Some(Arc::new(
            Store::open(&cfg.storage).map_err(|e| RunError::start("store", e))?,
        )),
        false => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(privilege::drop_all_for_this_thread)
        .build()
        .map_err(|e| RunError::start("async runtime", e))?;

    // Workers in pipeline order; stopped in reverse.
    let mut workers = Workers::default();
    let result = start_and_serve(
        &cfg,
        security,
        collector,
        request_feed,
        store.clone(),
        &runtime,
        &mut workers,
    );
    workers.stop_all();
    if let Some(store) = store {
        close_store(store);
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}

/// Starts every stage after the probes, then serves HTTP until a signal.
fn start_and_serve(
    cfg: &Config,
    security: Option<Arc<expose::WebSecurity>>,
    collector: SharedCollector,
    request_feed: Option<collect::requests::RequestFeed>,
    store: Option<Arc<Store>>,
    runtime: &tokio::runtime::Runtime,
    workers: &mut Workers,
) -> Result<(), RunError> {
    // Kubernetes metadata first, so the first scan's instances are labelled
    // as soon as the pod list arrives; nothing happens outside Kubernetes.
    let kubernetes = start_kubernetes(cfg, runtime, workers)?;
    if let Some(cache) = &kubernetes {
        collector.lock().set_metadata(cache.clone());
        // Bounded: an API server that does not answer delays nothing for long.
        let wait = std::time::Duration::from_secs(5);
        // The timer must be made inside the runtime.
        let answered = runtime.block_on(async { tokio::time::timeout(wait, cache.first_list()).await });
        if answered.is_err() {
            info!("no answer from the Kubernetes API server within {wait:?}: discovering nginx now, pod labels follow");
        }
    }
    let health = Arc::new(expose::Health::default());
    health.set_not_ready("first discovery scan has not finished");
    let ready = health.clone();
    workers.push(
        collect::discovery_loop::spawn(collector.clone(), &cfg.discovery, move || ready.set_ready(true))
            .map_err(|e| RunError::start("discovery", e))?,
    );
    // Only discovery keeps capabilities; every thread started from here on inherits none.
    privilege::drop_all_for_this_thread();
    if let Some((ring, agg)) = request_feed {
        workers.push(collect::requests::spawn_consumer(ring, agg).map_err(|e| RunError::start("requests", e))?);
    }
    let collect: Arc<dyn MetricsSource> = Arc::new(collector);

    // notify: the built-in notifier and/or forwarding to external Alertmanagers.
    let mut sinks: Vec<Arc<dyn AlertSink>> = Vec::new();
    let notifier = match cfg.alertmanager.clone() {
        Some(am) => {
            let dir = cfg.storage.path.join("notify");
            let n = runtime
                .block_on(async { Notifier::new(am, &dir) })
                .map_err(|e| RunError::start("notifier", e))?;
            n.set_external_url(&external_url(cfg, security.as_ref().is_some_and(|s| s.tls.is_some())));
            sinks.push(Arc::new(n.clone()));
            let n2 = n.clone();
            workers.push(Worker::spawn_task(
                "notifier",
                runtime.handle(),
                move |stop| async move { n2.run(stop.wait()).await },
            ));
            Some(n)
        }
        None => None,
    };
    let forwarder = match cfg.alerting.alertmanagers.is_empty() {
        true => None,
        false => {
            let f = runtime
                .block_on(async { ForwardingSink::new(&cfg.alerting) })
                .map(Arc::new)
                .map_err(|e| RunError::start("alerting.alertmanagers", e))?;
            sinks.push(f.clone());
            let f2 = f.clone();
            workers.push(Worker::spawn_task(
                "forwarder",
                runtime.handle(),
                move |stop| async move { f2.run(stop.wait()).await },
            ));
            Some(f)
        }
    };

    // rules and the query API need the store (rules read history and write ALERTS / recordings).
    // The page (`/`, `/ui/...`) is there either way; it says what is missing.
    let mut api = web::router(web_info::agent_info(cfg));
    let mut queries = None;
    let rules = match &store {
        Some(store) => {
            let reader: Arc<dyn SeriesReader> = store.clone();
            let writer: Arc<dyn SeriesWriter> = store.clone();
            let sink: Arc<dyn AlertSink> = Arc::new(FanoutSink(sinks));
            // Rules read history plus the probes' live values (see live.rs).
            let rules_reader: Arc<dyn SeriesReader> = Arc::new(LiveReader::new(reader.clone(), collect.clone()));
            // Alerts carry the external labels (as Prometheus sends them to Alertmanager).
            let mut rules_cfg = cfg.rules.clone();
            rules_cfg.external_labels = cfg.external_labels().into_iter().collect();
            let m = Arc::new(RuleManager::new(rules_reader, writer, sink, rules_cfg));
            let n = m.load_configured().map_err(|e| RunError::start("rules", e))?;
            info!(rules = n, "rules loaded");
            workers.push(m.spawn().map_err(|e| RunError::start("rules", e))?);
            let (query_api, admission) = query::api::api(reader, cfg.query.options());
            queries = Some(admission);
            api = api.merge(query_api).merge(rules::rules_router(m.clone()));
            Some(m)
        }
        None => {
            if !cfg.rules.rule_files.is_empty() {
                warn!("storage is disabled: rules are not evaluated (they need the store)");
            }
            None
        }
    };

    // remote_write reads what the store logs; without a store there is nothing to send.
    let remote_write = match &store {
        Some(store) => {
            let (rw, loops) = RemoteWrite::start(&cfg.remote_write, &cfg.external_labels(), store, runtime.handle())
                .map_err(|e| RunError::start("remote_write", e))?;
            for w in loops {
                workers.push(w);
            }
            (!cfg.remote_write.is_empty()).then(|| Arc::new(rw))
        }
        None => {
            if !cfg.remote_write.is_empty() {
                warn!("storage is disabled: remote_write sends nothing (it reads the store's WAL)");
            }
            None
        }
    };

    let source: Arc<dyn MetricsSource> = Arc::new(Pipeline {
        collect,
        store: store.clone(),
        remote_write,
        queries,
        rules,
        notifier,
        forwarder,
        kubernetes,
    });
    if let Some(store) = &store {
        let sampled: Arc<dyn MetricsSource> = Arc::new(Sampled(source.clone()));
        workers.push(
            store::sampler::spawn(store.clone(), sampled, cfg.storage.interval.as_duration())
                .map_err(|e| RunError::start("sampler", e))?,
        );
    }
    let server = expose::Server::new(&cfg.web, source, health)
        .api(api)
        .security(security);
    runtime.block_on(server.serve(shutdown_signal()))?;
    Ok(())
}

/// The Kubernetes metadata loop, when the agent runs in a pod (or is told to).
fn start_kubernetes(
    cfg: &Config,
    runtime: &tokio::runtime::Runtime,
    workers: &mut Workers,
) -> Result<Option<kubernetes::MetadataCache>, RunError> {
    let k = &cfg.kubernetes;
    // Constant labels may not take the names the metadata adds.
    let added: Vec<String> = kubernetes::RESERVED_LABELS[2..]
        .iter()
        .map(|s| s.to_string())
        .chain(k.pod_labels.iter().map(|p| p.label_name()))
        .collect();
    let env = |name: &str| std::env::var(name).ok();
    let started = kubernetes::spawn(k, env, runtime.handle()).map_err(|e| RunError::start("kubernetes", e))?;
    let Some((worker, cache)) = started else {
        return Ok(None);
    };
    if let Some(clash) = cfg.labels.keys().find(|l| added.iter().any(|a| a == l.as_str())) {
        worker.stop();
        return Err(RunError::start(
            "kubernetes",
            format!(
                "labels.{clash} is also a label Kubernetes metadata adds: rename it or set kubernetes.metadata: off"
            ),
        ));
    }
    workers.push(worker);
    Ok(Some(cache))
}

/// The loops the supervisor started, in start order.
#[derive(Default)]
struct Workers(Vec<Worker>);

impl Workers {
    fn push(&mut self, w: Worker) {
        debug!(worker = w.name(), "started");
        self.0.push(w);
    }

    /// Stops the loops last-started first: consumers before their producers.
    fn stop_all(&mut self) {
        while let Some(w) = self.0.pop() {
            debug!(worker = w.name(), "stopping");
            w.stop();
        }
    }
}

/// Preflight: kernel, BTF, capabilities. Fatal findings are logged one per line.
fn check_host() -> Result<(), RunError> {
    let pre = preflight::run();
    for n in &pre.notes {
        debug!("{n}");
    }
    for w in &pre.warnings {
        warn!("{w}");
    }
    if pre.fatal.is_empty() {
        return Ok(());
    }
    for f in &pre.fatal {
        error!("{f}");
    }
    Err(RunError::Preflight)
}

/// Writes what is left in memory; the store is only closed once nothing else holds it.
fn close_store(store: Arc<Store>) {
    match Arc::try_unwrap(store) {
        Ok(s) => {
            if let Err(e) = s.close() {
                warn!("closing the store: {e}");
            }
        }
        Err(s) => s.flush(),
    }
}

/// What templates and generator URLs use to link back to this agent.
fn external_url(cfg: &Config, tls: bool) -> String {
    if !cfg.rules.external_url.is_empty() {
        return cfg.rules.external_url.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let port = match cfg.web.listen_address {
        expose::ListenAddress::AllInterfaces { port } => port,
        expose::ListenAddress::Socket(a) => a.port(),
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{port}")
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

/// `ngxprobe query EXPR`: against a running agent (`addr`, default the
/// configured listen address on loopback) or a stopped agent's data directory.
pub fn query_cli(
    args: &RunArgs,
    expr: &str,
    time: Option<&str>,
    addr: Option<String>,
    data_dir: Option<PathBuf>,
) -> Result<(), RunError> {
    let mut out = std::io::stdout();
    let result = match data_dir {
        Some(dir) => {
            // Read-only: the directory is a stopped agent's, maybe on a read-only mount.
            let store = Store::open_read_only(&dir).map_err(|e| RunError::start("query", e))?;
            query::cli::run_query_cli(query::cli::QueryTarget::Reader(&store), expr, time, &mut out)
        }
        None => {
            let addr = match addr {
                Some(a) => a,
                None => effective_config(args)?.web.local_address(),
            };
            query::cli::run_query_cli(query::cli::QueryTarget::Http(addr), expr, time, &mut out)
        }
    };
    result.map_err(|e| RunError::start("query", e))
}
