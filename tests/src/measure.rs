//! The measurement protocol and the load-time invariant monitor.
//!
//! # Measurement protocol (exact)
//!
//! For each nginx instance under test (selected by `conf_path`):
//!
//! 0. *Pre-quiesce*: poll the oracle (bounded) until `O.active == held + 1`,
//!    where `held` is the number of connections the scenario deliberately
//!    keeps open and `+1` is the oracle's own connection.
//! 1. `A0` = agent scrape.
//! 2. `O0` = oracle (stub_status over a fresh connection, read to EOF).
//! 3. Run the scenario.
//! 4. *Quiesce*: the scenario's clients are finished (processes exited,
//!    sockets closed, or deliberately held idle), then poll the oracle
//!    (bounded, 10 s) until `O.active == held + 1`. The poll that satisfies
//!    it is `O1`. No fixed sleep stands in for synchronisation.
//! 5. `A1` = agent scrape.
//!
//! Between A0 and A1 the agent sees O0's and O1's connections and requests
//! (and the quiesce polls in between); between O0 and O1 nginx counts the
//! scenario, the polls and O1 itself, but not O0. So:
//!
//! * `ΔA.accepted == ΔO.accepted + 1`
//! * `ΔA.handled  == ΔO.handled  + 1`
//! * `ΔA.requests == ΔO.requests + 1`
//!
//! and at A1, when O1's connection is already closed (the oracle read to EOF):
//!
//! * `A.active  == O1.active  − 1`
//! * `A.writing == O1.writing − 1` (the stub_status request is itself writing
//!   while it is served)
//! * `A.reading == O1.reading`
//! * `A.waiting == O1.waiting`
//!
//! Counters are only compared as deltas (the agent starts at 0 when it first
//! sees an instance). By default the comparison is strict: A1 is the first
//! scrape after O1. If it mismatches, the agent is re-scraped for up to 2 s
//! purely as a diagnostic (does it converge, i.e. lag?); set
//! `NGXPROBE_E2E_SETTLE_MS` to accept a value that converges within that
//! many milliseconds.
use crate::agent::{self, Agent};
use crate::metrics_text::AgentView;
use crate::nginx::Nginx;
use crate::oracle::StubStatus;
use crate::util::{Poll, poll};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls the oracle until `active == held + 1`; returns that reading.
pub fn quiesce(nginx: &Nginx, held: i64) -> Result<StubStatus> {
    poll(
        &format!(
            "nginx {} to quiesce (O.active == {} held + 1)",
            nginx.conf_label(),
            held
        ),
        QUIESCE_TIMEOUT,
        Duration::from_millis(20),
        || {
            let o = nginx.oracle()?;
            Ok(if o.active == held + 1 {
                Poll::Ready(o)
            } else {
                Poll::Pending(format!("{o:?}, nginx holds {} connections", nginx.open_connections()))
            })
        },
    )
}

/// Polls the kernel until nginx holds exactly `held` connections, then reads
/// the oracle once. Used when nginx's own `active` cannot be trusted (after a
/// worker was SIGKILLed, stub_status never decrements the dead worker's
/// connections).
pub fn quiesce_by_kernel(nginx: &Nginx, held: usize) -> Result<StubStatus> {
    holds_exactly(
        nginx,
        held,
        &format!(
            "nginx {} to hold exactly {held} connections (kernel view)",
            nginx.conf_label()
        ),
        Duration::from_millis(20),
    )?;
    let o = nginx.oracle()?;
    // The oracle's connection is closed when fetch returns; make sure nothing
    // else is still open.
    holds_exactly(
        nginx,
        held,
        "oracle connection gone (kernel view)",
        Duration::from_millis(10),
    )?;
    Ok(o)
}

/// Polls the kernel every `interval` until nginx holds exactly `held` connections.
fn holds_exactly(nginx: &Nginx, held: usize, what: &str, interval: Duration) -> Result<()> {
    poll(what, QUIESCE_TIMEOUT, interval, || {
        let n = nginx.open_connections();
        Ok(if n == held {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{n} open"))
        })
    })
}

/// One instance in a measurement.
pub struct Target<'a> {
    pub nginx: &'a Nginx,
    /// Connections the scenario deliberately holds open at the end.
    pub held: i64,
}

struct Begun {
    conf: String,
    a0: AgentView,
    o0: StubStatus,
}

/// Steps 0–2 of the protocol, for one or more instances.
pub struct Baseline {
    begun: Vec<Begun>,
}

