//! Kubernetes metadata: real nginx instances started inside cgroups with the
//! kubelet's real path layouts (containerd under the systemd driver on the
//! cgroup v2 hierarchy; CRI-O under the cgroupfs driver on a v1 hierarchy),
//! and the agent pointed at a local HTTPS stand-in for the API server
//! (`kube_api`, the real API's JSON and watch stream). /metrics must carry
//! namespace/pod/container and the chosen pod label on nginx's families,
//! keep them through an API outage, drop a pod deleted by a watch event, and
//! outside Kubernetes the API is never contacted.
use ngxprobe_e2e::agent::AgentOptions;
use ngxprobe_e2e::kube_api::{ApiRequest, FakeKubeApi, PodSpec, pod_json};
use ngxprobe_e2e::metrics_text::{Sample, Scrape};
use ngxprobe_e2e::util::{Poll, TempDir, poll};
use ngxprobe_e2e::{Agent, Nginx, NginxOptions, guard};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NODE: &str = "node-e2e";

/// A fresh random UUID (the kernel's), as Kubernetes makes pod UIDs.
fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read a random uuid")
        .trim()
        .to_string()
}

/// A fresh 64-hex container id.
fn container_id() -> String {
    format!("{}{}", uuid(), uuid()).replace('-', "")
}

/// Where a cgroup filesystem of `fstype` ("cgroup2", or "cgroup" with
/// `option` among its mount options) is mounted, from /proc/self/mountinfo.
fn cgroup_mount(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fs, _src, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
        let ok = fs == fstype && option.is_none_or(|o| opts.split(',').any(|x| x == o));
        ok.then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or("")))
    })
}

/// A chain of cgroup directories the test created, removed (innermost first)
/// once their processes have exited.
struct Cgroup {
    created: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates `root/rel` (and any missing parent) and returns the leaf.
    fn create(root: &Path, rel: &str) -> Cgroup {
        let mut created = Vec::new();
        let mut p = root.to_path_buf();
        for comp in rel.split('/') {
            p.push(comp);
            if !p.exists() {
                std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                created.push(p.clone());
            }
        }
        Cgroup { created }
    }

    fn leaf(&self) -> PathBuf {
        self.created.last().cloned().expect("a created cgroup")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // A killed nginx leaves its cgroup when it is reaped: bounded wait.
            for _ in 0..200 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("[e2e] cannot remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Every sample of an nginx family for `conf_path` (`nginx_*` and `ngxprobe_nginx_*`).
fn instance_samples<'a>(s: &'a Scrape, conf_path: &str) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.label("conf_path") == Some(conf_path))
        .collect()
}

fn up_sample<'a>(s: &'a Scrape, conf_path: &str) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.name == "nginx_up" && x.label("conf_path") == Some(conf_path))
}

/// Waits until nginx_up of `conf_path` carries `label=value` (or, with
/// `None`, no `label` at all).
fn wait_label(agent: &Agent, conf_path: &str, label: &str, value: Option<&str>) -> Scrape {
    poll(
        &format!("nginx_up{{conf_path={conf_path:?}}} with {label}={value:?}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            let got = up_sample(&s, conf_path).map(|x| x.label(label).map(str::to_string));
            Ok(match got {
                Some(v) if v.as_deref() == value => Poll::Ready(s),
                other => Poll::Pending(format!("{label} = {other:?}")),
            })
        },
    )
    .unwrap()
}

fn counter(s: &Scrape, name: &str, pairs: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.name == name && pairs.iter().all(|(k, v)| x.label(k) == Some(v)))
        .map(|x| x.value)
        .sum()
}

fn wait_counter(agent: &Agent, name: &str, pairs: &[(&str, &str)], at_least: f64) -> Scrape {
    poll(
        &format!("{name}{pairs:?} >= {at_least}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = agent.scrape()?;
            let v = counter(&s, name, pairs);
            Ok(if v >= at_least {
                Poll::Ready(s)
            } else {
                Poll::Pending(format!("{v}"))
            })
        },
    )
    .unwrap()
}

