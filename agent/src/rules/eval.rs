//! Rule evaluation with Prometheus's semantics (rules/alerting.go,
//! rules/recording.go, rules/group.go): alert states and timing, ALERTS and
//! ALERTS_FOR_STATE, staleness markers, `for` state restore, and what is sent.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    file::{GroupDef, RuleDef},
    template::{self, AlertData, QueryFn},
};
use crate::{
    alerts::Alert,
    query::{EvalOpts, QueryResult, instant_query_expr},
    series::{
        AppendError, Labels, MatchOp, Matcher, ReadBudget, Selection, SeriesReader, SeriesWriter, is_stale_marker,
        stale_marker,
    },
};

/// Resolved alerts are kept (and re-sent) this long (Prometheus: 15m).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One instance of an alerting rule (Prometheus's `rules.Alert`). Times in ms.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveAlert {
    pub state: AlertState,
    /// Identity: expanded rule labels + series labels + alertname.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    pub valid_until: i64,
    pub keep_firing_since: Option<i64>,
}

impl ActiveAlert {
    fn needs_sending(&self, ts: i64, resend_delay: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        if self
            .resolved_at
            .is_some_and(|r| self.last_sent_at.is_none_or(|s| r > s))
        {
            return true;
        }
        self.last_sent_at.is_none_or(|s| s + resend_delay < ts)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

/// A rule with its evaluation state.
#[derive(Clone, Debug)]
pub struct RuleState {
    pub def: RuleDef,
    /// Alerting rules: instances by label set.
    pub active: BTreeMap<BTreeMap<String, String>, ActiveAlert>,
    /// ALERTS/ALERTS_FOR_STATE are written only once `for` state was restored.
    pub restored: bool,
    pub health: Health,
    pub last_error: Option<String>,
    pub last_eval_ms: Option<i64>,
    pub eval_duration: Duration,
    /// Series written by the previous evaluation (for staleness markers).
    pub prev_series: HashSet<Labels>,
}

impl RuleState {
    pub fn new(def: RuleDef) -> Self {
        RuleState {
            def,
            active: BTreeMap::new(),
            restored: false,
            health: Health::Unknown,
            last_error: None,
            last_eval_ms: None,
            eval_duration: Duration::ZERO,
            prev_series: HashSet::new(),
        }
    }

    /// Highest state over instances (inactive when none).
    pub fn state(&self) -> AlertState {
        self.active
            .values()
            .map(|a| a.state)
            .max()
            .unwrap_or(AlertState::Inactive)
    }

    /// Instances that are pending or firing (not resolved).
    pub fn active_alerts(&self) -> impl Iterator<Item = &ActiveAlert> {
        self.active.values().filter(|a| a.resolved_at.is_none())
    }
}

/// What one evaluation needs from outside.
pub struct EvalEnv<'a> {
    pub reader: Arc<dyn SeriesReader>,
    pub writer: &'a dyn SeriesWriter,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub resend_delay_ms: i64,
    pub lookback_ms: i64,
    pub query_timeout: Duration,
    pub outage_tolerance_ms: i64,
    pub grace_period_ms: i64,
}

impl EvalEnv<'_> {
    fn opts(&self, group_interval_ms: i64) -> EvalOpts {
        EvalOpts {
            lookback_ms: self.lookback_ms,
            subquery_step_ms: group_interval_ms.max(1),
            max_samples: 50_000_000,
            deadline: Some(Instant::now() + self.query_timeout),
        }
    }
}

/// A rule group with its state.
#[derive(Clone, Debug)]
pub struct Group {
    pub def: GroupDef,
    pub interval_ms: i64,
    pub rules: Vec<RuleState>,
    /// Restore `for` state after the second evaluation (groups loaded at startup).
    pub should_restore: bool,
    pub evals_done: u64,
    pub last_eval_ms: Option<i64>,
    pub last_duration: Duration,
    /// Series of rules removed by a reload, to be marked stale at the next evaluation.
    pub stale_series: Vec<Labels>,
    pub evaluations_total: u64,
    pub failures_total: u64,
}

