// The Yoi Workspace console: plain modern JavaScript, no framework, no build step.
//
// Everything the page shows comes from the Backend's browser API (/api/v1/) and one WebSocket per watched
// worker (/ws/...); the page never learns where a runtime lives. Text from the server is only ever put in
// the DOM as text (textContent / text nodes), never as HTML.

const app = document.getElementById("app");
const RUNTIMES_URL = app.dataset.runtimesUrl; // e.g. "/api/v1/runtimes/"
const LOGIN_URL = app.dataset.loginUrl;
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// How many past events a newly opened worker view shows, how many rows the event view keeps.
const HISTORY_EVENTS = 200;
const MAX_EVENT_ROWS = 1500;
// The browser's own reconnects: capped exponential backoff with jitter; "unavailable" after a few misses.
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10000;
const UNAVAILABLE_AFTER_ATTEMPTS = 4;
const RUNTIME_POLL_MS = 15000;

// ------------------------------------------------------------------------------------------------ DOM

/** Build an element; string children become text nodes (never parsed as HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A CSS-safe token for class names built from server values. */
const token = (value) => String(value ?? "unknown").toLowerCase().replace(/[^a-z0-9_-]/g, "_");

function badge(state) {
  return h("span", { class: `badge badge-${token(state)}`, dataset: { state: String(state ?? "unknown") } },
    String(state ?? "unknown"));
}

function ago(iso) {
  if (!iso) return "never";
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return String(iso);
  const seconds = Math.round((Date.now() - then) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.round(hours / 24)} d ago`;
}

/** A <time> that keeps saying how long ago it was (refreshed by a timer). */
function timeAgo(iso) {
  return h("time", { class: "ago", datetime: iso || null, title: iso || "never", dataset: { iso: iso || "" } },
    ago(iso));
}

setInterval(() => {
  for (const el of document.querySelectorAll("time.ago")) el.textContent = ago(el.dataset.iso);
}, 5000);

function formatBytes(value) {
  if (typeof value !== "number") return "unknown";
  if (value >= 1024 * 1024) return `${(value / (1024 * 1024)).toFixed(value % (1024 * 1024) ? 1 : 0)} MiB`;
  if (value >= 1024) return `${Math.round(value / 1024)} KiB`;
  return `${value} B`;
}

const known = (value) => (value === null || value === undefined || value === "" ? "unknown" : String(value));

// ------------------------------------------------------------------------------------------------ API

/** A typed error of the Backend's envelope: {code, message, retryable, ...}. */
class ApiError extends Error {
  constructor(error, status) {
    super(error.message);
    this.error = error;
    this.status = status;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRFToken"] = cookie("csrftoken");
  let response;
  let text;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
    });
    text = await response.text();
  } catch {
    throw new ApiError({ code: "network_error", message: "The Backend could not be reached.", retryable: true }, 0);
  }
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error && typeof data.error.code === "string"
      ? data.error
      : { code: "bad_response", message: `The Backend answered HTTP ${response.status}.`, retryable: true };
    throw new ApiError(error, response.status);
  }
  if (data === null) {
    throw new ApiError({ code: "bad_response", message: "The Backend answered without a JSON body." }, response.status);
  }
  return data;
}

const workerPath = (rid, wid) => `${RUNTIMES_URL}${enc(rid)}/workers/${enc(wid)}/`;
const urls = {
  runtime: (rid) => `${RUNTIMES_URL}${enc(rid)}/`,
  workers: (rid) => `${RUNTIMES_URL}${enc(rid)}/workers/`,
  worker: workerPath,
  input: (rid, wid) => `${workerPath(rid, wid)}input/`,
  stop: (rid, wid) => `${workerPath(rid, wid)}stop/`,
  cancel: (rid, wid) => `${workerPath(rid, wid)}cancel/`,
  transcript: (rid, wid, start, limit) => `${workerPath(rid, wid)}transcript/?start=${start}&limit=${limit}`,
  events: (rid, wid, after) => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/runtimes/${enc(rid)}/workers/${enc(wid)}/events/?after=${after}`;
  },
};

