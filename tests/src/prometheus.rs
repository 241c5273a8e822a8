//! Debian's Prometheus (2.42) and promtool as processes, the reference for
//! comparisons with ngxprobe: find the tools, write OpenMetrics text, import
//! it into TSDB blocks (`promtool tsdb create-blocks-from openmetrics`), run a
//! private Prometheus on loopback (killed by PID on drop) over those blocks or
//! with any config, and query its HTTP API.
//!
//! Deterministic data comes with it ([`Rng`], [`scrape_times`], [`om_time`]).
//! Generated sample timestamps are always `xx.317 s`: query times used with
//! such data are `xx.500 s` and steps/ranges/offsets whole seconds, so no
//! sample and no subquery point ever sits on a window edge. Prometheus 2.x
//! closes range selectors on the left (`[t-r, t]`) where 3.x — and ngxprobe —
//! do not (`(t-r, t]`); off-edge data makes both agree.
use crate::agent::url_encode;
use crate::clients::http_get;
use crate::util::{self, ChildGuard, Poll, TempDir, poll};
use anyhow::{Context, Result, bail};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Deterministic data

/// Offset of every generated sample within its second (ms).
pub const SAMPLE_MS_OFFSET: i64 = 317;

/// xorshift64*: deterministic, no dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
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
    let f: f64 = text.parse().expect("a formatted float parses");
    (text, (f * 1000.0) as i64)
}

/// Scrape times of one target: irregular (`min_gap..=max_gap` s apart) but
/// deterministic, whole seconds from `start_s` (the `.317` is added by
/// [`om_time`]).
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

/// Formats ms as the HTTP API's seconds parameter (`1700000000.500`).
pub fn secs(t_ms: i64) -> String {
    format!("{}.{:03}", t_ms.div_euclid(1000), t_ms.rem_euclid(1000))
}

/// One series: its labels (`__name__` included) and samples in time order.
#[derive(Clone, Debug, Default)]
pub struct OmSeries {
    pub labels: Vec<(String, String)>,
    /// (timestamp ms as Prometheus will store it, value)
    pub samples: Vec<(i64, f64)>,
}

impl OmSeries {
    /// The `__name__` label.
    pub fn name(&self) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == "__name__")
            .map(|(_, v)| v.as_str())
    }
}

/// One metric family in OpenMetrics terms.
#[derive(Clone, Debug)]
pub struct OmFamily {
    pub name: String,
    /// OpenMetrics type: counter, gauge, histogram.
    pub kind: &'static str,
    pub series: Vec<OmSeries>,
}

impl OmFamily {
    /// Samples of all its series.
    pub fn samples(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }
}

/// A value as OpenMetrics/Go parse it back exactly (Rust's shortest round-trip form).
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
pub fn write_openmetrics(fams: &[OmFamily], path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for f in fams {
        let fam_name = match f.kind {
            "counter" => f.name.strip_suffix("_total").unwrap_or(&f.name),
            _ => &f.name,
        };
        writeln!(w, "# TYPE {fam_name} {}", f.kind)?;
        for s in &f.series {
            let ls: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "__name__")
                .map(|(k, v)| format!("{k}=\"{}\"", om_escape(v)))
                .collect();
            let head = format!("{}{{{}}}", s.name().unwrap_or(""), ls.join(","));
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
    w.flush().with_context(|| format!("write {}", path.display()))
}

// ---------------------------------------------------------------------------
// Tools

/// Where a Prometheus tool is: `$PROMETHEUS`/`$PROMTOOL` (the name in upper
/// case), /usr/bin, or PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let env = std::env::var_os(name.to_ascii_uppercase()).map(PathBuf::from);
    env.into_iter()
        .chain(std::iter::once(PathBuf::from("/usr/bin").join(name)))
        .find(|p| p.is_file())
        .or_else(|| util::find_executable(name))
}

/// (prometheus, promtool), or an error telling how to install them.
pub fn require_tools() -> Result<(PathBuf, PathBuf)> {
    match (find_tool("prometheus"), find_tool("promtool")) {
        (Some(p), Some(t)) => Ok((p, t)),
        _ => bail!(
            "prometheus and promtool are needed for the Prometheus comparison but were not found \
             (looked at $PROMETHEUS/$PROMTOOL, /usr/bin, PATH): run `cargo xtask setup` (installs Debian's prometheus package)"
        ),
    }
}

