//! [`RuleManager`]: loads rule files, evaluates groups on their intervals
//! (slotted like Prometheus), sends alerts to the [`AlertSink`], serves
//! /api/v1/rules and /api/v1/alerts data, and reloads.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use serde_json::{Value as J, json};

use super::{
    config::RulesConfig,
    eval::{EvalEnv, Group},
    file::{self, GroupDef, RuleError},
};
use crate::{
    alerts::AlertSink,
    compat::{
        float::format_e,
        time::{now_ms, rfc3339_ms},
    },
    metrics::{Family, MetricType},
    series::{SeriesReader, SeriesWriter},
    worker::{Shutdown, Worker},
};

/// The built-in nginx rules (`rules.default_rules`).
pub const DEFAULT_RULES_YAML: &str = include_str!("default_rules.yml");
/// Name the built-in rules are reported under.
pub const DEFAULT_RULES_FILE: &str = "<built-in>/nginx.rules.yml";

/// Why a load/reload failed: every error of every bad file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub Vec<RuleError>);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

#[derive(Default)]
struct Counters {
    reload_ok: bool,
    reload_ts: i64,
    alerts_sent: u64,
    missed: BTreeMap<String, u64>,
    iterations: BTreeMap<String, u64>,
}

pub struct RuleManager {
    reader: Arc<dyn SeriesReader>,
    writer: Arc<dyn SeriesWriter>,
    sink: Arc<dyn AlertSink>,
    cfg: RulesConfig,
    groups: RwLock<Vec<Arc<Mutex<Group>>>>,
    counters: Mutex<Counters>,
    loaded_once: Mutex<bool>,
    /// Lookback of rule queries (default 5m).
    pub lookback: Duration,
    pub query_timeout: Duration,
}

