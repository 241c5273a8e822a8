//! Accuracy of ngxprobe's stub_status counters against nginx's own
//! stub_status, one scenario per test, single nginx instance.
//!
//! Every test follows the exact protocol documented in
//! `ngxprobe_e2e::measure` (A0, O0, scenario, quiesce, O1, A1) and runs the
//! invariant monitor (agent scraped every 100 ms) during the scenario.
use ngxprobe_e2e::Session;
use ngxprobe_e2e::clients::{self, SlowReader, wrk};
use ngxprobe_e2e::measure::{self, assert_all, measure};
use ngxprobe_e2e::nginx::{BIG_FILE_SIZE, NginxOptions};
use std::time::Duration;

const D2: Duration = Duration::from_secs(2);

fn assert_wrk_ok(w: &clients::WrkResult, expect_non2xx: bool) {
    eprintln!(
        "[e2e] wrk: {} requests, non-2xx/3xx {}, socket errors {}",
        w.requests,
        w.non_2xx_3xx,
        w.socket_errors()
    );
    assert!(w.requests >= 100, "wrk produced too little traffic:\n{}", w.output);
    if expect_non2xx {
        assert_eq!(w.non_2xx_3xx, w.requests, "{}", w.output);
    } else {
        assert_eq!(w.non_2xx_3xx, 0, "{}", w.output);
    }
}

#[test]
fn keepalive_load() {
    let s = Session::one_worker("keepalive_load");
    let url = s.nginx.url("/");
    let (rep, mon, w) = measure(&s.agent, &s.nginx, 0, 0, "keepalive load (wrk -t1 -c20 -d2s)", || {
        wrk(&["-t1", "-c20", "-d2s", &url], D2)
    })
    .unwrap();
    assert_all(&rep, &mon);
    assert_wrk_ok(&w, false);
}

#[test]
fn connection_close_load() {
    let s = Session::one_worker("connection_close_load");
    let url = s.nginx.url("/");
    let (rep, mon, w) = measure(&s.agent, &s.nginx, 0, 0, "Connection: close load (wrk)", || {
        wrk(&["-t1", "-c20", "-d2s", "-H", "Connection: close", &url], D2)
    })
    .unwrap();
    assert_all(&rep, &mon);
    assert_wrk_ok(&w, false);
}

#[test]
fn http10_requests() {
    let s = Session::one_worker("http10_requests");
    let a = s.nginx.main_addr();
    let (rep, mon, ()) = measure(&s.agent, &s.nginx, 0, 0, "200 sequential HTTP/1.0 requests", || {
        for i in 0..200 {
            let r = clients::http10_get(a, "/")?;
            anyhow::ensure!(r.status == 200, "request {i}: status {}", r.status);
        }
        Ok(())
    })
    .unwrap();
    assert_all(&rep, &mon);
}

#[test]
fn pipelined_requests() {
    let s = Session::one_worker("pipelined_requests");
    let a = s.nginx.main_addr();
    let (rep, mon, ()) = measure(
        &s.agent,
        &s.nginx,
        0,
        0,
        "pipelined: 5×3 and 5×10 requests in one write",
        || {
            for k in [3usize, 10] {
                for _ in 0..5 {
                    let rs = clients::pipelined(a, "/", k)?;
                    anyhow::ensure!(rs.len() == k && rs.iter().all(|r| r.status == 200), "bad responses");
                }
            }
            Ok(())
        },
    )
    .unwrap();
    assert_all(&rep, &mon);
}

#[test]
fn request_headers_in_pieces() {
    let s = Session::one_worker("request_headers_in_pieces");
    let a = s.nginx.main_addr();
    // Phase 1: complete requests whose header arrives in 4 pieces, 30 ms apart.
    let (rep, mon, ()) = measure(
        &s.agent,
        &s.nginx,
        0,
        0,
        "request header in 4 pieces, 30 ms apart (×5)",
        || {
            for _ in 0..5 {
                let r = clients::split_request(a, "/", 4, Duration::from_millis(30))?;
                anyhow::ensure!(r.status == 200, "status {}", r.status);
            }
            Ok(())
        },
    )
    .unwrap();
    assert_all(&rep, &mon);
    // Phase 2: a connection held with half a request header sent: nginx is
    // reading it (Reading: 1).
    let (rep, mon, partial) = measure(&s.agent, &s.nginx, 0, 1, "half a request header held open", || {
        clients::partial_request(a, "/", 30)
    })
    .unwrap();
    assert_eq!(
        rep.instances[0].o1.reading, 1,
        "nginx should be reading the partial request"
    );
    assert_all(&rep, &mon);
    let base = measure::begin_one(&s.agent, &s.nginx, 1).unwrap();
    drop(partial);
    let rep = measure::finish_one(&s.agent, base, &s.nginx, 0, "partial request closed").unwrap();
    rep.assert_ok();
}