fn agent_config(dir: &Path, api: &FakeKubeApi) -> String {
    format!(
        "discovery:\n  max_instances_per_netns: 64\nkubernetes:\n  token_file: {}\n  ca_file: {}\n  pod_labels: [app.kubernetes.io/name]\n",
        dir.join("token").display(),
        api.ca_file.display()
    )
}

fn assert_api_request(r: &ApiRequest, token: &str) {
    assert_eq!(r.path, "/api/v1/pods", "{r:?}");
    assert_eq!(
        r.query.get("fieldSelector").map(String::as_str),
        Some(&*format!("spec.nodeName={NODE}")),
        "only this node's pods: {r:?}"
    );
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {token}")), "{r:?}");
}

#[test]
fn pod_metadata_labels_survive_outages_and_follow_deletes() {
    let _g = guard("pod_metadata_labels_survive_outages_and_follow_deletes");
    let cg2 = cgroup_mount("cgroup2", None).expect("a cgroup v2 hierarchy is mounted");
    let dir = TempDir::new("k8s").unwrap();
    std::fs::write(dir.path().join("token"), "token-1\n").unwrap();
    let mut api = FakeKubeApi::start(dir.path(), "token-1").unwrap();

    // nginx A: containerd, systemd driver, cgroup v2, BestEffort QoS.
    let (uid_a, id_a) = (uuid(), container_id());
    let cg_a = Cgroup::create(
        &cg2,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id_a}.scope",
            uid_a.replace('-', "_")
        ),
    );
    // nginx B: CRI-O, cgroupfs driver, on the v1 pids hierarchy (its v2 line
    // stays at the root), Burstable QoS.
    let (uid_b, id_b) = (uuid(), container_id());
    let pids_v1 = cgroup_mount("cgroup", Some("pids")).expect("a cgroup v1 pids hierarchy is mounted");
    let cg_b = Cgroup::create(&pids_v1, &format!("kubepods/burstable/pod{uid_b}/crio-{id_b}"));

    api.put_pod(pod_json(PodSpec {
        namespace: "shop",
        name: "web-0",
        uid: &uid_a,
        node: NODE,
        container: "nginx",
        runtime: "containerd",
        container_id: &id_a,
        labels: json!({"app.kubernetes.io/name": "web", "pod-template-hash": "5d9c7b6f4"}),
    }));
    api.put_pod(pod_json(PodSpec {
        namespace: "edge",
        name: "ingress-7f8d9",
        uid: &uid_b,
        node: NODE,
        container: "controller",
        runtime: "cri-o",
        container_id: &id_b,
        labels: json!({}),
    }));
    // Another pod on the node, without nginx.
    let (uid_c, id_c) = (uuid(), container_id());
    api.put_pod(pod_json(PodSpec {
        namespace: "kube-system",
        name: "coredns-1",
        uid: &uid_c,
        node: NODE,
        container: "coredns",
        runtime: "containerd",
        container_id: &id_c,
        labels: json!({}),
    }));

    let start = |tag: &str, cg: &Cgroup| {
        Nginx::start(NginxOptions {
            tag: tag.into(),
            big_file: false,
            cgroup: Some(cg.leaf()),
            ..Default::default()
        })
        .unwrap()
    };
    let nginx_a = start("k8s-a", &cg_a);
    let nginx_b = start("k8s-b", &cg_b);
    let (conf_a, conf_b) = (nginx_a.conf_label(), nginx_b.conf_label());

    let agent = Agent::start_opts(&AgentOptions {
        config: Some(agent_config(dir.path(), &api)),
        env: vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), api.port().to_string()),
            ("NODE_NAME".into(), NODE.into()),
        ],
        ..Default::default()
    })
    .unwrap();

    // 1. Labels from the list, on every family of each instance, from the
    //    first scrape that shows the instance (discovery waits for the list:
    //    no series first without the pod labels, then with them).
    let first = poll(
        "nginx A in /metrics",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let s = agent.scrape()?;
            Ok(match up_sample(&s, &conf_a) {
                Some(x) => Poll::Ready(x.labels.clone()),
                None => Poll::Pending("absent".into()),
            })
        },
    )
    .unwrap();
    assert!(
        first.iter().any(|(k, v)| k == "pod" && v == "web-0"),
        "first seen without its pod: {first:?}"
    );
    wait_label(&agent, &conf_a, "pod", Some("web-0"));
    let s = wait_label(&agent, &conf_b, "pod", Some("ingress-7f8d9"));
    for (conf, ns, pod, container, id, app) in [
        (&conf_a, "shop", "web-0", "nginx", &id_a, Some("web")),
        (&conf_b, "edge", "ingress-7f8d9", "controller", &id_b, None),
    ] {
        let samples = instance_samples(&s, conf);
        assert!(samples.len() >= 8, "{conf}: only {} samples", samples.len());
        for x in samples {
            let want = [
                ("namespace", Some(ns)),
                ("pod", Some(pod)),
                ("container", Some(container)),
                ("container_id", Some(id.as_str())),
            ];
            for (k, v) in want {
                assert_eq!(x.label(k), v, "{} {:?}", x.name, x.labels);
            }
            assert_eq!(x.label("app_kubernetes_io_name"), app, "{} {:?}", x.name, x.labels);
            assert_eq!(
                x.label("pod_template_hash"),
                None,
                "unselected pod label exported: {:?}",
                x.labels
            );
        }
    }
    assert_eq!(counter(&s, "ngxprobe_kubernetes_cached_pods", &[]), 3.0);
    let reqs = api.requests();
    let list = &reqs[0];
    assert!(!list.is_watch(), "first request is the list: {list:?}");
    assert_api_request(list, "token-1");
    let watch = reqs.iter().find(|r| r.is_watch()).expect("a watch after the list");
    assert_api_request(watch, "token-1");
    assert_eq!(watch.query.get("allowWatchBookmarks").map(String::as_str), Some("true"));
    assert!(watch.query.contains_key("resourceVersion"), "{watch:?}");

    // 2. A BOOKMARK moves the resourceVersion; the token rotates; the server
    //    ends the watch. The agent resumes from the bookmark with the new
    //    token, is told 410 Gone, and lists again.
    let bookmark_rv = api.bookmark();
    wait_counter(
        &agent,
        "ngxprobe_kubernetes_watch_events_total",
        &[("type", "BOOKMARK")],
        1.0,
    );
    std::fs::write(dir.path().join("token"), "token-2\n").unwrap();
    api.rotate_token("token-2");
    api.end_watches(true);
    let s = wait_counter(
        &agent,
        "ngxprobe_kubernetes_api_requests_total",
        &[("request", "list"), ("outcome", "ok")],
        2.0,
    );
    assert!(
        counter(
            &s,
            "ngxprobe_kubernetes_api_requests_total",
            &[("request", "watch"), ("outcome", "expired")]
        ) >= 1.0
    );
    let reqs = api.requests();
    let resumed = reqs
        .iter()
        .filter(|r| r.is_watch() && r.answer == "watch")
        .nth(1)
        .expect("a resumed watch");
    assert_eq!(
        resumed.query.get("resourceVersion"),
        Some(&bookmark_rv),
        "resume from the bookmark: {resumed:?}"
    );
    assert_api_request(resumed, "token-2");
    let relist = reqs.iter().filter(|r| !r.is_watch()).nth(1).expect("a second list");
    assert_api_request(relist, "token-2");
    assert!(
        reqs.iter().all(|r| r.answer != "unauthorized"),
        "a request with a stale token: {reqs:?}"
    );
    assert_eq!(up_sample(&s, &conf_a).and_then(|x| x.label("pod")), Some("web-0"));

    // 3. Outage: the API server goes away. The labels stay; one log line.
    let before = counter(
        &s,
        "ngxprobe_kubernetes_api_requests_total",
        &[("outcome", "unreachable")],
    );
    api.down();
    let s = wait_counter(
        &agent,
        "ngxprobe_kubernetes_api_requests_total",
        &[("outcome", "unreachable")],
        before + 2.0,
    );
    assert_eq!(counter(&s, "ngxprobe_kubernetes_api_up", &[]), 0.0);
    assert_eq!(counter(&s, "ngxprobe_kubernetes_cached_pods", &[]), 3.0);
    for (conf, pod) in [(&conf_a, "web-0"), (&conf_b, "ingress-7f8d9")] {
        let x = up_sample(&s, conf).expect("instance still exported");
        assert_eq!(x.label("pod"), Some(pod), "{:?}", x.labels);
    }
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    let outage_lines: Vec<&str> = log.lines().filter(|l| l.contains("keeping the metadata")).collect();
    assert_eq!(
        outage_lines.len(),
        1,
        "one line per outage, not per retry:\n{}",
        agent.log_tail(30)
    );
    eprintln!("[e2e] outage logged once: {}", outage_lines[0]);

    // 4. While it was down, pod B was deleted. Back up, the agent resumes
    //    its watch, sees the DELETED event, and drops B's labels only.
    api.delete_pod(&uid_b);
    api.up().unwrap();
    let t0 = std::time::Instant::now();
    let s = wait_label(&agent, &conf_b, "namespace", None);
    eprintln!("[e2e] API back: deleted pod's labels gone after {:?}", t0.elapsed());
    let b = up_sample(&s, &conf_b).unwrap();
    assert_eq!(b.label("pod"), None, "{:?}", b.labels);
    assert_eq!(
        b.label("container_id"),
        Some(id_b.as_str()),
        "the container id stays: {:?}",
        b.labels
    );
    assert_eq!(up_sample(&s, &conf_a).and_then(|x| x.label("pod")), Some("web-0"));
    assert_eq!(counter(&s, "ngxprobe_kubernetes_cached_pods", &[]), 2.0);
    assert!(counter(&s, "ngxprobe_kubernetes_watch_events_total", &[("type", "DELETED")]) >= 1.0);
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(log.contains("reachable again"), "{}", agent.log_tail(30));
    assert!(
        !log.contains("token-2") && !log.contains("token-1"),
        "the token reached the log"
    );
    drop(agent);
    drop((nginx_a, nginx_b));
}

