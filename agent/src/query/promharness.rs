//! Test/bench harness shared by the differential test against a real
//! Prometheus and `cargo xtask bench query`: deterministic nginx-like data,
//! OpenMetrics export + `promtool tsdb create-blocks-from openmetrics`, a
//! Prometheus process (killed by PID on drop), and ngxprobe's API served
//! in-process over a real [`Store`].
//!
//! Sample timestamps are always `xx.317 s`: query times used with this data
//! are `xx.500 s` and steps/ranges/offsets whole seconds, so no sample and no
//! subquery point ever sits on a window edge. Prometheus 2.x closes range
//! selectors on the left (`[t-r, t]`) where 3.x — and ngxprobe — do not
//! (`(t-r, t]`); off-edge data makes both agree.
use std::{
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{QueryOptions, api::api_router, cli::http_get};
use crate::{
    series::{Labels, SeriesReader, SeriesWriter},
    store::Store,
};

pub use super::testing::{TempDir, TempStore};

/// Offset of every generated sample within its second (ms).
pub const SAMPLE_MS_OFFSET: i64 = 317;

pub struct GenSeries {
    pub labels: Labels,
    /// (timestamp ms as Prometheus will store it, value)
    pub samples: Vec<(i64, f64)>,
}

pub struct GenFamily {
    pub name: String,
    /// OpenMetrics type: counter, gauge, histogram.
    pub kind: &'static str,
    pub series: Vec<GenSeries>,
}

impl GenFamily {
    pub fn samples(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }
}

/// xorshift64*: deterministic, no dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in [0, 1) with 3 decimals (keeps OpenMetrics text exact).
    pub fn milli(&mut self) -> f64 {
        self.below(1000) as f64 / 1000.0
    }
}

/// `sec.317` as OpenMetrics text, and the ms timestamp Prometheus's
/// OpenMetrics parser derives from it (`int64(float64 seconds * 1000)`).
pub fn om_time(sec: i64) -> (String, i64) {
    let text = format!("{sec}.{SAMPLE_MS_OFFSET:03}");
    let f: f64 = text.parse().expect("float");
    (text, (f * 1000.0) as i64)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

/// Scrape times of one target: irregular (10..20 s apart) but deterministic,
/// whole seconds from `start_s` (the `.317` is added by [`om_time`]).
pub fn scrape_times(rng: &mut Rng, start_s: i64, n: usize, min_gap: i64, max_gap: i64) -> Vec<i64> {
    let mut t = start_s + rng.below(max_gap as u64) as i64;
    (0..n)
        .map(|_| {
            let cur = t;
            t += min_gap + rng.below((max_gap - min_gap + 1) as u64) as i64;
            cur
        })
        .collect()
}

pub const BUCKETS: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];