/** Show a typed error (code + message, and what else it says) in an error box; null hides the box. */
function showError(box, error) {
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    delete box.dataset.code;
    return;
  }
  const code = String(error.code || "error");
  box.dataset.code = code;
  const line = h("p", { class: "err-line" },
    h("code", { class: "err-code" }, code), " ", h("span", { class: "err-msg" }, String(error.message || "")));
  box.append(line);
  const details = [];
  if (error.upstream_code) details.push(h("span", {}, "runtime said ", h("code", {}, String(error.upstream_code))));
  if (error.retryable) details.push(h("span", {}, "may succeed if retried"));
  if (error.fields && typeof error.fields === "object") {
    for (const [field, messages] of Object.entries(error.fields)) {
      details.push(h("span", {}, h("code", {}, field), ": ", [].concat(messages).join(" ")));
    }
  }
  if (code === "not_authenticated") {
    details.push(h("a", { href: `${LOGIN_URL}?next=${enc(location.pathname + location.hash)}` }, "Log in again"));
  }
  if (details.length) box.append(h("p", { class: "err-details" }, ...details.flatMap((d, i) => (i ? [" · ", d] : [d]))));
  box.append(h("button", { type: "button", class: "err-close", "aria-label": "Dismiss", onclick: () => showError(box, null) }, "×"));
  box.hidden = false;
}

const errorOf = (exc) => (exc instanceof ApiError ? exc.error : { code: "client_error", message: String(exc) });

// ------------------------------------------------------------------------------------------------ state

const state = {
  runtimes: new Map(), // runtime_id -> Runtime
  order: [], // runtime_ids in list order
  workers: new Map(), // runtime_id -> {items: [Worker], error}
  route: { rid: null, wid: null },
  worker: null, // the Worker on screen
  stream: null, // EventStream of the worker on screen
  events: null, // EventView of the worker on screen
  tx: { start: 0, page: null, generation: 0, follow: true, timer: null },
  profilesKey: null,
};

function routeHash(rid, wid) {
  return wid ? `#/runtimes/${enc(rid)}/workers/${enc(wid)}` : `#/runtimes/${enc(rid)}`;
}