/// Steps 0–2: pre-quiesce each instance (with the connections already held
/// before the scenario), A0, O0 for each.
pub fn begin(agent: &Agent, targets: &[Target]) -> Result<Baseline> {
    for t in targets {
        quiesce(t.nginx, t.held).context("pre-quiesce before A0")?;
    }
    let a0s = agent.scrape().context("A0")?;
    let mut begun = Vec::new();
    for t in targets {
        let conf = t.nginx.conf_label();
        let a0 = a0s.view(&conf).context("A0")?;
        begun.push(Begun {
            conf,
            a0,
            o0: Default::default(),
        });
    }
    for (b, t) in begun.iter_mut().zip(targets) {
        b.o0 = t.nginx.oracle().context("O0")?;
    }
    Ok(Baseline { begun })
}

/// Same as [`begin`] with one instance.
pub fn begin_one(agent: &Agent, nginx: &Nginx, held: i64) -> Result<Baseline> {
    begin(agent, &[Target { nginx, held }])
}

/// One compared quantity.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub agent: i64,
    pub expected: i64,
    pub how: String,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.agent == self.expected
    }
}

/// Result of a measurement for one instance.
#[derive(Clone, Debug)]
pub struct InstanceReport {
    pub conf: String,
    pub a0: Option<AgentView>,
    pub o0: Option<StubStatus>,
    pub a1: AgentView,
    pub o1: StubStatus,
    /// Connections nginx holds per the kernel (/proc) right after A1.
    pub kernel_open: usize,
    pub checks: Vec<Check>,
    pub note: String,
}

impl InstanceReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(Check::ok)
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "instance {}", self.conf);
        if let (Some(a0), Some(o0)) = (self.a0, self.o0) {
            let _ = writeln!(s, "  A0 = {a0:?}\n  O0 = {o0:?}");
        }
        let _ = writeln!(s, "  A1 = {:?}\n  O1 = {:?}", self.a1, self.o1);
        let _ = writeln!(s, "  kernel: nginx holds {} connections after A1", self.kernel_open);
        let _ = writeln!(
            s,
            "  {:<10} {:>12} {:>12}  {:<4} derivation",
            "quantity", "agent", "expected", ""
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  {:<10} {:>12} {:>12}  {:<4} {}",
                c.name,
                c.agent,
                c.expected,
                if c.ok() { "ok" } else { "FAIL" },
                c.how
            );
        }
        if !self.note.is_empty() {
            let _ = writeln!(s, "  note: {}", self.note);
        }
        s
    }
}

/// Result of a measurement.
#[derive(Clone, Debug)]
pub struct Report {
    pub scenario: String,
    pub instances: Vec<InstanceReport>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.instances.iter().all(InstanceReport::ok)
    }
    pub fn table(&self) -> String {
        let mut s = format!(
            "=== {} : {} ===\n",
            self.scenario,
            if self.ok() { "PASS" } else { "FAIL" }
        );
        for i in &self.instances {
            s.push_str(&i.table());
        }
        s
    }
    /// Prints the table; panics with it on any mismatch.
    pub fn assert_ok(&self) {
        eprintln!("{}", self.table());
        assert!(self.ok(), "agent and stub_status disagree:\n{}", self.table());
    }
}

fn counter_checks(a0: &AgentView, a1: &AgentView, o0: &StubStatus, o1: &StubStatus) -> Vec<Check> {
    counter_checks_excluding(a0, a1, o0, o1, 0)
}

/// As [`counter_checks`], with `excluded` requests that nginx counts and the
/// agent deliberately does not (made on connections it does not parse:
/// TLS, HTTP/2, not HTTP).
fn counter_checks_excluding(
    a0: &AgentView,
    a1: &AgentView,
    o0: &StubStatus,
    o1: &StubStatus,
    excluded: i64,
) -> Vec<Check> {
    let c = |name, a0: i64, a1: i64, o0: i64, o1: i64| Check {
        name,
        agent: a1 - a0,
        expected: o1 - o0 + 1,
        how: format!("ΔA = {a1}-{a0}; ΔO+1 = {o1}-{o0}+1"),
    };
    let mut requests = c("Δrequests", a0.requests, a1.requests, o0.requests, o1.requests);
    if excluded != 0 {
        requests.expected -= excluded;
        requests.how = format!(
            "ΔA = {}-{}; ΔO+1-excluded = {}-{}+1-{excluded} (requests on unparsed connections)",
            a1.requests, a0.requests, o1.requests, o0.requests
        );
    }
    vec![
        c("Δaccepted", a0.accepted, a1.accepted, o0.accepted, o1.accepted),
        c("Δhandled", a0.handled, a1.handled, o0.handled, o1.handled),
        requests,
    ]
}

