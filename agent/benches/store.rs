//! Store benchmark (`cargo xtask bench store`, or
//! `AYA_BUILD_SKIP=1 cargo bench -p ngxprobe --bench store`).
//!
//! Generates 24 h of 1 s samples of ~280 nginx-like series deterministically,
//! ingests them into the store (one thread), and writes the same data as
//! OpenMetrics for `promtool tsdb create-blocks-from openmetrics`; then prints
//! bytes/sample on disk for both, append throughput, time to read one series'
//! 24 h, and RSS growth per series. Criterion measures the micro-benchmarks
//! (append, chunk codec, 24 h read).
//!
//! Env: STORE_BENCH_HOURS (default 24), PROMTOOL (default promtool; "" skips),
//! STORE_BENCH_DETAIL (per-class table also per metric name),
//! STORE_BENCH_CLASSES_ONLY (only the per-class chunk table: codec iteration),
//! STORE_BENCH_DIR (default target/store-bench).
use criterion::Criterion;
use metrics::{Family, MetricType};
use ngxprobe::{metrics, series, store};
use series::{Labels, MatchOp, Matcher, ReadBudget, Selection, SeriesReader, SeriesWriter};
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use store::{StorageConfig, Store};

const T0: i64 = 1_700_000_000_000;

#[derive(Clone)]
enum Kind {
    /// Integer increments ~ N(rate, sd), value = total / div (div 100 gives
    /// CPU-seconds-like decimals).
    Counter { rate: f64, sd: f64, div: f64 },
    /// Float accumulation of random latencies (like a histogram `_sum`): full
    /// 53-bit mantissas, the worst case for any codec.
    FloatSum { rate: f64 },
    /// Small integer gauge doing a bounded random walk.
    Walk { max: i64, step: i64 },
    /// Rarely changing gauge (RSS in pages, open fds).
    Steppy { unit: f64, p: f64 },
    /// Noisy float gauge with 3 decimals (e.g. a latency in seconds).
    Noisy { mean: f64, sd: f64 },
}

#[derive(Clone)]
struct Gen {
    name: String,
    labels: Vec<(String, String)>,
    kind: Kind,
    rng: u64,
    acc: f64,
}