function parseRoute() {
  const match = location.hash.match(/^#\/runtimes\/([^/]+)(?:\/workers\/([^/]+))?\/?$/);
  if (!match) return { rid: null, wid: null };
  try {
    return { rid: decodeURIComponent(match[1]), wid: match[2] ? decodeURIComponent(match[2]) : null };
  } catch {
    return { rid: null, wid: null };
  }
}

// ------------------------------------------------------------------------------------------------ runtimes

async function loadRuntimes() {
  try {
    const data = await api(RUNTIMES_URL);
    state.order = [];
    state.runtimes.clear();
    for (const runtime of data.items) {
      state.order.push(runtime.runtime_id);
      state.runtimes.set(runtime.runtime_id, runtime);
    }
    showError($("runtimes-error"), null);
  } catch (exc) {
    showError($("runtimes-error"), errorOf(exc));
  }
  renderSidebar();
  if (state.route.rid && !state.route.wid) renderRuntimeView();
}

/** Reload one runtime; with `probe` ("Refresh status") the Backend asks the runtime now instead of its cache. */
async function refreshRuntime(rid, { probe = false } = {}) {
  try {
    const runtime = probe ? await api(`${urls.runtime(rid)}probe/`, { method: "POST" }) : await api(urls.runtime(rid));
    if (!state.runtimes.has(rid)) state.order.push(rid);
    state.runtimes.set(rid, runtime);
    showError($("runtime-error"), null);
  } catch (exc) {
    showError($("runtime-error"), errorOf(exc));
  }
  renderSidebar();
  if (state.route.rid === rid && !state.route.wid) renderRuntimeView();
}

async function loadWorkers(rid) {
  try {
    const data = await api(urls.workers(rid));
    state.workers.set(rid, { items: data.items, error: null });
  } catch (exc) {
    state.workers.set(rid, { items: state.workers.get(rid)?.items || [], error: errorOf(exc) });
  }
  if (state.route.rid === rid) {
    renderSidebar();
    if (!state.route.wid) renderWorkerTable();
  }
}

/** Put a worker we learned about (create, command, event) into the cached list. */
function rememberWorker(worker) {
  const entry = state.workers.get(worker.runtime_id) || { items: [], error: null };
  const index = entry.items.findIndex((w) => w.worker_id === worker.worker_id);
  if (index >= 0) entry.items[index] = { ...entry.items[index], ...worker };
  else entry.items.push(worker);
  state.workers.set(worker.runtime_id, entry);
}

function capsSummary(caps) {
  const parts = [];
  if (Array.isArray(caps.profiles)) parts.push(`${caps.profiles.length} profile${caps.profiles.length === 1 ? "" : "s"}`);
  if (caps.backend) parts.push(caps.backend);
  if (caps.protocol_version) parts.push(`protocol v${caps.protocol_version}`);
  return parts.length ? parts.join(" · ") : "capabilities unknown";
}

function renderSidebar() {
  const list = $("runtime-list");
  if (!state.order.length) {
    list.replaceChildren(h("li", { class: "muted pad" }, "No runtimes are visible to you."));
    return;
  }
  list.replaceChildren(...state.order.map((rid) => runtimeItem(state.runtimes.get(rid))));
}

function runtimeItem(runtime) {
  const rid = runtime.runtime_id;
  const selected = state.route.rid === rid;
  const caps = runtime.capabilities || {};
  const status = runtime.status || {};
  return h("li", { class: `runtime-item${selected ? " selected" : ""}`, dataset: { runtimeId: rid } },
    h("a", { class: "runtime-link", href: routeHash(rid), "aria-current": selected && !state.route.wid ? "page" : null },
      h("div", { class: "row" },
        h("span", { class: "runtime-name" }, runtime.display_name),
        badge(status.state)),
      h("div", { class: "row muted small-text" },
        h("code", {}, rid),
        h("span", { class: `tag tag-${token(runtime.kind)}`, dataset: { kind: runtime.kind } }, runtime.kind),
        h("span", { class: "seen" }, "seen ", timeAgo(status.last_seen_at))),
      h("div", { class: "muted small-text caps" }, capsSummary(caps)),
      status.error_code ? h("div", { class: "small-text err-inline" }, h("code", {}, status.error_code)) : null),
    selected ? workerSubList(rid) : null);
}

function workerSubList(rid) {
  const entry = state.workers.get(rid);
  const list = h("ul", { class: "worker-list", "aria-label": `Workers of ${rid}` });
  if (!entry) {
    list.append(h("li", { class: "muted pad-s" }, "Loading workers…"));
  } else {
    if (entry.error) list.append(h("li", { class: "pad-s err-inline small-text" }, h("code", {}, entry.error.code)));
    if (!entry.items.length && !entry.error) list.append(h("li", { class: "muted pad-s small-text" }, "No workers yet."));
    for (const worker of entry.items) {
      const current = state.route.wid === worker.worker_id;
      list.append(h("li", { class: current ? "current" : null, dataset: { workerId: worker.worker_id } },
        h("a", { href: routeHash(rid, worker.worker_id), "aria-current": current ? "page" : null },
          h("span", { class: `dot dot-${token(worker.status)}`, title: worker.status }),
          h("code", {}, worker.worker_id),
          h("span", { class: "muted small-text" }, worker.profile || ""))));
    }
  }
  list.append(h("li", { class: "new-worker" }, h("a", { href: routeHash(rid), class: "small-text" }, "+ New worker")));
  return list;
}

function renderRuntimeView() {
  const rid = state.route.rid;
  const runtime = state.runtimes.get(rid);
  if (!runtime) {
    $("rt-title").textContent = rid;
    $("rt-id").textContent = rid;
    return;
  }
  const status = runtime.status || {};
  const caps = runtime.capabilities || {};
  $("rt-title").textContent = runtime.display_name;
  $("rt-id").textContent = rid;
  $("rt-kind").textContent = runtime.kind;
  $("rt-kind").className = `tag tag-${token(runtime.kind)}`;
  $("rt-badge").replaceWith(Object.assign(badge(status.state), { id: "rt-badge" }));
  $("rt-state").replaceChildren(badge(status.state), runtime.enabled === false ? " (disabled)" : "");
  $("rt-last-seen").replaceChildren(timeAgo(status.last_seen_at));
  $("rt-checked").replaceChildren(timeAgo(status.checked_at));
  $("rt-error-code").replaceChildren(status.error_code ? h("code", {}, status.error_code) : h("span", { class: "muted" }, "none"));
  const facts = [
    ["Protocol", known(caps.protocol_version)],
    ["Store", known(caps.backend)],
    ["Default profile", known(caps.default_profile)],
    ["Max input", formatBytes(caps.max_input_bytes)],
    ["Transcript page", caps.max_transcript_items ? `${caps.max_transcript_items} items` : "unknown"],
  ];
  $("rt-caps").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const profiles = Array.isArray(caps.profiles) ? caps.profiles : [];
  $("rt-profiles").replaceChildren(...profiles.map((p) =>
    h("li", {}, h("code", {}, p.name), p.description ? h("span", { class: "muted" }, ` — ${p.description}`) : null)));
  renderProfileOptions(rid, caps);
  renderWorkerTable();
}

function renderProfileOptions(rid, caps) {
  const profiles = Array.isArray(caps.profiles) ? caps.profiles : [];
  const key = JSON.stringify([rid, profiles, caps.default_profile]);
  if (state.profilesKey === key) return;
  state.profilesKey = key;
  const select = $("create-profile");
  const options = profiles.map((p) => h("option", { value: p.name, selected: p.name === caps.default_profile }, p.name));
  if (!options.length) options.push(h("option", { value: "" }, "(runtime default)"));
  select.replaceChildren(...options);
  describeProfile();
}

function describeProfile() {
  const runtime = state.runtimes.get(state.route.rid);
  const profiles = runtime?.capabilities?.profiles || [];
  const chosen = profiles.find((p) => p.name === $("create-profile").value);
  $("create-profile-help").textContent = chosen?.description || "";
}

function renderWorkerTable() {
  const rid = state.route.rid;
  const entry = state.workers.get(rid);
  showError($("workers-error"), entry?.error || null);
  const rows = (entry?.items || []).map((w) =>
    h("tr", { dataset: { workerId: w.worker_id } },
      h("td", {}, h("a", { href: routeHash(rid, w.worker_id) }, h("code", {}, w.worker_id))),
      h("td", {}, badge(w.status)),
      h("td", {}, w.profile || "—"),
      h("td", { class: "num" }, known(w.transcript_len)),
      h("td", { class: "num" }, known(w.last_seq))));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 5, class: "muted" }, entry ? "No workers yet." : "Loading…")));
  $("worker-table").replaceChildren(...rows);
}