/// The differential data set: per target (instance, job), counters
/// `nginx_http_requests_total` (by status; one with a counter reset),
/// `nginx_connections_accepted_total`, gauges `nginx_connections_{active,
/// reading,writing,waiting}` and `nginx_up`, a float gauge, and the classic
/// histogram `nginx_http_request_duration_seconds`. `n` samples per series.
///
/// Counters start high, as on a long-running server, and the one reset goes
/// to 5000, not 0: Prometheus 2.x and 3.x differ in how `rate`/`increase`
/// extrapolate towards the start of a window when the counter would reach
/// zero before it (2.x applies the zero point before the "gap too large"
/// test, 3.x after); ngxprobe follows 3.x, so data where the zero point is
/// near would compare versions rather than engines.
pub fn nginx_dataset(start_s: i64, n: usize) -> Vec<GenFamily> {
    let targets = [
        ("10.0.0.1:9113", "nginx"),
        ("10.0.0.2:9113", "nginx"),
        ("10.0.0.3:9113", "nginx"),
        ("10.0.1.1:9113", "edge"),
    ];
    let mut rng = Rng::new(0x6e67_7870_726f_6265);
    let fam = |name: &str, kind: &'static str| GenFamily {
        name: name.into(),
        kind,
        series: vec![],
    };
    let mut req = fam("nginx_http_requests_total", "counter");
    let mut acc = fam("nginx_connections_accepted_total", "counter");
    let mut gauges: Vec<GenFamily> = [
        "nginx_connections_active",
        "nginx_connections_reading",
        "nginx_connections_writing",
        "nginx_connections_waiting",
        "nginx_up",
    ]
    .iter()
    .map(|n| fam(n, "gauge"))
    .collect();
    let mut upstream = fam("nginx_upstream_response_seconds", "gauge");
    let mut hist = fam("nginx_http_request_duration_seconds", "histogram");
    let bucket_le: Vec<f64> = BUCKETS
        .iter()
        .map(|b| {
            if *b == "+Inf" {
                f64::INFINITY
            } else {
                b.parse().unwrap()
            }
        })
        .collect();
    for (ti, (inst, job)) in targets.iter().enumerate() {
        let times: Vec<i64> = scrape_times(&mut rng, start_s, n, 10, 20)
            .into_iter()
            .map(|s| om_time(s).1)
            .collect();
        let base = [("instance", *inst), ("job", *job)];
        // Requests by status.
        for (si, status) in ["200", "404", "500"].iter().enumerate() {
            // Counters start where a long-running nginx would be (see
            // `nginx_dataset` on why not at 0).
            let mut v = (100_000 + rng.below(100_000) * 10) as f64 / (si as f64 + 1.0);
            let samples = times
                .iter()
                .enumerate()
                .map(|(k, &t)| {
                    // A restart of one target half way: counter reset.
                    if ti == 1 && si == 0 && k == n / 2 {
                        v = 5_000.0;
                    }
                    v += match si {
                        0 => 20 + rng.below(80),
                        1 => rng.below(6),
                        _ => u64::from(rng.below(10) == 0),
                    } as f64;
                    (t, v)
                })
                .collect();
            req.series.push(GenSeries {
                labels: labels(&[
                    base[0],
                    base[1],
                    ("__name__", "nginx_http_requests_total"),
                    ("status", status),
                ]),
                samples,
            });
        }
        let mut v = 50_000.0 + rng.below(10_000) as f64;
        let samples = times
            .iter()
            .map(|&t| {
                v += rng.below(30) as f64;
                (t, v)
            })
            .collect();
        acc.series.push(GenSeries {
            labels: labels(&[base[0], base[1], ("__name__", "nginx_connections_accepted_total")]),
            samples,
        });
        for g in gauges.iter_mut() {
            let up = g.name == "nginx_up";
            let mut x = rng.below(50) as i64;
            let samples = times
                .iter()
                .enumerate()
                .map(|(k, &t)| {
                    let val = if up {
                        // One target is down for a while.
                        f64::from(!(ti == 2 && (n / 3..n / 3 + 20).contains(&k)))
                    } else {
                        x = (x + rng.below(11) as i64 - 5).clamp(0, 100);
                        // Distinct per target: no ties for topk/bottomk/sort,
                        // whose tie order is unspecified.
                        x as f64 + ti as f64 / 4.0
                    };
                    (t, val)
                })
                .collect();
            let name = g.name.clone();
            g.series.push(GenSeries {
                labels: labels(&[base[0], base[1], ("__name__", &name)]),
                samples,
            });
        }
        let samples = times
            .iter()
            .map(|&t| (t, 0.01 + rng.milli() * 0.5 + ti as f64 * 0.1))
            .collect();
        upstream.series.push(GenSeries {
            labels: labels(&[base[0], base[1], ("__name__", "nginx_upstream_response_seconds")]),
            samples,
        });
        // Classic histogram: cumulative buckets, _sum, _count.
        let mut counts = vec![0.0f64; BUCKETS.len()];
        let mut sum = 0.0f64;
        let mut per_bucket: Vec<Vec<(i64, f64)>> = vec![vec![]; BUCKETS.len()];
        let mut sums = vec![];
        let mut cnts = vec![];
        // 200 unexported scrapes first: buckets are far from 0 like a
        // long-running server's.
        for (k, &t) in std::iter::repeat_n(&0, 200).chain(times.iter()).enumerate() {
            for _ in 0..rng.below(40) {
                // Latency skewed towards fast, 3 decimals.
                let lat = (rng.milli() * rng.milli() * 3.0 * 1000.0).round() / 1000.0;
                sum += lat;
                for (b, le) in bucket_le.iter().enumerate() {
                    if lat <= *le {
                        counts[b] += 1.0;
                    }
                }
            }
            // Round so the text form is short and exact both ways.
            sum = (sum * 1000.0).round() / 1000.0;
            if k < 200 {
                continue;
            }
            for b in 0..BUCKETS.len() {
                per_bucket[b].push((t, counts[b]));
            }
            sums.push((t, sum));
            cnts.push((t, counts[BUCKETS.len() - 1]));
        }
        let hn = "nginx_http_request_duration_seconds";
        for (b, le) in BUCKETS.iter().enumerate() {
            hist.series.push(GenSeries {
                labels: labels(&[base[0], base[1], ("__name__", &format!("{hn}_bucket")), ("le", le)]),
                samples: std::mem::take(&mut per_bucket[b]),
            });
        }
        hist.series.push(GenSeries {
            labels: labels(&[base[0], base[1], ("__name__", &format!("{hn}_sum"))]),
            samples: sums,
        });
        hist.series.push(GenSeries {
            labels: labels(&[base[0], base[1], ("__name__", &format!("{hn}_count"))]),
            samples: cnts,
        });
    }
    let mut out = vec![req, acc];
    out.extend(gauges);
    out.push(upstream);
    out.push(hist);
    out
}

