//! Results of `bench overhead` and the report made of them: medians over
//! rounds, per-round ratios and differences, each figure next to its goal.
//! Pure functions over the collected numbers (unit-tested below).
use super::workloads::Workload;
use crate::util::median;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What runs while a workload is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Mode {
    /// No agent.
    A,
    /// The agent with per-request RED off (`per_request.enabled: false`).
    B,
    /// The agent with per-request RED on (`per_request.enabled: true`).
    R,
    /// The floor: the agent with empty programs on the same tracepoints
    /// (NGXPROBE_EBPF_FLOOR=1) and RED off (no uprobe).
    F,
}

impl Mode {
    pub fn has_agent(self) -> bool {
        self != Mode::A
    }
}

/// eBPF run time of one stats-on run, per request nginx served.
#[derive(Clone, Debug, Default)]
pub struct EbpfRun {
    /// hook (program name without `ngx_`/`floor_`) → ns per request.
    pub ns: BTreeMap<String, f64>,
    /// hook → runs per request.
    pub runs: BTreeMap<String, f64>,
}

impl EbpfRun {
    pub fn ns_total(&self) -> f64 {
        self.ns.values().sum()
    }
    pub fn runs_total(&self) -> f64 {
        self.runs.values().sum()
    }
}

/// The hook a program runs on: real (`ngx_recv`) and floor (`floor_recv`)
/// programs of one hook get the same name, so B, R and F line up.
pub fn hook_of(program: &str) -> String {
    program
        .strip_prefix("ngx_")
        .or_else(|| program.strip_prefix("floor_"))
        .unwrap_or(program)
        .to_string()
}

/// One mode's measurement of one workload in one round.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Requests nginx served in the CPU run (stub_status delta, its own
    /// request excluded).
    pub requests: f64,
    /// Requests the client completed in the CPU run.
    pub client_requests: f64,
    pub rps: f64,
    pub errors: u64,
    /// nginx worker CPU (on-CPU time from /proc/PID/schedstat) per request,
    /// bpf_stats off.
    pub worker_us_per_req: f64,
    /// The stats-on run (agent modes, unless --no-bpf-stats).
    pub ebpf: Option<EbpfRun>,
    pub agent_cpu_pct: Option<f64>,
    pub agent_rss_kib: Option<u64>,
    /// The parts of the peak: anonymous (heap, stacks), file (the binary's
    /// and libraries' pages, the BPF ring buffer's mapping), shmem.
    pub agent_rss: Option<crate::util::Rss>,
    /// The agent's nginx_http_requests_total delta / stub_status's.
    pub agent_vs_stub: Option<f64>,
    /// R: the agent reports the request uprobe attached to this nginx.
    pub uprobe_attached: Option<bool>,
}

/// The non-nginx probes of one round.
#[derive(Clone, Copy, Debug, Default)]
pub struct OtherRun {
    /// CPU seconds of `dd bs=1`.
    pub dd_s: f64,
    /// CPU µs (both sides) per ping-pong round trip.
    pub ping_pong_us: f64,
}

#[derive(Default)]
pub struct Results {
    /// (workload, mode) → one run per round, in round order.
    pub runs: BTreeMap<(Workload, Mode), Vec<Run>>,
    /// mode → one run per round.
    pub other: BTreeMap<Mode, Vec<OtherRun>>,
}

impl Results {
    fn get(&self, w: Workload, m: Mode) -> &[Run] {
        self.runs.get(&(w, m)).map_or(&[][..], Vec::as_slice)
    }

    fn col(&self, w: Workload, m: Mode, f: impl Fn(&Run) -> Option<f64>) -> Vec<f64> {
        self.get(w, m).iter().map(|r| f(r).unwrap_or(f64::NAN)).collect()
    }

    fn cpu(&self, w: Workload, m: Mode) -> Vec<f64> {
        self.col(w, m, |r| Some(r.worker_us_per_req))
    }

    fn ebpf_ns(&self, w: Workload, m: Mode) -> Vec<f64> {
        self.col(w, m, |r| r.ebpf.as_ref().map(EbpfRun::ns_total))
    }