#[test]
fn outside_kubernetes_the_api_is_never_contacted() {
    let _g = guard("outside_kubernetes_the_api_is_never_contacted");
    let cg2 = cgroup_mount("cgroup2", None).expect("a cgroup v2 hierarchy is mounted");
    let dir = TempDir::new("k8s-off").unwrap();
    std::fs::write(dir.path().join("token"), "token-1\n").unwrap();
    let api = FakeKubeApi::start(dir.path(), "token-1").unwrap();
    let (uid, id) = (uuid(), container_id());
    let cg = Cgroup::create(
        &cg2,
        &format!(
            "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ),
    );
    api.put_pod(pod_json(PodSpec {
        namespace: "shop",
        name: "web-0",
        uid: &uid,
        node: NODE,
        container: "nginx",
        runtime: "containerd",
        container_id: &id,
        labels: json!({}),
    }));
    let nginx = Nginx::start(NginxOptions {
        tag: "k8s-off".into(),
        big_file: false,
        cgroup: Some(cg.leaf()),
        ..Default::default()
    })
    .unwrap();
    // The API server's address is in the environment but NODE_NAME is not
    // (no downward API): metadata stays off.
    let agent = Agent::start_opts(&AgentOptions {
        config: Some(agent_config(dir.path(), &api)),
        env: vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), api.port().to_string()),
        ],
        ..Default::default()
    })
    .unwrap();
    let s = wait_label(&agent, &nginx.conf_label(), "container_id", Some(&id));
    for x in instance_samples(&s, &nginx.conf_label()) {
        assert_eq!(x.label("namespace"), None, "{} {:?}", x.name, x.labels);
        assert_eq!(x.label("pod"), None, "{} {:?}", x.name, x.labels);
    }
    assert!(
        !s.samples.iter().any(|x| x.name.starts_with("ngxprobe_kubernetes_")),
        "the resolver runs outside Kubernetes"
    );
    assert_eq!(
        api.connections(),
        0,
        "the API server was contacted: {:?}",
        api.requests()
    );
    drop(agent);
    drop(nginx);
}
