// ngxprobe's page: a small single-page app over the agent's own
// Prometheus-compatible API. No framework; uPlot draws the graphs.
//
// Rules this file keeps:
// - Every value shown comes from the API (PromQL over the store, the rules
//   and alerts endpoints) or from /ui/api/status (the agent's settings).
// - Panels for families other parts of the agent may or may not export
//   (latency histogram, status codes, kernel diagnostics) are built from the
//   metric names the store has and shown only when their queries return
//   series: nothing here assumes they exist.
// - Text from the API is put in the DOM as text (never as HTML).
// - A section that cannot load shows the error, never stays blank.
"use strict";
(function () {
  // ---------------------------------------------------------------- DOM

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, kids);
    return el;
  }
  function append(el, kids) {
    for (const kid of [kids].flat(Infinity)) {
      if (kid == null || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }
  function fill(el, ...kids) {
    el.replaceChildren();
    return append(el, kids);
  }
  const $ = (sel, root) => (root || document).querySelector(sel);

  function errorBox(err, extra) {
    return h("div", { class: "error", role: "alert" }, "⚠ ", errText(err), extra);
  }
  function errText(err) {
    return err && err.message ? err.message : String(err);
  }

  // ---------------------------------------------------------------- formatting

  function trim(x) {
    const a = Math.abs(x);
    if (a !== 0 && a < 0.001) return x.toPrecision(2);
    const d = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
    return String(+x.toFixed(d));
  }
  const SI = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  function compact(v) {
    if (v == null || Number.isNaN(v)) return "–";
    if (!Number.isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
    for (const [f, s] of SI) if (Math.abs(v) >= f) return trim(v / f) + s;
    return trim(v);
  }
  function fmtBytes(v) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return trim(v) + " " + units[i];
  }
  function fmtSeconds(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1) return trim(v) + " s";
    if (a >= 1e-3) return trim(v * 1e3) + " ms";
    return trim(v * 1e6) + " µs";
  }
  function fmt(v, unit) {
    if (v == null || Number.isNaN(v)) return "–";
    if (!Number.isFinite(v)) return compact(v);
    switch (unit) {
      case "rps": return compact(v) + "/s";
      case "s": return fmtSeconds(v);
      case "bytes": return fmtBytes(v);
      case "percent": return trim(v * 100) + " %";
      case "ns": return trim(v) + " ns";
      default: return compact(v);
    }
  }
  // A duration in seconds the way Prometheus writes one: 1h30m, 15d, 45s.
  function fmtDuration(s) {
    s = Math.round(s);
    if (s <= 0) return "0s";
    const parts = [];
    for (const [f, u] of [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]]) {
      if (s >= f) { parts.push(Math.floor(s / f) + u); s %= f; }
    }
    return parts.slice(0, 2).join("");
  }
  const fmtInterval = (s) => (s >= 1 ? fmtDuration(s) : fmtSeconds(s));
  function fmtAgo(unixSeconds) {
    if (!unixSeconds) return "never";
    const d = clock.now() - unixSeconds;
    return d < 1 ? "just now" : fmtDuration(d) + " ago";
  }
  function isoTime(unixSeconds) {
    return new Date(unixSeconds * 1000).toISOString().replace(".000Z", "Z");
  }
  // Prometheus writes the zero time for "never": 0001-01-01T00:00:00Z.
  function parseTime(s) {
    const t = Date.parse(s);
    return Number.isFinite(t) && t > 0 ? t / 1000 : null;
  }
  // Prometheus's series notation: name{a="b", c="d"}.
  function seriesName(metric) {
    const name = metric.__name__ || "";
    const ls = Object.keys(metric).filter((k) => k !== "__name__").sort()
      .map((k) => k + "=" + JSON.stringify(metric[k]));
    return name + (ls.length || !name ? "{" + ls.join(", ") + "}" : "");
  }
  // A PromQL string literal (JSON's escapes are a subset of PromQL's).
  const quote = (s) => JSON.stringify(s);

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  // GET path?params → the `data` of a Prometheus API answer (or the whole
  // body of an answer without that envelope). Errors carry the API's
  // message, which for PromQL includes the parser's line:column.
  async function getJSON(path, params, signal) {
    const qs = params ? "?" + new URLSearchParams(params) : "";
    let res;
    try {
      res = await fetch(path + qs, { signal, headers: { Accept: "application/json" } });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(`GET ${path}: the agent did not answer (${e.message})`, 0);
    }
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON: reported below */ }
    if (body && body.status === "error") {
      throw new ApiError(`${body.errorType || "error"}: ${body.error || "(no message)"}`, res.status);
    }
    if (!res.ok) {
      const t = text.trim().slice(0, 300);
      throw new ApiError(`GET ${path}: HTTP ${res.status}${t ? " — " + t : ""}`, res.status);
    }
    if (body == null) throw new ApiError(`GET ${path}: the answer is not JSON`, res.status);
    return body.status === "success" ? body.data : body;
  }
  const instant = (expr, signal) =>
    getJSON("/api/v1/query", { query: expr, time: clock.now().toFixed(3) }, signal).then((d) => d.result);
  const rangeQuery = (expr, r, signal) =>
    getJSON("/api/v1/query_range", { query: expr, start: r.start.toFixed(3), end: r.end.toFixed(3), step: r.step }, signal)
      .then((d) => d.result);

  // The agent's clock: query times come from it (a browser on another
  // machine may be minutes off), measured when /ui/api/status answers.
  const clock = {
    offset: 0,
    now() { return Date.now() / 1000 + this.offset; },
  };

  // /ui/api/status, fetched once at start (and again on the status page).
  let agent = { storage: null, rules: null, receivers: [], telemetry_path: "/metrics" };
  async function loadAgent(signal) {
    const sent = Date.now() / 1000;
    const s = await getJSON("/ui/api/status", null, signal);
    const got = Date.now() / 1000;
    if (typeof s.now_unix === "number") clock.offset = s.now_unix - (sent + got) / 2;
    agent = s;
    return s;
  }
  const interval = () => (agent.storage && agent.storage.interval_seconds) || 1;

  // Metric names the store has and their metadata, cached for a minute.
  const cache = {};
  async function cached(key, maxAge, load) {
    const c = cache[key];
    if (c && Date.now() - c.at < maxAge * 1000) return c.value;
    const value = await load();
    cache[key] = { at: Date.now(), value };
    return value;
  }
  const metricNames = (signal) =>
    cached("names", 60, () => getJSON("/api/v1/label/__name__/values", null, signal).then((v) => new Set(v)));
  const metadata = (signal) => cached("meta", 300, () => getJSON("/api/v1/metadata", null, signal));

  // The current value of every series matching `selector`: from the query
  // API, or — when there is none (the store is disabled) — from /metrics.
  async function current(selector, signal) {
    try {
      return { rows: await instant(selector, signal), fromMetrics: false };
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      const rows = await scrapeRows(signal);
      const re = /^\{__name__=~"(.*)"\}$/.exec(selector);
      const want = re ? new RegExp("^(?:" + re[1] + ")$") : null;
      return {
        rows: rows.filter((r) => (want ? want.test(r.metric.__name__) : r.metric.__name__ === selector)),
        fromMetrics: true,
        apiError: e,
      };
    }
  }
  // The Prometheus text format, enough of it for the agent's own /metrics.
  const scrapeRows = (signal) => cached("scrape", 2, () => scrape(signal));
  async function scrape(signal) {
    const path = agent.telemetry_path || document.body.dataset.telemetryPath || "/metrics";
    const res = await fetch(path, { signal, headers: { Accept: "text/plain" } });
    if (!res.ok) throw new ApiError(`GET ${path}: HTTP ${res.status}`, res.status);
    const text = await res.text();
    const rows = [];
    const t = clock.now();
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const metric = { __name__: m[1] };
      const lre = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while (m[3] && (l = lre.exec(m[3]))) {
        metric[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
      rows.push({ metric, value: [t, m[4]] });
    }
    return rows;
  }

  // ---------------------------------------------------------------- time range

  const RANGES = [300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400,
    15 * 86400, 30 * 86400, 90 * 86400, 365 * 86400];
  const REFRESH = [[0, "Off"], [5, "5s"], [10, "10s"], [30, "30s"], [60, "1m"]];
  const settings = {
    range: Number(localStorage.getItem("ngxprobe.range")) || 0,
    refresh: localStorage.getItem("ngxprobe.refresh") == null ? 10 : Number(localStorage.getItem("ngxprobe.refresh")),
  };

  function setupControls() {
    const retention = agent.storage ? agent.storage.retention_seconds : 0;
    const choices = RANGES.filter((r) => !retention || r <= retention);
    if (retention && !choices.includes(retention)) choices.push(retention);
    // Without a store there is no history to choose from.
    $("#range").disabled = !agent.storage;
    if (!choices.includes(settings.range)) {
      // Unless chosen before: an hour, or less for a young agent, so that
      // its history is not squeezed against the right edge.
      const uptime = agent.started_unix ? clock.now() - agent.started_unix : Infinity;
      settings.range = choices.find((r) => r >= uptime && r <= 3600) || (choices.includes(3600) ? 3600 : choices[choices.length - 1]);
    }
    const range = $("#range");
    fill(range, choices.map((r) => h("option", { value: r, selected: r === settings.range },
      "last " + fmtDuration(r) + (r === retention ? " (retention)" : ""))));
    range.onchange = () => {
      settings.range = Number(range.value);
      localStorage.setItem("ngxprobe.range", settings.range);
      refresh();
    };
    const rf = $("#refresh");
    fill(rf, REFRESH.map(([v, l]) => h("option", { value: v, selected: v === settings.refresh }, l)));
    rf.onchange = () => {
      settings.refresh = Number(rf.value);
      localStorage.setItem("ngxprobe.refresh", settings.refresh);
      schedule();
    };
    $("#refresh-now").onclick = () => refresh();
  }

  // start/end/step for a graph `points` wide over the chosen range, and the
  // rate() window that goes with the step (Grafana's $__rate_interval).
  function timeRange(points) {
    const iv = interval();
    const end = clock.now();
    const step = Math.max(iv, Math.ceil(settings.range / points));
    return { start: end - settings.range, end, step, window: Math.ceil(Math.max(step + iv, 4 * iv)) + "s" };
  }

  // ---------------------------------------------------------------- graphs

  function palette() {
    const cs = getComputedStyle(document.documentElement);
    const v = (n) => cs.getPropertyValue(n).trim();
    return {
      series: [1, 2, 3, 4, 5, 6, 7, 8].map((i) => v("--c" + i)),
      fg: v("--muted"), grid: v("--grid"),
      ok: v("--c2"), info: v("--c1"), warn: v("--c3"), bad: v("--c4"),
    };
  }
  // Status classes keep their colour whatever their order.
  function colorFor(label, i, pal) {
    const byClass = { "2xx": pal.ok, "3xx": pal.info, "4xx": pal.warn, "5xx": pal.bad };
    return byClass[label] || pal.series[i % pal.series.length];
  }

  // [{label, points: [[t, v]...]}] → uPlot's columns: shared x, null gaps.
  function columns(list) {
    const xs = [...new Set(list.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const idx = new Map(xs.map((x, i) => [x, i]));
    const ys = list.map((s) => {
      const y = new Array(xs.length).fill(null);
      for (const [t, v] of s.points) y[idx.get(t)] = Number.isFinite(v) ? v : null;
      return y;
    });
    return [xs, ...ys];
  }

  // One graph in `box`, updated in place while its series stay the same.
  class Chart {
    constructor(box, opts) {
      this.box = box;
      this.opts = opts; // {unit, height, spark, label}
      this.u = null;
      this.key = "";
    }
    set(list) {
      const key = list.map((s) => s.label).join("\u0000");
      const data = columns(list);
      const points = data.slice(1).reduce((n, y) => n + y.filter((v) => v != null).length, 0);
      this.box.dataset.points = points;
      this.box.dataset.series = list.length;
      if (this.u && key === this.key) {
        this.u.setData(data);
      } else {
        this.destroy();
        this.key = key;
        this.u = new uPlot(this.options(list), data, this.box);
      }
      this.describe(list);
    }
    options(list) {
      const pal = palette();
      const o = this.opts;
      const axis = { stroke: pal.fg, grid: { stroke: pal.grid, width: 1 }, ticks: { stroke: pal.grid, width: 1 } };
      const width = Math.max(this.box.clientWidth, 150);
      this.box.dataset.fg = pal.fg;
      return {
        width,
        height: o.height || 200,
        padding: o.spark ? [4, 2, 2, 2] : [8, 8, 0, 0],
        legend: { show: !o.spark },
        cursor: o.spark ? { show: false } : { drag: { x: false, y: false } },
        select: { show: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.05 : 1] } },
        axes: o.spark ? [{ show: false }, { show: false }] : [
          axis,
          Object.assign({}, axis, { size: 64, values: (u, vals) => vals.map((v) => fmt(v, o.unit)) }),
        ],
        series: [{ value: (u, v) => (v == null ? "–" : new Date(v * 1000).toLocaleTimeString()) }].concat(list.map((s, i) => ({
          label: s.label,
          stroke: colorFor(s.label, i, pal),
          width: o.spark ? 1.25 : 1.5,
          points: { show: false },
          value: (u, v) => fmt(v, o.unit),
        }))),
      };
    }
    // What a screen reader hears instead of the canvas.
    describe(list) {
      const parts = list.map((s) => {
        const vs = s.points.map((p) => p[1]).filter(Number.isFinite);
        if (!vs.length) return `${s.label}: no data`;
        return `${s.label}: now ${fmt(vs[vs.length - 1], this.opts.unit)}, max ${fmt(Math.max(...vs), this.opts.unit)}`;
      });
      this.box.setAttribute("role", "img");
      this.box.setAttribute("aria-label", `${this.opts.label}, last ${fmtDuration(settings.range)}. ${parts.join("; ")}`);
    }
    resize() {
      if (this.u) this.u.setSize({ width: Math.max(this.box.clientWidth, 150), height: this.opts.height || 200 });
    }
    destroy() {
      if (this.u) this.u.destroy();
      this.u = null;
    }
  }

  // Charts of the current page, resized with the window, dropped on navigation.
  const charts = {
    list: [],
    add(c) { this.list.push(c); return c; },
    clear() { this.list.forEach((c) => c.destroy()); this.list = []; },
    // New colours (light/dark switched): each graph is redrawn on its next data.
    recolor() { this.list.forEach((c) => c.destroy()); },
  };
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => charts.list.forEach((c) => c.resize()), 150);
  });

  // ---------------------------------------------------------------- panels

  // Which optional families this store has: found by name, never assumed.
  async function families(signal) {
    let names = new Set();
    let error = null;
    try { names = await metricNames(signal); } catch (e) { if (e.name === "AbortError") throw e; error = e; }
    const first = (res) => [...names].filter((n) => res.some((re) => re.test(n))).sort()[0] || null;
    const all = (re) => [...names].filter((n) => re.test(n)).sort();
    const bucket = first([/^http_server_request_duration_seconds_bucket$/]) ||
      first([/^[a-z_:]*request_duration_seconds_bucket$/]);
    const count = bucket && names.has(bucket.replace(/_bucket$/, "_count")) ? bucket.replace(/_bucket$/, "_count") : null;
    let statusLabel = null;
    if (count) {
      try {
        const labels = await getJSON("/api/v1/labels", { "match[]": count }, signal);
        statusLabel = ["http_response_status_code", "status_code", "code", "status"].find((l) => labels.includes(l)) || null;
      } catch (e) { if (e.name === "AbortError") throw e; }
    }
    return {
      names, error, bucket, count, statusLabel,
      // Kernel diagnostics, named by whoever exports them: counters whose
      // names say what they count.
      acceptDrops: all(/^ngxprobe_[a-z0-9_]*(accept|listen|backlog|syn)[a-z0-9_]*(drop|overflow)[a-z0-9_]*_total$/),
      retransmits: all(/^ngxprobe_[a-z0-9_]*retrans[a-z0-9_]*_total$/),
      resets: all(/^ngxprobe_[a-z0-9_]*reset[a-z0-9_]*_total$/),
    };
  }

  const INSTANCE = "conf_path, container_id";
  const short = (name) => name.replace(/^ngxprobe_(nginx_)?/, "").replace(/_total$/, "");

  // A panel: what to query (one query per line of the graph, each grouped
  // per instance and, on the instance page, per listener where the family
  // has a listen_address label), how to name the lines, the value's unit.
  // `always`: shown (with "no data" or the error) even when empty.
  const PANELS = [
    {
      id: "requests", title: "Requests/s", unit: "rps", always: true, help: "nginx_http_requests_total",
      queries: (f, c) => [{ expr: `sum by (${c.by}) (rate(nginx_http_requests_total${c.sel}[${c.window}]))`, name: () => "requests/s" }],
    },
    {
      id: "connections", title: "Connections by state", unit: "count", always: true, help: "nginx_connections_active",
      queries: (f, c) => ["reading", "writing", "waiting"].map((s) => ({
        expr: `sum by (${c.by}) (nginx_connections_${s}${c.sel})`, name: () => s,
      })),
    },
    {
      id: "status", title: "Responses/s by status class", unit: "rps", when: (f) => f.statusLabel, help: (f) => f.count,
      queries: (f, c) => [{
        expr: `sum by (${c.by}, class) (label_replace(rate(${f.count}${c.sel}[${c.window}]), "class", "\${1}xx", ${quote(f.statusLabel)}, "([0-9]).*"))`,
        name: (m) => m.class || "unknown",
      }],
    },
    {
      id: "latency", title: "Latency p50 / p99", unit: "s", when: (f) => f.bucket, help: (f) => f.bucket.replace(/_bucket$/, ""),
      queries: (f, c) => [0.5, 0.99].map((q) => ({
        expr: `histogram_quantile(${q}, sum by (${c.by}, le) (rate(${f.bucket}${c.sel}[${c.window}])))`,
        name: () => "p" + Math.round(q * 100),
      })),
    },
    ...[
      ["accept_drops", "Accept-queue drops/s", "acceptDrops"],
      ["retransmits", "Retransmits/s", "retransmits"],
      ["resets", "Resets/s", "resets"],
    ].map(([id, title, key]) => ({
      id, title, unit: "rps", perListener: true, when: (f) => f[key].length, help: (f) => f[key][0],
      queries: (f, c) => f[key].map((n) => ({
        expr: `sum by (${c.by}) (rate(${n}${c.sel}[${c.window}]))`,
        name: (m) => [f[key].length > 1 ? short(n) : "", m.listen_address || ""].filter(Boolean).join(" ") || short(n),
      })),
    })),
    ...[
      ["accepted", "Accepted connections/s", "nginx_connections_accepted"],
      ["closed", "Closed connections/s", "ngxprobe_nginx_connections_closed_total"],
      ["blocked", "Blocked writes/s", "ngxprobe_nginx_blocked_writes_total"],
    ].map(([id, title, n]) => ({
      id, title, unit: "rps", instanceOnly: true, when: (f) => f.names.has(n), help: n,
      queries: (f, c) => [{ expr: `sum by (${c.by}) (rate(${n}${c.sel}[${c.window}]))`, name: () => title.replace(/\/s$/, "").toLowerCase() + "/s" }],
    })),
  ];

  const instanceKey = (m) => (m.conf_path || "") + "\u0000" + (m.container_id || "");

  // Runs a panel's queries → {panel, byInstance: Map(key → [{label, points}]), error}.
  async function runPanel(panel, f, c, signal) {
    const byInstance = new Map();
    let error = null;
    const by = panel.perListener && c.perListener ? INSTANCE + ", listen_address" : INSTANCE;
    const qs = panel.queries(f, Object.assign({}, c, { by }));
    const results = await Promise.allSettled(qs.map((q) => rangeQuery(q.expr, c, signal)));
    results.forEach((r, i) => {
      if (r.status === "rejected") {
        if (r.reason && r.reason.name === "AbortError") throw r.reason;
        error = error || r.reason;
        return;
      }
      for (const s of r.value) {
        const key = instanceKey(s.metric);
        if (!byInstance.has(key)) byInstance.set(key, []);
        byInstance.get(key).push({
          label: qs[i].name(s.metric),
          metric: s.metric,
          points: s.values.map(([t, v]) => [t, parseFloat(v)]),
        });
      }
    });
    return { panel, byInstance, error };
  }

  function helpText(panel, f, meta) {
    const name = typeof panel.help === "function" ? panel.help(f) : panel.help;
    const m = meta && name && (meta[name] || meta[name.replace(/_total$/, "")]);
    return m && m[0] ? `${name}: ${m[0].help}` : name || "";
  }

  function lastValue(list) {
    let sum = null;
    for (const s of list) {
      for (let i = s.points.length - 1; i >= 0; i--) {
        if (Number.isFinite(s.points[i][1])) { sum = (sum || 0) + s.points[i][1]; break; }
      }
    }
    return sum;
  }

  // ---------------------------------------------------------------- pages

  const instanceLink = (m) => "#/instance?" + new URLSearchParams(
    m.container_id ? { conf_path: m.conf_path, container_id: m.container_id } : { conf_path: m.conf_path });

  // Instance labels from nginx_up, plus what the info families add.
  async function instanceFacts(signal) {
    const [up, info, workers, listeners] = await Promise.allSettled([
      current("nginx_up", signal),
      current("ngxprobe_nginx_instance_info", signal),
      current("ngxprobe_nginx_workers", signal),
      current("ngxprobe_nginx_listener_info", signal),
    ]);
    if (up.status === "rejected") {
      if (up.reason && up.reason.name === "AbortError") throw up.reason;
      return { error: up.reason, instances: new Map() };
    }
    const instances = new Map();
    for (const r of up.value.rows) {
      instances.set(instanceKey(r.metric), { metric: r.metric, up: parseFloat(r.value[1]) === 1, facts: {}, listeners: [] });
    }
    const each = (res, fn) => res.status === "fulfilled" && res.value.rows.forEach((r) => {
      const i = instances.get(instanceKey(r.metric));
      if (i) fn(i, r);
    });
    each(info, (i, r) => {
      for (const [k, v] of Object.entries(r.metric)) {
        if (k !== "__name__" && !(k in i.metric)) i.facts[k] = v;
      }
    });
    each(workers, (i, r) => { i.facts.workers = r.value[1]; });
    each(listeners, (i, r) => { if (r.metric.address) i.listeners.push(r.metric.address); });
    return { instances, fromMetrics: up.value.fromMetrics, apiError: up.value.apiError };
  }

  function metaList(inst) {
    const rows = [];
    const add = (k, v) => v && rows.push(h("div", {}, h("dt", {}, k), h("dd", {}, v)));
    add("container", inst.metric.container_id);
    for (const [k, v] of Object.entries(inst.metric)) {
      if (!["__name__", "conf_path", "container_id"].includes(k)) add(k, v);
    }
    add("version", inst.facts.version);
    for (const [k, v] of Object.entries(inst.facts)) if (k !== "version") add(k, v);
    add("listeners", inst.listeners.sort().join(" "));
    return h("dl", { class: "meta" }, rows);
  }

  function upBadge(inst) {
    if (inst.up === null) return h("span", { class: "badge gone", title: "not reported now; seen in the chosen range" }, "gone");
    return h("span", { class: "badge " + (inst.up ? "up" : "down") }, inst.up ? "up" : "down");
  }

  const overview = {
    name: "overview",
    title: "Overview",
    mount(main) {
      this.summary = h("p", { id: "summary" }, "Loading…");
      this.errors = h("div", { id: "overview-errors" });
      this.list = h("div", { id: "instances" });
      this.cards = new Map();
      append(main, [h("h1", {}, "nginx on this node"), this.summary, this.errors, this.list]);
    },
    async update(signal) {
      const c = timeRange(120);
      const [facts, f] = await Promise.all([instanceFacts(signal), families(signal)]);
      // Without the query API (store disabled) there is nothing to graph.
      const panels = facts.fromMetrics ? [] : PANELS.filter((p) => !p.instanceOnly && (p.always || p.when(f)));
      const results = await Promise.all(panels.map((p) => runPanel(p, f, Object.assign({ sel: "" }, c), signal)));
      const meta = await metadata(signal).catch(() => null);

      const errors = [];
      if (facts.error) errors.push(errorBox(facts.error));
      if (facts.fromMetrics) {
        errors.push(errorBox(facts.apiError,
          h("p", {}, "The query API is not available, so there is no history here; the instances below are read from ",
            h("a", { href: agent.telemetry_path }, agent.telemetry_path), ".")));
      }
      for (const r of results) if (r.error && r.panel.always) errors.push(errorBox(`${r.panel.title}: ${errText(r.error)}`));
      fill(this.errors, errors);

      // Instances running now, plus those seen in the range only.
      const instances = facts.instances;
      for (const r of results) {
        for (const [key, list] of r.byInstance) {
          if (!instances.has(key) && list[0].metric.conf_path) {
            instances.set(key, { metric: { conf_path: list[0].metric.conf_path, container_id: list[0].metric.container_id }, up: null, facts: {}, listeners: [] });
          }
        }
      }
      const keys = [...instances.keys()].sort();
      const upCount = keys.filter((k) => instances.get(k).up).length;
      const req = results.find((r) => r.panel.id === "requests");
      const total = req ? lastValue([...req.byInstance.values()].flat()) : null;
      fill(this.summary,
        `${keys.length} nginx instance${keys.length === 1 ? "" : "s"}, ${upCount} up`,
        total != null ? ` · ${fmt(total, "rps")} in total` : "",
        facts.fromMetrics ? "" : ` · graphs over the last ${fmtDuration(settings.range)}`);
      if (!keys.length) {
        charts.clear();
        this.cards.clear();
        fill(this.list, h("p", { class: "note" }, facts.error ? "" : "No nginx found on this node (yet). The agent scans for nginx every few seconds."));
        return;
      }
      // Rebuild the cards only when the set of instances or panels changed;
      // otherwise the graphs update in place.
      const shape = keys.join("\n") + "|" + panels.map((p) => p.id).join(",");
      if (shape !== this.shape) {
        this.shape = shape;
        charts.clear();
        this.cards.clear();
        fill(this.list, keys.map((k) => this.card(k, instances.get(k), panels, f, meta)));
      }
      for (const k of keys) {
        const card = this.cards.get(k);
        fill(card.head, upBadge(instances.get(k)), h("h2", {}, h("a", { href: instanceLink(instances.get(k).metric) }, instances.get(k).metric.conf_path)), metaList(instances.get(k)));
        card.el.dataset.up = instances.get(k).up ? "1" : "0";
        for (const r of results) {
          const slot = card.slots.get(r.panel.id);
          const list = r.byInstance.get(k) || [];
          fill(slot.value, r.error ? "error" : list.length ? fmt(lastValue(list), r.panel.unit) : "no data");
          slot.chart.set(list);
        }
      }
    },
    card(key, inst, panels, f, meta) {
      const head = h("header");
      const slots = new Map();
      const sparks = panels.map((p) => {
        const value = h("span", { class: "value" });
        const box = h("div", { class: "plot" });
        const fig = h("figure", { "data-panel": p.id, title: helpText(p, f, meta) },
          h("figcaption", {}, h("span", {}, p.title), value), box);
        slots.set(p.id, { value, chart: charts.add(new Chart(box, { unit: p.unit, height: 48, spark: true, label: p.title })) });
        return fig;
      });
      const el = h("article", { class: "card", "data-instance": inst.metric.conf_path, "data-container": inst.metric.container_id || "" },
        head, h("div", { class: "sparks" }, sparks));
      this.cards.set(key, { el, head, slots });
      return el;
    },
  };

  const instancePage = {
    name: "instance",
    title: "Instance",
    mount(main, params) {
      this.params = params;
      const conf = params.get("conf_path") || "";
      this.head = h("div", { class: "card" }, "Loading…");
      this.errors = h("div");
      this.grid = h("div", { class: "panels", id: "panels" });
      this.slots = new Map();
      append(main, [h("p", {}, h("a", { href: "#/" }, "← all instances")), h("h1", {}, conf), this.head, this.errors, this.grid]);
    },
    selector() {
      const conf = this.params.get("conf_path") || "";
      const cid = this.params.get("container_id") || "";
      return `{conf_path=${quote(conf)}, container_id=${quote(cid)}}`;
    },
    async update(signal) {
      const c = Object.assign({ sel: this.selector(), perListener: true }, timeRange(300));
      const [facts, f] = await Promise.all([instanceFacts(signal), families(signal)]);
      const meta = await metadata(signal).catch(() => null);
      const key = instanceKey({ conf_path: this.params.get("conf_path"), container_id: this.params.get("container_id") });
      const inst = facts.instances.get(key);
      if (facts.error) fill(this.head, errorBox(facts.error));
      else if (!inst) fill(this.head, h("p", { class: "note" }, "This instance is not running now; the graphs show what the store has."));
      else fill(this.head, h("header", {}, upBadge(inst), metaList(inst)));

      const panels = PANELS.filter((p) => p.always || p.when(f));
      const results = await Promise.all(panels.map((p) => runPanel(p, f, c, signal)));
      const errors = results.filter((r) => r.error && r.panel.always).map((r) => errorBox(`${r.panel.title}: ${errText(r.error)}`));
      fill(this.errors, errors);
      const shown = results.filter((r) => r.panel.always || r.byInstance.size || r.error);
      const shape = shown.map((r) => r.panel.id).join(",");
      if (shape !== this.shape) {
        this.shape = shape;
        charts.clear();
        this.slots.clear();
        fill(this.grid, shown.map((r) => {
          const box = h("div", { class: "plot" });
          const status = h("p", { class: "note" });
          const help = helpText(r.panel, f, meta);
          const el = h("section", { class: "panel", "data-panel": r.panel.id },
            h("h2", {}, r.panel.title), help ? h("p", { class: "help" }, help) : null, status, box);
          this.slots.set(r.panel.id, { status, chart: charts.add(new Chart(box, { unit: r.panel.unit, height: 220, label: r.panel.title })) });
          return el;
        }));
      }
      for (const r of shown) {
        const slot = this.slots.get(r.panel.id);
        const list = r.byInstance.get(key) || [];
        if (r.error) fill(slot.status, errorBox(r.error));
        else fill(slot.status, list.length ? null : "No data for this instance in the chosen range.");
        slot.chart.set(list);
      }
    },
  };

  // ---- alerts and rules

  function chips(obj, skip) {
    return h("div", { class: "chips" }, Object.keys(obj || {}).filter((k) => !(skip || []).includes(k)).sort()
      .map((k) => h("span", { class: "chip" }, `${k}="${obj[k]}"`)));
  }
  function timeCell(t) {
    return t ? h("time", { datetime: isoTime(t), title: isoTime(t) }, fmtAgo(t)) : "never";
  }

  const alertsPage = {
    name: "alerts",
    title: "Alerts & rules",
    mount(main) {
      this.alerts = h("div", { id: "alerts" }, "Loading…");
      this.notify = h("div", { id: "notifications" }, "Loading…");
      this.rules = h("div", { id: "rules" }, "Loading…");
      append(main, [
        h("h1", {}, "Alerts & rules"),
        h("section", { "aria-labelledby": "h-alerts" }, h("h2", { id: "h-alerts" }, "Firing and pending alerts"), this.alerts),
        h("section", { "aria-labelledby": "h-notify" }, h("h2", { id: "h-notify" }, "Notification delivery"), this.notify),
        h("section", { "aria-labelledby": "h-rules" }, h("h2", { id: "h-rules" }, "Rule groups"), this.rules),
      ]);
    },
    async update(signal) {
      await Promise.all([
        this.loadAlerts(signal).catch((e) => rethrowAbort(e) || fill(this.alerts, errorBox(e))),
        this.loadRules(signal).catch((e) => rethrowAbort(e) || fill(this.rules, errorBox(e))),
        this.loadNotify(signal).catch((e) => rethrowAbort(e) || fill(this.notify, errorBox(e))),
      ]);
    },
    async loadAlerts(signal) {
      const data = await getJSON("/api/v1/alerts", null, signal);
      const alerts = (data.alerts || []).slice().sort((a, b) =>
        (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1) ||
        String(a.labels.alertname).localeCompare(String(b.labels.alertname)));
      if (!alerts.length) return fill(this.alerts, h("p", { class: "note" }, "No alert is firing or pending."));
      fill(this.alerts, h("table", { id: "alerts-table" },
        h("thead", {}, h("tr", {}, ["State", "Alert", "Labels", "Annotations", "Active since", "Value"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, alerts.map((a) => h("tr", { "data-alertname": a.labels.alertname, "data-state": a.state },
          h("td", {}, h("span", { class: "badge " + a.state }, a.state)),
          h("td", {}, h("strong", {}, a.labels.alertname)),
          h("td", {}, chips(a.labels, ["alertname"])),
          h("td", {}, Object.keys(a.annotations || {}).sort().map((k) => h("div", {}, h("span", { class: "muted" }, k + ": "), a.annotations[k]))),
          h("td", {}, timeCell(parseTime(a.activeAt))),
          h("td", { class: "num" }, compact(parseFloat(a.value))))))));
    },
    async loadRules(signal) {
      const data = await getJSON("/api/v1/rules", null, signal);
      const groups = data.groups || [];
      if (!groups.length) return fill(this.rules, h("p", { class: "note" }, "No rules are loaded."));
      fill(this.rules, groups.map((g) => h("div", { class: "card", "data-group": g.name },
        h("header", {}, h("h3", {}, g.name),
          h("dl", { class: "meta" },
            h("div", {}, h("dt", {}, "file"), h("dd", {}, g.file || "–")),
            h("div", {}, h("dt", {}, "interval"), h("dd", {}, fmtDuration(g.interval))),
            h("div", {}, h("dt", {}, "last evaluation"), h("dd", {}, timeCell(parseTime(g.lastEvaluation)))),
            h("div", {}, h("dt", {}, "took"), h("dd", {}, fmtSeconds(g.evaluationTime))))),
        h("table", {},
          h("thead", {}, h("tr", {}, ["Rule", "State", "Query", "For", "Last evaluation", "Took", "Error"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, (g.rules || []).map((r) => h("tr", { "data-rule": r.name },
            h("td", {}, h("strong", {}, r.name), h("div", { class: "muted" }, r.type === "alerting" ? "alert" : "recording")),
            h("td", {}, h("span", { class: "badge " + (r.health === "err" ? "err" : r.state || r.health) }, r.health === "err" ? "error" : r.state || r.health)),
            h("td", {}, h("code", {}, r.query)),
            h("td", {}, r.duration ? fmtDuration(r.duration) : "–"),
            h("td", {}, timeCell(parseTime(r.lastEvaluation))),
            h("td", { class: "num" }, fmtSeconds(r.evaluationTime || 0)),
            h("td", {}, r.lastError ? h("span", { class: "badge err" }, r.lastError) : "–"))))))));
    },
    async loadNotify(signal) {
      const receivers = agent.receivers || [];
      const parts = [];
      if (!receivers.length && !agent.alertmanagers) {
        return fill(this.notify, h("p", { class: "note" },
          "No receivers are configured: alerts are shown here and in /api/v1/alerts but not sent anywhere " +
          "(configure alertmanager: or alerting.alertmanagers to send them)."));
      }
      if (receivers.length) {
        parts.push(h("p", {}, "Receivers: ", receivers.map((r, i) => [i ? ", " : "", h("strong", {}, r.name),
          " (", r.integrations.map(([k, n]) => `${n} ${k}`).join(", ") || "no integration", ")"])));
        const r = timeRange(240);
        const [total, failed] = await Promise.all([
          rangeQuery("ngxprobe_notify_notifications_total", r, signal),
          rangeQuery("ngxprobe_notify_notifications_failed_total", r, signal),
        ]);
        const kinds = new Set(receivers.flatMap((x) => x.integrations.map(([k]) => k)));
        const byKind = (res) => new Map(res.map((s) => [s.metric.integration, s.values.map(([t, v]) => [t, parseFloat(v)])]));
        const T = byKind(total), F = byKind(failed);
        parts.push(h("table", { id: "delivery-table" },
          h("thead", {}, h("tr", {}, ["Integration", "Notifications", "Failed", "Last success", "Last failure"].map((t, i) => h("th", { scope: "col", class: i && i < 3 ? "num" : null }, t)))),
          h("tbody", {}, [...kinds].sort().map((k) => {
            const d = deliveries(T.get(k) || [], F.get(k) || []);
            return h("tr", { "data-integration": k },
              h("td", {}, k), h("td", { class: "num" }, compact(d.total)), h("td", { class: "num" }, compact(d.failed)),
              h("td", {}, d.lastOk ? timeCell(d.lastOk) : `none in the last ${fmtDuration(settings.range)}`),
              h("td", {}, d.lastFail ? h("span", { class: "badge err" }, timeCell(d.lastFail)) : `none in the last ${fmtDuration(settings.range)}`));
          }))));
      }
      if (agent.alertmanagers) {
        const [sent, errs] = await Promise.all([
          instant("ngxprobe_notify_forward_sent_total", signal), instant("ngxprobe_notify_forward_errors_total", signal)]);
        const e = new Map(errs.map((s) => [s.metric.alertmanager, s.value[1]]));
        parts.push(h("h3", {}, "Forwarded to Alertmanagers"), h("table", {},
          h("thead", {}, h("tr", {}, ["Alertmanager", "Alerts sent", "Errors"].map((t, i) => h("th", { scope: "col", class: i ? "num" : null }, t)))),
          h("tbody", {}, sent.map((s) => h("tr", {}, h("td", {}, s.metric.alertmanager),
            h("td", { class: "num" }, compact(parseFloat(s.value[1]))), h("td", { class: "num" }, compact(parseFloat(e.get(s.metric.alertmanager) || "0"))))))));
      }
      fill(this.notify, parts);
    },
  };
  function rethrowAbort(e) {
    if (e && e.name === "AbortError") throw e;
    return false;
  }

  // When notifications went out and when they failed, from the two counters'
  // history: a step where "total" grew more than "failed" had a success.
  function deliveries(total, failed) {
    const f = new Map(failed);
    const out = { total: 0, failed: 0, lastOk: null, lastFail: null };
    let prevT = null, prevF = null;
    for (const [t, v] of total) {
      const fv = f.has(t) ? f.get(t) : prevF;
      if (prevT != null) {
        const dT = v >= prevT ? v - prevT : v;
        const dF = fv != null && prevF != null ? (fv >= prevF ? fv - prevF : fv) : 0;
        if (dT - dF > 0) out.lastOk = t;
        if (dF > 0) out.lastFail = t;
      }
      prevT = v;
      prevF = fv;
      out.total = v;
      out.failed = fv || 0;
    }
    return out;
  }

  // ---- query

  const queryPage = {
    name: "query",
    title: "Query",
    mount(main, params) {
      this.params = params;
      const expr = params.get("expr") || "";
      this.tab = params.get("tab") === "graph" ? "graph" : "table";
      this.input = h("textarea", { id: "expr", class: "expr", name: "expr", rows: 3, spellcheck: "false", autocapitalize: "off",
        "aria-describedby": "expr-help" });
      this.input.value = expr;
      this.input.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.submit(); }
      });
      const form = h("form", { class: "query", onsubmit: (e) => { e.preventDefault(); this.submit(); } },
        h("label", { for: "expr" }, "PromQL expression"), this.input,
        h("button", { type: "submit", class: "primary" }, "Run"),
        h("p", { id: "expr-help", class: "note" }, "Enter runs the query, Shift+Enter adds a line. The graph uses the range chosen above."));
      this.names = h("select", { id: "metric-names", "aria-label": "Insert a metric name" }, h("option", { value: "" }, "Insert a metric name…"));
      this.names.onchange = () => {
        if (!this.names.value) return;
        const i = this.input.selectionStart;
        this.input.setRangeText(this.names.value, i, this.input.selectionEnd, "end");
        this.names.value = "";
        this.input.focus();
      };
      const tab = (id, label) => h("button", { type: "button", role: "tab", id: "tab-" + id, "aria-selected": String(this.tab === id),
        "aria-controls": "query-output", onclick: () => this.submit(id) }, label);
      this.stats = h("p", { class: "note", id: "query-stats" });
      this.out = h("div", { id: "query-output", role: "tabpanel" });
      append(main, [h("h1", {}, "Query"), form, this.names,
        h("div", { class: "tabs", role: "tablist", "aria-label": "Result view" }, tab("table", "Table"), tab("graph", "Graph")),
        this.stats, this.out]);
      metricNames().then((names) => append(this.names, [...names].sort().map((n) => h("option", { value: n }, n)))).catch(() => {});
    },
    // Puts the expression in the address (linkable, back/forward work); the
    // hashchange runs it.
    submit(tab) {
      const p = new URLSearchParams({ expr: this.input.value, tab: tab || this.tab });
      const target = "#/query?" + p;
      if (location.hash === target) refresh();
      else location.hash = target;
    },
    async update(signal) {
      const expr = this.params.get("expr") || "";
      if (!expr.trim()) {
        fill(this.stats);
        return fill(this.out, h("p", { class: "note" }, "Type an expression, e.g. ", h("code", {}, "sum by (conf_path) (rate(nginx_http_requests_total[1m]))"), "."));
      }
      const t0 = performance.now();
      try {
        if (this.tab === "graph") {
          const r = timeRange(400);
          const res = await rangeQuery(expr, r, signal);
          this.graph(res);
          fill(this.stats, `${res.length} series · step ${r.step}s · ${Math.round(performance.now() - t0)} ms`);
        } else {
          const res = await getJSON("/api/v1/query", { query: expr, time: clock.now().toFixed(3) }, signal);
          this.table(res);
          fill(this.stats, `${res.resultType}${Array.isArray(res.result) ? ", " + res.result.length + " series" : ""} · ${Math.round(performance.now() - t0)} ms`);
        }
      } catch (e) {
        rethrowAbort(e);
        charts.clear();
        fill(this.stats);
        fill(this.out, queryError(expr, e));
      }
    },
    table(res) {
      charts.clear();
      const r = res.result;
      let rows;
      if (res.resultType === "scalar" || res.resultType === "string") {
        rows = [h("tr", {}, h("td", {}, res.resultType), h("td", { class: "num" }, r[1]))];
      } else if (!r.length) {
        return fill(this.out, h("p", { class: "note", id: "query-empty" }, "Empty result: no series match at this time."));
      } else {
        rows = r.map((s) => h("tr", { "data-series": seriesName(s.metric) },
          h("td", {}, h("code", {}, seriesName(s.metric))),
          h("td", { class: "num" }, s.value ? s.value[1] : (s.values || []).map(([t, v]) => h("div", {}, `${v} @${t}`)))));
      }
      fill(this.out, h("table", { id: "query-result" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Series"), h("th", { scope: "col", class: "num" }, "Value"))),
        h("tbody", {}, rows)));
    },
    graph(res) {
      charts.clear();
      if (!res.length) return fill(this.out, h("p", { class: "note", id: "query-empty" }, "Empty result: no series in this range."));
      const MAX = 40;
      const list = res.slice(0, MAX).map((s) => ({ label: seriesName(s.metric), points: s.values.map(([t, v]) => [t, parseFloat(v)]) }));
      const box = h("div", { class: "plot", id: "query-graph" });
      fill(this.out, res.length > MAX ? h("p", { class: "note" }, `Showing the first ${MAX} of ${res.length} series.`) : null, box);
      charts.add(new Chart(box, { unit: "", height: 320, label: "Query result" })).set(list);
    },
  };

  // The API's parse errors start with the position, "L:C: parse error: ..."
  // (or carry it after "parse error: "): point at it under the expression.
  function queryError(expr, e) {
    const msg = errText(e);
    const m = /(?:^|: )(\d+):(\d+)(?::|-)/.exec(msg);
    let caret = null;
    if (m) {
      const line = Number(m[1]), col = Number(m[2]);
      const lines = expr.split("\n");
      if (line >= 1 && line <= lines.length && col >= 1) {
        const text = lines[line - 1];
        caret = h("pre", { "aria-label": `position: line ${line}, column ${col}` },
          text + "\n" + " ".repeat(Math.min(col - 1, text.length)) + "^");
      }
    }
    const box = errorBox(e, caret);
    box.id = "query-error";
    return box;
  }

  // ---- agent status

  function kvTable(id, rows) {
    return h("table", { class: "kv", id },
      h("tbody", {}, rows.filter(Boolean).map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
  }

  const statusPage = {
    name: "status",
    title: "Agent status",
    mount(main) {
      this.sections = {};
      const sec = (id, title) => {
        const body = h("div", { id: "status-" + id }, "Loading…");
        this.sections[id] = body;
        return h("section", { "aria-labelledby": "h-" + id }, h("h2", { id: "h-" + id }, title), body);
      };
      this.note = h("div");
      append(main, [h("h1", {}, "Agent status"), this.note,
        sec("build", "Build"), sec("ebpf", "eBPF programs"), sec("discovery", "Discovery"),
        sec("store", "Store"), sec("rules", "Rules"), sec("process", "Process")]);
    },
    async update(signal) {
      const s = await loadAgent(signal).catch((e) => rethrowAbort(e) || e);
      const statusError = s instanceof Error ? s : null;
      let cur;
      try {
        cur = await current('{__name__=~"ngxprobe_.+|process_.+"}', signal);
      } catch (e) {
        rethrowAbort(e);
        cur = { rows: [], error: e };
      }
      const notes = [];
      if (statusError) notes.push(errorBox(statusError));
      if (cur.error) notes.push(errorBox(cur.error));
      if (cur.fromMetrics) {
        notes.push(errorBox(cur.apiError, h("p", {}, "Without the query API there are no rates; current values are read from ",
          h("a", { href: agent.telemetry_path }, agent.telemetry_path), ".")));
      }
      fill(this.note, notes);
      const v = (name, labels) => {
        const r = cur.rows.find((x) => x.metric.__name__ === name &&
          Object.entries(labels || {}).every(([k, val]) => x.metric[k] === val));
        return r ? parseFloat(r.value[1]) : null;
      };
      const rows = (name) => cur.rows.filter((x) => x.metric.__name__ === name);
      const rate = async (expr) => {
        if (cur.fromMetrics || cur.error) return [];
        try { return await instant(expr, signal); } catch (e) { rethrowAbort(e); return []; }
      };
      const w = timeRange(240).window;

      // Build
      let build = null;
      if (!cur.fromMetrics) build = await getJSON("/api/v1/status/buildinfo", null, signal).catch((e) => rethrowAbort(e) || null);
      const bi = rows("ngxprobe_build_info")[0];
      fill(this.sections.build, kvTable("build-table", [
        ["version", (build && build.version) || agent.version || (bi && bi.metric.version) || "–"],
        bi && bi.metric.arch ? ["architecture", bi.metric.arch] : null,
        ...Object.entries(build || {}).filter(([k, val]) => k !== "version" && val).map(([k, val]) => [k, String(val)]),
        agent.started_unix ? ["started", h("span", {}, isoTime(agent.started_unix), " (", fmtDuration(clock.now() - agent.started_unix), " ago)")] : null,
        ["metrics path", h("a", { href: agent.telemetry_path }, agent.telemetry_path)],
      ]));

      // eBPF
      const [runS, runs] = await Promise.all([
        rate(`rate(ngxprobe_ebpf_program_run_seconds_total[${w}])`),
        rate(`rate(ngxprobe_ebpf_program_runs_total[${w}])`),
      ]);
      const stats = v("ngxprobe_ebpf_stats_enabled");
      const programs = rows("ngxprobe_ebpf_program_runs_total").map((r) => r.metric.program).sort();
      const rateOf = (res, p) => { const x = res.find((r) => r.metric.program === p); return x ? parseFloat(x.value[1]) : null; };
      fill(this.sections.ebpf,
        kvTable("ebpf-table", [
          ["programs loaded", compact(v("ngxprobe_ebpf_programs_loaded"))],
          ["run-time statistics", stats === 1 ? "on (kernel.bpf_stats_enabled=1)" : "off: set kernel.bpf_stats_enabled=1 to see run time"],
          ["tracked connections", compact(v("ngxprobe_ebpf_tracked_connections"))],
          ...rows("ngxprobe_ebpf_map_entries").map((r) => [`map ${r.metric.map}`,
            `${compact(parseFloat(r.value[1]))} of ${compact(v("ngxprobe_ebpf_map_capacity", { map: r.metric.map }))} entries`]),
        ]),
        programs.length ? h("table", { id: "programs-table" },
          h("thead", {}, h("tr", {}, ["Program", "Runs/s", "Run time/s", "Per run", "Runs total"].map((t, i) => h("th", { scope: "col", class: i ? "num" : null }, t)))),
          h("tbody", {}, programs.map((p) => {
            const rs = rateOf(runs, p), ts = rateOf(runS, p);
            return h("tr", { "data-program": p }, h("td", {}, h("code", {}, p)),
              h("td", { class: "num" }, rs == null ? "–" : fmt(rs, "rps")),
              // Run time is only counted while kernel.bpf_stats_enabled=1.
              h("td", { class: "num" }, ts == null || stats !== 1 ? "–" : fmtSeconds(ts)),
              h("td", { class: "num" }, rs && ts != null && stats === 1 ? fmt((ts / rs) * 1e9, "ns") : "–"),
              h("td", { class: "num" }, compact(v("ngxprobe_ebpf_program_runs_total", { program: p }))));
          }))) : null);

      // Discovery
      const errs = await rate(`increase(ngxprobe_discovery_errors_total[${Math.round(settings.range)}s])`);
      fill(this.sections.discovery, kvTable("discovery-table", [
        ["nginx instances", compact(v("ngxprobe_nginx_instances"))],
        ["scans", compact(v("ngxprobe_discovery_scans_total"))],
        ["last scan took", fmtSeconds(v("ngxprobe_discovery_duration_seconds") || 0)],
        ["errors (since start)", compact(v("ngxprobe_discovery_errors_total"))],
        errs.length ? [`errors (last ${fmtDuration(settings.range)})`, compact(parseFloat(errs[0].value[1]))] : null,
      ]));

      // Store
      const st = agent.storage;
      if (!st) {
        fill(this.sections.store, h("p", { class: "note" }, "Storage is disabled (storage.enabled: false): no history, no query API, no rules."));
      } else {
        const appended = await rate(`rate(ngxprobe_store_samples_appended_total[${w}])`);
        const bytes = rows("ngxprobe_store_bytes");
        const onDisk = ["index", "blocks", "wal"].reduce((n, k) => n + (v("ngxprobe_store_bytes", { kind: k }) || 0), 0);
        fill(this.sections.store, kvTable("store-table", [
          ["path", h("code", {}, st.path)],
          ["retention", `${fmtDuration(st.retention_seconds)}${st.retention_size_bytes ? ", at most " + fmtBytes(st.retention_size_bytes) : ""}`],
          ["sample interval", fmtInterval(st.interval_seconds)],
          ["writable", v("ngxprobe_store_writable") === 0 ? h("span", { class: "badge err" }, "no: new samples stay in memory") : "yes"],
          ["series", compact(v("ngxprobe_store_series"))],
          ["on disk", bytes.length ? `${fmtBytes(onDisk)} (` + bytes.map((b) => `${b.metric.kind} ${fmtBytes(parseFloat(b.value[1]))}`).join(", ") + ")" : "–"],
          ["in memory (head)", `${fmtBytes(v("ngxprobe_store_head_bytes") || 0)} in ${compact(v("ngxprobe_store_head_chunks"))} chunks`],
          ["samples appended/s", appended.length ? fmt(parseFloat(appended[0].value[1]), "rps") : "–"],
          ["write errors", compact(v("ngxprobe_store_write_errors_total"))],
          ["corrupt chunks / WAL corruptions", `${compact(v("ngxprobe_store_corrupt_chunks_total"))} / ${compact(v("ngxprobe_store_wal_corruptions_total"))}`],
        ]));
      }

      // Rules
      const ru = agent.rules;
      fill(this.sections.rules, ru ? kvTable("rules-table", [
        ["rule files", ru.files.length ? ru.files.map((f) => h("div", {}, h("code", {}, f))) : "none"],
        ["built-in rules", ru.default_rules ? "on" : "off"],
        ["evaluation interval", fmtInterval(ru.evaluation_interval_seconds)],
        ["last reload", v("ngxprobe_rule_config_last_reload_successful") === 0 ? h("span", { class: "badge err" }, "failed") : "successful"],
        ["evaluation failures", compact(rows("ngxprobe_rule_evaluation_failures_total").reduce((n, r) => n + parseFloat(r.value[1]), 0))],
      ]) : h("p", { class: "note" }, "Rules are not evaluated (they need the store)."));

      // Process
      const cpu = await rate(`rate(process_cpu_seconds_total[${w}])`);
      fill(this.sections.process, kvTable("process-table", [
        ["resident memory", fmtBytes(v("process_resident_memory_bytes") || 0)],
        ["CPU", cpu.length ? trim(parseFloat(cpu[0].value[1]) * 100) + " % of one core" : "–"],
        ["open file descriptors", compact(v("process_open_fds"))],
      ]));
    },
  };

  const notFound = {
    name: "notfound",
    title: "Not found",
    mount(main) {
      append(main, [h("h1", {}, "No such page"), h("p", {}, h("a", { href: "#/" }, "Back to the overview"))]);
    },
    async update() {},
  };

  // ---------------------------------------------------------------- router

  const PAGES = { "": overview, instance: instancePage, alerts: alertsPage, query: queryPage, status: statusPage };
  const main = $("#main");
  let page = null;
  let controller = null;
  let timer = 0;

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const q = raw.indexOf("?");
    return { name: q < 0 ? raw : raw.slice(0, q), params: new URLSearchParams(q < 0 ? "" : raw.slice(q + 1)) };
  }

  function route(focus) {
    const { name, params } = parseHash();
    charts.clear();
    page = Object.create(PAGES[name] || notFound);
    main.replaceChildren();
    main.dataset.page = page.name;
    page.mount(main, params);
    document.title = `${page.title} · ngxprobe`;
    document.querySelectorAll("[data-nav]").forEach((a) => {
      if (a.dataset.nav === (page.name === "instance" ? "overview" : page.name)) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    if (focus) main.focus({ preventScroll: true });
    refresh();
  }

  // Loads the current page's data; a newer load cancels an older one.
  async function refresh() {
    if (controller) controller.abort();
    const mine = (controller = new AbortController());
    clearTimeout(timer);
    main.dataset.state = "loading";
    try {
      await page.update(mine.signal);
      if (controller !== mine) return;
      main.dataset.state = "loaded";
      fill($("#updated"), "updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (e && e.name === "AbortError") return;
      if (controller !== mine) return;
      main.dataset.state = "error";
      main.prepend(errorBox(e));
    }
    if (controller === mine) schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (settings.refresh > 0) timer = setTimeout(() => { if (!document.hidden) refresh(); else schedule(); }, settings.refresh * 1000);
  }

  function banner() {
    const b = $("#banner");
    if (agent.storage) { b.hidden = true; return; }
    fill(b, "This agent runs with its store disabled (storage.enabled: false): there is no history, no query API and no rules. ",
      "Current values come from ", h("a", { href: agent.telemetry_path }, agent.telemetry_path), ".");
    b.hidden = false;
  }

  async function start() {
    let loaded = true;
    try {
      await loadAgent();
    } catch (e) {
      loaded = false;
      const b = $("#banner");
      fill(b, "Cannot read the agent's settings: ", errText(e));
      b.hidden = false;
    }
    if (loaded) banner();
    setupControls();
    window.addEventListener("hashchange", () => route(true));
    // Colours follow the system's light/dark mode: redraw when it changes.
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      charts.recolor();
      refresh();
    });
    route(false);
  }
  start();
})();