#[test]
fn idle_connections_never_send() {
    let s = Session::one_worker("idle_connections_never_send");
    let a = s.nginx.main_addr();
    let (rep, mon, idle) = measure(
        &s.agent,
        &s.nginx,
        0,
        5,
        "5 idle connections that never send, held",
        || {
            (0..5)
                .map(|_| clients::idle_connection(a))
                .collect::<anyhow::Result<Vec<_>>>()
        },
    )
    .unwrap();
    assert_all(&rep, &mon);
    let base = measure::begin_one(&s.agent, &s.nginx, 5).unwrap();
    drop(idle);
    let rep = measure::finish_one(&s.agent, base, &s.nginx, 0, "the 5 idle connections closed").unwrap();
    rep.assert_ok();
}

#[test]
fn keepalive_connections_held_idle() {
    let s = Session::one_worker("keepalive_connections_held_idle");
    let a = s.nginx.main_addr();
    let (rep, mon, held) = measure(
        &s.agent,
        &s.nginx,
        0,
        3,
        "3 keep-alive connections, one request each, held idle",
        || {
            (0..3)
                .map(|_| clients::keepalive_idle(a, "/"))
                .collect::<anyhow::Result<Vec<_>>>()
        },
    )
    .unwrap();
    assert_all(&rep, &mon);
    let base = measure::begin_one(&s.agent, &s.nginx, 3).unwrap();
    for c in held {
        clients::close_gracefully(c).unwrap();
    }
    let rep = measure::finish_one(&s.agent, base, &s.nginx, 0, "the 3 keep-alive connections closed").unwrap();
    rep.assert_ok();
}

#[test]
fn not_found_load() {
    let s = Session::one_worker("not_found_load");
    let url = s.nginx.url("/missing");
    let (rep, mon, w) = measure(&s.agent, &s.nginx, 0, 0, "404s (wrk on /missing)", || {
        wrk(&["-t1", "-c20", "-d2s", &url], D2)
    })
    .unwrap();
    assert_all(&rep, &mon);
    assert_wrk_ok(&w, true);
}

/// Several full downloads of a 10 MB file, then a slow reader that reads
/// 64 KiB and stops reading while held open (nginx is writing), then closed.
fn large_file(name: &str, path: &str) {
    let s = Session::one_worker(name);
    let a = s.nginx.main_addr();
    let (rep, mon, slow) = measure(
        &s.agent,
        &s.nginx,
        0,
        1,
        &format!("3 downloads of {path}, then a slow reader held"),
        || {
            for i in 0..3 {
                let n = clients::download(a, path)?;
                anyhow::ensure!(n == BIG_FILE_SIZE, "download {i}: {n} bytes");
            }
            SlowReader::start(a, path, 64 * 1024)
        },
    )
    .unwrap();
    assert!(
        rep.instances[0].o1.writing >= 2,
        "nginx should be writing to the slow reader: {:?}",
        rep.instances[0].o1
    );
    assert_all(&rep, &mon);
    let base = measure::begin_one(&s.agent, &s.nginx, 1).unwrap();
    drop(slow);
    let rep = measure::finish_one(&s.agent, base, &s.nginx, 0, "slow reader closed").unwrap();
    rep.assert_ok();
}

#[test]
fn large_file_sendfile_on() {
    large_file("large_file_sendfile_on", "/big.bin");
}

#[test]
fn large_file_sendfile_off() {
    large_file("large_file_sendfile_off", "/nosendfile/big.bin");
}

