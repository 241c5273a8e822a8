//! Routing, grouping, timing, inhibition and dedup with a hand-driven clock.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::support::{alert, labels};
use crate::notify::compile::compile;
use crate::notify::config::parse;
use crate::notify::dispatch::{Dispatcher, FlushJob, Nflog, fingerprint, needs_update, nflog_key};

const URL: &str = "http://127.0.0.1:9/hook";

fn dispatcher(yaml: &str) -> Dispatcher {
    let cfg = parse(Path::new("am.yml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    Dispatcher::new(compile(&cfg).unwrap())
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn firing(name: &str, extra: &[(&str, &str)], at: SystemTime) -> crate::alerts::Alert {
    let mut l = vec![("alertname", name)];
    l.extend_from_slice(extra);
    alert(&l, &[], at, at + secs(3600))
}

fn names(job: &FlushJob) -> Vec<String> {
    job.alerts
        .iter()
        .map(|(a, r)| {
            format!(
                "{}{}{}",
                a.labels["alertname"],
                a.labels.get("instance").map(|i| format!("@{i}")).unwrap_or_default(),
                if *r { "(resolved)" } else { "" }
            )
        })
        .collect()
}

const BASE: &str = r#"
route:
  receiver: default
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
  routes:
    - receiver: pager
      matchers: ['severity="page"']
      group_wait: 10s
    - receiver: team
      match_re: { team: "a|b" }
      continue: true
    - receiver: all-team
      match: { team: a }
receivers:
  - name: default
    webhook_configs: [{ url: "http://127.0.0.1:9/hook" }]
  - name: pager
    webhook_configs: [{ url: "http://127.0.0.1:9/hook" }]
  - name: team
    webhook_configs: [{ url: "http://127.0.0.1:9/hook" }]
  - name: all-team
    webhook_configs: [{ url: "http://127.0.0.1:9/hook" }]
"#;

#[test]
fn routing_follows_alertmanager_tree_semantics() {
    let d = dispatcher(BASE);
    let route_of = |l: &[(&str, &str)]| -> Vec<String> {
        d.compiled()
            .route
            .matching(&labels(l))
            .iter()
            .map(|r| r.receiver.clone())
            .collect()
    };
    assert_eq!(route_of(&[("alertname", "x")]), ["default"]);
    assert_eq!(route_of(&[("severity", "page"), ("team", "a")]), ["pager"]);
    // continue: team matches and continues to all-team.
    assert_eq!(route_of(&[("team", "a")]), ["team", "all-team"]);
    assert_eq!(route_of(&[("team", "b")]), ["team"]);
    let _ = URL;
}

#[test]
fn group_wait_interval_and_grouping() {
    let mut d = dispatcher(BASE);
    // Two alerts of one name, one of another: two groups (group_by alertname).
    d.insert(&firing("A", &[("instance", "1")], t(0)), t(0));
    d.insert(&firing("A", &[("instance", "2")], t(0)), t(1));
    d.insert(&firing("B", &[], t(0)), t(2));
    assert!(d.due(t(29)).is_empty(), "nothing before group_wait");
    assert_eq!(d.next_deadline(), Some(t(30)));
    let jobs = d.due(t(30));
    assert_eq!(jobs.len(), 1);
    assert_eq!(names(&jobs[0]), ["A@1", "A@2"]);
    assert_eq!(jobs[0].group_labels, labels(&[("alertname", "A")]));
    assert_eq!(jobs[0].receiver, "default");
    d.complete(&jobs[0], true);
    let jobs = d.due(t(32));
    assert_eq!(names(&jobs[0]), ["B"]);
    d.complete(&jobs[0], true);
    // Next flush of A after group_interval, not before.
    assert!(d.due(t(30 + 299)).is_empty());
    let jobs = d.due(t(330));
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].group_labels["alertname"], "A");
}

#[test]
fn old_alerts_flush_at_once_and_resolved_leave_after_success() {
    let mut d = dispatcher(BASE);
    // Started long ago: no group_wait.
    d.insert(&firing("Old", &[], t(0)), t(1000));
    let jobs = d.due(t(1000));
    assert_eq!(jobs.len(), 1);
    d.complete(&jobs[0], true);
    // Resolve it; the next flush carries it as resolved.
    d.insert(&alert(&[("alertname", "Old")], &[], t(0), t(1100)), t(1100));
    let jobs = d.due(t(1300));
    assert_eq!(names(&jobs[0]), ["Old(resolved)"]);
    // A failed flush keeps the resolved alert for the next try…
    d.complete(&jobs[0], false);
    let jobs = d.due(t(1600));
    assert_eq!(names(&jobs[0]), ["Old(resolved)"]);
    // …a successful one drops it. The emptied group lives on until
    // Alertmanager's maintenance (at most 30 s), then it is gone.
    d.complete(&jobs[0], true);
    assert!(d.due(t(1601)).is_empty());
    assert_eq!(d.group_count(), 1);
    assert!(d.due(t(1630)).is_empty());
    assert_eq!(d.group_count(), 1);
    d.due(t(1632));
    assert_eq!(d.group_count(), 0);
}

/// As in Alertmanager: an alert arriving while its group is still there
/// (emptied, before maintenance) goes out at the group's next interval tick,
/// without a new group_wait; after maintenance it waits group_wait again.
#[test]
fn emptied_group_is_reused_until_maintenance() {
    let mut d = dispatcher(BASE);
    d.insert(&firing("A", &[], t(0)), t(0));
    let jobs = d.due(t(30));
    assert_eq!(names(&jobs[0]), ["A"]);
    d.complete(&jobs[0], true);
    d.insert(&alert(&[("alertname", "A")], &[], t(0), t(40)), t(40));
    let jobs = d.due(t(330));
    assert_eq!(names(&jobs[0]), ["A(resolved)"]);
    d.complete(&jobs[0], true);
    // Group emptied at 331; a new alert at 340 rides the 5m cadence (next tick
    // 630), not group_wait (it would be 370).
    assert!(d.due(t(331)).is_empty());
    d.insert(&firing("A", &[("instance", "x")], t(340)), t(340));
    assert!(d.due(t(370)).is_empty(), "must not wait a fresh group_wait");
    let jobs = d.due(t(630));
    assert_eq!(names(&jobs[0]), ["A@x"]);
}

#[test]
fn resolve_timeout_applies_without_ends_at() {
    let mut d = dispatcher(
        "global: { resolve_timeout: 1m }\nroute: { receiver: r, group_wait: 0s, group_interval: 10s }\nreceivers: [{ name: r }]\n",
    );
    d.insert(&alert(&[("alertname", "A")], &[], t(0), UNIX_EPOCH), t(0));
    let j = d.due(t(0));
    assert_eq!(names(&j[0]), ["A"]);
    d.complete(&j[0], true);
    let j = d.due(t(59));
    assert_eq!(names(&j[0]), ["A"], "still firing before resolve_timeout");
    d.complete(&j[0], true);
    let j = d.due(t(70));
    assert_eq!(names(&j[0]), ["A(resolved)"]);
}

#[test]
fn inhibition_mutes_targets_with_equal_labels() {
    let yaml = r#"
route: { receiver: r, group_by: ['...'], group_wait: 0s }
receivers: [{ name: r }]
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [instance]
"#;
    let mut d = dispatcher(yaml);
    d.insert(
        &firing("Down", &[("severity", "critical"), ("instance", "a")], t(0)),
        t(0),
    );
    d.insert(
        &firing("Slow", &[("severity", "warning"), ("instance", "a")], t(0)),
        t(0),
    );
    d.insert(
        &firing("Slow", &[("severity", "warning"), ("instance", "b")], t(0)),
        t(0),
    );
    let jobs = d.due(t(0));
    let mut all: Vec<String> = jobs.iter().flat_map(names).collect();
    all.sort();
    assert_eq!(all, ["Down@a", "Slow@b"], "Slow@a is inhibited by Down@a");
    for j in &jobs {
        d.complete(j, true);
    }
    // Once the source resolves, the target is notified again.
    d.insert(
        &alert(
            &[("alertname", "Down"), ("severity", "critical"), ("instance", "a")],
            &[],
            t(0),
            t(10),
        ),
        t(10),
    );
    let jobs = d.due(t(400));
    let all: BTreeSet<String> = jobs.iter().flat_map(names).collect();
    assert!(all.contains("Slow@a"), "{all:?}");
}

#[test]
fn dedup_follows_the_notification_log() {
    let (a, b) = (1u64, 2u64);
    let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
    let mut log = Nflog::default();
    let key = nflog_key("r", "slack", 0, "{}:{}");
    let rep = secs(3600);
    // Never notified: only firing alerts warrant a message.
    assert!(needs_update(None, &set(&[a]), &set(&[]), true, rep, t(0)));
    assert!(!needs_update(None, &set(&[]), &set(&[a]), true, rep, t(0)));
    log.log(key.clone(), set(&[a]), set(&[]), t(0));
    // Unchanged: only after repeat_interval.
    assert!(!needs_update(log.get(&key), &set(&[a]), &set(&[]), true, rep, t(100)));
    assert!(needs_update(log.get(&key), &set(&[a]), &set(&[]), true, rep, t(3600)));
    // A new firing alert.
    assert!(needs_update(
        log.get(&key),
        &set(&[a, b]),
        &set(&[]),
        false,
        rep,
        t(100)
    ));
    log.log(key.clone(), set(&[a, b]), set(&[]), t(100));
    // One resolved: only with send_resolved.
    assert!(!needs_update(log.get(&key), &set(&[b]), &set(&[a]), false, rep, t(200)));
    assert!(needs_update(log.get(&key), &set(&[b]), &set(&[a]), true, rep, t(200)));
    // All resolved: always (clears the log), even without send_resolved.
    assert!(needs_update(
        log.get(&key),
        &set(&[]),
        &set(&[a, b]),
        false,
        rep,
        t(200)
    ));
    log.log(key.clone(), set(&[]), set(&[a, b]), t(200));
    assert!(!needs_update(
        log.get(&key),
        &set(&[]),
        &set(&[a, b]),
        true,
        rep,
        t(9000)
    ));
}

#[test]
fn group_by_all_and_fingerprints() {
    let mut d = dispatcher("route: { receiver: r, group_by: ['...'], group_wait: 0s }\nreceivers: [{ name: r }]\n");
    d.insert(&firing("A", &[("instance", "1")], t(0)), t(0));
    d.insert(&firing("A", &[("instance", "2")], t(0)), t(0));
    let jobs = d.due(t(0));
    assert_eq!(jobs.len(), 2, "every label set is its own group");
    assert_eq!(jobs[0].group_key, r#"{}:{alertname="A", instance="1"}"#);
    assert_ne!(fingerprint(&labels(&[("a", "1")])), fingerprint(&labels(&[("a", "2")])));
}