/// Bench data: `n_series` counters `bench_requests_total{instance="iNNN",
/// group="gN"}` (10 groups), one sample every 15 s ± 2 s for `hours`.
pub fn bench_dataset(start_s: i64, hours: i64, n_series: usize) -> Vec<GenFamily> {
    let mut rng = Rng::new(0xbe9c_4a11);
    let mut f = GenFamily {
        name: "bench_requests_total".into(),
        kind: "counter",
        series: vec![],
    };
    let n = (hours * 3600 / 15) as usize;
    for i in 0..n_series {
        let times = scrape_times(&mut rng, start_s, n, 13, 17);
        let mut v = 0.0;
        let samples = times
            .into_iter()
            .map(|s| {
                v += rng.below(100) as f64;
                (om_time(s).1, v)
            })
            .collect();
        let inst = format!("i{i:03}");
        let group = format!("g{}", i % 10);
        f.series.push(GenSeries {
            labels: labels(&[
                ("__name__", "bench_requests_total"),
                ("instance", &inst),
                ("group", &group),
                ("job", "bench"),
            ]),
            samples,
        });
    }
    vec![f]
}

/// Value as OpenMetrics/Go parse it back exactly (Rust's shortest round-trip form).
fn om_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn om_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the families as OpenMetrics text (family by family, series by
/// series, samples in time order), ending in `# EOF`.
pub fn write_openmetrics(fams: &[GenFamily], path: &Path) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for f in fams {
        let fam_name = match f.kind {
            "counter" => f.name.strip_suffix("_total").unwrap_or(&f.name),
            _ => &f.name,
        };
        writeln!(w, "# TYPE {fam_name} {}", f.kind)?;
        for s in &f.series {
            let name = s.labels.name().unwrap_or("");
            let ls: Vec<String> = s
                .labels
                .0
                .iter()
                .filter(|(k, _)| k != "__name__")
                .map(|(k, v)| format!("{k}=\"{}\"", om_escape(v)))
                .collect();
            let head = format!("{name}{{{}}}", ls.join(","));
            for &(t, v) in &s.samples {
                writeln!(
                    w,
                    "{head} {} {}.{:03}",
                    om_value(v),
                    t.div_euclid(1000),
                    t.rem_euclid(1000)
                )?;
            }
        }
    }
    writeln!(w, "# EOF")?;
    w.flush()
}

/// Appends every sample to the store (in time order per series).
pub fn load_store(store: &Store, fams: &[GenFamily]) -> usize {
    let mut n = 0;
    for f in fams {
        for s in &f.series {
            for &(t, v) in &s.samples {
                store
                    .append(&s.labels, t, v)
                    .unwrap_or_else(|e| panic!("store refused {} @{t}: {e}", s.labels));
                n += 1;
            }
        }
    }
    store.flush();
    n
}

/// Where a Prometheus tool is: `$PROMETHEUS`/`$PROMTOOL`, /usr/bin, or PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let env = std::env::var_os(name.to_ascii_uppercase()).map(PathBuf::from);
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    env.into_iter()
        .chain(std::iter::once(PathBuf::from("/usr/bin").join(name)))
        .chain(path)
        .find(|p| p.is_file())
}

/// prometheus + promtool, or a failure telling how to install them.
pub fn require_prometheus() -> (PathBuf, PathBuf) {
    match (find_tool("prometheus"), find_tool("promtool")) {
        (Some(p), Some(t)) => (p, t),
        _ => panic!(
            "prometheus and promtool are needed for the Prometheus comparison but were not found \
             (looked at $PROMETHEUS/$PROMTOOL, /usr/bin, PATH): run `cargo xtask setup` (installs Debian's prometheus package)"
        ),
    }
}