pub fn labels_of(m: &BTreeMap<String, String>) -> Labels {
    Labels::new(m.iter().map(|(k, v)| (k.clone(), v.clone())))
}

fn map_of(l: &Labels) -> BTreeMap<String, String> {
    l.0.iter().cloned().collect()
}

fn to_system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// `/graph?g0.expr=...&g0.tab=1` under the external URL, as Prometheus links alerts.
pub fn generator_url(external_url: &str, expr: &str) -> String {
    format!(
        "{}/graph?g0.expr={}&g0.tab=1",
        external_url.trim_end_matches('/'),
        template::query_escape(expr)
    )
}

/// Runs an instant query as a rule does: vector or scalar (as one sample without labels).
pub fn rule_query(
    reader: &dyn SeriesReader,
    expr: &promql_parser::parser::Expr,
    t: i64,
    opts: &EvalOpts,
) -> Result<Vec<(Labels, f64)>, String> {
    match instant_query_expr(reader, expr, t, opts).map_err(|e| e.to_string())? {
        QueryResult::Vector(v) => Ok(v.into_iter().map(|(l, _, x)| (l, x)).collect()),
        QueryResult::Scalar(_, x) => Ok(vec![(Labels::default(), x)]),
        _ => Err("rule result is not a vector or scalar".into()),
    }
}

impl Group {
    pub fn new(def: GroupDef, default_interval_ms: i64) -> Self {
        let interval_ms = def.interval_ms.unwrap_or(default_interval_ms).max(1);
        let rules = def.rules.iter().cloned().map(RuleState::new).collect();
        Group {
            def,
            interval_ms,
            rules,
            should_restore: false,
            evals_done: 0,
            last_eval_ms: None,
            last_duration: Duration::ZERO,
            stale_series: Vec::new(),
            evaluations_total: 0,
            failures_total: 0,
        }
    }

    /// Prometheus's group key: `file;name`.
    pub fn key(&self) -> String {
        format!("{};{}", self.def.file, self.def.name)
    }

    fn query_offset(&self) -> i64 {
        self.def.query_offset_ms.unwrap_or(0)
    }

    /// Evaluation slot offset within the interval, from a hash of name and file.
    pub fn offset_ms(&self) -> i64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.def.name.bytes().chain([0xff]).chain(self.def.file.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        (h % self.interval_ms as u64) as i64
    }

    /// The latest evaluation slot at or before `now_ms` (Prometheus's `EvalTimestamp`).
    pub fn eval_timestamp(&self, now_ms: i64) -> i64 {
        let off = self.offset_ms();
        let adj = now_ms - off;
        adj - adj.rem_euclid(self.interval_ms) + off
    }

    /// Copies alert and staleness state from the group this one replaces
    /// (rules matched by name and labels, in order).
    pub fn copy_state(&mut self, from: &Group) {
        self.last_eval_ms = from.last_eval_ms;
        self.last_duration = from.last_duration;
        self.evals_done = from.evals_done;
        self.evaluations_total = from.evaluations_total;
        self.failures_total = from.failures_total;
        let mut used = vec![false; from.rules.len()];
        for r in &mut self.rules {
            if let Some(i) = from
                .rules
                .iter()
                .enumerate()
                .position(|(i, o)| !used[i] && o.def.name == r.def.name && o.def.labels == r.def.labels)
            {
                used[i] = true;
                let o = &from.rules[i];
                r.active = o.active.clone();
                r.restored = o.restored;
                r.prev_series = o.prev_series.clone();
                r.health = o.health;
                r.last_error = o.last_error.clone();
                r.last_eval_ms = o.last_eval_ms;
                r.eval_duration = o.eval_duration;
            } else {
                r.restored = true;
            }
        }
        self.stale_series = from.stale_series.clone();
        for (i, o) in from.rules.iter().enumerate() {
            if !used[i] {
                self.stale_series.extend(o.prev_series.iter().cloned());
            }
        }
    }