fn gauge_checks(a1: &AgentView, o1: &StubStatus) -> Vec<Check> {
    vec![
        Check {
            name: "active",
            agent: a1.active,
            expected: o1.active - 1,
            how: format!("O1.active-1 = {}-1", o1.active),
        },
        Check {
            name: "reading",
            agent: a1.reading,
            expected: o1.reading,
            how: "O1.reading".into(),
        },
        Check {
            name: "writing",
            agent: a1.writing,
            expected: o1.writing - 1,
            how: format!("O1.writing-1 = {}-1", o1.writing),
        },
        Check {
            name: "waiting",
            agent: a1.waiting,
            expected: o1.waiting,
            how: "O1.waiting".into(),
        },
        Check {
            name: "up",
            agent: a1.up,
            expected: 1,
            how: "instance up".into(),
        },
    ]
}

fn settle_ms() -> u64 {
    std::env::var("NGXPROBE_E2E_SETTLE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A1 with the strict/diagnostic re-scrape policy described in the module doc.
/// `checks(a1)` computes the checks for a candidate A1.
fn take_a1(
    agent: &Agent,
    conf: &str,
    checks: impl Fn(&AgentView) -> Vec<Check>,
) -> Result<(AgentView, Vec<Check>, String)> {
    let t0 = Instant::now();
    let first = agent.view(conf).context("A1")?;
    let first_checks = checks(&first);
    if first_checks.iter().all(Check::ok) {
        return Ok((first, first_checks, String::new()));
    }
    // Diagnostic: does the agent converge (lag) or not?
    let settle = settle_ms();
    let mut converged_at = None;
    let mut last = first;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(v) = agent.view(conf) {
            last = v;
            if checks(&v).iter().all(Check::ok) {
                converged_at = Some(t0.elapsed());
                break;
            }
        }
    }
    match converged_at {
        Some(t) if t.as_millis() as u64 <= settle => Ok((
            last,
            checks(&last),
            format!(
                "first A1 mismatched ({first:?}); agent converged after {t:?} (within NGXPROBE_E2E_SETTLE_MS={settle})"
            ),
        )),
        Some(t) => Ok((
            first,
            first_checks,
            format!(
                "first A1 mismatched; agent converged to the expected values after {t:?} (lag; NGXPROBE_E2E_SETTLE_MS={settle})"
            ),
        )),
        None => Ok((
            first,
            first_checks,
            format!("agent did not converge within 2 s; last scrape {last:?}"),
        )),
    }
}

/// Steps 4–5: quiesce each instance, O1, A1; compare.
pub fn finish(agent: &Agent, base: Baseline, targets: &[Target], scenario: &str) -> Result<Report> {
    finish_excluding(agent, base, targets, scenario, 0)
}

/// [`finish`] for a scenario that made `excluded` requests on connections
/// the agent does not parse (TLS, HTTP/2, not HTTP): nginx counts them, the
/// agent must not, so the agent's Δrequests is expected `excluded` lower
/// than nginx's. Everything else is compared as usual.
pub fn finish_excluding(
    agent: &Agent,
    base: Baseline,
    targets: &[Target],
    scenario: &str,
    excluded: i64,
) -> Result<Report> {
    let mut o1s = Vec::new();
    for t in targets {
        o1s.push(quiesce(t.nginx, t.held).context("quiesce → O1")?);
    }
    let mut instances = Vec::new();
    for ((b, t), o1) in base.begun.iter().zip(targets).zip(o1s) {
        let (a1, checks, note) = take_a1(agent, &b.conf, |a1| {
            let mut c = counter_checks_excluding(&b.a0, a1, &b.o0, &o1, excluded);
            c.extend(gauge_checks(a1, &o1));
            c
        })?;
        instances.push(InstanceReport {
            conf: b.conf.clone(),
            a0: Some(b.a0),
            o0: Some(b.o0),
            a1,
            o1,
            kernel_open: t.nginx.open_connections(),
            checks,
            note,
        });
    }
    Ok(Report {
        scenario: scenario.to_string(),
        instances,
    })
}

/// Steps 4–5 for an instance whose stub_status gauges cannot be trusted
/// (a worker was SIGKILLed): quiesce by the kernel's view (nginx holds exactly
/// `held` connections), O1, A1. Counter deltas are compared as usual; the
/// agent's gauges are compared with the kernel's truth (`active == held`,
/// and with `held == 0`: reading == writing == waiting == 0). nginx's own
/// `O1.active - 1` must be above the truth: the dead worker's connections
/// leak there, and if nothing leaked the scenario did not test what it claims
/// (the worker held no connection when it died).
pub fn finish_kernel_truth(
    agent: &Agent,
    base: Baseline,
    nginx: &Nginx,
    held: usize,
    scenario: &str,
) -> Result<Report> {
    let o1 = quiesce_by_kernel(nginx, held).context("quiesce (kernel) → O1")?;
    let b = &base.begun[0];
    let truth = held as i64;
    let (a1, mut checks, note) = take_a1(agent, &b.conf, |a1| {
        let mut c = counter_checks(&b.a0, a1, &b.o0, &o1);
        c.push(Check {
            name: "active",
            agent: a1.active,
            expected: truth,
            how: format!(
                "kernel: nginx holds {truth}; stub_status says O1.active-1 = {}",
                o1.active - 1
            ),
        });
        if held == 0 {
            c.push(Check {
                name: "reading",
                agent: a1.reading,
                expected: 0,
                how: format!("nothing open; stub_status says {}", o1.reading),
            });
            c.push(Check {
                name: "writing",
                agent: a1.writing,
                expected: 0,
                how: format!("nothing open; stub_status says O1.writing-1 = {}", o1.writing - 1),
            });
            c.push(Check {
                name: "waiting",
                agent: a1.waiting,
                expected: 0,
                how: format!("nothing open; stub_status says {}", o1.waiting),
            });
        }
        c.push(Check {
            name: "up",
            agent: a1.up,
            expected: 1,
            how: "instance up".into(),
        });
        c
    })?;
    // O1.active counts the status request itself, so `O1.active > truth`
    // held even without a leak: the premise is a leak, O1.active - 1 > truth.
    let leak = o1.active - 1 - truth;
    checks.push(Check {
        name: "O.leaked",
        agent: (leak > 0) as i64,
        expected: 1,
        how: format!(
            "premise: stub_status active-1 = {} > kernel truth {truth} (leak = {leak})",
            o1.active - 1
        ),
    });
    Ok(Report {
        scenario: scenario.to_string(),
        instances: vec![InstanceReport {
            conf: b.conf.clone(),
            a0: Some(b.a0),
            o0: Some(b.o0),
            a1,
            o1,
            kernel_open: nginx.open_connections(),
            checks,
            note,
        }],
    })
}

/// Asserts a report and the monitor's result together (both are printed).
pub fn assert_all(rep: &Report, mon: &MonitorResult) {
    eprintln!("{}", rep.table());
    eprintln!(
        "[e2e] monitor: {} scrapes, {} violations",
        mon.scrapes,
        mon.violations.len()
    );
    let mut msg = String::new();
    if !rep.ok() {
        msg.push_str(&format!("agent and stub_status disagree:\n{}", rep.table()));
    }
    if mon.scrapes == 0 {
        msg.push_str("monitor made no scrape during the load\n");
    }
    if !mon.violations.is_empty() {
        msg.push_str(&format!(
            "invariants violated during load ({} of them; first 20):\n{}\n",
            mon.violations.len(),
            mon.violations.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        ));
    }
    assert!(msg.is_empty(), "{msg}");
}

/// Same as [`finish`] with one instance.
pub fn finish_one(agent: &Agent, base: Baseline, nginx: &Nginx, held: i64, scenario: &str) -> Result<Report> {
    finish(agent, base, &[Target { nginx, held }], scenario)
}

/// Gauges only (no counter deltas): quiesce, O1, A1. Used right after an
/// agent restart, when counters have restarted from 0.
pub fn gauges_now(agent: &Agent, nginx: &Nginx, held: i64, scenario: &str) -> Result<Report> {
    let o1 = quiesce(nginx, held).context("quiesce → O1")?;
    let conf = nginx.conf_label();
    let (a1, checks, note) = take_a1(agent, &conf, |a1| gauge_checks(a1, &o1))?;
    Ok(Report {
        scenario: scenario.to_string(),
        instances: vec![InstanceReport {
            conf,
            a0: None,
            o0: None,
            a1,
            o1,
            kernel_open: nginx.open_connections(),
            checks,
            note,
        }],
    })
}

/// Measures a scenario end to end on one instance: begin (pre-quiesce with
/// `held_before` connections held open), run `scenario` with the invariant
/// monitor running, finish (quiesce with `held_after` held open). Returns the
/// report, the monitor's result and the scenario's output (e.g. the
/// connections it holds); the caller asserts.
pub fn measure<T>(
    agent: &Agent,
    nginx: &Nginx,
    held_before: i64,
    held_after: i64,
    name: &str,
    scenario: impl FnOnce() -> Result<T>,
) -> Result<(Report, MonitorResult, T)> {
    let base = begin_one(agent, nginx, held_before)?;
    let mon = Monitor::start(agent.addr(), vec![nginx.conf_label()]);
    let out = scenario();
    let mres = mon.stop();
    let out = out.with_context(|| format!("scenario {name}"))?;
    let rep = finish_one(agent, base, nginx, held_after, name)?;
    Ok((rep, mres, out))
}

// ---------------------------------------------------------------------------
// Monitor

/// What the monitor saw.
#[derive(Clone, Debug, Default)]
pub struct MonitorResult {
    pub scrapes: u64,
    pub violations: Vec<String>,
    pub last: Vec<(String, AgentView)>,
}

impl MonitorResult {
    pub fn assert_ok(&self) {
        eprintln!(
            "[e2e] monitor: {} scrapes, {} violations",
            self.scrapes,
            self.violations.len()
        );
        assert!(self.scrapes > 0, "monitor made no scrape during the load");
        assert!(
            self.violations.is_empty(),
            "invariants violated during load ({} of them; first 20):\n{}",
            self.violations.len(),
            self.violations.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Scrapes the agent every 100 ms in a thread and checks, per instance:
/// counters never go back; reading, writing, waiting ≥ 0; and
/// reading + writing + waiting == active.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<MonitorResult>>,
}

impl Monitor {
    pub fn start(addr: SocketAddr, confs: Vec<String>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || monitor_loop(addr, confs, st));
        Monitor {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> MonitorResult {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_else(|| MonitorResult {
                violations: vec!["monitor thread panicked".into()],
                ..Default::default()
            })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn monitor_loop(addr: SocketAddr, confs: Vec<String>, stop: Arc<AtomicBool>) -> MonitorResult {
    let mut res = MonitorResult::default();
    let mut prev: Vec<Option<AgentView>> = vec![None; confs.len()];
    let t0 = Instant::now();
    // Bounded: at most 10 minutes' worth of 100 ms ticks.
    // Always at least one scrape, even if the scenario was instantaneous.
    for i in 0..6000 {
        if i > 0 && stop.load(Ordering::SeqCst) {
            break;
        }
        let tick = Instant::now();
        let at = t0.elapsed();
        match agent::scrape(addr) {
            Err(e) => res.violations.push(format!("t={at:.2?}: scrape failed: {e:#}")),
            Ok(s) => {
                res.scrapes += 1;
                res.last.clear();
                for (i, conf) in confs.iter().enumerate() {
                    match s.view(conf) {
                        Err(e) => res.violations.push(format!("t={at:.2?}: {e:#}")),
                        Ok(v) => {
                            check_view(&mut res.violations, at, conf, prev[i].as_ref(), &v);
                            prev[i] = Some(v);
                            res.last.push((conf.clone(), v));
                        }
                    }
                }
            }
        }
        if let Some(rest) = Duration::from_millis(100).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    res
}

/// The per-scrape invariants (also usable on single scrapes).
pub fn check_view(out: &mut Vec<String>, at: Duration, conf: &str, prev: Option<&AgentView>, v: &AgentView) {
    let mut bad = |m: String| out.push(format!("t={at:.2?} {conf}: {m}"));
    if let Some(p) = prev {
        for (n, a, b) in [
            ("accepted", p.accepted, v.accepted),
            ("handled", p.handled, v.handled),
            ("requests", p.requests, v.requests),
        ] {
            if b < a {
                bad(format!("counter {n} went back {a} -> {b}"));
            }
        }
    }
    for (n, x) in [
        ("reading", v.reading),
        ("writing", v.writing),
        ("waiting", v.waiting),
        ("active", v.active),
    ] {
        if x < 0 {
            bad(format!("{n} = {x} < 0"));
        }
    }
    if v.reading + v.writing + v.waiting != v.active {
        bad(format!(
            "reading+writing+waiting = {}+{}+{} = {} != active {}",
            v.reading,
            v.writing,
            v.waiting,
            v.reading + v.writing + v.waiting,
            v.active
        ));
    }
    if v.up != 1 {
        bad(format!("nginx_up = {}", v.up));
    }
}
