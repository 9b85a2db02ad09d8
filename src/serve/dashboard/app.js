// cuvisor's dashboard: reads GET /models and GET /metrics every two seconds on its own
// origin and draws the node; actions and a model's output go with the token the operator
// typed (kept for this tab only). Every text from the supervisor is set as text, never as
// markup.
"use strict";

const POLL_MS = 2000;
const HISTORY_MS = 5 * 60 * 1000;

const state = {
  token: sessionStorage.getItem("cuvisor-token") || "",
  previous: null, // the last scrape: { t, counters, buckets }
  history: [], // { t, used: {model: bytes}, rps: {model: r} }
  logsModel: "",
  logsNext: 0,
  models: [],
};

// ---- small helpers ----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  return s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s";
}

// A model's colour, the same on every poll.
function colour(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return "hsl(" + h + " 62% 48%)";
}

function notice(text, ok) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = ok ? "ok" : "";
  n.hidden = !text;
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  return { code: response.status, text, headers: response.headers };
}

// ---- the metrics' text ------------------------------------------------------------------

// OpenMetrics text into samples: [{ name, labels: {k: v}, value }].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    const space = line.lastIndexOf(" ");
    if (space < 0) continue;
    let name;
    const labels = {};
    if (brace >= 0 && brace < space) {
      name = line.slice(0, brace);
      const inner = line.slice(brace + 1, line.lastIndexOf("}"));
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let m;
      while ((m = re.exec(inner)) !== null) {
        labels[m[1]] = m[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
      }
    } else {
      name = line.slice(0, space);
    }
    samples.push({ name, labels, value: Number(line.slice(space + 1)) });
  }
  return samples;
}

// Per model: requests, histogram buckets of the request durations, cold starts, queue.
function digest(samples) {
  const out = { requests: {}, buckets: {}, cold: {}, queued: {}, inFlight: {} };
  for (const s of samples) {
    const model = s.labels.model;
    if (model === undefined) continue;
    if (s.name === "cuvisor_requests_total") {
      out.requests[model] = (out.requests[model] || 0) + s.value;
    } else if (s.name === "cuvisor_request_duration_seconds_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      (out.buckets[model] = out.buckets[model] || []).push([le, s.value]);
    } else if (s.name === "cuvisor_cold_starts_total") {
      out.cold[model] = s.value;
    } else if (s.name === "cuvisor_queued_requests") {
      out.queued[model] = s.value;
    } else if (s.name === "cuvisor_in_flight_requests") {
      out.inFlight[model] = s.value;
    }
  }
  return out;
}