/// 4 keep-alive connections × 5 GETs of different 2 MiB files, all at once:
/// every request is counted, with sendfile on (one sendfile call reaches TCP
/// as many sends) and off.
#[test]
fn keepalive_large_files() {
    const FILE_SIZE: usize = 2 * 1024 * 1024;
    let s = Session::one_worker("keepalive_large_files");
    let html = s.nginx.dir().join("html");
    for f in 0..5u8 {
        let body: Vec<u8> = (0..FILE_SIZE)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(f))
            .collect();
        std::fs::write(html.join(format!("f{f}.bin")), body).expect("write test file");
    }
    let a = s.nginx.main_addr();
    for prefix in ["/", "/nosendfile/"] {
        let paths: Vec<String> = (0..5).map(|f| format!("{prefix}f{f}.bin")).collect();
        let name = format!("4 keep-alive connections × 5 GETs of 2 MiB files under {prefix}");
        let (rep, mon, ()) = measure::measure(&s.agent, &s.nginx, 0, 0, &name, || {
            std::thread::scope(|sc| {
                let runs: Vec<_> = (0..4)
                    .map(|_| sc.spawn(|| clients::keepalive_sequence(a, &paths)))
                    .collect();
                for (c, run) in runs.into_iter().enumerate() {
                    let rs = run
                        .join()
                        .map_err(|_| anyhow::anyhow!("client thread {c} panicked"))??;
                    anyhow::ensure!(
                        rs.len() == 5 && rs.iter().all(|&(st, len)| st == 200 && len == FILE_SIZE as u64),
                        "connection {c}: {rs:?}"
                    );
                }
                Ok(())
            })
        })
        .expect("measure");
        let i = &rep.instances[0];
        eprintln!(
            "[e2e] {name}: requests ngxprobe {} vs stub_status {} (+1 protocol offset)",
            i.a1.requests - i.a0.expect("A0").requests,
            i.o1.requests - i.o0.expect("O0").requests + 1
        );
        assert_all(&rep, &mon);
    }
}

#[test]
fn post_with_body() {
    let s = Session::one_worker("post_with_body");
    let a = s.nginx.main_addr();
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let wait = Duration::from_secs(1);
    // (path, body length, Expect: 100-continue, expected status). Each case is
    // measured on its own so a mismatch names the case.
    let cases: [(&str, usize, bool, u16); 6] = [
        ("/echo", 3, false, 200),
        ("/echo", 64 * 1024, false, 200),
        ("/", 1024, false, 405),
        ("/", 64 * 1024, false, 405),
        ("/echo", 8 * 1024, true, 200),
        ("/", 8 * 1024, true, 405),
    ];
    let mut failed = Vec::new();
    for (path, len, expect, status) in cases {
        let name = format!(
            "POST {path}, {len}-byte body{}",
            if expect { ", Expect: 100-continue" } else { "" }
        );
        let (rep, mon, r) = measure(&s.agent, &s.nginx, 0, 0, &name, || {
            clients::post(a, path, &body[..len], expect, wait)
        })
        .unwrap();
        eprintln!("[e2e] {name}: interim {:?}, final {}", r.interim, r.response.status);
        assert_eq!(r.response.status, status, "{name}");
        eprintln!("{}", rep.table());
        if !rep.ok() || !mon.violations.is_empty() {
            failed.push((name, rep, mon));
        }
    }
    if let Some((_, rep, mon)) = failed.first() {
        let names: Vec<&str> = failed.iter().map(|(n, _, _)| n.as_str()).collect();
        eprintln!("[e2e] failing POST cases: {names:?}");
        assert_all(rep, mon);
    }
}

#[test]
fn two_workers() {
    let s = Session::start("two_workers", NginxOptions::workers(2));
    assert_eq!(s.nginx.worker_pids().len(), 2);
    let url = s.nginx.url("/");
    let (rep, mon, w) = measure(&s.agent, &s.nginx, 0, 0, "worker_processes 2, keepalive load", || {
        wrk(&["-t2", "-c20", "-d2s", &url], D2)
    })
    .unwrap();
    assert_all(&rep, &mon);
    assert_wrk_ok(&w, false);
}

#[test]
fn ipv6_listener() {
    let s = Session::one_worker("ipv6_listener");
    let url = s.nginx.url_v6("/");
    let (rep, mon, w) = measure(&s.agent, &s.nginx, 0, 0, "keepalive load on [::1]", || {
        wrk(&["-t1", "-c20", "-d2s", &url], D2)
    })
    .unwrap();
    assert_all(&rep, &mon);
    assert_wrk_ok(&w, false);
}
