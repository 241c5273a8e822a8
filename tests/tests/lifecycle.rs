//! Accuracy across lifecycle events: nginx reload and worker crash during
//! load, two instances at once, and an agent restart with open connections.
//! Same protocol as `accuracy.rs` (see `ngxprobe_e2e::measure`).
use ngxprobe_e2e::clients::{self, WrkRun, wait_wrk_running, wrk};
use ngxprobe_e2e::measure::{self, Monitor, Target, assert_all, measure};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, Session, guard};
use std::time::Duration;

const D3: Duration = Duration::from_secs(3);

#[test]
fn reload_during_load() {
    let s = Session::one_worker("reload_during_load");
    let url = s.nginx.url("/");
    let nginx = &s.nginx;
    let (rep, mon, (w, old, new)) = measure(&s.agent, nginx, 0, 0, "nginx -s reload during wrk -d3s", || {
        let old = nginx.worker_pids();
        let mut run = WrkRun::spawn(&["-t1", "-c20", "-d3s", &url], D3)?;
        wait_wrk_running(&mut run, Duration::from_secs(1))?;
        let new = nginx.reload()?;
        anyhow::ensure!(run.is_running(), "wrk finished before the reload was done");
        Ok((run.wait()?, old, new))
    })
    .unwrap();
    eprintln!(
        "[e2e] workers before reload {old:?}, after {new:?}; wrk {} requests",
        w.requests
    );
    assert_all(&rep, &mon);
    assert!(w.requests >= 100, "{}", w.output);
}

/// A worker is SIGKILLed while wrk runs. nginx's stub_status gauges
/// (active, reading, writing, waiting) are shared-memory counters that each
/// worker increments and decrements itself; the dead worker never runs the
/// decrements for the connections it held, so nginx's `active` stays too high
/// for ever. The kernel, however, closes every socket of the dead process,
/// and ngxprobe follows sockets in the kernel (accept → close/destroy), so it
/// reports the connections that really are open. We therefore compare
/// ngxprobe's gauges with the kernel's own view (/proc: TCP sockets nginx
/// holds), print nginx's leaked value next to it, and compare the counters
/// (accepted, handled, requests — these only ever increase, so the dead
/// worker's increments are not lost) as deltas as usual.
#[test]
fn worker_killed_during_load() {
    let s = Session::one_worker("worker_killed_during_load");
    let url = s.nginx.url("/");
    let base = measure::begin_one(&s.agent, &s.nginx, 0).unwrap();
    let mon = Monitor::start(s.agent.addr(), vec![s.nginx.conf_label()]);
    let mut run = WrkRun::spawn(&["-t1", "-c20", "-d3s", &url], D3).unwrap();
    wait_wrk_running(&mut run, Duration::from_secs(1)).unwrap();
    let killed = s.nginx.kill_worker().unwrap();
    let still_running = run.is_running();
    let w = run.wait().unwrap();
    let mres = mon.stop();
    eprintln!(
        "[e2e] killed worker {killed}; wrk {} requests, socket errors {} (running after the kill: {still_running})",
        w.requests,
        w.socket_errors()
    );
    let rep = measure::finish_kernel_truth(&s.agent, base, &s.nginx, 0, "worker SIGKILLed during wrk -d3s").unwrap();
    let o1 = rep.instances[0].o1;
    eprintln!(
        "[e2e] connections really open: 0; ngxprobe active: {}; stub_status active-1: {} (leaked by the dead worker)",
        rep.instances[0].a1.active,
        o1.active - 1
    );
    // One race no probe can close: the kill lands after a read returned to
    // the worker (counted: the bytes reached nginx, and nothing was pending
    // at the read) and before nginx counts the request it starts from them
    // (ngx_http_alloc_request, microseconds later). A worker starts one
    // request at a time, so the agent may count at most one request per
    // kill that stub_status does not (seen in ~1 of 10 runs); everything
    // else is exact.
    let i = &rep.instances[0];
    let others: Vec<_> = i.checks.iter().filter(|c| c.name != "Δrequests").cloned().collect();
    let requests = i
        .checks
        .iter()
        .find(|c| c.name == "Δrequests")
        .expect("Δrequests compared");
    let exact_but_requests = measure::Report {
        instances: vec![measure::InstanceReport {
            checks: others,
            ..i.clone()
        }],
        ..rep.clone()
    };
    assert_all(&exact_but_requests, &mres);
    let extra = requests.agent - requests.expected;
    assert!(
        (0..=1).contains(&extra),
        "Δrequests: agent {} vs stub_status {}: want equal, or one more (a kill between a read and nginx counting \
         its request)\n{}",
        requests.agent,
        requests.expected,
        rep.table()
    );
    assert!(still_running, "wrk had finished before the worker was killed");
}