impl Gen {
    fn rnd(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f64 {
        // Irwin-Hall approximation: deterministic and cheap.
        (0..4).map(|_| self.rnd()).sum::<f64>() * 1.732_050_8 - 3.464_101_6
    }
    fn next(&mut self) -> f64 {
        match self.kind.clone() {
            Kind::Counter { rate, sd, div } => {
                let inc = (rate + sd * self.gauss()).round().max(0.0);
                self.acc += inc;
                self.acc / div
            }
            Kind::FloatSum { rate } => {
                let n = (rate + rate.sqrt() * self.gauss()).round().max(0.0) as usize;
                for _ in 0..n.min(8) {
                    let x = self.rnd() * 0.05 * (n as f64 / n.clamp(1, 8) as f64);
                    self.acc += x;
                }
                self.acc
            }
            Kind::Walk { max, step } => {
                let d = (self.rnd() * (2 * step + 1) as f64) as i64 - step;
                self.acc = (self.acc as i64 + d).clamp(0, max) as f64;
                self.acc
            }
            Kind::Steppy { unit, p } => {
                if self.rnd() < p {
                    self.acc += ((self.rnd() * 20.0) as i64 - 10) as f64 * unit;
                    self.acc = self.acc.max(0.0);
                }
                self.acc
            }
            Kind::Noisy { mean, sd } => ((mean + sd * self.gauss()).max(0.0) * 1000.0).round() / 1000.0,
        }
    }
}

fn gens() -> Vec<Gen> {
    let mut v = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut add = |name: &str, labels: &[(&str, String)], kind: Kind, init: f64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.push(Gen {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            kind,
            rng: seed | 1,
            acc: init,
        });
    };
    for w in 0..12 {
        let wl = ("worker", w.to_string());
        for (code, rate) in [
            ("200", 250.0),
            ("304", 30.0),
            ("404", 5.0),
            ("499", 0.5),
            ("500", 0.1),
            ("502", 0.02),
        ] {
            add(
                "nginx_http_requests_total",
                &[wl.clone(), ("code", code.into())],
                Kind::Counter {
                    rate,
                    sd: f64::sqrt(rate),
                    div: 1.0,
                },
                1e6 * rate,
            );
        }
        add(
            "nginx_http_response_bytes_total",
            std::slice::from_ref(&wl),
            Kind::Counter {
                rate: 1.2e6,
                sd: 2e5,
                div: 1.0,
            },
            5e12,
        );
        for (le, f) in [
            ("0.005", 0.2),
            ("0.01", 0.45),
            ("0.025", 0.7),
            ("0.05", 0.85),
            ("0.1", 0.93),
            ("0.25", 0.98),
            ("1", 0.999),
            ("+Inf", 1.0),
        ] {
            let rate = 290.0 * f;
            add(
                "nginx_http_request_duration_seconds_bucket",
                &[wl.clone(), ("le", le.into())],
                Kind::Counter {
                    rate,
                    sd: f64::sqrt(rate),
                    div: 1.0,
                },
                1e6 * f,
            );
        }
        add(
            "nginx_http_request_duration_seconds_count",
            std::slice::from_ref(&wl),
            Kind::Counter {
                rate: 290.0,
                sd: 17.0,
                div: 1.0,
            },
            1e6,
        );
        add(
            "nginx_http_request_duration_seconds_sum",
            std::slice::from_ref(&wl),
            Kind::FloatSum { rate: 290.0 },
            12345.678,
        );
        for (state, max) in [("active", 400), ("reading", 10), ("writing", 40), ("waiting", 350)] {
            add(
                "nginx_connections",
                &[wl.clone(), ("state", state.into())],
                Kind::Walk { max, step: 3 },
                max as f64 / 2.0,
            );
        }
    }
    for p in ["nginx-master", "nginx-worker-agg", "ngxprobe", "node"] {
        let pl = ("process", p.to_string());
        add(
            "process_cpu_seconds_total",
            std::slice::from_ref(&pl),
            Kind::Counter {
                rate: 30.0,
                sd: 5.0,
                div: 100.0,
            },
            123456.0,
        );
        add(
            "process_resident_memory_bytes",
            std::slice::from_ref(&pl),
            Kind::Steppy { unit: 4096.0, p: 0.02 },
            4096.0 * 12000.0,
        );
        add(
            "process_open_fds",
            std::slice::from_ref(&pl),
            Kind::Steppy { unit: 1.0, p: 0.005 },
            64.0,
        );
        add(
            "nginx_up",
            std::slice::from_ref(&pl),
            Kind::Steppy { unit: 0.0, p: 0.0 },
            1.0,
        );
        add(
            "ngxprobe_ebpf_program_runs_total",
            std::slice::from_ref(&pl),
            Kind::Counter {
                rate: 3000.0,
                sd: 200.0,
                div: 1.0,
            },
            1e9,
        );
        add(
            "nginx_upstream_latency_seconds",
            std::slice::from_ref(&pl),
            Kind::Noisy { mean: 0.025, sd: 0.01 },
            0.0,
        );
    }
    v
}

fn families(g: &mut [Gen]) -> Vec<Family> {
    let mut fams: Vec<Family> = Vec::new();
    for s in g.iter_mut() {
        let v = s.next();
        if fams.last().is_none_or(|f| f.name != s.name) {
            let kind = if s.name.ends_with("_total")
                || s.name.ends_with("_bucket")
                || s.name.ends_with("_count")
                || s.name.ends_with("_sum")
            {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            fams.push(Family::new(&s.name, "synthetic", kind));
        }
        if let Some(f) = fams.last_mut() {
            f.push_owned(s.labels.clone(), v);
        }
    }
    fams
}

/// Benchmark class of a generator, for the per-class breakdown.
fn class_of(k: &Kind) -> &'static str {
    match k {
        Kind::Counter { rate, .. } if *rate < 1.0 => "idle (counters < 1/s, flat/rare-step gauges)",
        Kind::Counter { sd, .. } if *sd > 1000.0 => "counter, bytes (±200 KB/s noise)",
        Kind::Counter { .. } => "counter, integer/decimal",
        Kind::FloatSum { .. } => "float (`_sum`, full mantissa)",
        Kind::Walk { .. } | Kind::Noisy { .. } => "gauge (random walk, noisy 3-decimal)",
        Kind::Steppy { .. } => "idle (counters < 1/s, flat/rare-step gauges)",
    }
}