/// `promtool tsdb create-blocks-from openmetrics FILE DIR`.
pub fn promtool_import(promtool: &Path, file: &Path, dir: &Path) -> Result<(), String> {
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(file)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", promtool.display()))?;
    if !out.status.success() {
        return Err(format!(
            "promtool tsdb create-blocks-from openmetrics failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A Prometheus server on 127.0.0.1, killed (by PID) and reaped on drop.
pub struct PromProcess {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Drop for PromProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl PromProcess {
    /// Starts Prometheus over `data` (with an empty scrape config written to
    /// `work`) and waits (deadline 60 s) until /-/ready answers 200.
    pub fn start(prometheus: &Path, data: &Path, work: &Path) -> Result<PromProcess, String> {
        let cfg = work.join("prometheus.yml");
        std::fs::write(&cfg, "global:\n  scrape_interval: 1m\nscrape_configs: []\n").map_err(|e| e.to_string())?;
        let mut last_err = String::new();
        for attempt in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = work.join(format!("prometheus-{attempt}.log"));
            let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            let child = Command::new(prometheus)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=100y")
                .stdin(Stdio::null())
                .stdout(logf.try_clone().map_err(|e| e.to_string())?)
                .stderr(logf)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", prometheus.display()))?;
            let mut p = PromProcess { child, addr, log };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(st)) = p.child.try_wait() {
                    last_err = format!("prometheus exited ({st}) before becoming ready:\n{}", tail(&p.log));
                    break;
                }
                if let Ok(body) = http_get(&p.addr, "/-/ready")
                    && body.contains("Ready")
                {
                    return Ok(p);
                }
                if Instant::now() > deadline {
                    return Err(format!("prometheus not ready after 60 s:\n{}", tail(&p.log)));
                }
                std::thread::sleep(Duration::from_millis(50)); // poll interval, bounded by the deadline
            }
        }
        Err(last_err)
    }
}

/// ngxprobe's `api_router` served on 127.0.0.1:0 from a thread with its own
/// tokio runtime; shut down and joined on drop.
pub struct ApiServer {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    pub fn start(reader: Arc<dyn SeriesReader>, opts: QueryOptions) -> ApiServer {
        let app = api_router(reader, opts);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let lis = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(lis.local_addr().expect("addr").to_string()).expect("send");
                axum::serve(lis, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("api server did not start");
        ApiServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET /api/v1/query or /api/v1/query_range with url-encoded parameters.
pub fn api_get(addr: &str, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value, String> {
    let q = serde_urlencoded::to_string(params).map_err(|e| e.to_string())?;
    let body = http_get(addr, &format!("{path}?{q}"))?;
    serde_json::from_str(&body).map_err(|e| format!("bad JSON from {addr}{path}: {e}: {body:.300}"))
}

/// Formats ms as the API's seconds parameter.
pub fn secs(t_ms: i64) -> String {
    format!("{}.{:03}", t_ms.div_euclid(1000), t_ms.rem_euclid(1000))
}

/// Everything a comparison needs: Prometheus with the data imported and
/// ngxprobe's store with the same samples, both serving the HTTP API.
pub struct Pair {
    pub prom: PromProcess,
    pub ours: ApiServer,
    pub samples: usize,
    pub series: usize,
    // Dropped last (after both servers).
    pub _store: Arc<TempStore>,
    pub _work: TempDir,
}

impl SeriesReader for TempStore {
    fn select(
        &self,
        m: &[crate::series::Matcher],
        a: i64,
        b: i64,
    ) -> Result<Vec<crate::series::SeriesData>, crate::series::ReadError> {
        self.store.select(m, a, b)
    }
    fn label_names(
        &self,
        m: &[crate::series::Matcher],
        a: i64,
        b: i64,
    ) -> Result<Vec<String>, crate::series::ReadError> {
        self.store.label_names(m, a, b)
    }
    fn label_values(
        &self,
        n: &str,
        m: &[crate::series::Matcher],
        a: i64,
        b: i64,
    ) -> Result<Vec<String>, crate::series::ReadError> {
        self.store.label_values(n, m, a, b)
    }
    fn metadata(&self, m: Option<&str>) -> Vec<(String, crate::series::MetricMeta)> {
        self.store.metadata(m)
    }
}

impl Pair {
    pub fn new(tag: &str, fams: &[GenFamily]) -> Pair {
        let (prometheus, promtool) = require_prometheus();
        let work = TempDir::new(tag);
        let om = work.0.join("data.om.txt");
        write_openmetrics(fams, &om).expect("write openmetrics");
        let data = work.0.join("prom-data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let t = Instant::now();
        promtool_import(&promtool, &om, &data).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("promtool import: {:.1?}", t.elapsed());
        let store = Arc::new(TempStore::new(tag));
        let t = Instant::now();
        let samples = load_store(&store.store, fams);
        eprintln!("ngxprobe store load: {samples} samples in {:.1?}", t.elapsed());
        let prom = PromProcess::start(&prometheus, &data, &work.0).unwrap_or_else(|e| panic!("{e}"));
        let ours = ApiServer::start(store.clone(), QueryOptions::default());
        let series = fams.iter().map(|f| f.series.len()).sum();
        Pair {
            prom,
            ours,
            samples,
            series,
            _store: store,
            _work: work,
        }
    }
}
