//! The agent checks its counters against nginx's own shared-memory ones
//! (`ngxprobe_counter_drift{counter}`): 0 while they agree, and exactly the
//! gap when they do not. The gap made here is a documented one: without the
//! request uprobe (`per_request.uprobe: never`) requests on TLS connections
//! are not counted, so M HTTPS requests are a drift of −M on `requests`,
//! while their connections (accepted, handled) are counted: 0.
use ngxprobe_e2e::agent::Agent;
use ngxprobe_e2e::guard;
use ngxprobe_e2e::nginx::{Nginx, NginxOptions};
use ngxprobe_e2e::protocol_clients::{curl, curl_https};
use ngxprobe_e2e::util::{Poll, poll, require_tool};
use std::time::Duration;

const DRIFT: &str = "ngxprobe_counter_drift";
const COUNTERS: [&str; 7] = [
    "accepted", "handled", "requests", "active", "reading", "writing", "waiting",
];

/// Waits (bounded) until the instance's drift is `want` for every counter
/// (the stub_status gauges settle once connections close); the last values
/// on timeout.
fn wait_drift(agent: &Agent, conf: &str, want: [f64; 7]) -> [f64; 7] {
    let mut last = [f64::NAN; 7];
    let r = poll(
        "the counter drift to settle",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            for (v, c) in last.iter_mut().zip(COUNTERS) {
                *v = s.value_with(DRIFT, conf, "counter", c);
            }
            let present = s
                .samples
                .iter()
                .filter(|x| x.name == DRIFT && x.label("conf_path") == Some(conf))
                .count();
            Ok(if present == 7 && last == want {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{present} series, {last:?}"))
            })
        },
    );
    if let Err(e) = r {
        eprintln!("[e2e] {e:#}\n{}", agent.log_tail(10));
    }
    last
}

#[test]
fn drift_is_zero_when_counts_agree_and_the_gap_when_not() {
    if require_tool("curl", "cargo xtask setup installs it").is_none() {
        return;
    }
    let _g = guard("drift_is_zero_when_counts_agree_and_the_gap_when_not");
    let nginx = Nginx::start(NginxOptions {
        tls: true,
        ..Default::default()
    })
    .expect("nginx");
    let agent = Agent::start_with_config("per_request:\n  uprobe: never\n").expect("agent");
    let conf = nginx.conf_label();
    agent.wait_instance_up(&conf).expect("instance up");
    assert_eq!(wait_drift(&agent, &conf, [0.0; 7]), [0.0; 7], "at start");
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        log.contains("reading nginx's own counters from pid"),
        "no self-check line in the log:\n{}",
        agent.log_tail(20)
    );
    // Plaintext: counted by the probes, as nginx counts them.
    let plain: Vec<String> = (0..6).map(|_| format!("http://{}/", nginx.main_addr())).collect();
    curl(&[], &plain).expect("curl");
    curl(&["-H", "Connection: close"], &plain).expect("curl close");
    assert_eq!(wait_drift(&agent, &conf, [0.0; 7]), [0.0; 7], "after plaintext");
    // HTTPS without the uprobe: 5 requests on one connection, uncounted.
    let tls = nginx.tls_addr().expect("TLS listener");
    let r = curl_https(tls, &["/", "/", "/", "/", "/"]).expect("curl https");
    assert_eq!(r.connections, 1, "one keep-alive connection");
    let want = [0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 0.0];
    assert_eq!(wait_drift(&agent, &conf, want), want, "after 5 HTTPS requests");
}