// The q-quantile of cumulative buckets [[le, count]] (as Prometheus interpolates).
function quantile(q, buckets) {
  if (!buckets || buckets.length === 0) return null;
  const sorted = buckets.slice().sort((a, b) => a[0] - b[0]);
  const total = sorted[sorted.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of sorted) {
    if (count >= rank) {
      if (!isFinite(le)) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + ((le - prevLe) * (rank - prevCount)) / inBucket : le;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

// Buckets of the last interval (the difference of two scrapes), else since the start.
function recentBuckets(now, before) {
  if (!before) return now;
  const diff = now.map(([le, c]) => {
    const old = before.find((b) => b[0] === le);
    return [le, c - (old ? old[1] : 0)];
  });
  return diff[diff.length - 1] && diff[diff.length - 1][1] > 0 ? diff : now;
}

// ---- drawing ----------------------------------------------------------------------------

function drawGpus(status) {
  const gpus = new Map();
  for (const g of status.gpus || []) {
    gpus.set(g.uuid, { uuid: g.uuid, index: g.index, physical: g.memory_bytes, models: [] });
  }
  for (const m of status.models) {
    for (const g of m.gpus || []) {
      if (!gpus.has(g.uuid)) gpus.set(g.uuid, { uuid: g.uuid, physical: g.physical_bytes, models: [] });
      const gpu = gpus.get(g.uuid);
      gpu.physical = gpu.physical || g.physical_bytes;
      gpu.models.push({
        name: m.name,
        used: g.used_bytes,
        quota: g.quota_bytes,
        hibernated: Boolean(m.swap && m.swap.hibernated),
      });
    }
  }
  const box = document.getElementById("gpus");
  box.replaceChildren();
  if (gpus.size === 0) {
    box.append(el("p", { class: "muted" }, "no GPU memory seen yet"));
    return;
  }
  for (const gpu of gpus.values()) {
    const resident = gpu.models.reduce((sum, m) => sum + (m.hibernated ? 0 : m.used), 0);
    const asleep = gpu.models.reduce((sum, m) => sum + (m.hibernated ? m.used : 0), 0);
    const physical = gpu.physical || 1;
    const bar = el("div", { class: "bar", title: "resident per model; the hatched rest is free" });
    for (const m of gpu.models.filter((m) => !m.hibernated && m.used > 0)) {
      bar.append(el("div", {
        class: "seg",
        title: m.name + ": " + bytes(m.used) + " resident",
        style: "width:" + Math.min(100, (100 * m.used) / physical) + "%;background:" + colour(m.name),
      }));
    }
    const list = el("ul", { class: "gpu-models" });
    for (const m of gpu.models) {
      const mini = el("div", { class: "mini" });
      const width = (v) => Math.min(100, (100 * v) / physical) + "%";
      mini.append(el("div", {
        class: m.hibernated ? "asleep" : "used",
        style: "left:0;width:" + width(m.used) + (m.hibernated ? "" : ";background:" + colour(m.name)),
      }));
      if (m.quota) mini.append(el("div", { class: "quota", title: "quota " + bytes(m.quota), style: "left:" + width(m.quota) }));
      list.append(el("li", {
        "data-model": m.name,
        "data-used": String(m.used),
        "data-quota": String(m.quota === null || m.quota === undefined ? "" : m.quota),
        "data-hibernated": m.hibernated ? "1" : "0",
      },
      el("span", {}, el("span", { class: "swatch", style: "background:" + colour(m.name) }), m.name + " ",
        el("span", { class: "muted" }, (m.hibernated ? "hibernated " : "resident ") + bytes(m.used) + (m.quota ? " of " + bytes(m.quota) : ""))),
      mini));
    }
    box.append(el("div", {
      class: "gpu",
      "data-gpu": gpu.uuid,
      "data-resident": String(resident),
      "data-hibernated": String(asleep),
      "data-physical": String(gpu.physical || 0),
    },
    el("div", { class: "gpu-title" },
      el("strong", {}, (gpu.index !== undefined ? "GPU " + gpu.index + " " : "") + gpu.uuid),
      el("span", { class: "muted" }, bytes(resident) + " resident · " + bytes(asleep) + " hibernated · " +
        bytes(Math.max(0, (gpu.physical || 0) - resident)) + " free of " + bytes(gpu.physical))),
    bar, list));
  }
}

function lastSwap(swap) {
  if (!swap) return "–";
  const out = swap.last_out;
  const back = swap.last_in;
  const said = (r, dir) => dir + " " + bytes(r.moved_bytes) + " in " + seconds(r.duration_ms / 1000) + " (" + r.outcome + ")";
  if (swap.hibernated && out) return said(out, "out");
  if (back) return said(back, "in");
  if (out) return said(out, "out");
  return "–";
}

// Each model's row, made once and updated in place: its buttons and quota box stay the
// same elements across polls (a click or what is being typed is never lost to a redraw).
const rows = new Map();

function rowFor(name) {
  if (rows.has(name)) return rows.get(name);
  // data-label: the column's name, shown beside the value where the table is a list of
  // cards (a phone's width).
  const cell = (field, label) => el("td", { "data-field": field, "data-label": label });
  const r = {
    tr: el("tr", { "data-model": name }),
    state: cell("state", "state"),
    instances: cell("instances", "instances"),
    rps: cell("rps", "req/s"),
    latency: cell("latency", "p50 / p99"),
    queue: cell("queue", "queue"),
    cold: cell("cold-starts", "cold starts"),
    swap: cell("last-swap", "last swap"),
    memory: cell("host-memory", "host memory"),
    chips: "",
  };
  const buttons = el("div", { class: "buttons" });
  for (const action of ["start", "stop", "restart", "hibernate", "wake"]) {
    buttons.append(el("button", { type: "button", "data-action": action, onclick: () => act(name, action) }, action));
  }
  const quota = el("input", { type: "text", placeholder: "quota", "data-quota-input": name });
  buttons.append(quota, el("button", {
    type: "button",
    "data-action": "quota",
    onclick: async () => {
      if (await setQuota(name, quota.value)) quota.value = "";
    },
  }, "set"));
  r.tr.append(
    el("td", { class: "name" }, el("span", { class: "swatch", style: "background:" + colour(name) }), name),
    r.state, r.instances, r.rps, r.latency, r.queue, r.cold, r.swap, r.memory,
    el("td", { class: "actions" }, buttons));
  rows.set(name, r);
  return r;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function drawModels(status, figures) {
  const body = document.querySelector("#models tbody");
  const seen = new Set();
  for (const m of status.models) {
    const r = rowFor(m.name);
    seen.add(m.name);
    r.tr.setAttribute("data-state", m.state);
    setText(r.state, m.state);
    const chips = JSON.stringify(m.instances.map((i) => [i.index, i.state, i.error]));
    if (chips !== r.chips) {
      r.chips = chips;
      r.instances.replaceChildren();
      for (const i of m.instances) {
        r.instances.append(el("span", { class: "chip " + i.state, "data-instance": String(i.index), title: i.error || "" }, i.index + ": " + i.state));
        if (i.error && (i.state === "backoff" || i.state === "failed")) r.instances.append(el("div", { class: "error" }, i.error));
      }
    }
    const f = figures[m.name] || {};
    setText(r.rps, f.rps === undefined ? "–" : f.rps.toFixed(2));
    setText(r.latency, seconds(f.p50) + " / " + seconds(f.p99));
    r.latency.setAttribute("data-p99", f.p99 === null || f.p99 === undefined ? "" : String(f.p99));
    setText(r.queue, f.queued === undefined ? "–" : f.queued + " waiting, " + f.inFlight + " in flight");
    setText(r.cold, f.cold === undefined ? "–" : String(f.cold));
    setText(r.swap, lastSwap(m.swap));
    r.memory.setAttribute("data-bytes", String(m.host_memory_bytes || 0));
    setText(r.memory, bytes(m.host_memory_bytes));
    body.append(r.tr); // in the status's order (moved, not made again)
  }
  for (const [name, r] of rows) {
    if (!seen.has(name)) {
      r.tr.remove();
      rows.delete(name);
    }
  }
}

function drawChart(id, series, format) {
  const canvas = document.getElementById(id);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 180;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const now = Date.now();
  let max = 0;
  for (const points of Object.values(series)) for (const [, v] of points) max = Math.max(max, v);
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  g.fillText(format(max), 4, 12);
  g.fillText("−5 min", 4, height - 4);
  g.fillText("now", width - 24, height - 4);
  if (max <= 0) return;
  for (const [name, points] of Object.entries(series)) {
    g.strokeStyle = colour(name);
    g.lineWidth = 2;
    g.beginPath();
    points.forEach(([t, v], k) => {
      const x = width * (1 - (now - t) / HISTORY_MS);
      const y = height - 16 - (height - 32) * (v / max);
      if (k === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

function drawHistory() {
  const memory = {};
  const requests = {};
  for (const h of state.history) {
    for (const [m, v] of Object.entries(h.used)) (memory[m] = memory[m] || []).push([h.t, v]);
    for (const [m, v] of Object.entries(h.rps)) (requests[m] = requests[m] || []).push([h.t, v]);
  }
  drawChart("chart-memory", memory, bytes);
  drawChart("chart-requests", requests, (v) => v.toFixed(1) + " req/s");
  const legend = document.getElementById("legend");
  legend.replaceChildren(...state.models.map((name) =>
    el("span", {}, el("span", { class: "swatch", style: "background:" + colour(name) }), name)));
}

// ---- polling ----------------------------------------------------------------------------

async function poll() {
  try {
    const [models, metrics] = await Promise.all([api("GET", "/models"), api("GET", "/metrics")]);
    if (models.code !== 200) throw new Error("GET /models: " + models.code + " " + models.text);
    const status = JSON.parse(models.text);
    const now = Date.now();
    const scrape = metrics.code === 200 ? digest(parseMetrics(metrics.text)) : null;
    const figures = {};
    const before = state.previous;
    for (const m of status.models) {
      const f = {};
      if (scrape) {
        if (before && scrape.requests[m.name] !== undefined) {
          const dt = (now - before.t) / 1000;
          f.rps = dt > 0 ? Math.max(0, (scrape.requests[m.name] - (before.requests[m.name] || 0)) / dt) : 0;
        } else if (scrape.requests[m.name] !== undefined) {
          f.rps = 0;
        }
        const buckets = recentBuckets(scrape.buckets[m.name] || [], before && before.buckets[m.name]);
        f.p50 = quantile(0.5, buckets);
        f.p99 = quantile(0.99, buckets);
        f.cold = scrape.cold[m.name];
        f.queued = scrape.queued[m.name];
        f.inFlight = scrape.inFlight[m.name];
      }
      figures[m.name] = f;
    }
    if (scrape) state.previous = { t: now, requests: scrape.requests, buckets: scrape.buckets };
    const used = {};
    const rps = {};
    for (const m of status.models) {
      used[m.name] = m.gpu_used_bytes || 0;
      rps[m.name] = figures[m.name].rps || 0;
    }
    state.history.push({ t: now, used, rps });
    state.history = state.history.filter((h) => now - h.t <= HISTORY_MS);
    state.models = status.models.map((m) => m.name);
    drawGpus(status);
    drawModels(status, figures);
    drawHistory();
    fillLogChoices();
    document.getElementById("updated").textContent = "updated " + new Date(now).toLocaleTimeString();
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the supervisor: " + e.message;
  }
  await pollLogs();
}

function fillLogChoices() {
  const select = document.getElementById("logs-model");
  const have = Array.from(select.options).map((o) => o.value);
  const want = [""].concat(state.models);
  if (have.join("\n") === want.join("\n")) return;
  select.replaceChildren(...want.map((name) => el("option", { value: name }, name || "—")));
  select.value = state.logsModel;
}

async function pollLogs() {
  const pre = document.getElementById("logs");
  if (!state.logsModel) return;
  if (!state.token) {
    pre.textContent = "a model's output needs the token";
    return;
  }
  const path = "/models/" + encodeURIComponent(state.logsModel) + "/logs?since=" + state.logsNext;
  const r = await api("GET", path).catch(() => null);
  if (!r) return;
  if (r.code !== 200) {
    pre.textContent = r.text;
    return;
  }
  if (state.logsNext === 0) pre.textContent = "";
  pre.classList.remove("muted");
  pre.textContent += r.text;
  const next = r.headers.get("x-cuvisor-next");
  if (next) state.logsNext = Number(next);
  pre.scrollTop = pre.scrollHeight;
}

// ---- actions ----------------------------------------------------------------------------

async function act(model, action) {
  if (!state.token) {
    notice("actions need the dashboard's token: type it above", false);
    return;
  }
  const path = "/models/" + encodeURIComponent(model) + "/" + action;
  notice((action === "hibernate" || action === "wake" ? "asking model " + model + " to " : "") + action + "…", true);
  const r = await api("POST", path).catch((e) => ({ code: 0, text: e.message }));
  notice(r.code === 200 ? "model " + model + ": " + action + " done" : "model " + model + ": " + action + ": " + r.text.trim(), r.code === 200);
  await poll();
}

// Whether the quota was set.
async function setQuota(model, quota) {
  if (!state.token) {
    notice("actions need the dashboard's token: type it above", false);
    return false;
  }
  if (!quota) {
    notice("a quota, e.g. 12GiB or 50%", false);
    return false;
  }
  const r = await api("PATCH", "/models/" + encodeURIComponent(model), { gpu_quota: quota }).catch((e) => ({ code: 0, text: e.message }));
  let said = r.text.trim();
  try {
    const answer = JSON.parse(r.text);
    const size = (v) => (v && /^\d+$/.test(v) ? bytes(Number(v)) : v || "none");
    said = answer.error || ("quota " + size(answer.gpu_quota) + " (was " + size(answer.was) + ")");
  } catch (_) {
    // not JSON: said as it came
  }
  notice("model " + model + ": " + said, r.code === 200);
  await poll();
  return r.code === 200;
}

function start() {
  const input = document.getElementById("token");
  input.value = state.token;
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = input.value.trim();
    sessionStorage.setItem("cuvisor-token", state.token);
    state.logsNext = 0;
    notice(state.token ? "token set for this tab" : "token cleared", true);
    poll();
  });
  document.getElementById("logs-model").addEventListener("change", (event) => {
    state.logsModel = event.target.value;
    state.logsNext = 0;
    document.getElementById("logs").textContent = "";
    pollLogs();
  });
  poll();
  setInterval(poll, POLL_MS);
}

start();