    /// Every series this group wrote last time (when the group goes away).
    pub fn all_series(&self) -> Vec<Labels> {
        self.rules
            .iter()
            .flat_map(|r| r.prev_series.iter().cloned())
            .chain(self.stale_series.iter().cloned())
            .collect()
    }

    /// Evaluates every rule at `ts` (ms) in order; returns alerts to send.
    pub fn eval(&mut self, ts: i64, env: &EvalEnv) -> Vec<Alert> {
        let start = Instant::now();
        let offset = self.query_offset();
        let opts = env.opts(self.interval_ms);
        let interval = self.interval_ms;
        let limit = self.def.limit;
        let mut to_send = Vec::new();
        for rule in &mut self.rules {
            let rstart = Instant::now();
            self.evaluations_total += 1;
            let result = if rule.def.alerting {
                eval_alerting(rule, ts, offset, &opts, env, limit)
            } else {
                eval_recording(rule, ts, offset, &opts, env, limit)
            };
            rule.last_eval_ms = Some(ts);
            match result {
                Err(e) => {
                    rule.health = Health::Err;
                    rule.last_error = Some(e);
                    self.failures_total += 1;
                }
                Ok(vector) => {
                    rule.health = Health::Ok;
                    rule.last_error = None;
                    if rule.def.alerting {
                        to_send.extend(send_alerts(rule, ts, env.resend_delay_ms, interval, env));
                    }
                    let mut returned = HashSet::new();
                    for (l, t, v) in vector {
                        match env.writer.append(&l, t, v) {
                            Ok(()) => {
                                returned.insert(l);
                            }
                            Err(AppendError::OutOfOrder) | Err(AppendError::Duplicate) => {}
                            Err(e) => {
                                rule.health = Health::Err;
                                rule.last_error = Some(e.to_string());
                            }
                        }
                    }
                    for l in rule.prev_series.iter() {
                        if !returned.contains(l) {
                            let _ = env.writer.append(l, ts - offset, stale_marker());
                        }
                    }
                    rule.prev_series = returned;
                }
            }
            rule.eval_duration = rstart.elapsed();
        }
        for l in std::mem::take(&mut self.stale_series) {
            let _ = env.writer.append(&l, ts - offset, stale_marker());
        }
        self.evals_done += 1;
        self.last_eval_ms = Some(ts);
        self.last_duration = start.elapsed();
        if self.should_restore && self.evals_done >= 2 {
            self.restore_for_state(ts, env);
        }
        to_send
    }

    /// Restores `ActiveAt` of pending/firing alerts from ALERTS_FOR_STATE
    /// written before a restart (Prometheus's `RestoreForState`).
    pub fn restore_for_state(&mut self, ts: i64, env: &EvalEnv) {
        self.should_restore = false;
        let mint = ts - env.outage_tolerance_ms;
        for rule in &mut self.rules {
            if !rule.def.alerting {
                continue;
            }
            let hold = rule.def.for_ms;
            if hold < env.grace_period_ms {
                rule.restored = true;
                continue;
            }
            let mut matchers = vec![];
            let mut base = rule.def.labels.clone();
            base.insert("__name__".into(), "ALERTS_FOR_STATE".into());
            base.insert("alertname".into(), rule.def.name.clone());
            for (k, v) in &base {
                if v.contains("{{") {
                    continue;
                }
                if let Ok(m) = Matcher::new(MatchOp::Equal, k, v) {
                    matchers.push(m);
                }
            }
            // ALERTS_FOR_STATE of one rule over the outage tolerance: small.
            let series =
                match env
                    .reader
                    .as_ref()
                    .select(&Selection::new(&matchers, mint, ts, &ReadBudget::unlimited()))
                {
                    Ok(s) => s,
                    Err(_) => {
                        rule.restored = true;
                        continue;
                    }
                };
            let mut by_labels: HashMap<BTreeMap<String, String>, (i64, f64)> = HashMap::new();
            for s in series {
                let mut m = map_of(&s.labels);
                m.remove("__name__");
                if let Some(&(t, v)) = s.samples.last() {
                    by_labels.insert(m, (t, v));
                }
            }
            for a in rule.active.values_mut() {
                let Some(&(t, v)) = by_labels.get(&a.labels) else {
                    continue;
                };
                if is_stale_marker(v) {
                    continue;
                }
                let down_at = t / 1000 * 1000;
                let mut restored_active_at = (v as i64) * 1000;
                let spent = down_at - restored_active_at;
                let remaining = hold - spent;
                if remaining <= 0 {
                    // Was firing when we went down; the next eval fires it again.
                } else if remaining < env.grace_period_ms {
                    restored_active_at = ts + env.grace_period_ms - hold;
                } else {
                    restored_active_at += ts - down_at;
                }
                a.active_at = restored_active_at;
            }
            rule.restored = true;
        }
    }
}