/// Chunk bytes per class: every series' samples cut at 2 h block boundaries
/// and encoded exactly as the store persists them (one chunk per series per
/// block). Returns (class, series, samples, bytes), plus per metric name when
/// `detail` is set.
fn class_breakdown(g0: &[Gen], ticks: i64, detail: bool) -> Vec<(String, usize, u64, u64)> {
    let mut rows: Vec<(String, usize, u64, u64)> = Vec::new();
    let mut add = |key: String, n: u64, bytes: u64| match rows.iter_mut().find(|r| r.0 == key) {
        Some(r) => {
            r.1 += 1;
            r.2 += n;
            r.3 += bytes;
        }
        None => rows.push((key, 1, n, bytes)),
    };
    for g in g0 {
        let mut g = g.clone();
        let samples: Vec<(i64, f64)> = (0..ticks).map(|k| (T0 + k * 1000, g.next())).collect();
        let bytes: u64 = samples
            .chunk_by(|a, b| a.0.div_euclid(store::BLOCK_MS) == b.0.div_euclid(store::BLOCK_MS))
            .map(|c| store::chunk::encode(c).len() as u64)
            .sum();
        add(class_of(&g.kind).to_string(), samples.len() as u64, bytes);
        if detail {
            let key = match &g.kind {
                Kind::Counter { rate, .. } => format!("  {} (rate {rate})", g.name),
                _ => format!("  {}", g.name),
            };
            add(key, samples.len() as u64, bytes);
        }
    }
    rows.sort_by_key(|r| r.0.starts_with(' '));
    rows
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_size(p: &Path, only: &dyn Fn(&Path) -> bool) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => dir_size(&path, only),
                Ok(m) if only(&path) => m.len(),
                _ => 0,
            }
        })
        .sum()
}

fn write_openmetrics(path: &Path, g0: &[Gen], ticks: i64) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for g in g0 {
        let mut g = g.clone();
        let lbl: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let prefix = format!("{}{{{}}} ", g.name, lbl.join(","));
        for k in 0..ticks {
            let v = g.next();
            writeln!(w, "{prefix}{v} {}", (T0 + k * 1000) / 1000)?;
        }
    }
    writeln!(w, "# EOF")?;
    w.flush()
}

struct Figures {
    samples: u64,
    series: usize,
    ngx_bytes: u64,
    ngx_chunk_bytes: u64,
    ingest: Duration,
    rss_per_series_kib: f64,
    head_bytes_per_series: f64,
}

fn run_ingest(dir: &Path, g0: &[Gen], ticks: i64) -> Figures {
    let _ = std::fs::remove_dir_all(dir);
    let rss0 = rss_kib();
    let cfg = StorageConfig {
        path: dir.to_path_buf(),
        ..StorageConfig::default()
    };
    let store = Store::open(&cfg).expect("open store");
    let mut g = g0.to_vec();
    let mut busy = Duration::ZERO;
    let mut samples = 0u64;
    let mut rss_peak = 0;
    for k in 0..ticks {
        let fams = families(&mut g);
        let t = Instant::now();
        let r = store.ingest(&fams, T0 + k * 1000);
        busy += t.elapsed();
        samples += r.appended;
        if k % 600 == 0 {
            rss_peak = rss_peak.max(rss_kib());
        }
    }
    let head_bytes = store
        .self_families()
        .iter()
        .find(|f| f.name == "ngxprobe_store_head_bytes")
        .map_or(0.0, |f| f.samples[0].value);
    let t = Instant::now();
    store.close().expect("close");
    busy += t.elapsed();
    let ngx_bytes = dir_size(dir, &|p| !p.ends_with("LOCK"));
    Figures {
        samples,
        series: g0.len(),
        ngx_bytes,
        ngx_chunk_bytes: 0,
        ingest: busy,
        rss_per_series_kib: rss_peak.saturating_sub(rss0) as f64 / g0.len() as f64,
        head_bytes_per_series: head_bytes / g0.len() as f64,
    }
}

