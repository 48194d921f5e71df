"use strict";
// gatewayd's live status page: polls status, admin/backends and status/activity (relative URLs, so the
// page also works behind a path prefix) and renders them. Every value from the server is set as text,
// never as markup.
(() => {
  const POLL_INTERVAL_MS = 1000;
  const TOKEN_KEY = "gatewayd.adminToken";
  const NO_TOKEN_TIP = "Enter the admin token above to use admin actions";
  // server states (of a backend gatewayd runs) in which Start and Stop make sense
  const STARTABLE = new Set(["sleeping", "failed"]);
  const STOPPABLE = new Set(["running", "starting"]);
  const $ = (id) => document.getElementById(id);
  const SVG_NS = $("chart-requests").namespaceURI;

  const view = { status: null, admin: null, adminError: null, activity: null, error: null };
  const pending = new Set(); // admin actions in flight ("reload", "start:ID", "stop:ID")
  let adminRefused = false; // admin/backends refused this token: not asked again until it changes
  const drawn = new Map(); // section -> the data it was last drawn from
  let token = sessionStorage.getItem(TOKEN_KEY) || "";

  // -- helpers --------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function badge(state) {
    return el("span", { class: "badge", "data-state": state }, state);
  }

  function dash(value) {
    return value === null || value === undefined || value === "" ? "—" : value;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.floor(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function sum(rows, field) {
    return (rows || []).reduce((total, row) => total + (Number(row[field]) || 0), 0);
  }

  function clock(epochSeconds) {
    return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  function ms(value) {
    if (value === null || value === undefined) return "—";
    return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(value < 10 ? 1 : 0)} ms`;
  }

  function errorMessage(body, response) {
    const error = body && body.error;
    if (typeof error === "string") return error;
    if (error && typeof error.message === "string") return error.message;
    return `${response.status} ${response.statusText}`;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(method, path) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(path, { method, headers, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, errorMessage(body, response));
    return body;
  }

  function fill(tbody, rows, columns, empty) {
    tbody.replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns }, empty))]),
    );
  }

  // rows: [field, term, value]; each value's <dd> carries data-field (a stable hook for tests and tools)
  function definitions(dl, rows) {
    dl.replaceChildren(
      ...rows.map(([field, term, value]) => el("div", {}, el("dt", {}, term), el("dd", { "data-field": field }, value))),
    );
  }

  // True when ``data`` differs from what ``section`` was last drawn from: redrawing only then keeps
  // buttons and tooltips under the pointer alive between polls.
  function changed(section, data) {
    const key = JSON.stringify(data);
    if (drawn.get(section) === key) return false;
    drawn.set(section, key);
    return true;
  }

  function say(text, kind) {
    const message = $("message");
    message.textContent = text;
    message.dataset.kind = kind;
    message.hidden = false;
  }

  // -- sections -------------------------------------------------------------------------------------

  function renderConnection() {
    const connection = $("connection");
    if (view.error) {
      connection.dataset.live = "false";
      connection.textContent = `cannot reach gatewayd: ${view.error}`;
    } else if (view.status) {
      connection.dataset.live = "true";
      connection.textContent = `live · ${new Date().toLocaleTimeString([], { hour12: false })}`;
    }
  }

  function lastReload(reload) {
    if (!reload) return "none since start";
    const parts = [badge(reload.outcome), ` ${reload.mode}, ${reload.reason}, ${clock(reload.started_at)}`];
    if (reload.duration_seconds !== undefined) parts.push(`, ${reload.duration_seconds.toFixed(2)} s`);
    if (reload.message) parts.push(` — ${reload.message}`);
    return el("span", {}, ...parts);
  }

  function renderInstance() {
    const status = view.status;
    if (!status) return;
    const instance = status.instance || {};
    const generation = el("span", {}, String(dash(status.generation)));
    if (status.draining) generation.append(" ", badge("draining"));
    definitions($("instance"), [
      ["name", "Name", String(dash(instance.name))],
      ["pid", "PID", String(dash(instance.pid))],
      ["uptime", "Uptime", duration(instance.uptime_seconds)],
      ["generation", "Generation", generation],
      ["last-reload", "Last reload", lastReload(instance.last_reload)],
      ["listen", "Listening on", String(dash(instance.listen))],
      ["config", "Config", String(dash(instance.config_path))],
      ["version", "Version", String(dash(instance.version))],
    ]);
    definitions($("load"), [
      // requests at the backends (this page's own polls are not counted); queued includes group queues
      ["in-flight", "In flight", String(sum(status.backends, "in_flight"))],
      ["queued", "Queued", String(view.admin ? sum(view.admin, "queued") : dash(status.queued))],
      ["streams", "Open streams", String(dash(status.streams))],
      ["backends-up", "Backends up", `${dash(status.backends_up)} of ${dash(status.backends_total)}`],
    ]);
  }

  function actionButton(label, action, path, enabled) {
    const busy = pending.has(action);
    const button = el(
      "button",
      {
        type: "button",
        class: "admin",
        "data-action": action,
        disabled: !token || !enabled || busy,
        title: token ? null : NO_TOKEN_TIP,
      },
      busy ? `${label}…` : label,
    );
    button.addEventListener("click", () => act(action, path, label));
    return button;
  }

  function renderBackends() {
    const status = view.status;
    if (!status || !changed("backends", [status.backends, view.admin, view.adminError, token, [...pending]])) return;
    const admin = new Map((view.admin || []).map((row) => [row.id, row]));
    const note = $("backends-note");
    note.hidden = !view.adminError;
    note.textContent = view.adminError ? `Server details unavailable: ${view.adminError}` : "";
    const rows = (status.backends || []).map((row) => {
      const extra = admin.get(row.id) || {};
      const managed = extra.managed === true;
      const path = `admin/backends/${encodeURIComponent(row.id)}`;
      const actions = managed
        ? [
            actionButton("Start", `start:${row.id}`, `${path}/start`, STARTABLE.has(extra.state)),
            actionButton("Stop", `stop:${row.id}`, `${path}/stop`, STOPPABLE.has(extra.state)),
          ]
        : [];
      return el(
        "tr",
        { "data-backend": row.id },
        el("td", {}, row.id),
        el("td", {}, row.kind),
        el("td", { class: "state" }, badge(row.state)),
        el("td", { class: "server" }, managed ? badge(extra.state) : "external"),
        el("td", {}, extra.port && managed ? `127.0.0.1:${extra.port}` : row.url),
        el("td", { class: "pid" }, String(dash(extra.pid))),
        el("td", {}, managed ? duration(extra.uptime_seconds) : "—"),
        el("td", { class: "num concurrency", title: concurrencyTitle(row) }, concurrencyCell(row)),
        el("td", { class: "num" }, String(dash(extra.queued ?? row.queued))),
        el("td", {}, (row.models || []).join(", ") || "—"),
        el("td", { class: "error" }, extra.last_error || row.last_error || ""),
        el("td", { class: "actions" }, ...actions),
      );
    });
    fill($("backends").tBodies[0], rows, 12, "no backends yet");
  }

  // in flight against the limit in force, and where the limit came from ("3/8 props", "5/∞ unbounded")
  function concurrencyCell(row) {
    const limit = row.max_concurrency === null || row.max_concurrency === undefined ? "∞" : row.max_concurrency;
    const source = row.concurrency_source ? ` ${row.concurrency_source}` : "";
    return `${row.in_flight}/${limit}${source}`;
  }

  function concurrencyTitle(row) {
    const said = {
      config: "set by max_concurrency in the config",
      props: "learned from the backend's /props total_slots",
      slots: "learned from the number of the backend's /slots",
      default: "the default for its kind (the backend does not say)",
      unbounded: "unbounded: the backend's own 429s push back",
    };
    return said[row.concurrency_source] || "";
  }

  // a model's generation speed over the activity window (from status/activity), or a dash
  function speedCell(speed) {
    if (!speed || speed.tokens_per_second === null || speed.tokens_per_second === undefined) {
      return el("td", { class: "num tokens-per-second" }, "—");
    }
    const title = `${speed.completion_tokens} tokens in ${speed.generation_seconds.toFixed(2)} s`;
    return el("td", { class: "num tokens-per-second", title }, speed.tokens_per_second.toFixed(1));
  }

  function renderFleet() {
    const status = view.status;
    if (!status || !changed("fleet", status.fleet)) return;
    const rows = (status.fleet || []).map((row) => {
      const load = row.load || {};
      return el(
        "tr",
        { "data-instance": row.name },
        el("td", {}, row.self ? el("span", {}, row.name, " ", badge("this one")) : row.name),
        el("td", {}, String(dash(row.version))),
        el("td", { class: "num" }, String(dash(load.in_flight))),
        el("td", { class: "num" }, String(dash(load.queued))),
        el("td", { class: "num" }, String(dash(load.streams))),
        el("td", { class: "num" }, row.self ? "now" : `${row.age_seconds} s ago`),
      );
    });
    fill($("fleet").tBodies[0], rows, 6, "no instances seen");
  }

  function renderModels() {
    const status = view.status;
    const speeds = (view.activity && view.activity.models) || {};
    if (!status || !changed("models", [status.models, speeds])) return;
    const rows = (status.models || []).map((row) =>
      el(
        "tr",
        { "data-model": row.name },
        el("td", {}, row.name),
        el("td", {}, badge(row.state)),
        el("td", {}, row.backends.map((t) => (t.model === row.name ? t.backend : `${t.backend} (${t.model})`)).join(", ")),
        el("td", {}, row.routed ? "route" : "discovered"),
        speedCell(Object.hasOwn(speeds, row.name) ? speeds[row.name] : null),
      ),
    );
    fill($("models").tBodies[0], rows, 5, "no models yet");
  }

  function statusClass(code) {
    if (code >= 500) return "num status-error";
    if (code >= 400) return "num status-client";
    return "num status-ok";
  }

  function renderRecent() {
    const activity = view.activity;
    if (!activity || !changed("recent", activity.recent)) return;
    const rows = activity.recent.map((entry) =>
      el(
        "tr",
        {},
        el("td", {}, clock(entry.time)),
        el("td", {}, entry.api),
        el("td", {}, entry.model),
        el("td", {}, entry.backend),
        el("td", { class: statusClass(entry.status) }, String(entry.status)),
        el("td", { class: "num" }, ms(entry.latency_ms)),
        el("td", { class: "num" }, ms(entry.ttft_ms)),
        el("td", {}, entry.stream ? "yes" : "no"),
      ),
    );
    fill($("recent").tBodies[0], rows, 8, "no requests yet");
  }

  // -- charts ---------------------------------------------------------------------------------------

  const CHART = { width: 600, height: 130, left: 44, right: 8, top: 8, bottom: 20 };

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
    return 10 * magnitude;
  }

  function number(value) {
    return value >= 1000 ? `${+(value / 1000).toFixed(1)}k` : `${+value.toFixed(2)}`;
  }

  // lines: [{values: [number|null], cls, connectGaps}]; one value per second, the last one the newest
  function drawChart(target, lines) {
    const plotWidth = CHART.width - CHART.left - CHART.right;
    const plotHeight = CHART.height - CHART.top - CHART.bottom;
    const count = Math.max(1, ...lines.map((line) => line.values.length));
    const top = niceMax(Math.max(0, ...lines.flatMap((line) => line.values.filter((v) => v !== null))));
    const x = (i) => CHART.left + (count > 1 ? (i / (count - 1)) * plotWidth : plotWidth);
    const y = (v) => CHART.top + plotHeight - (v / top) * plotHeight;
    const nodes = [];
    for (const fraction of [0, 0.5, 1]) {
      const v = top * fraction;
      nodes.push(svg("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right, y1: y(v), y2: y(v) }));
      nodes.push(svg("text", { class: "label", x: CHART.left - 4, y: y(v) + 4, "text-anchor": "end" }, number(v)));
    }
    const minutes = count / 60;
    for (const [fraction, label] of [[0, `−${+minutes.toFixed(1)} min`], [0.5, `−${+(minutes / 2).toFixed(1)} min`], [1, "now"]]) {
      const anchor = fraction === 0 ? "start" : fraction === 1 ? "end" : "middle";
      nodes.push(svg("text", { class: "label", x: CHART.left + fraction * plotWidth, y: CHART.height - 5, "text-anchor": anchor }, label));
    }
    for (const line of lines) {
      let points = [];
      const flush = () => {
        if (points.length) nodes.push(svg("polyline", { class: `line ${line.cls}`, points: points.join(" ") }));
        points = [];
      };
      line.values.forEach((v, i) => {
        if (v === null) {
          if (!line.connectGaps) flush();
          return;
        }
        points.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`);
      });
      if (points.length === 1) points.push(points[0]); // a lone point still shows (round caps)
      flush();
    }
    target.replaceChildren(...nodes);
  }

  // errors are drawn only around the seconds that had some, so the zero line stays the requests' colour
  function aroundNonZero(values) {
    return values.map((v, i) => (v > 0 || values[i - 1] > 0 || values[i + 1] > 0 ? v : null));
  }

  function renderCharts() {
    const activity = view.activity;
    if (!activity) return;
    const series = activity.series;
    const seconds = Number($("chart-window").value);
    const last = (values) => values.slice(-seconds);
    drawChart($("chart-requests"), [
      { values: last(series.requests), cls: "requests" },
      { values: aroundNonZero(last(series.errors)), cls: "errors" },
    ]);
    drawChart($("chart-latency"), [
      { values: last(series.latency_p50_ms), cls: "p50", connectGaps: true },
      { values: last(series.latency_p95_ms), cls: "p95", connectGaps: true },
    ]);
  }

  function render() {
    renderConnection();
    renderInstance();
    renderBackends();
    renderFleet();
    renderModels();
    renderRecent();
    renderCharts();
    const reload = $("reload");
    reload.disabled = !token || pending.has("reload");
    reload.title = token ? "Reload the config (as SIGHUP does)" : NO_TOKEN_TIP;
  }

  // -- polling and actions --------------------------------------------------------------------------

  async function poll() {
    const [status, admin, activity] = await Promise.allSettled([
      request("GET", "status"),
      adminRefused ? Promise.reject(new ApiError(401, "refused")) : request("GET", "admin/backends"),
      request("GET", "status/activity"),
    ]);
    if (status.status === "fulfilled") {
      view.status = status.value;
      view.error = null;
    } else {
      view.error = status.reason.message;
    }
    if (admin.status === "fulfilled") {
      view.admin = admin.value;
      view.adminError = null;
    } else {
      const refused = admin.reason.status === 401 || admin.reason.status === 403;
      adminRefused = refused;
      view.admin = null;
      view.adminError = refused
        ? (token ? "the admin token was refused" : "they need the admin token")
        : admin.reason.message;
    }
    if (activity.status === "fulfilled") view.activity = activity.value;
    render();
  }

  async function loop() {
    try {
      await poll();
    } finally {
      setTimeout(loop, POLL_INTERVAL_MS);
    }
  }

  async function act(action, path, label) {
    pending.add(action);
    render();
    try {
      const body = await request("POST", path);
      if (action === "reload") say(`Reload requested while generation ${body.generation} served`, "ok");
      else say(`${label} ${body.id}: ${body.state}`, "ok");
    } catch (error) {
      say(`${label} failed: ${error.message}`, "error");
    } finally {
      pending.delete(action);
      await poll();
    }
  }

  const tokenInput = $("token");
  tokenInput.value = token;
  tokenInput.addEventListener("input", () => {
    token = tokenInput.value.trim();
    adminRefused = false;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    render();
  });
  $("token-forget").addEventListener("click", () => {
    tokenInput.value = "";
    tokenInput.dispatchEvent(new Event("input"));
  });
  $("reload").addEventListener("click", () => act("reload", "admin/reload", "Reload"));
  $("chart-window").addEventListener("change", renderCharts);
  loop();
})();