    fn ebpf_runs(&self, w: Workload, m: Mode) -> Vec<f64> {
        self.col(w, m, |r| r.ebpf.as_ref().map(EbpfRun::runs_total))
    }

    fn other_col(&self, m: Mode, f: impl Fn(&OtherRun) -> f64) -> Vec<f64> {
        self.other.get(&m).map_or_else(Vec::new, |v| v.iter().map(f).collect())
    }

    /// Median of per-round nginx CPU ratios `num`/`den`.
    pub fn cpu_ratio(&self, w: Workload, num: Mode, den: Mode) -> f64 {
        ratio_median(&self.cpu(w, den), &self.cpu(w, num))
    }

    /// Median of per-round eBPF ns/request differences `m` − F: the program bodies.
    pub fn body_ns(&self, w: Workload, m: Mode) -> f64 {
        diff_median(&self.ebpf_ns(w, Mode::F), &self.ebpf_ns(w, m))
    }

    /// Highest median agent CPU % and peak RSS (MiB) over the workloads, in B and R.
    fn agent_peaks(&self) -> (f64, f64) {
        let mut cpu = f64::NAN;
        let mut rss = f64::NAN;
        for (&(w, m), _) in self.runs.iter().filter(|((_, m), _)| matches!(m, Mode::B | Mode::R)) {
            cpu = cpu.max(median(&self.col(w, m, |r| r.agent_cpu_pct)));
            rss = rss.max(median(&self.col(w, m, |r| r.agent_rss_kib.map(|k| k as f64 / 1024.0))));
        }
        (cpu, rss)
    }
}

/// Median of per-round ratios b/a (round i of b against round i of a).
pub fn ratio_median(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
    median(&ratios)
}

/// Median of per-round differences b − a.
pub fn diff_median(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| b - a).collect();
    median(&d)
}

pub fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".into()
    }
}

/// A figure and its goal (at most `limit`).
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub workload: &'static str,
    pub figure: &'static str,
    pub value: f64,
    pub limit: f64,
    pub digits: usize,
}

impl Goal {
    /// "met", "NOT met", or "n/a" when the figure was not measured.
    pub fn verdict(&self) -> &'static str {
        if !self.value.is_finite() {
            "n/a"
        } else if self.value <= self.limit {
            "met"
        } else {
            "NOT met"
        }
    }
}

/// The goals, for what was measured.
pub fn goals(res: &Results) -> Vec<Goal> {
    let mut g = Vec::new();
    let mut push = |workload, figure, value, limit, digits| {
        g.push(Goal {
            workload,
            figure,
            value,
            limit,
            digits,
        })
    };
    let measured = |w: Workload| res.runs.keys().any(|(x, _)| *x == w);
    let pk = Workload::PlainKa;
    if measured(pk) {
        push(
            pk.title(),
            "program bodies B − F, eBPF ns/req (RED off)",
            res.body_ns(pk, Mode::B),
            150.0,
            0,
        );
        push(
            pk.title(),
            "program bodies R − F, eBPF ns/req (RED on)",
            res.body_ns(pk, Mode::R),
            300.0,
            0,
        );
        push(
            pk.title(),
            "nginx CPU/req B/A (RED off)",
            res.cpu_ratio(pk, Mode::B, Mode::A),
            1.03,
            3,
        );
        push(
            pk.title(),
            "nginx CPU/req R/A (RED on)",
            res.cpu_ratio(pk, Mode::R, Mode::A),
            1.05,
            3,
        );
    }
    let c = Workload::Close;
    if measured(c) {
        push(
            c.title(),
            "program bodies B − F, eBPF ns/req (RED off)",
            res.body_ns(c, Mode::B),
            800.0,
            0,
        );
        push(
            c.title(),
            "program bodies R − F, eBPF ns/req (RED on)",
            res.body_ns(c, Mode::R),
            800.0,
            0,
        );
    }
    for w in [Workload::Https, Workload::H2] {
        if measured(w) {
            push(
                w.title(),
                "nginx CPU/req R/A (RED on)",
                res.cpu_ratio(w, Mode::R, Mode::A),
                1.08,
                3,
            );
        }
    }
    let p = Workload::Proxy;
    if measured(p) {
        // The issue names no RED setting for it: both are held to it.
        push(
            p.title(),
            "nginx CPU/req B/A (RED off)",
            res.cpu_ratio(p, Mode::B, Mode::A),
            1.03,
            3,
        );
        push(
            p.title(),
            "nginx CPU/req R/A (RED on)",
            res.cpu_ratio(p, Mode::R, Mode::A),
            1.03,
            3,
        );
    }
    if !res.other.is_empty() {
        let pp = |m| res.other_col(m, |o| o.ping_pong_us);
        push(
            Workload::Other.title(),
            "loopback TCP ping-pong CPU B/F",
            ratio_median(&pp(Mode::F), &pp(Mode::B)),
            1.005,
            3,
        );
    }
    let (cpu, rss) = res.agent_peaks();
    if !res.runs.is_empty() {
        push(
            "agent",
            "CPU, % of one core (highest workload median, B and R)",
            cpu,
            1.0,
            2,
        );
        push(
            "agent",
            "RSS, MiB (highest workload median of the peak, B and R)",
            rss,
            32.0,
            1,
        );
    }
    g
}

