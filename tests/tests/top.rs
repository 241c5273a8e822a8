//! `ngxprobe top` in a real terminal (tmux), against a real agent and nginx.
//!
//! nginx runs in a network namespace the test creates with `backlog=4` (as in
//! kernel_listen.rs); `ngxprobe top` runs in a tmux pane and its screen is read
//! with `capture-pane`:
//! * its three listeners show up as rows of the instance, with the request
//!   rate under load and (uprobe attached) the status mix and p50/p99;
//! * sorted by name (`n`) the `[::1]` listener is below the `127.0.0.1` ones;
//!   sorted by drops (`d`) and after an accept-queue overflow on `[::1]`
//!   (worker stopped, a burst of connects) it is above them, with its drops
//!   and the full queue (5/4): the screen shows the drops at most one
//!   refresh + 2 s after the agent's /metrics does;
//! * the agent hung (SIGSTOP), the screen says it is unreachable within a
//!   refresh's bound and top keeps running; the agent resumed, the line goes;
//! * `q` ends it at once (with a refresh hanging on the stopped agent), with
//!   status 0 and the terminal off the alternate screen.
use ngxprobe_e2e::agent::binary_path;
use ngxprobe_e2e::clients;
use ngxprobe_e2e::metrics_text::Scrape;
use ngxprobe_e2e::netns::Netns;
use ngxprobe_e2e::nginx::{Nginx, NginxOptions};
use ngxprobe_e2e::tmux::Tmux;
use ngxprobe_e2e::util::{self, Poll, ResumeOnDrop, poll};
use ngxprobe_e2e::{Agent, guard};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const BACKLOG: u32 = 4;
const BURST: usize = 12;
const REFRESH: Duration = Duration::from_secs(1);

/// The table on screen: the header's column names (without the sort mark
/// `*`), which one is sorted, and each row's cells by column name. Cells are
/// cut at the header's column starts (a blank cell leaves no token).
struct Screen {
    sorted: Option<String>,
    rows: Vec<BTreeMap<String, String>>,
}

fn parse(text: &str) -> Option<Screen> {
    let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    let h = lines
        .iter()
        .position(|l| l.starts_with(&['L', 'I', 'S', 'T', 'E', 'N', 'E', 'R']))?;
    let header = &lines[h];
    let mut cols = Vec::new(); // (start, name)
    let mut i = 0;
    while i < header.len() {
        if header[i] != ' ' && (i == 0 || header[i - 1] == ' ') {
            let end = (i..header.len()).find(|&j| header[j] == ' ').unwrap_or(header.len());
            cols.push((i, header[i..end].iter().collect::<String>()));
            i = end;
        } else {
            i += 1;
        }
    }
    let sorted = cols
        .iter()
        .find(|(_, n)| n.ends_with('*'))
        .map(|(_, n)| n.trim_end_matches('*').to_string());
    let rows = lines[h + 1..]
        .iter()
        .take_while(|l| !l.iter().collect::<String>().starts_with("sort: "))
        .filter(|l| l.iter().any(|c| *c != ' '))
        .map(|l| {
            cols.iter()
                .enumerate()
                .map(|(k, (start, name))| {
                    let end = cols.get(k + 1).map_or(l.len(), |c| c.0).min(l.len());
                    let cell: String = l.get((*start).min(l.len())..end).unwrap_or(&[]).iter().collect();
                    (name.trim_end_matches('*').to_string(), cell.trim().to_string())
                })
                .collect()
        })
        .collect();
    Some(Screen { sorted, rows })
}

/// Our instance's listeners in screen order.
fn our_order(s: &Screen, conf: &str) -> Vec<String> {
    s.rows
        .iter()
        .filter(|r| r.get("INSTANCE").map(String::as_str) == Some(conf))
        .map(|r| r["LISTENER"].clone())
        .collect()
}

/// A status-class cell (`75%`) as a number.
fn share(row: &BTreeMap<String, String>, col: &str) -> Option<f64> {
    row.get(col)?.trim_end_matches('%').parse().ok()
}

fn metric_drops(s: &Scrape, conf: &str, addr: &str) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.name == "ngxprobe_listen_drops_total"
                && x.label("conf_path") == Some(conf)
                && x.label("listen_address") == Some(addr)
        })
        .map(|x| x.value)
}