fn promtool(bin: &str, om: &Path, out: &Path, extra: &[&str]) -> Option<(u64, u64, u64, Duration)> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).ok()?;
    let t = Instant::now();
    let st = Command::new(bin)
        .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
        .args(extra)
        .arg(om)
        .arg(out)
        .status()
        .ok()?;
    let took = t.elapsed();
    if !st.success() {
        eprintln!("promtool {extra:?} failed: {st}");
        return None;
    }
    let total = dir_size(out, &|_| true);
    let chunks = dir_size(out, &|p| p.parent().is_some_and(|d| d.ends_with("chunks")));
    let index = dir_size(out, &|p| p.ends_with("index"));
    Some((total, chunks, index, took))
}

fn print_classes(g0: &[Gen], ticks: i64) {
    let detail = std::env::var_os("STORE_BENCH_DETAIL").is_some();
    let t = Instant::now();
    let rows = class_breakdown(g0, ticks, detail);
    let enc_took = t.elapsed();
    let (all_n, all_b) = rows
        .iter()
        .filter(|r| !r.0.starts_with(' '))
        .fold((0, 0), |a, r| (a.0 + r.2, a.1 + r.3));
    println!(
        "Chunk bytes by class (each series re-encoded per 2 h block as persisted; {:.1} M samples/s encode):",
        all_n as f64 / enc_took.as_secs_f64() / 1e6
    );
    println!();
    println!("| class | series | bytes/sample | bits/sample | share of chunk bytes |");
    println!("|---|---|---|---|---|");
    for (class, series, n, bytes) in &rows {
        println!(
            "| {class} | {series} | {:.3} | {:.2} | {:.1} % |",
            *bytes as f64 / *n as f64,
            *bytes as f64 * 8.0 / *n as f64,
            *bytes as f64 * 100.0 / all_b.max(1) as f64
        );
    }
    println!(
        "| all | {} | {:.3} | {:.2} | 100 % |",
        g0.len(),
        all_b as f64 / all_n.max(1) as f64,
        all_b as f64 * 8.0 / all_n.max(1) as f64
    );
    println!();
}