/// What the report says about how it was measured.
pub struct Setup {
    pub rounds: u32,
    pub seconds: u32,
    pub ebpf_seconds: Option<u32>,
    pub connections: u32,
    pub h2_clients: u32,
    pub h2_streams: u32,
    pub uprobe: String,
    pub ping_pongs: u64,
    pub dd_count: u64,
    pub when: String,
}

pub fn report(setup: &Setup, res: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## ngxprobe overhead, {} ({} interleaved rounds)\n",
        setup.when, setup.rounds
    );
    let _ = writeln!(
        s,
        "nginx: 1 worker on loopback, ~600 B static file; wrk -t1 -c{} (HTTP/1.1), h2load -t1 -c{} -m{} (HTTP/2). \
         Per workload and mode: a {} run with kernel.bpf_stats_enabled=1 (eBPF time; also the warm-up), then a {} s run \
         with it off (nginx and agent CPU). Modes, in rotated order each round: A = no agent, B = agent with RED off \
         (`per_request.enabled: false`), R = agent with RED on (`per_request: {{enabled: true, uprobe: {}}}`), \
         F = the floor (NGXPROBE_EBPF_FLOOR=1: empty programs on the same tracepoints, RED off, so no uprobe). \
         Medians over rounds; ratios and differences are medians of per-round values.\n",
        setup.connections,
        setup.h2_clients,
        setup.h2_streams,
        setup
            .ebpf_seconds
            .map_or("(no: --no-bpf-stats)".to_string(), |e| format!("{e} s")),
        setup.seconds,
        setup.uprobe,
    );

    let _ = writeln!(s, "### Goals\n");
    let _ = writeln!(s, "| workload | figure | value | goal | |");
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    for g in goals(res) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | ≤ {} | {} |",
            g.workload,
            g.figure,
            fmt(g.value, g.digits),
            g.limit,
            g.verdict()
        );
    }

    let workloads: Vec<Workload> = {
        let mut w: Vec<Workload> = res.runs.keys().map(|(w, _)| *w).collect();
        w.dedup();
        w
    };
    let _ = writeln!(s, "\n### nginx and the agent (bpf_stats off)\n");
    let _ = writeln!(
        s,
        "| workload | nginx µs/req A | B/A | R/A | F/A | req/s A | agent CPU % B / R | agent RSS MiB B / R | agent RSS anon / file / shmem MiB R | agent/stub_status requests B / R | uprobe attached (R) | client errors A/B/R/F |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|");
    for &w in &workloads {
        let med = |m, f: &dyn Fn(&Run) -> Option<f64>| median(&res.col(w, m, f));
        let pair =
            |f: &dyn Fn(&Run) -> Option<f64>, d| format!("{} / {}", fmt(med(Mode::B, f), d), fmt(med(Mode::R, f), d));
        let attached: Vec<bool> = res.get(w, Mode::R).iter().filter_map(|r| r.uprobe_attached).collect();
        let attached = match (attached.iter().filter(|a| **a).count(), attached.len()) {
            (_, 0) => "n/a".to_string(),
            (y, n) if y == n => "yes".to_string(),
            (0, _) => "no".to_string(),
            (y, n) => format!("{y} of {n} rounds"),
        };
        let errs = |m| res.get(w, m).iter().map(|r| r.errors).sum::<u64>();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{}/{} |",
            w.title(),
            fmt(median(&res.cpu(w, Mode::A)), 2),
            fmt(res.cpu_ratio(w, Mode::B, Mode::A), 3),
            fmt(res.cpu_ratio(w, Mode::R, Mode::A), 3),
            fmt(res.cpu_ratio(w, Mode::F, Mode::A), 3),
            fmt(med(Mode::A, &|r| Some(r.rps)), 0),
            pair(&|r| r.agent_cpu_pct, 2),
            pair(&|r| r.agent_rss_kib.map(|k| k as f64 / 1024.0), 1),
            rss_parts(res.get(w, Mode::R)),
            pair(&|r| r.agent_vs_stub, 4),
            attached,
            errs(Mode::A),
            errs(Mode::B),
            errs(Mode::R),
            errs(Mode::F),
        );
    }

    if workloads
        .iter()
        .any(|&w| res.get(w, Mode::F).iter().any(|r| r.ebpf.is_some()))
    {
        let _ = writeln!(
            s,
            "\n### The floor F: empty programs on the same hooks (bpf_stats on)\n"
        );
        let _ = writeln!(
            s,
            "What being attached at all costs, bodies aside (program dispatch and bpf_stats' own accounting per run). \
             A local load generator's sockets fire the same global tracepoints, so runs/req counts both ends.\n"
        );
        let _ = writeln!(
            s,
            "| workload | eBPF ns/req F | runs/req F | ns/run F | nginx CPU F/A |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for &w in &workloads {
            let (ns, runs) = (median(&res.ebpf_ns(w, Mode::F)), median(&res.ebpf_runs(w, Mode::F)));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                w.title(),
                fmt(ns, 0),
                fmt(runs, 2),
                fmt(ns / runs, 0),
                fmt(res.cpu_ratio(w, Mode::F, Mode::A), 3),
            );
        }
    }

    if workloads.iter().any(|&w| {
        [Mode::B, Mode::R]
            .iter()
            .any(|&m| res.get(w, m).iter().any(|r| r.ebpf.is_some()))
    }) {
        let _ = writeln!(s, "\n### eBPF time per request (bpf_stats on)\n");
        let _ = writeln!(
            s,
            "| workload | ns/req B | ns/req R | ns/req F | B − F (bodies, RED off) | R − F (bodies, RED on) | runs/req B | runs/req R |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for &w in &workloads {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                w.title(),
                fmt(median(&res.ebpf_ns(w, Mode::B)), 0),
                fmt(median(&res.ebpf_ns(w, Mode::R)), 0),
                fmt(median(&res.ebpf_ns(w, Mode::F)), 0),
                fmt(res.body_ns(w, Mode::B), 0),
                fmt(res.body_ns(w, Mode::R), 0),
                fmt(median(&res.ebpf_runs(w, Mode::B)), 2),
                fmt(median(&res.ebpf_runs(w, Mode::R)), 2),
            );
        }
        let _ = writeln!(
            s,
            "\nPer program (hook), runs/req and ns/req: the TCP-health and process hooks \
             (tcp_retransmit*, tcp_*_reset, process_exit, oom_victim) fire only on their events, \
             so they should show ~0 runs per request; `free_request` is the request uprobe (R only).\n"
        );
        for &w in &workloads {
            s.push_str(&program_table(res, w));
        }
    }

    if !res.other.is_empty() {
        let _ = writeln!(s, "\n### Other processes (not nginx, bpf_stats off)\n");
        let _ = writeln!(s, "| probe | A | B | R | F | B/A | B/F | R/F |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let rows: [OtherRow; 2] = [
            (format!("`dd bs=1 count={}`", setup.dd_count), "s CPU", |o| o.dd_s, 3),
            (
                format!("loopback TCP ping-pong, {} round trips", setup.ping_pongs),
                "µs CPU/rt",
                |o| o.ping_pong_us,
                2,
            ),
        ];
        for (name, unit, f, d) in rows {
            let c = |m| res.other_col(m, f);
            let v = |m| format!("{} {unit}", fmt(median(&c(m)), d));
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                v(Mode::A),
                v(Mode::B),
                v(Mode::R),
                v(Mode::F),
                fmt(ratio_median(&c(Mode::A), &c(Mode::B)), 3),
                fmt(ratio_median(&c(Mode::F), &c(Mode::B)), 3),
                fmt(ratio_median(&c(Mode::F), &c(Mode::R)), 3),
            );
        }
    }
    s
}

