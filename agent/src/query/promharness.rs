//! The ngxprobe side of the comparisons with a real Prometheus (the
//! differential test): deterministic nginx-like data, ngxprobe's store
//! loaded with it, and ngxprobe's API served in-process over that store.
//! The Prometheus side (promtool import, the Prometheus process, API GETs,
//! the off-edge `xx.317 s` timestamps) is the e2e harness's
//! [`ngxprobe_e2e::prometheus`].
use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use ngxprobe_e2e::prometheus::{
    OmFamily, OmSeries, Prometheus, Rng, om_time, promtool_import, require_tools, scrape_times, write_openmetrics,
};

use super::{QueryOptions, api::api_router};
use crate::{
    series::{Labels, ReadError, Selection, SeriesData, SeriesReader, SeriesWriter},
    store::Store,
};

pub use super::testing::{TempDir, TempStore};

/// A label list sorted by name (as a [`Labels`] would be).
fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.sort();
    v
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
pub fn nginx_dataset(start_s: i64, n: usize) -> Vec<OmFamily> {
    let targets = [
        ("10.0.0.1:9113", "nginx"),
        ("10.0.0.2:9113", "nginx"),
        ("10.0.0.3:9113", "nginx"),
        ("10.0.1.1:9113", "edge"),
    ];
    let mut rng = Rng::new(0x6e67_7870_726f_6265);
    let fam = |name: &str, kind: &'static str| OmFamily {
        name: name.into(),
        kind,
        series: vec![],
    };
    let mut req = fam("nginx_http_requests_total", "counter");
    let mut acc = fam("nginx_connections_accepted_total", "counter");
    let mut gauges: Vec<OmFamily> = [
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
            req.series.push(OmSeries {
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
        acc.series.push(OmSeries {
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
            g.series.push(OmSeries {
                labels: labels(&[base[0], base[1], ("__name__", &name)]),
                samples,
            });
        }
        let samples = times
            .iter()
            .map(|&t| (t, 0.01 + rng.milli() * 0.5 + ti as f64 * 0.1))
            .collect();
        upstream.series.push(OmSeries {
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
            hist.series.push(OmSeries {
                labels: labels(&[base[0], base[1], ("__name__", &format!("{hn}_bucket")), ("le", le)]),
                samples: std::mem::take(&mut per_bucket[b]),
            });
        }
        hist.series.push(OmSeries {
            labels: labels(&[base[0], base[1], ("__name__", &format!("{hn}_sum"))]),
            samples: sums,
        });
        hist.series.push(OmSeries {
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

/// Appends every sample to the store (in time order per series).
pub fn load_store(store: &Store, fams: &[OmFamily]) -> usize {
    let mut n = 0;
    for f in fams {
        for s in &f.series {
            let labels = Labels::new(s.labels.iter().cloned());
            for &(t, v) in &s.samples {
                store
                    .append(&labels, t, v)
                    .unwrap_or_else(|e| panic!("store refused {labels} @{t}: {e}"));
                n += 1;
            }
        }
    }
    store.flush();
    n
}

/// ngxprobe's `api_router` served on 127.0.0.1:0 from a thread with its own
/// tokio runtime; shut down and joined on drop.
pub struct ApiServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    pub fn start(reader: Arc<dyn SeriesReader>, opts: QueryOptions) -> ApiServer {
        Self::serve(api_router(reader, opts), 2)
    }

    /// Serves `app` on a runtime with `workers` async worker threads.
    pub fn serve(app: axum::Router, workers: usize) -> ApiServer {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let lis = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(lis.local_addr().expect("addr")).expect("send");
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

/// Everything a comparison needs: Prometheus with the data imported and
/// ngxprobe's store with the same samples, both serving the HTTP API.
pub struct Pair {
    pub prom: Prometheus,
    pub ours: ApiServer,
    pub samples: usize,
    pub series: usize,
    // Dropped last (after both servers).
    pub _store: Arc<TempStore>,
    pub _work: TempDir,
}

impl SeriesReader for TempStore {
    fn select(&self, sel: &Selection) -> Result<Vec<SeriesData>, ReadError> {
        self.store.select(sel)
    }
    fn series(&self, sel: &Selection) -> Result<Vec<Labels>, ReadError> {
        self.store.series(sel)
    }
    fn metadata(&self, m: Option<&str>) -> Vec<(String, crate::series::MetricMeta)> {
        self.store.metadata(m)
    }
}

impl Pair {
    pub fn new(tag: &str, fams: &[OmFamily]) -> Pair {
        let (prometheus, promtool) = require_tools().unwrap_or_else(|e| panic!("{e:#}"));
        let work = TempDir::new(tag);
        let om = work.0.join("data.om.txt");
        write_openmetrics(fams, &om).expect("write openmetrics");
        let data = work.0.join("prom-data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let t = Instant::now();
        promtool_import(&promtool, &om, &data).unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("promtool import: {:.1?}", t.elapsed());
        let store = Arc::new(TempStore::new(tag));
        let t = Instant::now();
        let samples = load_store(&store.store, fams);
        eprintln!("ngxprobe store load: {samples} samples in {:.1?}", t.elapsed());
        let prom = Prometheus::serve_blocks(&prometheus, &data).unwrap_or_else(|e| panic!("{e:#}"));
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