#[test]
fn two_instances() {
    let _g = guard("two_instances");
    // One instance exists before the agent starts, the other appears after.
    let a = Nginx::start(NginxOptions {
        tag: "inst-a".into(),
        ..Default::default()
    })
    .unwrap();
    let agent = Agent::start().unwrap();
    agent.wait_instance_up(&a.conf_label()).unwrap();
    let b = Nginx::start(NginxOptions {
        tag: "inst-b".into(),
        worker_processes: 2,
        ..Default::default()
    })
    .unwrap();
    assert_ne!(a.conf_label(), b.conf_label());
    agent.wait_instance_up(&b.conf_label()).unwrap();

    let targets = [Target { nginx: &a, held: 0 }, Target { nginx: &b, held: 0 }];
    let base = measure::begin(&agent, &targets).unwrap();
    let mon = Monitor::start(agent.addr(), vec![a.conf_label(), b.conf_label()]);
    // Different traffic on each, at the same time, so a mix-up shows.
    let (ua, ub) = (a.url("/"), b.url("/missing"));
    let wa = WrkRun::spawn(&["-t1", "-c10", "-d2s", &ua], Duration::from_secs(2)).unwrap();
    let wb = WrkRun::spawn(
        &["-t1", "-c5", "-d2s", "-H", "Connection: close", &ub],
        Duration::from_secs(2),
    )
    .unwrap();
    let (ra, rb) = (wa.wait().unwrap(), wb.wait().unwrap());
    let mres = mon.stop();
    eprintln!(
        "[e2e] wrk A: {} requests; wrk B: {} requests ({} non-2xx)",
        ra.requests, rb.requests, rb.non_2xx_3xx
    );
    let rep = measure::finish(&agent, base, &targets, "two instances driven at once").unwrap();
    assert_all(&rep, &mres);
    assert!(ra.requests >= 100 && rb.requests >= 50);
    drop(agent);
}

#[test]
fn agent_restart_with_open_connections() {
    let mut s = Session::one_worker("agent_restart_with_open_connections");
    let a = s.nginx.main_addr();
    let idle: Vec<_> = (0..4).map(|_| clients::idle_connection(a).unwrap()).collect();
    let ka: Vec<_> = (0..2).map(|_| clients::keepalive_idle(a, "/").unwrap()).collect();
    let held = 6;
    measure::quiesce(&s.nginx, held).unwrap();
    // The first agent sees them open.
    let rep = measure::gauges_now(
        &s.agent,
        &s.nginx,
        held,
        "before restart: 4 idle + 2 keep-alive idle held",
    )
    .unwrap();
    eprintln!("{}", rep.table());

    s.agent.restart().unwrap();
    s.agent.wait_instance_up(&s.nginx.conf_label()).unwrap();
    // Counters restarted with the agent: only the gauges are comparable now.
    let after = measure::gauges_now(&s.agent, &s.nginx, held, "right after agent restart (gauges only)").unwrap();

    // Then a short keep-alive load, compared as usual (deltas), still holding the 6.
    let url = s.nginx.url("/");
    let (rep2, mon, w) = measure(
        &s.agent,
        &s.nginx,
        held,
        held,
        "keepalive load after agent restart, 6 still held",
        || wrk(&["-t1", "-c10", "-d1s", &url], Duration::from_secs(1)),
    )
    .unwrap();
    drop((idle, ka));
    eprintln!("[e2e] wrk {} requests", w.requests);
    eprintln!("{}", after.table());
    assert!(
        rep.ok() && after.ok(),
        "agent and stub_status disagree (before restart: {}, right after: {}):\n{}{}",
        if rep.ok() { "ok" } else { "FAIL" },
        if after.ok() { "ok" } else { "FAIL" },
        rep.table(),
        after.table()
    );
    assert_all(&rep2, &mon);
}