/// Expands globs; a pattern matching nothing is not an error (Prometheus).
pub fn expand_globs(patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in patterns {
        let paths = glob::glob(p).map_err(|e| format!("bad rule_files pattern {p:?}: {e}"))?;
        for path in paths.flatten() {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

impl RuleManager {
    pub fn new(
        reader: Arc<dyn SeriesReader>,
        writer: Arc<dyn SeriesWriter>,
        sink: Arc<dyn AlertSink>,
        cfg: RulesConfig,
    ) -> Self {
        RuleManager {
            reader,
            writer,
            sink,
            cfg,
            groups: RwLock::new(Vec::new()),
            counters: Mutex::new(Counters::default()),
            loaded_once: Mutex::new(false),
            lookback: Duration::from_secs(300),
            query_timeout: Duration::from_secs(120),
        }
    }

    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    fn interval_ms(&self) -> i64 {
        (self.cfg.evaluation_interval.as_duration().as_millis() as i64).max(1)
    }

    /// Loads the config's `rule_files` globs (plus the built-in rules when enabled).
    pub fn load_configured(&self) -> Result<usize, LoadError> {
        let files = expand_globs(&self.cfg.rule_files).map_err(|e| {
            LoadError(vec![RuleError {
                file: String::new(),
                kind: file::ErrorKind::Io,
                message: e,
            }])
        })?;
        self.load(&files)
    }

    /// Parses `files` (plus the built-in rules when enabled) and swaps them in.
    /// On any error nothing changes: the old groups keep running and the error
    /// says why. Returns the number of rules now loaded.
    pub fn load(&self, files: &[PathBuf]) -> Result<usize, LoadError> {
        let mut defs: Vec<GroupDef> = Vec::new();
        let mut errs = Vec::new();
        if self.cfg.default_rules {
            match file::parse_text(DEFAULT_RULES_FILE, DEFAULT_RULES_YAML) {
                Ok(g) => defs.extend(g),
                Err(e) => errs.extend(e),
            }
        }
        for f in files {
            match file::load_file(f) {
                Ok(g) => defs.extend(g),
                Err(e) => errs.extend(e),
            }
        }
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !errs.is_empty() {
            c.reload_ok = false;
            return Err(LoadError(errs));
        }
        c.reload_ok = true;
        c.reload_ts = now_ms();
        drop(c);
        let first = {
            let mut l = self.loaded_once.lock().unwrap_or_else(|e| e.into_inner());
            let first = !*l;
            *l = true;
            first
        };
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        let mut old: Vec<Arc<Mutex<Group>>> = std::mem::take(&mut *groups);
        let mut new = Vec::new();
        let mut n = 0;
        for d in defs {
            let mut g = Group::new(d, self.interval_ms());
            n += g.rules.len();
            if let Some(i) = old.iter().position(|o| {
                o.lock()
                    .map(|o| o.def.file == g.def.file && o.def.name == g.def.name)
                    .unwrap_or(false)
            }) {
                let o = old.remove(i);
                let o = o.lock().unwrap_or_else(|e| e.into_inner());
                g.copy_state(&o);
            } else if first {
                g.should_restore = true;
            } else {
                for r in &mut g.rules {
                    r.restored = true;
                }
            }
            new.push(Arc::new(Mutex::new(g)));
        }
        // Groups that went away: mark everything they wrote stale.
        let t = now_ms();
        for o in old {
            let o = o.lock().unwrap_or_else(|e| e.into_inner());
            for l in o.all_series() {
                let _ = self.writer.append(&l, t, crate::series::stale_marker());
            }
        }
        *groups = new;
        Ok(n)
    }

    fn env(&self) -> EvalEnv<'_> {
        EvalEnv {
            reader: self.reader.clone(),
            writer: self.writer.as_ref(),
            external_labels: &self.cfg.external_labels,
            external_url: &self.cfg.external_url,
            resend_delay_ms: self.cfg.resend_delay.as_duration().as_millis() as i64,
            lookback_ms: self.lookback.as_millis() as i64,
            query_timeout: self.query_timeout,
            outage_tolerance_ms: self.cfg.for_outage_tolerance.as_duration().as_millis() as i64,
            grace_period_ms: self.cfg.for_grace_period.as_duration().as_millis() as i64,
        }
    }

    fn eval_one(&self, g: &Arc<Mutex<Group>>, t_ms: i64) {
        let env = self.env();
        let alerts = {
            let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
            let a = g.eval(t_ms, &env);
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            *c.iterations.entry(g.key()).or_default() += 1;
            a
        };
        if !alerts.is_empty() {
            self.counters.lock().unwrap_or_else(|e| e.into_inner()).alerts_sent += alerts.len() as u64;
            self.sink.send(alerts);
        }
    }

    /// Evaluates every group at `t_ms`, in load order (for tests and tools).
    pub fn eval_at(&self, t_ms: i64) {
        let groups: Vec<_> = self.groups.read().unwrap_or_else(|e| e.into_inner()).clone();
        for g in &groups {
            self.eval_one(g, t_ms);
        }
    }

    /// Evaluates the group named `name` at `t_ms`; false if there is none.
    pub fn eval_group_at(&self, name: &str, t_ms: i64) -> bool {
        let groups: Vec<_> = self.groups.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut found = false;
        for g in &groups {
            let matches = g.lock().map(|g| g.def.name == name).unwrap_or(false);
            if matches {
                found = true;
                self.eval_one(g, t_ms);
            }
        }
        found
    }

    /// A snapshot of the groups and their state.
    pub fn groups(&self) -> Vec<Group> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Runs until `shutdown` is triggered: each group is
    /// evaluated at `slot + k × interval` (slot offset by a hash of file and
    /// name, as Prometheus does), starting one interval after the current slot.
    /// Evaluations never overlap; a slot missed because the previous
    /// evaluation ran long is skipped and counted. Blocks: run it on its own thread.
    pub fn run(&self, shutdown: &Shutdown) {
        // next evaluation time per group, keyed by the Arc's address (reloads replace Arcs).
        let mut next: Vec<(Arc<Mutex<Group>>, i64)> = Vec::new();
        loop {
            let current: Vec<_> = self.groups.read().unwrap_or_else(|e| e.into_inner()).clone();
            // Keep schedules of groups still present; schedule new ones.
            let mut sched = Vec::with_capacity(current.len());
            for g in current {
                if let Some((_, t)) = next.iter().find(|(o, _)| Arc::ptr_eq(o, &g)) {
                    sched.push((g, *t));
                } else {
                    let gi = g.lock().unwrap_or_else(|e| e.into_inner());
                    let t = gi.eval_timestamp(now_ms()) + gi.interval_ms;
                    drop(gi);
                    sched.push((g, t));
                }
            }
            next = sched;
            let now = now_ms();
            let wait = next
                .iter()
                .map(|(_, t)| *t)
                .min()
                .map(|t| (t - now).max(0))
                .unwrap_or(1000)
                .min(1000);
            if shutdown.wait_timeout(Duration::from_millis(wait as u64)) {
                return;
            }
            let now = now_ms();
            for (g, t) in next.iter_mut() {
                if *t > now {
                    continue;
                }
                // A bug in one group's evaluation must not stop alerting for
                // all groups: contain it, log it, and go on at the next tick.
                let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.eval_one(g, *t)));
                if evaluated.is_err() {
                    tracing::error!("rule group evaluation panicked; the group is retried at its next interval");
                }
                let (interval, key) = {
                    let gi = g.lock().unwrap_or_else(|e| e.into_inner());
                    (gi.interval_ms, gi.key())
                };
                let after = now_ms();
                let missed = ((after - *t) / interval - 1).max(0);
                if missed > 0 {
                    *self
                        .counters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .missed
                        .entry(key)
                        .or_default() += missed as u64;
                }
                *t += (missed + 1) * interval;
            }
        }
    }

    /// Starts [`run`](Self::run) on a thread named `rules`.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<Worker> {
        let me = self.clone();
        Worker::spawn_thread("rules", move |stop| me.run(&stop))
    }

    /// Self-metrics (Prometheus's `prometheus_rule_*` under `ngxprobe_rule_*`).
    pub fn families(&self) -> Vec<Family> {
        let groups = self.groups();
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut evals = Family::new(
            "ngxprobe_rule_evaluations_total",
            "Rule evaluations.",
            MetricType::Counter,
        );
        let mut fails = Family::new(
            "ngxprobe_rule_evaluation_failures_total",
            "Rule evaluations that failed.",
            MetricType::Counter,
        );
        let mut dur = Family::new(
            "ngxprobe_rule_group_last_duration_seconds",
            "Duration of the last evaluation of the group.",
            MetricType::Gauge,
        );
        let mut interval = Family::new(
            "ngxprobe_rule_group_interval_seconds",
            "Evaluation interval of the group.",
            MetricType::Gauge,
        );
        let mut last = Family::new(
            "ngxprobe_rule_group_last_evaluation_timestamp_seconds",
            "When the group was last evaluated.",
            MetricType::Gauge,
        );
        let mut rules = Family::new("ngxprobe_rule_group_rules", "Rules in the group.", MetricType::Gauge);
        let mut iters = Family::new(
            "ngxprobe_rule_group_iterations_total",
            "Scheduled group evaluations that ran.",
            MetricType::Counter,
        );
        let mut missed = Family::new(
            "ngxprobe_rule_group_iterations_missed_total",
            "Group evaluation slots skipped because the previous evaluation ran long.",
            MetricType::Counter,
        );
        for g in &groups {
            let k = g.key();
            let l = [("rule_group", k.as_str())];
            evals.push(&l, g.evaluations_total as f64);
            fails.push(&l, g.failures_total as f64);
            dur.push(&l, g.last_duration.as_secs_f64());
            interval.push(&l, g.interval_ms as f64 / 1000.0);
            last.push(&l, g.last_eval_ms.map(|t| t as f64 / 1000.0).unwrap_or(0.0));
            rules.push(&l, g.rules.len() as f64);
            iters.push(&l, c.iterations.get(&k).copied().unwrap_or(0) as f64);
            missed.push(&l, c.missed.get(&k).copied().unwrap_or(0) as f64);
        }
        let mut ok = Family::new(
            "ngxprobe_rule_config_last_reload_successful",
            "Whether the last rule load succeeded.",
            MetricType::Gauge,
        );
        ok.push(&[], if c.reload_ok { 1.0 } else { 0.0 });
        let mut ok_ts = Family::new(
            "ngxprobe_rule_config_last_reload_success_timestamp_seconds",
            "When rules were last loaded successfully.",
            MetricType::Gauge,
        );
        ok_ts.push(&[], c.reload_ts as f64 / 1000.0);
        let mut sent = Family::new(
            "ngxprobe_rule_alerts_sent_total",
            "Alerts handed to the notify stage.",
            MetricType::Counter,
        );
        sent.push(&[], c.alerts_sent as f64);
        vec![evals, fails, dur, interval, last, rules, iters, missed, ok, ok_ts, sent]
    }

    /// `data` of GET /api/v1/rules, in Prometheus's shape.
    pub fn rules_api(&self, type_filter: Option<&str>) -> J {
        let groups = self.groups();
        let mut out = Vec::new();
        for g in &groups {
            let mut rules = Vec::new();
            for r in &g.rules {
                let kind = if r.def.alerting { "alert" } else { "record" };
                if type_filter.is_some_and(|t| t != kind) {
                    continue;
                }
                let mut v = if r.def.alerting {
                    let alerts: Vec<J> = r.active_alerts().map(alert_json).collect();
                    json!({
                        "state": r.state().as_str(),
                        "name": r.def.name,
                        "query": r.def.expr,
                        "duration": r.def.for_ms / 1000,
                        "keepFiringFor": r.def.keep_firing_for_ms / 1000,
                        "labels": r.def.labels,
                        "annotations": r.def.annotations,
                        "alerts": alerts,
                        "type": "alerting",
                    })
                } else {
                    json!({"name": r.def.name, "query": r.def.expr, "labels": r.def.labels, "type": "recording"})
                };
                v["health"] = json!(r.health.as_str());
                v["lastError"] = json!(r.last_error.clone().unwrap_or_default());
                v["evaluationTime"] = json!(r.eval_duration.as_secs_f64());
                v["lastEvaluation"] = json!(rfc3339_ms(r.last_eval_ms));
                rules.push(v);
            }
            if type_filter.is_some() && rules.is_empty() {
                continue;
            }
            out.push(json!({
                "name": g.def.name,
                "file": g.def.file,
                "rules": rules,
                "interval": g.interval_ms as f64 / 1000.0,
                "limit": g.def.limit,
                "evaluationTime": g.last_duration.as_secs_f64(),
                "lastEvaluation": rfc3339_ms(g.last_eval_ms),
            }));
        }
        json!({ "groups": out })
    }

    /// `data` of GET /api/v1/alerts: pending and firing alerts.
    pub fn alerts_api(&self) -> J {
        let mut alerts = Vec::new();
        for g in self.groups() {
            for r in &g.rules {
                alerts.extend(r.active_alerts().map(alert_json));
            }
        }
        json!({ "alerts": alerts })
    }
}

fn alert_json(a: &super::eval::ActiveAlert) -> J {
    // Prometheus: "value" is strconv.FormatFloat(v, 'e', -1, 64).
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339_ms(Some(a.active_at)),
        "value": format_e(a.value),
        "keepFiringSince": a.keep_firing_since.map(|t| rfc3339_ms(Some(t))),
    })
}

/// Paths of rule files for a reload check without swapping anything in.
pub fn check_files(files: &[&Path]) -> Result<usize, LoadError> {
    let mut n = 0;
    let mut errs = Vec::new();
    for f in files {
        match file::load_file(f) {
            Ok(g) => n += file::count_rules(&g),
            Err(e) => errs.extend(e),
        }
    }
    if errs.is_empty() { Ok(n) } else { Err(LoadError(errs)) }
}