type Vector = Vec<(Labels, i64, f64)>;

fn eval_recording(
    rule: &mut RuleState,
    ts: i64,
    offset: i64,
    opts: &EvalOpts,
    env: &EvalEnv,
    limit: usize,
) -> Result<Vector, String> {
    let res = rule_query(env.reader.as_ref(), &rule.def.parsed, ts - offset, opts)?;
    let mut out = Vec::with_capacity(res.len());
    let mut seen = HashSet::new();
    for (l, v) in res {
        let mut m = map_of(&l);
        m.insert("__name__".into(), rule.def.name.clone());
        for (k, val) in &rule.def.labels {
            m.insert(k.clone(), val.clone());
        }
        let l = labels_of(&m);
        if !seen.insert(l.clone()) {
            return Err("vector contains metrics with the same labelset after applying rule labels".into());
        }
        out.push((l, ts - offset, v));
    }
    if limit > 0 && out.len() > limit {
        return Err(format!("exceeded limit of {limit} with {} series", out.len()));
    }
    Ok(out)
}

fn eval_alerting(
    rule: &mut RuleState,
    ts: i64,
    offset: i64,
    opts: &EvalOpts,
    env: &EvalEnv,
    limit: usize,
) -> Result<Vector, String> {
    let res = rule_query(env.reader.as_ref(), &rule.def.parsed, ts - offset, opts)?;
    let tname = format!("__alert_{}", rule.def.name);
    let mut new_alerts: BTreeMap<BTreeMap<String, String>, ActiveAlert> = BTreeMap::new();
    // The `query` template function: an instant query at the evaluation time.
    let query: Option<QueryFn> = (rule
        .def
        .labels
        .values()
        .chain(rule.def.annotations.values())
        .any(|t| t.contains("query")))
    .then(|| make_query_fn(env.reader.clone(), opts.clone(), ts - offset));
    {
        for (l, v) in &res {
            let smap = map_of(l);
            let data = AlertData {
                labels: &smap,
                external_labels: env.external_labels,
                external_url: env.external_url,
                value: *v,
                ts_ms: ts,
                query: query.clone(),
            };
            let expand = |text: &str| {
                template::expand(&tname, text, &data).unwrap_or_else(|e| format!("<error expanding template: {e}>"))
            };
            let mut lbls = smap.clone();
            lbls.remove("__name__");
            for (k, val) in &rule.def.labels {
                let x = expand(val);
                if x.is_empty() {
                    lbls.remove(k);
                } else {
                    lbls.insert(k.clone(), x);
                }
            }
            lbls.insert("alertname".into(), rule.def.name.clone());
            let annotations: BTreeMap<String, String> = rule
                .def
                .annotations
                .iter()
                .map(|(k, val)| (k.clone(), expand(val)))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            if new_alerts.contains_key(&lbls) {
                return Err("vector contains metrics with the same labelset after applying alert labels".into());
            }
            new_alerts.insert(
                lbls.clone(),
                ActiveAlert {
                    state: AlertState::Pending,
                    labels: lbls,
                    annotations,
                    value: *v,
                    active_at: ts,
                    fired_at: None,
                    resolved_at: None,
                    last_sent_at: None,
                    valid_until: 0,
                    keep_firing_since: None,
                },
            );
        }
    }
    for (k, a) in new_alerts.iter() {
        if let Some(old) = rule.active.get_mut(k).filter(|o| o.state != AlertState::Inactive) {
            old.value = a.value;
            old.annotations = a.annotations.clone();
            continue;
        }
        rule.active.insert(k.clone(), a.clone());
    }
    let hold = rule.def.for_ms;
    let kff = rule.def.keep_firing_for_ms;
    let mut vec = Vec::new();
    let mut num_active = 0usize;
    let mut remove = Vec::new();
    for (k, a) in rule.active.iter_mut() {
        if !new_alerts.contains_key(k) {
            let mut keep_firing = false;
            if a.state == AlertState::Firing && kff > 0 {
                let since = *a.keep_firing_since.get_or_insert(ts);
                if ts - since < kff {
                    keep_firing = true;
                }
            }
            if a.state == AlertState::Pending || a.resolved_at.is_some_and(|r| ts - r > RESOLVED_RETENTION_MS) {
                remove.push(k.clone());
            }
            if a.state != AlertState::Inactive && !keep_firing {
                a.state = AlertState::Inactive;
                a.resolved_at = Some(ts);
            }
            if !keep_firing {
                continue;
            }
        } else {
            a.keep_firing_since = None;
        }
        num_active += 1;
        if a.state == AlertState::Pending && ts - a.active_at >= hold {
            a.state = AlertState::Firing;
            a.fired_at = Some(ts);
        }
        if a.state == AlertState::Firing && ts - a.active_at < hold {
            a.state = AlertState::Pending;
            a.fired_at = None;
            a.last_sent_at = None;
            a.keep_firing_since = None;
        }
        if rule.restored {
            let mut m = rule.def.labels.clone();
            m.extend(a.labels.clone());
            m.insert("__name__".into(), "ALERTS".into());
            m.insert("alertname".into(), rule.def.name.clone());
            m.insert("alertstate".into(), a.state.as_str().into());
            vec.push((labels_of(&m), ts - offset, 1.0));
            let mut f = rule.def.labels.clone();
            f.extend(a.labels.clone());
            f.insert("__name__".into(), "ALERTS_FOR_STATE".into());
            f.insert("alertname".into(), rule.def.name.clone());
            vec.push((labels_of(&f), ts - offset, a.active_at.div_euclid(1000) as f64));
        }
    }
    for k in remove {
        rule.active.remove(&k);
    }
    if limit > 0 && num_active > limit {
        rule.active.clear();
        return Err(format!("exceeded limit of {limit} with {num_active} alerts"));
    }
    Ok(vec)
}