async function createWorker(event) {
  event.preventDefault();
  const rid = state.route.rid;
  const body = { intent: { kind: $("create-intent").value } };
  if ($("create-profile").value) body.profile = $("create-profile").value;
  const first = $("create-input").value;
  if (first.trim()) body.initial_input = first;
  const button = $("create-submit");
  button.disabled = true;
  try {
    const worker = await api(urls.workers(rid), { method: "POST", body });
    showError($("create-error"), null);
    $("create-input").value = "";
    rememberWorker(worker);
    location.hash = routeHash(rid, worker.worker_id);
  } catch (exc) {
    showError($("create-error"), errorOf(exc));
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------ events view

/** The live event list: one element per event carries its seq (data-seq), so gaps and repeats are visible. */
class EventView {
  constructor(list) {
    this.list = list;
    this.reply = null; // the assistant reply being streamed: {li, body, seqs}
    list.replaceChildren();
  }

  stickToBottom(fn) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
    fn();
    while (list.children.length > MAX_EVENT_ROWS) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  add(frame) {
    this.stickToBottom(() => this.render(frame));
  }

  render({ seq, event, data }) {
    data = data && typeof data === "object" ? data : {};
    const seqLabel = h("span", { class: "seq" }, `#${seq}`);
    switch (event) {
      case "text_delta": {
        const reply = this.reply || this.openReply(seq);
        reply.body.append(h("span", { class: "chunk", dataset: { seq: String(seq) }, title: `#${seq} text_delta` },
          String(data.text ?? "")));
        reply.range.textContent = `#${reply.first}–#${seq}`;
        return;
      }
      case "text_done": {
        const reply = this.reply || this.openReply(seq);
        const text = typeof data.text === "string" ? data.text : null;
        if (text !== null && reply.body.textContent !== text) {
          // Started mid-reply (a reset): the full text replaces the chunks we have.
          for (const chunk of reply.body.children) chunk.classList.add("superseded");
          reply.body.append(h("span", { class: "chunk-full" }, text));
        }
        reply.li.classList.remove("streaming");
        reply.li.classList.add("done");
        reply.range.textContent = `#${reply.first}–#${seq}`;
        reply.meta.append(h("span", { class: "done-mark", dataset: { seq: String(seq) } }, " done"));
        this.reply = null;
        return;
      }
      case "user_message": {
        this.reply = null;
        const kind = data.kind && data.kind !== "user" ? ` · ${data.kind}` : "";
        this.list.append(h("li", { class: "ev ev-user", dataset: { seq: String(seq), kind: event } },
          h("div", { class: "who" }, `you${kind}`),
          h("div", { class: "bubble" }, String(data.content ?? "")),
          h("div", { class: "ev-meta" }, seqLabel)));
        return;
      }
      case "status":
      case "worker_exited": {
        if (event === "worker_exited") this.reply = null;
        const words = event === "status" ? ["status → ", h("strong", {}, String(data.status ?? "?"))]
          : ["worker exited", data.status ? ` (${data.status})` : "",
            data.exit_code !== null && data.exit_code !== undefined ? `, exit code ${data.exit_code}` : ""];
        if (data.reason) words.push(` — ${data.reason}`);
        this.list.append(h("li", { class: `ev ev-note ev-${token(event)}`, dataset: { seq: String(seq), kind: event } },
          seqLabel, " ", ...words));
        return;
      }
      default: {
        if (event === "run_end") this.reply = null;
        let summary = typeof data.text === "string" ? data.text : typeof data.message === "string" ? data.message : "";
        if (!summary) {
          summary = JSON.stringify(data);
          if (summary.length > 400) summary = `${summary.slice(0, 400)}…`;
        }
        this.list.append(h("li", { class: `ev ev-generic ev-${token(event)}`, dataset: { seq: String(seq), kind: String(event) } },
          seqLabel, " ", h("span", { class: "kind" }, String(event)), " ", h("span", { class: "summary" }, summary)));
      }
    }
  }

  openReply(seq) {
    const body = h("div", { class: "bubble" });
    const range = h("span", { class: "seq" }, `#${seq}`);
    const meta = h("div", { class: "ev-meta" }, range);
    const li = h("li", { class: "ev ev-reply streaming", dataset: { kind: "reply" } },
      h("div", { class: "who" }, "assistant"), body, meta);
    this.list.append(li);
    this.reply = { li, body, meta, range, first: seq };
    return this.reply;
  }

  /** A line that is not an event (a reset, a resumed connection): no seq. */
  note(text, kind = "sys", action = null) {
    this.reply = null;
    this.stickToBottom(() => this.list.append(h("li", { class: `ev ev-${kind}` }, text, action ? [" ", action] : [])));
  }
}

// ------------------------------------------------------------------------------------------------ connection indicator

const indicator = {
  timer: null,
  set({ state: connState, text, reason = null, deadline = null, retry = false }) {
    const conn = $("conn");
    conn.dataset.state = connState;
    clearInterval(this.timer);
    this.timer = null;
    const label = $("conn-label");
    const parts = [h("span", { class: "conn-text" }, text)];
    if (reason) parts.push(h("code", { class: "conn-reason" }, reason));
    let countdown = null;
    if (deadline !== null) {
      countdown = h("span", { class: "conn-countdown" });
      parts.push(countdown);
      const tick = () => {
        const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
        countdown.textContent = left > 0 ? `retry in ${left} s` : "retrying…";
        return left > 0;
      };
      if (tick()) {
        this.timer = setInterval(() => {
          if (!tick()) {
            clearInterval(this.timer);
            this.timer = null;
          }
        }, 250);
      }
    }
    label.replaceChildren(...parts);
    $("conn-retry").hidden = !retry;
  },
};

// ------------------------------------------------------------------------------------------------ event stream

/**
 * One worker's event socket. It keeps the seq of the last event it rendered and, whenever the socket
 * drops, reconnects with backoff and `?after=<that seq>`, so nothing is lost or shown twice.
 */
class EventStream {
  constructor(runtimeId, workerId, after, view) {
    this.rid = runtimeId;
    this.wid = workerId;
    this.lastSeq = after;
    this.view = view;
    this.ws = null;
    this.attempts = 0;
    this.retryTimer = null;
    this.disposed = false;
    this.dropped = false;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.disposed) return;
    if (this.ws) this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
    this.opened = false;
    this.error = null;
    this.exited = false;
    if (!this.dropped) indicator.set({ state: "connecting", text: "Connecting…" });
    const ws = new WebSocket(urls.events(this.rid, this.wid, this.lastSeq));
    this.ws = ws;
    ws.onopen = () => this.onOpen();
    ws.onmessage = (message) => this.onMessage(message);
    ws.onclose = (event) => this.onClose(event);
  }

  onOpen() {
    this.opened = true;
    if (this.dropped) this.view.note(`Reconnected; resumed after #${this.lastSeq}.`);
    this.dropped = false;
    this.attempts = 0;
    indicator.set({ state: "connecting", text: "Connecting to the runtime…" });
  }

  onMessage(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    switch (frame.type) {
      case "event":
        if (typeof frame.seq !== "number" || frame.seq <= this.lastSeq) return; // already shown
        this.lastSeq = frame.seq;
        this.view.add(frame);
        onWorkerEvent(frame);
        if (frame.event === "worker_exited") this.exited = true;
        if ($("conn").dataset.state === "connecting") indicator.set({ state: "connected", text: "Connected" });
        return;
      case "state":
        this.onUpstreamState(frame);
        return;
      case "reset": {
        const earliest = Number(frame.earliest_seq);
        const reload = h("button", { type: "button", class: "link", onclick: () => loadTranscript(state.tx.start) },
          "reload the transcript");
        this.view.note(`Events before #${earliest} are not available here (${frame.reason}); the transcript has them:`,
          "reset", reload);
        if (Number.isFinite(earliest)) this.lastSeq = Math.max(this.lastSeq, earliest - 1);
        return;
      }
      case "error":
        this.error = frame.error || { code: "error", message: "" };
        return;
      default:
    }
  }

  onUpstreamState(frame) {
    const deadline = typeof frame.retry_in === "number" ? Date.now() + frame.retry_in * 1000 : null;
    if (frame.upstream === "connected") {
      indicator.set({ state: "connected", text: "Connected" });
    } else if (frame.upstream === "reconnecting") {
      indicator.set({ state: "reconnecting", text: "Reconnecting to the runtime", reason: frame.reason, deadline });
    } else if (frame.upstream === "unavailable") {
      indicator.set({ state: "unavailable", text: "Runtime unavailable", reason: frame.reason || "unknown", deadline });
    }
  }

  async onClose(event) {
    if (this.disposed) return;
    this.ws = null;
    if (this.exited || (event.code === 1000 && !this.error)) {
      indicator.set({ state: "ended", text: "Worker exited; the stream is complete" });
      return;
    }
    if (this.error) {
      const error = this.error;
      showError($("worker-error"), error);
      if (error.retryable) {
        this.scheduleReconnect(error.code);
      } else {
        indicator.set({ state: "unavailable", text: error.message || "Closed", reason: error.code, retry: true });
      }
      return;
    }
    if (!this.opened) {
      // Refused at the handshake: a browser cannot see why, so ask the API (session ended? worker gone?).
      try {
        await api(urls.worker(this.rid, this.wid));
      } catch (exc) {
        if (this.disposed) return;
        const error = errorOf(exc);
        if (!error.retryable && error.code !== "network_error") {
          showError($("worker-error"), error);
          indicator.set({ state: "unavailable", text: error.message, reason: error.code, retry: true });
          return;
        }
      }
      if (this.disposed) return;
    }
    this.scheduleReconnect(this.opened ? "connection_lost" : "connection_failed");
  }

  scheduleReconnect(reason) {
    this.dropped = true;
    this.attempts += 1;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (this.attempts - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    const deadline = Date.now() + delay;
    if (this.attempts >= UNAVAILABLE_AFTER_ATTEMPTS) {
      indicator.set({ state: "unavailable", text: "Backend unavailable", reason, deadline, retry: true });
    } else {
      indicator.set({ state: "reconnecting", text: "Reconnecting to the Backend", reason, deadline, retry: true });
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect at once (the "Retry now" button, the browser coming back online). */
  retryNow() {
    if (this.disposed || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    this.connect();
  }

  dispose() {
    this.disposed = true;
    clearTimeout(this.retryTimer);
    if (this.ws) {
      this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
      this.ws.close(1000);
      this.ws = null;
    }
  }
}

window.addEventListener("online", () => state.stream?.retryNow());

// ------------------------------------------------------------------------------------------------ worker view

function renderWorkerHeader() {
  const worker = state.worker;
  if (!worker) return;
  $("wk-id").textContent = worker.worker_id;
  const runtime = state.runtimes.get(worker.runtime_id);
  const link = $("wk-runtime-link");
  link.textContent = runtime ? runtime.display_name : worker.runtime_id;
  link.href = routeHash(worker.runtime_id);
  $("wk-status").replaceWith(Object.assign(badge(worker.status), { id: "wk-status" }));
  $("wk-profile").textContent = worker.profile || "";
  $("wk-profile").hidden = !worker.profile;
  $("wk-status").hidden = Boolean(worker.placeholder);
  if (worker.placeholder) {
    $("wk-meta").replaceChildren();
    $("wk-stop").disabled = $("wk-cancel").disabled = true;
    return;
  }
  const meta = [];
  if (worker.intent?.kind) meta.push(`intent ${worker.intent.kind}`);
  meta.push(`transcript ${known(worker.transcript_len)}`);
  meta.push(`last seq ${known(worker.last_seq)}`);
  $("wk-meta").replaceChildren(meta.join(" · "),
    ...(worker.created_at ? [" · created ", timeAgo(worker.created_at)] : []));
  const running = worker.status === "running";
  $("wk-stop").disabled = !running;
  $("wk-cancel").disabled = !running;
}

function onWorkerEvent(frame) {
  const worker = state.worker;
  if (!worker || worker.worker_id !== frame.worker_id || worker.runtime_id !== frame.runtime_id) return;
  worker.last_seq = Math.max(worker.last_seq || 0, frame.seq);
  const data = frame.data || {};
  if ((frame.event === "status" || frame.event === "worker_exited") && typeof data.status === "string") {
    worker.status = data.status;
  }
  if (typeof data.transcript_sequence === "number") {
    worker.transcript_len = Math.max(worker.transcript_len || 0, data.transcript_sequence);
    transcriptGrew();
  }
  rememberWorker({ ...worker });
  renderWorkerHeader();
  if (frame.event === "status" || frame.event === "worker_exited") renderSidebar();
}

async function openWorker(rid, wid) {
  closeWorker();
  $("events").replaceChildren();
  $("transcript").replaceChildren();
  $("tx-range").textContent = "";
  $("input-text").value = "";
  $("wk-body").hidden = true;
  $("wk-meta").replaceChildren();
  for (const id of ["worker-error", "input-error", "transcript-error"]) showError($(id), null);
  indicator.set({ state: "connecting", text: "Loading the worker…" });
  state.worker = { runtime_id: rid, worker_id: wid, status: "unknown", placeholder: true };
  renderWorkerHeader();
  let worker;
  try {
    worker = await api(urls.worker(rid, wid));
  } catch (exc) {
    if (state.route.rid !== rid || state.route.wid !== wid) return;
    showError($("worker-error"), errorOf(exc));
    indicator.set({ state: "unavailable", text: "Not connected", reason: errorOf(exc).code });
    return;
  }
  if (state.route.rid !== rid || state.route.wid !== wid) return;
  $("wk-body").hidden = false;
  state.worker = worker;
  rememberWorker(worker);
  renderWorkerHeader();
  renderSidebar();
  state.events = new EventView($("events"));
  const after = Math.max(0, (worker.last_seq || 0) - HISTORY_EVENTS);
  if (after > 0) state.events.note(`Showing events after #${after}; older ones are in the transcript.`);
  state.stream = new EventStream(rid, wid, after, state.events);
  state.stream.connect();
  const limit = Number($("tx-limit").value);
  loadTranscript(lastPageStart(worker.transcript_len || 0, limit));
}

function closeWorker() {
  state.stream?.dispose();
  state.stream = null;
  state.events = null;
  state.worker = null;
  clearTimeout(state.tx.timer);
  state.tx.page = null;
  state.tx.generation += 1;
}

async function sendInput(event) {
  event.preventDefault();
  const worker = state.worker;
  const text = $("input-text");
  if (!worker || !text.value.trim()) return;
  const button = $("input-send");
  button.disabled = true;
  try {
    const ack = await api(urls.input(worker.runtime_id, worker.worker_id), {
      method: "POST",
      body: { content: text.value, kind: $("input-kind").value },
    });
    showError($("input-error"), null);
    text.value = "";
    if (state.worker === worker && ack.status) {
      worker.status = ack.status;
      renderWorkerHeader();
    }
  } catch (exc) {
    showError($("input-error"), errorOf(exc));
  } finally {
    button.disabled = false;
    text.focus();
  }
}

async function endWorker(action) {
  const worker = state.worker;
  if (!worker) return;
  const url = action === "stop" ? urls.stop(worker.runtime_id, worker.worker_id) : urls.cancel(worker.runtime_id, worker.worker_id);
  for (const id of ["wk-stop", "wk-cancel"]) $(id).disabled = true;
  try {
    const ack = await api(url, { method: "POST", body: {} });
    showError($("worker-error"), null);
    if (state.worker === worker) {
      worker.status = ack.status;
      rememberWorker({ ...worker });
      renderSidebar();
    }
  } catch (exc) {
    showError($("worker-error"), errorOf(exc));
  } finally {
    renderWorkerHeader();
  }
}

// ------------------------------------------------------------------------------------------------ transcript

const lastPageStart = (total, limit) => Math.floor(Math.max(0, total - 1) / limit) * limit;

async function loadTranscript(start) {
  const worker = state.worker;
  if (!worker) return;
  const limit = Number($("tx-limit").value);
  const generation = ++state.tx.generation;
  // A page asked for now wins over a pending "follow the last page" reload, until it says where it is.
  clearTimeout(state.tx.timer);
  state.tx.follow = false;
  let page;
  try {
    page = await api(urls.transcript(worker.runtime_id, worker.worker_id, Math.max(0, start), limit));
  } catch (exc) {
    if (generation === state.tx.generation) showError($("transcript-error"), errorOf(exc));
    return;
  }
  if (generation !== state.tx.generation || state.worker !== worker) return;
  showError($("transcript-error"), null);
  state.tx.start = page.start;
  state.tx.page = page;
  state.tx.follow = page.next_start === null;
  const items = page.items.map((item) =>
    h("li", { class: `tx-item tx-${token(item.role)}`, dataset: { sequence: String(item.sequence) } },
      h("div", { class: "tx-head" }, h("span", { class: "seq" }, `${item.sequence}`), " ", h("span", { class: "role" }, item.role)),
      h("div", { class: "tx-content" }, String(item.content ?? ""))));
  if (!items.length) items.push(h("li", { class: "muted pad-s" }, page.total_items ? "Nothing on this page." : "No transcript yet."));
  $("transcript").replaceChildren(...items);
  const first = page.items.length ? page.start + 1 : 0;
  const last = page.start + page.items.length;
  $("tx-range").textContent = page.items.length ? `${first}–${last} of ${page.total_items}` : `0 of ${page.total_items}`;
  $("tx-first").disabled = $("tx-prev").disabled = page.start <= 0;
  $("tx-next").disabled = $("tx-last").disabled = page.next_start === null;
}

/** New transcript entries: a reader on the last page follows along; otherwise only the pager changes. */
function transcriptGrew() {
  if (!state.tx.page) return;
  clearTimeout(state.tx.timer);
  state.tx.timer = setTimeout(() => {
    if (state.tx.follow) {
      loadTranscript(lastPageStart(state.worker?.transcript_len || 0, Number($("tx-limit").value)));
    } else {
      $("tx-next").disabled = $("tx-last").disabled = false;
    }
  }, 250);
}

// ------------------------------------------------------------------------------------------------ routing

function showView(name) {
  for (const view of ["empty", "runtime", "worker"]) $(`view-${view}`).hidden = view !== name;
}

function route() {
  const next = parseRoute();
  const previous = state.route;
  state.route = next;
  if (!next.rid) {
    closeWorker();
    showView("empty");
    renderSidebar();
    return;
  }
  if (!state.workers.has(next.rid) || previous.rid !== next.rid) loadWorkers(next.rid);
  if (next.wid) {
    showView("worker");
    if (previous.rid !== next.rid || previous.wid !== next.wid || !state.worker) openWorker(next.rid, next.wid);
  } else {
    closeWorker();
    showView("runtime");
    showError($("create-error"), null);
    renderRuntimeView();
    refreshRuntime(next.rid);
  }
  renderSidebar();
}

// ------------------------------------------------------------------------------------------------ wiring

$("runtimes-refresh").addEventListener("click", loadRuntimes);
$("rt-refresh").addEventListener("click", () => state.route.rid && refreshRuntime(state.route.rid, { probe: true }));
$("workers-refresh").addEventListener("click", () => state.route.rid && loadWorkers(state.route.rid));
$("create-form").addEventListener("submit", createWorker);
$("create-profile").addEventListener("change", describeProfile);
$("input-form").addEventListener("submit", sendInput);
$("input-text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("input-form").requestSubmit();
  }
});
$("wk-stop").addEventListener("click", () => endWorker("stop"));
$("wk-cancel").addEventListener("click", () => endWorker("cancel"));
$("conn-retry").addEventListener("click", () => {
  if (!state.stream) return;
  showError($("worker-error"), null);
  state.stream.attempts = 0;
  state.stream.connect();
});
$("tx-limit").addEventListener("change", () => loadTranscript(0));
$("tx-first").addEventListener("click", () => loadTranscript(0));
$("tx-prev").addEventListener("click", () => {
  const limit = Number($("tx-limit").value);
  loadTranscript(Math.max(0, state.tx.start - limit));
});
$("tx-next").addEventListener("click", () => {
  const page = state.tx.page;
  loadTranscript(page && page.next_start !== null ? page.next_start : state.tx.start + Number($("tx-limit").value));
});
$("tx-last").addEventListener("click", () => {
  const total = Math.max(state.tx.page?.total_items || 0, state.worker?.transcript_len || 0);
  loadTranscript(lastPageStart(total, Number($("tx-limit").value)));
});
$("tx-refresh").addEventListener("click", () => loadTranscript(state.tx.start));
window.addEventListener("hashchange", route);

setInterval(() => {
  if (!document.hidden) loadRuntimes();
}, RUNTIME_POLL_MS);

loadRuntimes().then(route);