/// A row of the other-processes table: name, unit, figure, digits.
type OtherRow = (String, &'static str, fn(&OtherRun) -> f64, usize);

/// Per-hook runs/req and ns/req of one workload in B, R and F.
fn program_table(res: &Results, w: Workload) -> String {
    let mut hooks: Vec<String> = [Mode::B, Mode::R, Mode::F]
        .iter()
        .flat_map(|&m| res.get(w, m))
        .filter_map(|r| r.ebpf.as_ref())
        .flat_map(|e| e.runs.keys().cloned())
        .collect();
    hooks.sort();
    hooks.dedup();
    if hooks.is_empty() {
        return String::new();
    }
    let mut s = String::new();
    let _ = writeln!(s, "{}:\n", w.title());
    let _ = writeln!(
        s,
        "| hook | runs/req B | ns/req B | runs/req R | ns/req R | runs/req F | ns/req F |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for h in &hooks {
        let per = |m, ns: bool| {
            median(&res.col(w, m, |r| {
                let e = r.ebpf.as_ref()?;
                // A hook the mode does not attach has no entry: 0 runs, not unknown.
                Some(if ns { &e.ns } else { &e.runs }.get(h).copied().unwrap_or(0.0))
            }))
        };
        let _ = writeln!(
            s,
            "| {h} | {} | {} | {} | {} | {} | {} |",
            fmt(per(Mode::B, false), 3),
            fmt(per(Mode::B, true), 0),
            fmt(per(Mode::R, false), 3),
            fmt(per(Mode::R, true), 0),
            fmt(per(Mode::F, false), 3),
            fmt(per(Mode::F, true), 0),
        );
    }
    s.push('\n');
    s
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (UTC), for the report and its file name.
pub fn utc_timestamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Days since 1970-01-01 → civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// "anon / file / shmem" MiB, each the median over `runs` of the part at the
/// peak sample.
fn rss_parts(runs: &[Run]) -> String {
    let part = |f: fn(&crate::util::Rss) -> u64| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.agent_rss.as_ref().map(|p| f(p) as f64 / 1024.0))
            .collect();
        fmt(median(&v), 1)
    };
    format!("{} / {} / {}", part(|p| p.anon), part(|p| p.file), part(|p| p.shmem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cpu: f64, ns: &[(&str, f64, f64)]) -> Run {
        Run {
            worker_us_per_req: cpu,
            ebpf: (!ns.is_empty()).then(|| EbpfRun {
                ns: ns.iter().map(|(h, n, _)| (h.to_string(), *n)).collect(),
                runs: ns.iter().map(|(h, _, r)| (h.to_string(), *r)).collect(),
            }),
            agent_cpu_pct: Some(0.5),
            agent_rss_kib: Some(20 * 1024),
            ..Run::default()
        }
    }

    #[test]
    fn rss_parts_are_medians_of_the_peak_samples() {
        let at = |anon: u64, file: u64| Run {
            agent_rss: Some(crate::util::Rss {
                total: anon + file,
                anon,
                file,
                shmem: 0,
            }),
            ..Run::default()
        };
        let runs = [at(4096, 20480), at(10240, 24576), at(6144, 22528), Run::default()];
        assert_eq!(rss_parts(&runs), "6.0 / 22.0 / 0.0");
        assert_eq!(rss_parts(&[]), format!("{0} / {0} / {0}", fmt(f64::NAN, 1)));
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio_median(&[1.0, 2.0, 4.0], &[2.0, 2.0, 4.0]), 1.0);
        assert_eq!(diff_median(&[1.0, 2.0, 4.0], &[2.0, 5.0, 4.5]), 1.0);
        // A round without a figure (NaN) does not count.
        assert_eq!(ratio_median(&[1.0, f64::NAN, 2.0], &[1.1, 1.0, 2.2]), 1.1);
    }

    #[test]
    fn hooks_line_up_real_and_floor_programs() {
        assert_eq!(hook_of("ngx_recv"), "recv");
        assert_eq!(hook_of("floor_recv"), "recv");
        assert_eq!(hook_of("floor_tcp_retransmit_synack"), "tcp_retransmit_synack");
        assert_eq!(hook_of("ngx_free_request"), "free_request");
        assert_eq!(hook_of("other"), "other");
    }

    #[test]
    fn goals_from_per_round_figures() {
        let mut res = Results::default();
        let pk = Workload::PlainKa;
        // Three rounds; the floor is 200 ns/req, B's bodies 100 and 140 and 400 (median 140).
        res.runs
            .insert((pk, Mode::A), vec![run(10.0, &[]), run(10.0, &[]), run(20.0, &[])]);
        res.runs.insert(
            (pk, Mode::F),
            vec![
                run(10.1, &[("recv", 200.0, 2.0)]),
                run(10.1, &[("recv", 200.0, 2.0)]),
                run(20.2, &[("recv", 200.0, 2.0)]),
            ],
        );
        res.runs.insert(
            (pk, Mode::B),
            vec![
                run(10.2, &[("recv", 250.0, 2.0), ("set_state", 50.0, 0.5)]),
                run(10.2, &[("recv", 340.0, 2.0)]),
                run(21.0, &[("recv", 600.0, 2.0)]),
            ],
        );
        assert!((res.body_ns(pk, Mode::B) - 140.0).abs() < 1e-9);
        assert!((res.cpu_ratio(pk, Mode::B, Mode::A) - 1.02).abs() < 1e-9);
        let g = goals(&res);
        let find = |f: &str| g.iter().find(|g| g.figure.starts_with(f)).unwrap();
        assert_eq!(find("program bodies B").verdict(), "met");
        assert_eq!(find("nginx CPU/req B/A").verdict(), "met");
        // R was not measured: its goals say so instead of passing.
        assert_eq!(find("program bodies R").verdict(), "n/a");
        assert_eq!(find("nginx CPU/req R/A").verdict(), "n/a");
        assert_eq!(find("CPU, % of one core").verdict(), "met");
        assert!(
            Goal {
                workload: "x",
                figure: "y",
                value: 1.06,
                limit: 1.05,
                digits: 3
            }
            .verdict()
                == "NOT met"
        );
        // No TLS workload measured: no goal for it.
        assert!(!g.iter().any(|g| g.workload == Workload::Https.title()));
        let text = report(
            &Setup {
                rounds: 3,
                seconds: 4,
                ebpf_seconds: Some(2),
                connections: 50,
                h2_clients: 10,
                h2_streams: 10,
                uprobe: "auto".into(),
                ping_pongs: 1,
                dd_count: 1,
                when: utc_timestamp(0),
            },
            &res,
        );
        // A hook missing from a round counts as 0 runs there.
        assert!(text.contains("| set_state | 0.000 | 0 |"), "{text}");
        assert!(text.contains("| recv | 2.000 | 340 |"), "{text}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_796_560_496), "2026-12-06T12:34:56Z");
    }
}
