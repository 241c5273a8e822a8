//! Validates the harness against nginx alone (no agent needed): nginx
//! start/stop, the oracle, the raw clients (each one's exact connection and
//! request count, checked with stub_status), wrk and its parser, reload,
//! worker kill, and the kernel view of open connections.
use ngxprobe_e2e::clients::{self, wrk};
use ngxprobe_e2e::measure::{quiesce, quiesce_by_kernel};
use ngxprobe_e2e::nginx::{BIG_FILE_SIZE, Nginx, NginxOptions};
use ngxprobe_e2e::oracle::StubStatus;
use ngxprobe_e2e::{Agent, guard};
use std::time::Duration;

/// Oracle reading once nginx holds no connection: O.accepted etc. then count
/// everything before plus this fetch.
fn settled(n: &Nginx) -> StubStatus {
    quiesce_by_kernel(n, 0).expect("quiesce by kernel")
}

#[test]
fn raw_clients_are_counted_exactly_by_nginx() {
    let _g = guard("raw_clients_are_counted_exactly_by_nginx");
    let n = Nginx::start(NginxOptions::default()).expect("start nginx");
    assert!(n.conf_path().is_absolute());
    let index_len = std::fs::metadata(n.dir().join("html/index.html")).unwrap().len();
    assert!((550..=650).contains(&index_len), "index.html is {index_len} bytes");

    let o0 = settled(&n);
    assert_eq!((o0.active, o0.reading, o0.writing, o0.waiting), (1, 0, 1, 0), "{o0:?}");
    let a = n.main_addr();
    let mut conns = 0;
    let mut reqs = 0;

    for _ in 0..10 {
        let r = clients::http10_get(a, "/").unwrap();
        assert_eq!((r.status, r.body_len), (200, index_len));
    }
    conns += 10;
    reqs += 10;
    for k in [3usize, 10] {
        let rs = clients::pipelined(a, "/", k).unwrap();
        assert_eq!(rs.len(), k);
        assert!(rs.iter().all(|r| r.status == 200 && r.body_len == index_len));
        conns += 1;
        reqs += k as i64;
    }
    let r = clients::split_request(a, "/", 4, Duration::from_millis(30)).unwrap();
    assert_eq!(r.status, 200);
    conns += 1;
    reqs += 1;
    let r = clients::get_close(a, "/missing").unwrap();
    assert_eq!(r.status, 404);
    conns += 1;
    reqs += 1;
    let body = vec![b'x'; 64 * 1024];
    let p = clients::post(a, "/echo", &body, false, Duration::ZERO).unwrap();
    assert_eq!(
        (p.response.status, p.response.body_head.as_slice()),
        (200, &b"ok\n"[..])
    );
    let p = clients::post(a, "/", &body[..1024], false, Duration::ZERO).unwrap();
    assert_eq!(p.response.status, 405);
    let p = clients::post(a, "/echo", &body[..8192], true, Duration::from_secs(1)).unwrap();
    eprintln!(
        "Expect: 100-continue to /echo: interim {:?}, final {}",
        p.interim, p.response.status
    );
    assert_eq!(p.response.status, 200);
    let p = clients::post(a, "/", &body[..8192], true, Duration::from_secs(1)).unwrap();
    eprintln!(
        "Expect: 100-continue to /: interim {:?}, final {}",
        p.interim, p.response.status
    );
    assert_eq!(p.response.status, 405);
    conns += 4;
    reqs += 4;
    for path in ["/big.bin", "/nosendfile/big.bin"] {
        assert_eq!(clients::download(a, path).unwrap(), BIG_FILE_SIZE, "{path}");
    }
    conns += 2;
    reqs += 2;
    let r = clients::http10_get(n.main_addr_v6(), "/").unwrap();
    assert_eq!(r.status, 200);
    conns += 1;
    reqs += 1;

    let o1 = settled(&n);
    // +1: o1's own connection and request.
    assert_eq!(o1.accepted - o0.accepted, conns + 1, "{o0:?} {o1:?}");
    assert_eq!(o1.handled - o0.handled, conns + 1, "{o0:?} {o1:?}");
    assert_eq!(o1.requests - o0.requests, reqs + 1, "{o0:?} {o1:?}");
    assert_eq!((o1.active, o1.reading, o1.writing, o1.waiting), (1, 0, 1, 0), "{o1:?}");

    // Held connections and the states nginx puts them in.
    let idle: Vec<_> = (0..5).map(|_| clients::idle_connection(a).unwrap()).collect();
    let o = quiesce(&n, 5).unwrap();
    assert_eq!(
        (o.reading, o.writing, o.waiting),
        (0, 1, 5),
        "idle never-sending: {o:?}"
    );
    let ka: Vec<_> = (0..3).map(|_| clients::keepalive_idle(a, "/").unwrap()).collect();
    let o = quiesce(&n, 8).unwrap();
    assert_eq!((o.reading, o.writing, o.waiting), (0, 1, 8), "keepalive idle: {o:?}");
    let partial = clients::partial_request(a, "/", 20).unwrap();
    let o = quiesce(&n, 9).unwrap();
    assert_eq!((o.reading, o.writing, o.waiting), (1, 1, 8), "partial header: {o:?}");
    let slow = clients::SlowReader::start(a, "/big.bin", 64 * 1024).unwrap();
    let o = quiesce(&n, 10).unwrap();
    assert_eq!((o.reading, o.writing, o.waiting), (1, 2, 8), "slow reader: {o:?}");
    assert_eq!(n.open_connections(), 10);
    drop((idle, ka, partial, slow));
    let o = quiesce(&n, 0).unwrap();
    assert_eq!((o.reading, o.writing, o.waiting), (0, 1, 0), "{o:?}");
}