/// `promtool tsdb create-blocks-from openmetrics FILE DIR`.
pub fn promtool_import(promtool: &Path, file: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(file)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", promtool.display()))?;
    if !out.status.success() {
        bail!(
            "promtool tsdb create-blocks-from openmetrics failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The server

/// How to start a [`Prometheus`].
#[derive(Clone, Debug, Default)]
pub struct PrometheusOptions {
    /// Binary (default: [`find_tool`]`("prometheus")`).
    pub bin: Option<PathBuf>,
    /// prometheus.yml (default: no scrape configs, `scrape_interval: 1m`).
    pub config: Option<String>,
    /// `--storage.tsdb.path` (default: `data/` in the server's temp dir).
    pub data: Option<PathBuf>,
    /// More arguments, after the others.
    pub extra_args: Vec<String>,
    /// Port on 127.0.0.1 (default: a free one): a restarted server keeps
    /// the address its clients were given.
    pub port: Option<u16>,
}

/// A Prometheus server on 127.0.0.1 with its config and log in a temp dir;
/// killed (by PID) and reaped on drop.
pub struct Prometheus {
    // Field order = drop order: the process goes before its directory.
    child: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
    dir: TempDir,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Prometheus {
    /// Starts Prometheus on a free port and waits (bounded, 60 s) until
    /// `/-/ready` answers 200. If it exits first (e.g. its port was taken
    /// meanwhile) it is started again on a new port, up to 3 times.
    pub fn start(opts: &PrometheusOptions) -> Result<Prometheus> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => find_tool("prometheus").context("prometheus not found (run `cargo xtask setup`)")?,
        };
        let mut dir = TempDir::new("prometheus")?;
        let cfg = dir.path().join("prometheus.yml");
        let config = opts
            .config
            .as_deref()
            .unwrap_or("global:\n  scrape_interval: 1m\nscrape_configs: []\n");
        std::fs::write(&cfg, config)?;
        let data = opts.data.clone().unwrap_or_else(|| dir.path().join("data"));
        let mut last_err = None;
        for attempt in 0..3 {
            let port = match opts.port {
                Some(p) => p,
                None => util::free_port()?,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let logf = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .args(&opts.extra_args)
                .stdin(Stdio::null())
                .stdout(logf.try_clone()?)
                .stderr(logf);
            let child = ChildGuard::spawn(&mut cmd, "prometheus")?;
            let mut p = Prometheus { child, addr, log, dir };
            match p.wait_ready() {
                Ok(()) => return Ok(p),
                Err(e) => {
                    let exited = p.child.try_wait().ok().flatten().is_some();
                    let e = e.context(format!("prometheus log:\n{}", p.log_tail(15)));
                    if !exited {
                        return Err(e);
                    }
                    last_err = Some(e);
                    dir = p.into_dir();
                }
            }
        }
        Err(last_err.expect("three attempts"))
    }

    /// Serves TSDB blocks made by [`promtool_import`] in `data` (retention
    /// 100 years, so old test data stays; no scraping).
    pub fn serve_blocks(bin: &Path, data: &Path) -> Result<Prometheus> {
        Self::start(&PrometheusOptions {
            bin: Some(bin.to_path_buf()),
            data: Some(data.to_path_buf()),
            extra_args: vec!["--storage.tsdb.retention.time=100y".into()],
            ..Default::default()
        })
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr = self.addr;
        poll(
            "prometheus GET /-/ready == 200",
            READY_TIMEOUT,
            Duration::from_millis(50),
            || {
                if let Some(st) = self.child.try_wait()? {
                    bail!("prometheus exited ({st}) before becoming ready");
                }
                let (status, _) = http_get(addr, "/-/ready")?;
                Ok(if status == 200 {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("status {status}"))
                })
            },
        )
    }

    /// Stops the process and gives back the directory (for another attempt).
    fn into_dir(self) -> TempDir {
        let Prometheus { mut child, dir, .. } = self;
        child.stop(libc::SIGKILL, Duration::from_secs(5));
        dir
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// `Some(status)` if Prometheus has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The server's own directory (config, log, default data dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, n: usize) -> String {
        util::tail(&self.log, n)
    }

    /// [`api_get`] on this server.
    pub fn api_get(&self, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value> {
        api_get(self.addr, path, params)
    }
}

/// `path?k=v&...` with keys and values percent-encoded.
pub fn api_path(path: &str, params: &[(&str, String)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// `GET path?params` (url-encoded) on a Prometheus-compatible HTTP API
/// (Prometheus, ngxprobe) → the JSON answer, whatever the HTTP status (error
/// answers are JSON too: `{"status":"error","errorType":...}`).
pub fn api_get(addr: SocketAddr, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value> {
    let (status, body) = http_get(addr, &api_path(path, params))?;
    let text = String::from_utf8_lossy(&body);
    serde_json::from_str(&text).with_context(|| {
        let end = text.floor_char_boundary(300);
        format!("GET http://{addr}{path}: status {status}, not JSON: {}", &text[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_off_edge_and_formatted() {
        assert_eq!(
            om_time(1_700_000_000),
            ("1700000000.317".to_string(), 1_700_000_000_317)
        );
        assert_eq!(secs(1_700_000_000_500), "1700000000.500");
        assert_eq!(secs(-1), "-1.999");
        assert_eq!(
            api_path(
                "/api/v1/query",
                &[("query", "rate(x[1m])".into()), ("time", "1.5".into())]
            ),
            "/api/v1/query?query=rate%28x%5B1m%5D%29&time=1.5"
        );
        assert_eq!(api_path("/-/ready", &[]), "/-/ready");
        let mut rng = Rng::new(7);
        let t = scrape_times(&mut rng, 1000, 50, 10, 20);
        assert!(t[0] >= 1000 && t[0] < 1020);
        assert!(t.windows(2).all(|w| (10..=20).contains(&(w[1] - w[0]))));
        assert_eq!(t, scrape_times(&mut Rng::new(7), 1000, 50, 10, 20), "deterministic");
    }

    #[test]
    fn writes_openmetrics() {
        let dir = TempDir::new("om").unwrap();
        let path = dir.path().join("x.om.txt");
        let fams = vec![OmFamily {
            name: "req_total".into(),
            kind: "counter",
            series: vec![OmSeries {
                labels: vec![
                    ("__name__".into(), "req_total".into()),
                    ("path".into(), "a\"b\\c\nd".into()),
                ],
                samples: vec![(1_000_317, 1.5), (1_015_317, f64::INFINITY)],
            }],
        }];
        assert_eq!(fams[0].samples(), 2);
        write_openmetrics(&fams, &path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# TYPE req counter\nreq_total{path=\"a\\\"b\\\\c\\nd\"} 1.5 1000.317\n\
             req_total{path=\"a\\\"b\\\\c\\nd\"} +Inf 1015.317\n# EOF\n"
        );
    }
}