fn main() {
    let hours: i64 = std::env::var("STORE_BENCH_HOURS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let ticks = hours * 3600;
    let base = std::env::var("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/store-bench"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let g0 = gens();
    let dir = base.join("ngxprobe");
    if std::env::var_os("STORE_BENCH_CLASSES_ONLY").is_some() {
        // Codec iteration: the per-class table only, no ingest/promtool/criterion.
        print_classes(&g0, ticks);
        return;
    }

    eprintln!("store bench: {} series x {ticks} s ...", g0.len());
    let mut f = run_ingest(&dir, &g0, ticks);
    let appends_per_s = f.samples as f64 / f.ingest.as_secs_f64();

    // One-shot 24 h read of one busy series (also measured by criterion below).
    let store = Store::open(&StorageConfig {
        path: dir.clone(),
        ..StorageConfig::default()
    })
    .expect("reopen");
    // Chunk payload after close (everything persisted), from the store's own metric.
    f.ngx_chunk_bytes = store
        .self_families()
        .iter()
        .find(|f| f.name == "ngxprobe_store_bytes")
        .map_or(0.0, |f| {
            f.samples
                .iter()
                .find(|s| s.labels.iter().any(|(_, v)| v == "chunks"))
                .map_or(0.0, |s| s.value)
        }) as u64;
    let sel = [
        Matcher::new(MatchOp::Equal, "__name__", "nginx_http_requests_total").unwrap(),
        Matcher::new(MatchOp::Equal, "worker", "3").unwrap(),
        Matcher::new(MatchOp::Equal, "code", "200").unwrap(),
    ];
    let t = Instant::now();
    let got = store
        .select(&Selection::new(&sel, i64::MIN, i64::MAX, &ReadBudget::unlimited()))
        .expect("select");
    let read_once = t.elapsed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].samples.len() as i64, ticks, "all samples read back");

    // Prometheus on the same data.
    let prom = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut prom_rows = Vec::new();
    if !prom.is_empty() {
        let om = base.join("data.om");
        eprintln!("writing OpenMetrics for promtool ...");
        write_openmetrics(&om, &g0, ticks).expect("write openmetrics");
        for (label, extra) in [
            ("2h blocks (promtool default)", vec![]),
            ("24h block", vec!["--max-block-duration=24h"]),
        ] {
            if let Some(r) = promtool(&prom, &om, &base.join(format!("prom-{}", extra.len())), &extra) {
                prom_rows.push((label, r));
            }
        }
        let _ = std::fs::remove_file(&om);
    }

    let n = f.samples as f64;
    println!();
    println!(
        "## Store benchmark: {} series, {hours} h of 1 s samples, {} samples",
        f.series, f.samples
    );
    println!();
    println!("| | ngxprobe | Prometheus 2.42 (promtool) |");
    println!("|---|---|---|");
    for (label, (total, chunks, index, took)) in &prom_rows {
        println!(
            "| bytes/sample on disk, Prometheus {label} | {:.3} (data dir total; chunk payload {:.3}) | {:.3} (chunks {:.3}, index {:.3}; built in {:.1} s) |",
            f.ngx_bytes as f64 / n,
            f.ngx_chunk_bytes as f64 / n,
            *total as f64 / n,
            *chunks as f64 / n,
            *index as f64 / n,
            took.as_secs_f64()
        );
    }
    if prom_rows.is_empty() {
        println!(
            "| bytes/sample on disk | {:.3} (chunk data {:.3}) | (promtool not run) |",
            f.ngx_bytes as f64 / n,
            f.ngx_chunk_bytes as f64 / n
        );
    }
    println!(
        "| append throughput, 1 thread, full ingest incl. WAL + block writes | {:.2} M samples/s | |",
        appends_per_s / 1e6
    );
    println!(
        "| read one series' {hours} h ({ticks} samples), first read after reopen | {:.2} ms | |",
        read_once.as_secs_f64() * 1e3
    );
    println!(
        "| RSS growth per active series (peak during ingest) | {:.1} KiB (head chunks {:.1} KiB) | |",
        f.rss_per_series_kib,
        f.head_bytes_per_series / 1024.0
    );
    println!();
    print_classes(&g0, ticks);

    // Criterion micro-benchmarks.
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    c.bench_function(&format!("read one series {hours}h"), |b| {
        b.iter(|| {
            black_box(
                store
                    .select(&Selection::new(&sel, i64::MIN, i64::MAX, &ReadBudget::unlimited()))
                    .unwrap(),
            )
        })
    });
    drop(store);

    let samples: Vec<(i64, f64)> = {
        let mut g = g0[0].clone();
        (0..7200).map(|k| (T0 + k * 1000, g.next())).collect()
    };
    let enc = store::chunk::encode(&samples);
    c.bench_function("chunk encode 7200 counter samples", |b| {
        b.iter(|| black_box(store::chunk::encode(black_box(&samples))))
    });
    c.bench_function("chunk decode 7200 counter samples", |b| {
        b.iter(|| black_box(store::chunk::decode(black_box(&enc)).unwrap()))
    });

    // Raw SeriesWriter::append throughput: 300 series, ticks in order.
    let adir = base.join("append");
    c.bench_function("append 300 series x 100 ticks", |b| {
        b.iter_custom(|iters| {
            let _ = std::fs::remove_dir_all(&adir);
            let s = Store::open(&StorageConfig {
                path: adir.clone(),
                ..StorageConfig::default()
            })
            .unwrap();
            let labels: Vec<Labels> = (0..300)
                .map(|i| {
                    Labels::new([
                        ("__name__".to_string(), "m".to_string()),
                        ("i".to_string(), i.to_string()),
                    ])
                })
                .collect();
            let t = Instant::now();
            let mut k = 0i64;
            for _ in 0..iters {
                for _ in 0..100 {
                    k += 1;
                    for (i, l) in labels.iter().enumerate() {
                        let _ = s.append(l, T0 + k * 1000, (k * (i as i64 + 1)) as f64);
                    }
                }
            }
            let el = t.elapsed();
            drop(s);
            el
        })
    });
    let _ = std::fs::remove_dir_all(&adir);
    c.final_summary();
    println!("(criterion 'append 300 series x 100 ticks' time / 30000 = time per append)");
}