#[test]
fn wrk_runs_and_is_parsed() {
    let _g = guard("wrk_runs_and_is_parsed");
    let n = Nginx::start(NginxOptions::default()).expect("start nginx");
    let url = n.url("/");
    let w = wrk(&["-t1", "-c5", "-d1s", &url], Duration::from_secs(1)).unwrap();
    eprintln!("{}", w.output);
    assert!(w.requests > 100 && w.non_2xx_3xx == 0, "{w:?}");
    let url404 = n.url("/missing");
    let w = wrk(&["-t1", "-c5", "-d1s", &url404], Duration::from_secs(1)).unwrap();
    assert!(w.requests > 100 && w.non_2xx_3xx == w.requests, "{w:?}");
    let url6 = n.url_v6("/");
    let w = wrk(
        &["-t1", "-c5", "-d1s", "-H", "Connection: close", &url6],
        Duration::from_secs(1),
    )
    .unwrap();
    eprintln!("{}", w.output);
    assert!(w.requests > 50 && w.non_2xx_3xx == 0, "{w:?}");
    quiesce(&n, 0).unwrap();
}

#[test]
fn reload_and_worker_kill_helpers() {
    let _g = guard("reload_and_worker_kill_helpers");
    let n = Nginx::start(NginxOptions::workers(2)).expect("start nginx");
    let w0 = n.worker_pids();
    assert_eq!(w0.len(), 2);
    let before = settled(&n);
    let w1 = n.reload().unwrap();
    assert!(w1.iter().all(|p| !w0.contains(p)), "{w0:?} {w1:?}");
    let after = settled(&n);
    // stub_status counters live in shared memory that survives a reload.
    assert_eq!(after.accepted, before.accepted + 1, "{before:?} {after:?}");

    // Killing a worker leaks its connections in stub_status' gauges.
    let a = n.main_addr();
    let ka: Vec<_> = (0..6).map(|_| clients::keepalive_idle(a, "/").unwrap()).collect();
    quiesce(&n, 6).unwrap();
    for _ in 0..2 {
        n.kill_worker().unwrap();
    }
    let o = quiesce_by_kernel(&n, 0).unwrap();
    eprintln!("after killing both workers with 6 idle keep-alive connections: {o:?}");
    assert_eq!(
        o.active,
        6 + 1,
        "stub_status keeps the dead workers' connections: {o:?}"
    );
    drop(ka);
    assert_eq!(n.worker_pids().len(), 2);
}

#[test]
fn nginx_processes_are_gone_after_drop() {
    let _g = guard("nginx_processes_are_gone_after_drop");
    let n = Nginx::start(NginxOptions::workers(2)).expect("start nginx");
    let master = n.master_pid();
    let workers = n.worker_pids();
    let dir = n.dir().to_path_buf();
    drop(n);
    for p in std::iter::once(master).chain(workers) {
        assert!(!ngxprobe_e2e::util::is_alive(p), "pid {p} still alive");
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn missing_agent_binary_is_a_clear_error() {
    let e = match Agent::start_with(std::path::Path::new("/nonexistent/ngxprobe")) {
        Ok(_) => panic!("started a nonexistent binary"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("ngxprobe binary not found at /nonexistent/ngxprobe"), "{e}");
}