fn make_query_fn(reader: Arc<dyn SeriesReader>, opts: EvalOpts, t: i64) -> QueryFn {
    Arc::new(move |q: &str| {
        let e = crate::query::parse(q).map_err(|e| e.to_string())?;
        let r = rule_query(reader.as_ref(), &e, t, &opts)?;
        Ok(r.into_iter().map(|(l, v)| (map_of(&l), v)).collect())
    })
}

fn send_alerts(rule: &mut RuleState, ts: i64, resend_delay: i64, interval: i64, env: &EvalEnv) -> Vec<Alert> {
    let mut out = Vec::new();
    for a in rule.active.values_mut() {
        if a.needs_sending(ts, resend_delay) {
            a.last_sent_at = Some(ts);
            let delta = interval.max(resend_delay);
            a.valid_until = ts + 4 * delta;
            out.push(to_notifier_alert(
                a,
                &rule.def.expr,
                env.external_labels,
                env.external_url,
            ));
        }
    }
    out
}

/// The alert as Prometheus's notifier posts it (external labels added where unset).
pub fn to_notifier_alert(
    a: &ActiveAlert,
    expr: &str,
    external_labels: &BTreeMap<String, String>,
    external_url: &str,
) -> Alert {
    let mut labels = a.labels.clone();
    for (k, v) in external_labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Alert {
        labels,
        annotations: a.annotations.clone(),
        starts_at: to_system_time(a.fired_at.unwrap_or(a.active_at)),
        ends_at: to_system_time(a.resolved_at.unwrap_or(a.valid_until)),
        generator_url: generator_url(external_url, expr),
    }
}