#[test]
fn top_shows_listeners_sorts_and_shows_induced_drops() {
    let _g = guard("top_shows_listeners_sorts_and_shows_induced_drops");
    if util::require_tool("tmux", "apt-get install tmux").is_none() {
        return;
    }
    let t0 = Instant::now();
    let ns = Netns::create("top").expect("create netns");
    let n = Nginx::start(NginxOptions {
        tag: "top".into(),
        big_file: false,
        netns: Some(ns.handle()),
        backlog: Some(BACKLOG),
        ..Default::default()
    })
    .expect("start nginx in the netns");
    // The uprobe even on this plaintext-only instance (`auto` would measure
    // it with the socket probes): the status mix and latencies below are
    // checked when it is attached.
    let agent = Agent::start_with_config("per_request:\n  uprobe: always\n").expect("start ngxprobe");
    let conf = n.conf_label();
    agent.wait_instance_up(&conf).expect("agent sees the nginx");
    let v6 = n.main_addr_v6().to_string();
    let v4 = n.main_addr().to_string();
    let oracle = n.oracle_addr().to_string();

    let cmd = format!(
        "{} top --url http://{} --interval {}s",
        binary_path().display(),
        agent.addr(),
        REFRESH.as_secs()
    );
    let tmux = Tmux::start("top", &cmd, 200, 50).expect("start ngxprobe top in tmux");
    let screen = || -> anyhow::Result<Screen> {
        let text = tmux.screen()?;
        parse(&text).ok_or_else(|| anyhow::anyhow!("no table on screen:\n{text}"))
    };

    // The table is up (keys sent before the terminal is in raw mode could be lost).
    poll(
        "top draws its table",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            Ok(match screen() {
                Ok(_) => Poll::Ready(()),
                Err(e) => Poll::Pending(e.to_string()),
            })
        },
    )
    .unwrap();
    // Requests (3 × 200 /echo, 1 × 404) while the screen is read: the rate,
    // and with the per-request uprobe attached to this nginx build the status
    // mix and latencies, appear on the instance's rows.
    let attached = agent.scrape().unwrap().samples.iter().any(|x| {
        x.name == "ngxprobe_per_request_probe_attached" && x.label("conf_path") == Some(&conf) && x.value == 1.0
    });
    let paths: Vec<String> = ["/echo", "/echo", "/echo", "/no-such-file"].map(String::from).into();
    let main = n.main_addr();
    let busy = poll(
        "top shows the requests",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let got = n.in_netns(|| clients::keepalive_sequence(main, &paths))??;
            let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
            assert_eq!(statuses, [200, 200, 200, 404], "nginx answers");
            let s = screen()?;
            let Some(r) = s.rows.iter().find(|r| r.get("INSTANCE") == Some(&conf)).cloned() else {
                return Ok(Poll::Pending("no row yet".into()));
            };
            let rate = r["REQ/S"].parse::<f64>().unwrap_or(0.0);
            let mix_shown =
                !r["2XX"].is_empty() && !r["4XX"].is_empty() && !r["P50"].is_empty() && !r["P99"].is_empty();
            // 3 of 4 requests are 2xx, 1 is 4xx. A refresh can see the 2xx
            // series a sample before the 4xx one (a rate needs two samples),
            // so wait for a refresh showing both (asserted below).
            let both = share(&r, "2XX").is_some_and(|s| s > 0.0) && share(&r, "4XX").is_some_and(|s| s > 0.0);
            Ok(if rate > 0.0 && mix_shown == attached && (both || !attached) {
                Poll::Ready(r)
            } else {
                Poll::Pending(format!("uprobe attached {attached}, row {r:?}"))
            })
        },
    )
    .unwrap();
    eprintln!("with requests (uprobe attached: {attached}): {busy:?}");
    if attached {
        // Shares as rates over the window.
        let share = |c: &str| share(&busy, c).unwrap();
        assert!((60.0..=90.0).contains(&share("2XX")), "2xx share {busy:?}");
        assert!((10.0..=40.0).contains(&share("4XX")), "4xx share {busy:?}");
        assert_eq!((busy["3XX"].as_str(), busy["5XX"].as_str()), ("0%", "0%"));
    }

    // Sorted by name: the instance's listeners, [::1] after 127.0.0.1.
    tmux.keys("n").unwrap();
    let by_name = poll(
        "top shows the instance's three listeners sorted by name",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = screen()?;
            let order = our_order(&s, &conf);
            Ok(if s.sorted.as_deref() == Some("INSTANCE") && order.len() == 3 {
                Poll::Ready(order)
            } else {
                Poll::Pending(format!("sorted by {:?}, our rows {order:?}", s.sorted))
            })
        },
    )
    .unwrap();
    let mut expect = vec![v4.clone(), oracle.clone()];
    expect.sort();
    expect.push(v6.clone());
    assert_eq!(by_name, expect, "name order");
    eprintln!("by name: {by_name:?}");

    // Sort by drops, then overflow [::1]'s accept queue.
    tmux.keys("d").unwrap();
    poll(
        "sorted by drops",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let s = screen()?;
            Ok(if s.sorted.as_deref() == Some("DROPS") {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{:?}", s.sorted))
            })
        },
    )
    .unwrap();
    let worker = n.worker_pids()[0];
    // SAFETY: kill(2) of our own nginx worker.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let resume = ResumeOnDrop(worker);
    let burst = ns.connect_burst(n.main_addr_v6(), BURST).expect("connect burst");
    let mut metric_at: Option<Instant> = None;
    let (screen_at, row, order) = poll(
        "top shows the drops and the full queue of [::1]",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            if metric_at.is_none() && metric_drops(&agent.scrape()?, &conf, &v6).is_some_and(|d| d > 0.0) {
                metric_at = Some(Instant::now());
            }
            let s = screen()?;
            let row = s
                .rows
                .iter()
                .find(|r| r.get("INSTANCE") == Some(&conf) && r.get("LISTENER") == Some(&v6))
                .cloned();
            let drops = row.as_ref().and_then(|r| r["DROPS"].parse::<f64>().ok());
            Ok(match (drops, &row) {
                (Some(d), Some(r)) if d > 0.0 && r["QUEUE"] == format!("{}/{BACKLOG}", BACKLOG + 1) => {
                    Poll::Ready((Instant::now(), r.clone(), our_order(&s, &conf)))
                }
                _ => Poll::Pending(format!("[::1] row {row:?}")),
            })
        },
    )
    .unwrap();
    let metric_at = metric_at.expect("the agent's /metrics showed the drops before the screen");
    let lag = screen_at.saturating_duration_since(metric_at);
    eprintln!(
        "drops on screen {} ms after /metrics (refresh {} ms); row {row:?}",
        lag.as_millis(),
        REFRESH.as_millis()
    );
    assert!(
        lag <= Duration::from_secs(2) + REFRESH,
        "screen showed the drops {lag:?} after the agent's /metrics"
    );
    assert_eq!(order.first(), Some(&v6), "sorted by drops, [::1] leads: {order:?}");
    assert_ne!(order, by_name, "the sort changed the order");
    drop(resume);
    drop(burst);

    // The agent hung (SIGSTOP: the kernel still completes connects, nothing
    // answers): within a refresh's bound the screen says so, over the table
    // it keeps, and top keeps running (retrying).
    let agent_url = format!("http://{}", agent.addr());
    let unreachable = |what: &str, reason: &str| {
        poll(what, Duration::from_secs(10), Duration::from_millis(50), || {
            let text = tmux.screen()?;
            Ok(
                match text.lines().find(|l| {
                    l.contains(&format!(
                        "agent at {agent_url} unreachable: {reason}, retrying every 1s"
                    ))
                }) {
                    Some(l) => Poll::Ready(l.trim().to_string()),
                    None => Poll::Pending(text),
                },
            )
        })
        .unwrap()
    };
    // SAFETY: kill(2) of the agent this test started.
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    let resume_agent = ResumeOnDrop(agent.pid());
    let said = unreachable("top says the hung agent is unreachable", "no answer within 3s");
    eprintln!("{said}");
    assert!(said.contains("(table from "), "the table shown is the last one: {said}");
    assert!(parse(&tmux.screen().unwrap()).is_some_and(|s| !our_order(&s, &conf).is_empty()));
    assert_eq!(tmux.exited().unwrap(), None, "top keeps running while its agent hangs");

    // The agent back: the next refresh clears the line.
    drop(resume_agent);
    poll(
        "top reads the agent again",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let text = tmux.screen()?;
            Ok(if text.contains("unreachable") {
                Poll::Pending(text)
            } else {
                Poll::Ready(())
            })
        },
    )
    .unwrap();

    // Hung again, with a refresh waiting on it: q must not wait for that
    // refresh (it would take up to 3 s more). The line is shown right when a
    // refresh gives up, and the next one starts at once (its interval is over).
    // SAFETY: kill(2) of the agent this test started.
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    let resume_agent = ResumeOnDrop(agent.pid());
    unreachable("top says the hung agent is unreachable again", "no answer within 3s");

    // q: exits 0 at once, the terminal back on the normal screen.
    tmux.keys("q").unwrap();
    let q_at = Instant::now();
    let status = poll(
        "top exits on q",
        Duration::from_secs(2),
        Duration::from_millis(20),
        || {
            Ok(match tmux.exited()? {
                Some(s) => Poll::Ready(s),
                None => Poll::Pending("running".into()),
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nthreads of ngxprobe top:\n{}", tmux.threads()));
    eprintln!("top ended {} ms after q", q_at.elapsed().as_millis());
    drop(resume_agent);
    assert_eq!(status, 0, "exit status of ngxprobe top");
    assert_eq!(
        tmux.format("#{alternate_on}").unwrap(),
        "0",
        "left the alternate screen"
    );
    assert!(
        !tmux.screen().unwrap().contains("LISTENER"),
        "the table is gone with the alternate screen"
    );
    drop(tmux);
    eprintln!("top e2e took {:?}", t0.elapsed());
}
