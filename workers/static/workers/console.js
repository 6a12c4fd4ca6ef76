// The Yoi Workspace console: plain modern JavaScript, no framework, no build step.
//
// Everything the page shows comes from the Backend's browser API (/api/v1/) and one WebSocket per watched
// worker (/ws/...); the page never learns where a runtime lives. Text from the server is only ever put in
// the DOM as text (textContent / text nodes), never as HTML. The frames and error codes it handles are
// described in docs/api.md; how the pieces fit together in docs/architecture.md.

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
// A worker page that failed to load tries again on its own, with the same kind of backoff.
const LOAD_BACKOFF_BASE_MS = 1000;
const LOAD_BACKOFF_CAP_MS = 8000;
// The runtime list comes from the Backend's cache (no runtime is contacted): cheap to poll often. The
// selected runtime's detail (refreshed when stale) and its workers ask the runtime: less often.
const RUNTIMES_POLL_MS = 5000;
const SELECTED_POLL_MS = 10000;
// Text longer than this is clamped until "Show more".
const LONG_TEXT_CHARS = 1200;
const LONG_TEXT_LINES = 12;
// A worker in one of these states takes no more input and no stop/cancel.
const FINISHED = new Set(["stopped", "cancelled", "failed", "exited"]);
// Errors that mean "this page does not exist": shown as a not-found page, never retried.
const NOT_FOUND_CODES = new Set(["runtime_not_found", "worker_not_found", "invalid_request", "not_found"]);
// Errors a retry cannot fix without the person doing something.
const NO_RETRY_CODES = new Set([...NOT_FOUND_CODES, "not_authenticated", "permission_denied"]);

// ------------------------------------------------------------------------------------------------ words

/** What each error code means, for a person (the code is shown beside it). */
const HUMAN = {
  network_error: "This browser cannot reach the Backend: the network or the Backend is down.",
  bad_response: "The Backend answered something this page cannot read.",
  client_error: "Something went wrong in this page.",
  internal_error: "The Backend hit an unexpected problem; it has been logged.",
  invalid_request: "Some of what was sent is not valid.",
  not_authenticated: "Your session has ended: log in again.",
  permission_denied: "You are not allowed to do that.",
  not_found: "That address does not exist.",
  method_not_allowed: "That action is not available here.",
  unsupported_media_type: "The request was not sent as JSON.",
  runtime_not_found: "There is no such runtime, or you may not see it.",
  worker_not_found: "This runtime has no such worker.",
  runtime_rejected: "The runtime refused the command.",
  payload_too_large: "That is too large to send.",
  throttled: "Too many requests: wait a moment, then try again.",
  rate_limited: "Too many requests: wait a moment, then try again.",
  runtime_unsupported: "This runtime cannot do that.",
  runtime_unreachable: "The runtime cannot be reached: it may be stopped, or its host down.",
  runtime_auth_failed: "The runtime refused the Backend's credentials: an operator has to fix its token.",
  runtime_bad_response: "The runtime answered with something the Backend cannot use.",
  runtime_disabled: "An operator has disabled this runtime.",
  runtime_busy: "The runtime is busy with too many requests.",
  runtime_circuit_open: "The runtime failed several times in a row, so the Backend pauses before trying it again.",
  runtime_timeout: "The runtime did not answer in time.",
};

/** Short forms for the connection indicator and the sidebar. */
const SHORT = {
  runtime_unreachable: "runtime unreachable",
  runtime_timeout: "runtime not answering",
  runtime_auth_failed: "credentials refused",
  runtime_bad_response: "bad answer from the runtime",
  runtime_circuit_open: "pausing after repeated failures",
  runtime_busy: "runtime busy",
  runtime_disabled: "runtime disabled",
  runtime_not_found: "runtime gone",
  worker_not_found: "worker gone",
  stream_ended: "the runtime closed the stream",
  connection_lost: "connection lost",
  connection_failed: "Backend unreachable",
  network_error: "Backend unreachable",
  not_authenticated: "logged out",
};

/** What a runtime's own refusal codes (runtime_rejected's upstream_code) mean. */
const UPSTREAM_HUMAN = {
  worker_not_running: "the worker is no longer running",
  runtime_stopped: "the runtime is shutting down",
  worker_exists: "a worker with that id already exists",
  invalid_request: "it found the request invalid",
  payload_too_large: "the input is over its size limit",
  limit_too_large: "the page asked for is too large",
  idempotency_key_reused: "that request was already sent with different content",
};

const human = (code) => HUMAN[code] || "Something went wrong.";
const short = (code) => SHORT[code] || String(code).replace(/_/g, " ");

/** Why a worker takes no more input, by its status. */
function finishedText(status) {
  const how = { stopped: "was stopped", cancelled: "was cancelled", failed: "failed", exited: "has exited" }[status]
    || "has finished";
  return `This worker ${how}: it takes no more input.`;
}

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

let uid = 0;

const isLong = (text) => text.length > LONG_TEXT_CHARS || text.split("\n", LONG_TEXT_LINES + 1).length > LONG_TEXT_LINES;

/** Clamp ``el`` to a few lines, with a "Show more" toggle after it (once). */
function collapse(el) {
  if (el.classList.contains("clamped") || el.dataset.expanded !== undefined) return;
  el.dataset.expanded = "";
  if (!el.id) el.id = `long-${++uid}`;
  el.classList.add("clamped");
  const toggle = h("button", { type: "button", class: "link more-toggle", "aria-expanded": "false", "aria-controls": el.id },
    "Show more");
  toggle.addEventListener("click", () => {
    const open = el.classList.toggle("clamped") === false;
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Show less" : "Show more";
  });
  el.after(toggle);
}

/** Clamp ``el`` (which shows ``text``) when the text is long. */
function collapseIfLong(el, text) {
  if (isLong(text)) collapse(el);
}

// ------------------------------------------------------------------------------------------------ API

/** A typed error of the Backend's envelope: {code, message, retryable, ...}, with Retry-After if sent. */
class ApiError extends Error {
  constructor(error, status, retryAfter = null) {
    super(error.message);
    this.error = error;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

async function api(path, { method = "GET", body, idempotencyKey } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
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
    const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(error, response.status, Number.isFinite(retryAfter) ? retryAfter : null);
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
  events: (rid, wid, after, epoch) => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = epoch === null || epoch === undefined ? `after=${after}` : `after=${after}&epoch=${enc(epoch)}`;
    return `${scheme}//${location.host}/ws/runtimes/${enc(rid)}/workers/${enc(wid)}/events/?${query}`;
  },
};

/**
 * Show a typed error in an error box: what it means in words, the code beside it, then what else it says.
 * ``retry`` ({deadline, onRetry}) adds a countdown to the next automatic try and a "Retry now" button.
 * null hides the box.
 */
function showError(box, error, retry = null) {
  clearInterval(box.countdownTimer);
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    delete box.dataset.code;
    return;
  }
  const code = String(error.code || "error");
  box.dataset.code = code;
  box.append(h("p", { class: "err-line" },
    h("span", { class: "err-msg" }, human(code)), " ", h("code", { class: "err-code" }, code)));
  const details = [];
  if (error.upstream_code) {
    const said = UPSTREAM_HUMAN[error.upstream_code];
    details.push(h("span", {}, "The runtime said: ", said ? `${said} ` : "",
      h("code", { class: "err-upstream" }, String(error.upstream_code))));
  }
  if (error.message && !error.upstream_code) details.push(h("span", { class: "err-server" }, String(error.message)));
  if (error.fields && typeof error.fields === "object") {
    for (const [field, messages] of Object.entries(error.fields)) {
      details.push(h("span", {}, h("code", {}, field), ": ", [].concat(messages).join(" ")));
    }
  }
  if (code === "not_authenticated") {
    details.push(h("a", { href: `${LOGIN_URL}?next=${enc(location.pathname + location.hash)}` }, "Log in again"));
  }
  if (details.length) box.append(h("p", { class: "err-details" }, ...details.flatMap((d, i) => (i ? [" · ", d] : [d]))));
  if (retry) {
    const countdown = h("span", { class: "err-countdown" });
    const tick = () => {
      const left = Math.max(0, Math.ceil((retry.deadline - Date.now()) / 1000));
      countdown.textContent = left > 0 ? `Trying again in ${left} s.` : "Trying again…";
    };
    tick();
    box.countdownTimer = setInterval(tick, 250);
    box.append(h("p", { class: "err-retry" }, countdown,
      h("button", { type: "button", class: "link", onclick: retry.onRetry }, "Retry now")));
  } else {
    box.append(h("button", { type: "button", class: "err-close", "aria-label": "Dismiss", onclick: () => showError(box, null) }, "×"));
  }
  box.hidden = false;
}

const errorOf = (exc) => (exc instanceof ApiError ? exc.error : { code: "client_error", message: String(exc) });

/** Capped exponential backoff with jitter: the delay before try number ``attempt`` (1-based). */
function backoff(attempt, base, cap) {
  const ceiling = Math.min(cap, base * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

// ------------------------------------------------------------------------------------------------ state

const state = {
  runtimes: new Map(), // runtime_id -> Runtime
  order: [], // runtime_ids in list order
  listed: false, // the runtime list has loaded at least once
  workers: new Map(), // runtime_id -> {items: [Worker], error}
  // What the open worker page saw of its runtime ({code, at}), newer than the cached status: the sidebar
  // shows it too, so the two never disagree while the cache catches up.
  observed: new Map(),
  route: { rid: null, wid: null },
  worker: null, // the Worker on screen
  stream: null, // EventStream of the worker on screen
  events: null, // EventView of the worker on screen
  load: { timer: null, attempt: 0 }, // retries of a worker page that failed to load
  tx: { start: 0, page: null, generation: 0, follow: true, timer: null },
  profilesKey: null,
  routed: false, // the first route (the page load) is done
  sidebarKey: null,
  tableKey: null,
};

function routeHash(rid, wid) {
  return wid ? `#/runtimes/${enc(rid)}/workers/${enc(wid)}` : `#/runtimes/${enc(rid)}`;
}

function parseRoute() {
  const match = location.hash.match(/^#\/runtimes\/([^/]+)(?:\/workers\/([^/]+))?\/?$/);
  if (!match) return { rid: null, wid: null, bad: Boolean(location.hash) && !/^#\/?$/.test(location.hash) };
  try {
    return { rid: decodeURIComponent(match[1]), wid: match[2] ? decodeURIComponent(match[2]) : null };
  } catch {
    return { rid: null, wid: null, bad: true };
  }
}

/** Re-render ``container`` only when what it shows changed, keeping keyboard focus on the same item. */
function renderKeyed(container, key, stateKey, build) {
  if (state[stateKey] === key) return;
  state[stateKey] = key;
  const focused = container.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
  container.replaceChildren(...build());
  if (focused) container.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
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
    state.listed = true;
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
    if (state.route.rid === rid) showError($("runtime-error"), null);
  } catch (exc) {
    const error = errorOf(exc);
    if (state.route.rid === rid && !state.route.wid && NOT_FOUND_CODES.has(error.code)) {
      showNotFound({ rid });
      return;
    }
    if (state.route.rid === rid) showError($("runtime-error"), error);
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

/** The open page saw its runtime fail (``code``) or answer (null): the sidebar follows at once. */
function observeRuntime(rid, code) {
  const before = state.observed.get(rid)?.code || null;
  if (code) state.observed.set(rid, { code, at: Date.now() });
  else state.observed.delete(rid);
  if (before !== (code || null)) renderSidebar();
}

/** The status to show for a runtime: the cached one, unless the open page saw something newer. */
function effectiveStatus(runtime) {
  const status = runtime.status || {};
  const seen = state.observed.get(runtime.runtime_id);
  if (!seen) return status;
  const checked = Date.parse(status.checked_at || "") || 0;
  if (status.state !== "online" || checked > seen.at) return status;
  const down = { runtime_unreachable: "offline", runtime_timeout: "offline", runtime_auth_failed: "unauthorized" };
  return { ...status, state: down[seen.code] || "error", error_code: seen.code };
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
  const rid = state.route.rid;
  const shown = state.order.map((id) => {
    const runtime = state.runtimes.get(id);
    return [runtime, effectiveStatus(runtime)];
  });
  const key = JSON.stringify([state.route, state.listed, shown, rid ? state.workers.get(rid) || null : null]);
  renderKeyed(list, key, "sidebarKey", () => {
    if (!state.order.length) {
      return [h("li", { class: "muted pad" }, state.listed ? "No runtimes are visible to you." : "Loading…")];
    }
    return shown.map(([runtime, status]) => runtimeItem(runtime, status));
  });
}

function runtimeItem(runtime, status) {
  const rid = runtime.runtime_id;
  const selected = state.route.rid === rid;
  const caps = runtime.capabilities || {};
  return h("li", { class: `runtime-item${selected ? " selected" : ""}`, dataset: { runtimeId: rid } },
    h("a", { class: "runtime-link", href: routeHash(rid), dataset: { focusKey: `rt:${rid}` },
      "aria-current": selected && !state.route.wid ? "page" : null },
      h("div", { class: "row" },
        h("span", { class: "runtime-name" }, runtime.display_name),
        badge(status.state)),
      h("div", { class: "row muted small-text" },
        h("code", {}, rid),
        h("span", { class: `tag tag-${token(runtime.kind)}`, dataset: { kind: runtime.kind } }, runtime.kind),
        h("span", { class: "seen" }, "seen ", timeAgo(status.last_seen_at))),
      h("div", { class: "muted small-text caps" }, capsSummary(caps)),
      status.error_code
        ? h("div", { class: "small-text err-inline", title: human(status.error_code) },
          short(status.error_code), " ", h("code", {}, status.error_code))
        : null),
    selected ? workerSubList(rid) : null);
}

function workerSubList(rid) {
  const entry = state.workers.get(rid);
  const list = h("ul", { class: "worker-list", "aria-label": `Workers of ${rid}` });
  if (!entry) {
    list.append(h("li", { class: "muted pad-s" }, "Loading workers…"));
  } else {
    if (entry.error) {
      list.append(h("li", { class: "pad-s err-inline small-text" }, short(entry.error.code), " ",
        h("code", {}, entry.error.code)));
    }
    if (!entry.items.length && !entry.error) list.append(h("li", { class: "muted pad-s small-text" }, "No workers yet."));
    for (const worker of entry.items) {
      const current = state.route.wid === worker.worker_id;
      list.append(h("li", { class: current ? "current" : null, dataset: { workerId: worker.worker_id } },
        h("a", { href: routeHash(rid, worker.worker_id), "aria-current": current ? "page" : null,
          dataset: { focusKey: `wk:${rid}:${worker.worker_id}` } },
          h("span", { class: `dot dot-${token(worker.status)}`, "aria-hidden": "true" }),
          h("code", {}, worker.worker_id),
          h("span", { class: "visually-hidden" }, ` ${worker.status}`),
          h("span", { class: "muted small-text" }, worker.profile || ""))));
    }
  }
  list.append(h("li", { class: "new-worker" },
    h("a", { href: routeHash(rid), class: "small-text", dataset: { focusKey: `new:${rid}` } }, "+ New worker")));
  return list;
}

function renderRuntimeView() {
  const rid = state.route.rid;
  const runtime = state.runtimes.get(rid);
  $("rt-id").textContent = rid;
  if (!runtime) {
    // Not known yet: no form until the Backend says the runtime exists (refreshRuntime decides).
    $("rt-title").textContent = rid;
    $("rt-body").hidden = true;
    $("rt-loading").hidden = false;
    return;
  }
  $("rt-loading").hidden = true;
  $("rt-body").hidden = false;
  const status = effectiveStatus(runtime);
  const caps = runtime.capabilities || {};
  $("rt-title").textContent = runtime.display_name;
  $("rt-kind").textContent = runtime.kind;
  $("rt-kind").className = `tag tag-${token(runtime.kind)}`;
  $("rt-badge").replaceWith(Object.assign(badge(status.state), { id: "rt-badge" }));
  $("rt-state").replaceChildren(badge(status.state), runtime.enabled === false ? " (disabled)" : "");
  $("rt-last-seen").replaceChildren(timeAgo(status.last_seen_at));
  $("rt-checked").replaceChildren(timeAgo(status.checked_at));
  $("rt-error-code").replaceChildren(status.error_code
    ? h("span", {}, short(status.error_code), " ", h("code", {}, status.error_code))
    : h("span", { class: "muted" }, "none"));
  const down = status.state !== "online" && status.error_code;
  $("rt-down").hidden = !down;
  if (down) $("rt-down").replaceChildren(human(status.error_code), " ", h("code", {}, status.error_code));
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
  renderKeyed($("worker-table"), JSON.stringify([rid, entry || null]), "tableKey", () => {
    const rows = (entry?.items || []).map((w) =>
      h("tr", { dataset: { workerId: w.worker_id } },
        h("td", {}, h("a", { href: routeHash(rid, w.worker_id), dataset: { focusKey: `row:${w.worker_id}` } },
          h("code", {}, w.worker_id))),
        h("td", {}, badge(w.status)),
        h("td", {}, w.profile || "—"),
        h("td", { class: "num" }, known(w.transcript_len)),
        h("td", { class: "num" }, known(w.last_seq))));
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 5, class: "muted" }, entry ? "No workers yet." : "Loading…")));
    return rows;
  });
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

  /** Forget everything shown (the stream was replaced). */
  clear() {
    this.reply = null;
    this.list.replaceChildren();
  }

  render({ seq, event, data }) {
    data = data && typeof data === "object" ? data : {};
    const seqLabel = h("span", { class: "seq" }, `#${seq}`);
    switch (event) {
      case "text_delta": {
        const reply = this.reply || this.openReply(seq);
        const text = String(data.text ?? "");
        reply.body.append(h("span", { class: "chunk", dataset: { seq: String(seq) }, title: `#${seq} text_delta` }, text));
        reply.length += text.length;
        reply.lines += text.split("\n").length - 1;
        if (reply.length > LONG_TEXT_CHARS || reply.lines >= LONG_TEXT_LINES) collapse(reply.body);
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
        if (text !== null) collapseIfLong(reply.body, text);
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
        const content = String(data.content ?? "");
        const bubble = h("div", { class: "bubble" }, content);
        this.list.append(h("li", { class: "ev ev-user", dataset: { seq: String(seq), kind: event } },
          h("div", { class: "who" }, `you${kind}`), bubble, h("div", { class: "ev-meta" }, seqLabel)));
        collapseIfLong(bubble, content);
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
        const text = h("span", { class: "summary" }, summary);
        this.list.append(h("li", { class: `ev ev-generic ev-${token(event)}`, dataset: { seq: String(seq), kind: String(event) } },
          seqLabel, " ", h("span", { class: "kind" }, String(event)), " ", text));
        collapseIfLong(text, summary);
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
    this.reply = { li, body, meta, range, first: seq, length: 0, lines: 0 };
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
    if (reason) {
      parts.push(h("span", { class: "conn-reason", title: human(reason) }, short(reason), " ", h("code", {}, reason)));
    }
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
 * One worker's event socket. It keeps the seq of the last event it rendered (and the stream's epoch, when
 * the Backend sends one) and, whenever the socket drops, reconnects with backoff and `?after=<that seq>`,
 * so nothing is lost or shown twice. An `end` frame or a clean close after the worker's last event ends it
 * for good: a finished worker is never reconnected to.
 */
class EventStream {
  constructor(runtimeId, workerId, after, view) {
    this.rid = runtimeId;
    this.wid = workerId;
    this.lastSeq = after;
    this.epoch = null;
    this.view = view;
    this.ws = null;
    this.attempts = 0;
    this.retryTimer = null;
    this.disposed = false;
    this.dropped = false;
    this.ended = false;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.disposed || this.ended) return;
    if (this.ws) this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
    this.opened = false;
    this.error = null;
    this.exited = false;
    if (!this.dropped) indicator.set({ state: "connecting", text: "Connecting…" });
    const ws = new WebSocket(urls.events(this.rid, this.wid, this.lastSeq, this.epoch));
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
        if (typeof frame.epoch === "string" || typeof frame.epoch === "number") this.epoch = frame.epoch;
        this.onUpstreamState(frame);
        return;
      case "reset":
        this.onReset(frame);
        return;
      case "end":
        this.finish(frame.final_seq);
        return;
      case "error":
        this.error = frame.error || { code: "error", message: "" };
        return;
      default:
    }
  }

  onReset(frame) {
    const earliest = Number(frame.earliest_seq);
    if (typeof frame.epoch === "string" || typeof frame.epoch === "number") this.epoch = frame.epoch;
    if (frame.reason === "stream_replaced") {
      // A new stream under the same ids: what we show belongs to the old one. Start over from its start.
      this.view.clear();
      this.view.note("This worker's event stream was replaced (its runtime started a new history); showing it afresh.",
        "reset");
      this.lastSeq = Number.isFinite(earliest) ? Math.max(0, earliest - 1) : 0;
      reloadWorker();
      return;
    }
    const reload = h("button", { type: "button", class: "link", onclick: () => loadTranscript(state.tx.start) },
      "reload the transcript");
    this.view.note(`Events before #${earliest} are not available here (${frame.reason}); the transcript has them:`,
      "reset", reload);
    if (Number.isFinite(earliest)) this.lastSeq = Math.max(this.lastSeq, earliest - 1);
    loadTranscript(state.tx.start);
  }

  onUpstreamState(frame) {
    const deadline = typeof frame.retry_in === "number" ? Date.now() + frame.retry_in * 1000 : null;
    if (frame.upstream === "connected") {
      indicator.set({ state: "connected", text: "Connected" });
      observeRuntime(this.rid, null);
    } else if (frame.upstream === "reconnecting") {
      indicator.set({ state: "reconnecting", text: "Reconnecting to the runtime", reason: frame.reason, deadline });
      if (String(frame.reason || "").startsWith("runtime_")) observeRuntime(this.rid, frame.reason);
    } else if (frame.upstream === "unavailable") {
      indicator.set({ state: "unavailable", text: "Runtime unavailable", reason: frame.reason || "unknown", deadline });
      if (String(frame.reason || "").startsWith("runtime_")) observeRuntime(this.rid, frame.reason);
    }
  }

  /** The worker's stream is complete (an `end` frame, or a clean close after worker_exited). */
  finish(finalSeq = null) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.retryTimer);
    const last = typeof finalSeq === "number" ? ` (last event #${finalSeq})` : "";
    indicator.set({ state: "ended", text: `Worker finished; the stream is complete${last}` });
    workerFinished();
  }

  async onClose(event) {
    if (this.disposed) return;
    this.ws = null;
    if (this.ended) return;
    if (this.exited || (event.code === 1000 && !this.error)) {
      this.finish();
      return;
    }
    if (this.error) {
      const error = this.error;
      if (NOT_FOUND_CODES.has(error.code)) {
        showNotFound({ rid: this.rid, wid: this.wid, code: error.code });
        return;
      }
      showError($("worker-error"), error);
      if (error.retryable) {
        this.scheduleReconnect(error.code);
      } else {
        indicator.set({ state: "unavailable", text: "Closed", reason: error.code, retry: true });
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
        if (NOT_FOUND_CODES.has(error.code)) {
          showNotFound({ rid: this.rid, wid: this.wid, code: error.code });
          return;
        }
        if (NO_RETRY_CODES.has(error.code)) {
          showError($("worker-error"), error);
          indicator.set({ state: "unavailable", text: "Not connected", reason: error.code, retry: true });
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
    const delay = backoff(this.attempts, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
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
    if (this.disposed || this.ended || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    this.attempts = 0;
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
  renderComposer();
}

/** The input box follows the worker: a finished worker takes no input, and the page says why. */
function renderComposer() {
  const worker = state.worker;
  const finished = Boolean(worker && (FINISHED.has(worker.status) || worker.ended));
  const text = $("input-text");
  const hadFocus = document.activeElement === text || document.activeElement === $("input-send");
  for (const id of ["input-text", "input-kind", "input-send"]) $(id).disabled = finished;
  $("input-closed").hidden = !finished;
  if (finished) {
    $("input-closed").textContent = finishedText(FINISHED.has(worker.status) ? worker.status : "exited");
    showHint(null);
    // Focus must not be lost with the disabled box: the event list next to it takes it.
    if (hadFocus) $("events").focus();
  }
}

/** The inline hint under the input box (null hides it). */
function showHint(text) {
  const hint = $("input-hint");
  hint.hidden = !text;
  hint.textContent = text || "";
  if (text) $("input-text").setAttribute("aria-invalid", "true");
  else $("input-text").removeAttribute("aria-invalid");
}

/** The stream ended: the worker is finished even if no status event said so (yet). */
function workerFinished() {
  const worker = state.worker;
  if (!worker) return;
  worker.ended = true;
  if (!FINISHED.has(worker.status)) reloadWorker();
  renderWorkerHeader();
}

function onWorkerEvent(frame) {
  const worker = state.worker;
  if (!worker || worker.worker_id !== frame.worker_id || worker.runtime_id !== frame.runtime_id) return;
  worker.last_seq = Math.max(worker.last_seq || 0, frame.seq);
  const data = frame.data || {};
  if ((frame.event === "status" || frame.event === "worker_exited") && typeof data.status === "string") {
    worker.status = data.status;
  } else if (frame.event === "worker_exited" && !FINISHED.has(worker.status)) {
    worker.status = "exited";
  }
  if (typeof data.transcript_sequence === "number") {
    worker.transcript_len = Math.max(worker.transcript_len || 0, data.transcript_sequence);
    transcriptGrew();
  }
  rememberWorker(withoutPageState(worker));
  renderWorkerHeader();
  if (frame.event === "status" || frame.event === "worker_exited") renderSidebar();
}

const withoutPageState = ({ placeholder, ended, ...worker }) => worker;

/** Fetch the open worker again (its status after a stream ended or was replaced); the transcript too. */
async function reloadWorker() {
  const current = state.worker;
  if (!current) return;
  try {
    const worker = await api(urls.worker(current.runtime_id, current.worker_id));
    if (state.worker !== current) return;
    Object.assign(current, worker);
    rememberWorker(worker);
    renderWorkerHeader();
    renderSidebar();
    loadTranscript(lastPageStart(current.transcript_len || 0, Number($("tx-limit").value)));
  } catch {
    // The stream and the polls keep trying; nothing to add here.
  }
}

function resetWorkerPane() {
  $("events").replaceChildren();
  $("transcript").replaceChildren();
  $("tx-range").textContent = "";
  $("input-text").value = "";
  $("wk-body").hidden = true;
  $("wk-loading").hidden = true;
  $("wk-meta").replaceChildren();
  showHint(null);
  for (const id of ["worker-error", "input-error", "transcript-error"]) showError($(id), null);
}

function openWorker(rid, wid) {
  closeWorker();
  resetWorkerPane();
  indicator.set({ state: "connecting", text: "Loading the worker…" });
  state.worker = { runtime_id: rid, worker_id: wid, status: "unknown", placeholder: true };
  renderWorkerHeader();
  $("wk-loading").hidden = false;
  $("wk-loading").textContent = "Loading the worker…";
  tryLoadWorker(rid, wid);
}

/** Load the worker; on a failure that time may fix, say why and try again with capped backoff. */
async function tryLoadWorker(rid, wid) {
  clearTimeout(state.load.timer);
  const current = state.worker;
  let worker;
  try {
    worker = await api(urls.worker(rid, wid));
  } catch (exc) {
    if (state.worker !== current) return;
    const error = errorOf(exc);
    if (NOT_FOUND_CODES.has(error.code)) {
      showNotFound({ rid, wid, code: error.code });
      return;
    }
    if (error.code.startsWith("runtime_")) observeRuntime(rid, error.code);
    $("wk-loading").hidden = true;
    if (NO_RETRY_CODES.has(error.code)) {
      showError($("worker-error"), error);
      return;
    }
    state.load.attempt += 1;
    const delay = Math.max(backoff(state.load.attempt, LOAD_BACKOFF_BASE_MS, LOAD_BACKOFF_CAP_MS),
      exc instanceof ApiError && exc.retryAfter ? exc.retryAfter * 1000 : 0);
    const again = () => tryLoadWorker(rid, wid);
    showError($("worker-error"), error, { deadline: Date.now() + delay, onRetry: again });
    state.load.timer = setTimeout(again, delay);
    return;
  }
  if (state.worker !== current) return;
  state.load.attempt = 0;
  observeRuntime(rid, null);
  showError($("worker-error"), null);
  $("wk-loading").hidden = true;
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
  // The runtime answered: its cached status may say otherwise until it is refreshed.
  refreshRuntime(rid);
}

function closeWorker() {
  state.stream?.dispose();
  state.stream = null;
  state.events = null;
  state.worker = null;
  clearTimeout(state.load.timer);
  state.load.attempt = 0;
  clearTimeout(state.tx.timer);
  state.tx.page = null;
  state.tx.generation += 1;
}

// ---- one submitted input = one Idempotency-Key: a retry of it can never make a second input (docs/api.md)

/** A fresh random key (crypto.getRandomValues works on plain http too, unlike crypto.randomUUID). */
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** POST an input with its key; if the answer is lost or retryable, send the same request once more. */
async function submitInput(url, body) {
  const idempotencyKey = newIdempotencyKey();
  try {
    return await api(url, { method: "POST", body, idempotencyKey });
  } catch (exc) {
    if (!(exc instanceof ApiError) || !(exc.status === 0 || exc.error.retryable)) throw exc;
    return api(url, { method: "POST", body, idempotencyKey });
  }
}

async function sendInput(event) {
  event.preventDefault();
  const worker = state.worker;
  const text = $("input-text");
  if (!worker || worker.placeholder || text.disabled) return;
  if (!text.value.trim()) {
    showHint("Type something first: blank input is not sent.");
    text.focus();
    return;
  }
  showHint(null);
  const button = $("input-send");
  button.disabled = true;
  try {
    const ack = await submitInput(urls.input(worker.runtime_id, worker.worker_id), {
      content: text.value,
      kind: $("input-kind").value,
    });
    showError($("input-error"), null);
    text.value = "";
    if (state.worker === worker && ack.status) worker.status = ack.status;
  } catch (exc) {
    const error = errorOf(exc);
    showError($("input-error"), error);
    // Refused because the worker has ended: what the page shows of it is out of date.
    if (error.upstream_code === "worker_not_running" && state.worker === worker) reloadWorker();
  } finally {
    button.disabled = false;
    if (state.worker === worker) renderWorkerHeader();
    if (!text.disabled) text.focus();
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
      rememberWorker(withoutPageState(worker));
      renderSidebar();
    }
  } catch (exc) {
    showError($("worker-error"), errorOf(exc));
  } finally {
    renderWorkerHeader();
    if (document.activeElement === document.body || document.activeElement?.disabled) $("wk-title").focus();
  }
}

/** Cancel is immediate and cuts a reply off: ask first. */
function confirmCancel() {
  const worker = state.worker;
  if (!worker || worker.placeholder) return;
  const dialog = $("cancel-dialog");
  $("cancel-worker-id").textContent = worker.worker_id;
  dialog.returnValue = "";
  dialog.showModal();
}

$("cancel-dialog").addEventListener("close", () => {
  const dialog = $("cancel-dialog");
  if (dialog.returnValue === "cancel") endWorker("cancel");
  else $("wk-cancel").focus();
});

// ------------------------------------------------------------------------------------------------ transcript

const lastPageStart = (total, limit) => Math.floor(Math.max(0, total - 1) / limit) * limit;

async function loadTranscript(start) {
  const worker = state.worker;
  if (!worker || worker.placeholder) return;
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
  const items = page.items.map((item) => {
    const content = String(item.content ?? "");
    const body = h("div", { class: "tx-content" }, content);
    const li = h("li", { class: `tx-item tx-${token(item.role)}`, dataset: { sequence: String(item.sequence) } },
      h("div", { class: "tx-head" }, h("span", { class: "seq" }, `${item.sequence}`), " ", h("span", { class: "role" }, item.role)),
      body);
    collapseIfLong(body, content);
    return li;
  });
  if (!items.length) items.push(h("li", { class: "muted pad-s" }, page.total_items ? "Nothing on this page." : "No transcript yet."));
  $("transcript").replaceChildren(...items);
  renderTranscriptPager();
}

/** "first–last of total" and the pager buttons, from the page on screen and what the worker says now. */
function renderTranscriptPager() {
  const page = state.tx.page;
  if (!page) return;
  const total = Math.max(page.total_items, state.worker?.transcript_len || 0);
  const first = page.items.length ? page.start + 1 : 0;
  const last = page.start + page.items.length;
  $("tx-range").textContent = page.items.length ? `${first}–${last} of ${total}` : `0 of ${total}`;
  $("tx-first").disabled = $("tx-prev").disabled = page.start <= 0;
  $("tx-next").disabled = $("tx-last").disabled = last >= total;
}

/** New transcript entries: a reader on the last page follows along; otherwise only the range and pager change. */
function transcriptGrew() {
  if (!state.tx.page) return;
  renderTranscriptPager();
  clearTimeout(state.tx.timer);
  if (!state.tx.follow) return;
  state.tx.timer = setTimeout(() => {
    loadTranscript(lastPageStart(state.worker?.transcript_len || 0, Number($("tx-limit").value)));
  }, 250);
}

// ------------------------------------------------------------------------------------------------ routing

function showView(name) {
  for (const view of ["empty", "notfound", "runtime", "worker"]) $(`view-${view}`).hidden = view !== name;
}

/** One clear "not found" page, with the way back and no forms. */
function showNotFound({ rid = null, wid = null, code = null } = {}) {
  closeWorker();
  showView("notfound");
  const runtime = rid ? state.runtimes.get(rid) : null;
  const back = $("notfound-back");
  if (wid && runtime && code !== "runtime_not_found") {
    $("notfound-title").textContent = "Worker not found";
    $("notfound-text").textContent = `${runtime.display_name} (${rid}) has no worker ${wid}. It may have been removed.`;
    back.textContent = `Back to ${runtime.display_name}`;
    back.href = routeHash(rid);
  } else if (rid) {
    $("notfound-title").textContent = "Runtime not found";
    $("notfound-text").textContent = `There is no runtime ${rid}, or you may not see it.`;
    back.textContent = "Back to the console";
    back.href = "#/";
  } else {
    $("notfound-title").textContent = "Not found";
    $("notfound-text").textContent = "There is nothing at this address.";
    back.textContent = "Back to the console";
    back.href = "#/";
  }
  placeFocus();
}

/** After a page change, focus goes to the new page's heading unless it is already somewhere visible. */
function placeFocus(force = false) {
  // A page load starts at the top, as any page does (the skip link first); only later changes move focus.
  if (!state.routed) {
    state.routed = true;
    return;
  }
  const active = document.activeElement;
  const visible = active && active !== document.body && active.checkVisibility?.({ visibilityProperty: true });
  if (!force && visible) return;
  const heading = document.querySelector(".main > section:not([hidden]) h1");
  heading?.focus({ preventScroll: true });
}

/** A runtime missing from the list: brand new (show it) or not there at all (say so). */
async function confirmRuntime(next) {
  let runtime;
  try {
    runtime = await api(urls.runtime(next.rid));
  } catch (exc) {
    if (state.route !== next) return;
    const error = errorOf(exc);
    if (NOT_FOUND_CODES.has(error.code)) showNotFound({ rid: next.rid });
    else showError($("runtime-error"), error);
    return;
  }
  if (state.route !== next) return;
  state.order.push(next.rid);
  state.runtimes.set(next.rid, runtime);
  route();
}

function route() {
  const next = parseRoute();
  const previous = state.route;
  state.route = next;
  const fromDrawer = closeDrawer();
  if (next.bad) {
    showNotFound();
    renderSidebar();
    return;
  }
  if (!next.rid) {
    closeWorker();
    showView("empty");
    renderSidebar();
    placeFocus(fromDrawer);
    return;
  }
  if (state.listed && !state.runtimes.has(next.rid)) {
    // Not in the list: no runtime page (and no form) until the runtime's own URL says it exists.
    closeWorker();
    showView("runtime");
    renderRuntimeView();
    renderSidebar();
    confirmRuntime(next);
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
  placeFocus(fromDrawer);
}

// ------------------------------------------------------------------------------------------------ drawer

// While the drawer is open the page behind it is inert: Tab stays in the drawer (and its toggle).
function openDrawer() {
  app.classList.add("nav-open");
  $("nav-toggle").setAttribute("aria-expanded", "true");
  $("nav-backdrop").hidden = false;
  $("main").inert = true;
  const sidebar = $("sidebar");
  (sidebar.querySelector(".runtime-item.selected .runtime-link") || sidebar.querySelector(".runtime-link")
    || $("runtimes-refresh")).focus();
}

/** Close the drawer; true when it was open. */
function closeDrawer({ restoreFocus = false } = {}) {
  if (!app.classList.contains("nav-open")) return false;
  app.classList.remove("nav-open");
  $("nav-toggle").setAttribute("aria-expanded", "false");
  $("nav-backdrop").hidden = true;
  $("main").inert = false;
  if (restoreFocus) $("nav-toggle").focus();
  return true;
}

$("nav-toggle").addEventListener("click", () => {
  if (app.classList.contains("nav-open")) closeDrawer({ restoreFocus: true });
  else openDrawer();
});
$("nav-backdrop").addEventListener("click", () => closeDrawer({ restoreFocus: true }));
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && app.classList.contains("nav-open")) closeDrawer({ restoreFocus: true });
});
// Following a link to the page already shown fires no hashchange: the drawer closes anyway.
$("sidebar").addEventListener("click", (event) => {
  const link = event.target.closest("a");
  if (link && link.hash === location.hash && closeDrawer()) placeFocus(true);
});

// ------------------------------------------------------------------------------------------------ polling

/** Keep the sidebar, the runtime page and the worker lists current without a Reload. */
function pollSelected() {
  const rid = state.route.rid;
  if (!rid || document.hidden || !state.runtimes.has(rid)) return;
  refreshRuntime(rid);
  loadWorkers(rid);
}

setInterval(() => {
  if (!document.hidden) loadRuntimes();
}, RUNTIMES_POLL_MS);
setInterval(pollSelected, SELECTED_POLL_MS);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  loadRuntimes();
  pollSelected();
});

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
$("input-text").addEventListener("input", () => {
  if ($("input-text").value.trim()) showHint(null);
});
$("wk-stop").addEventListener("click", () => endWorker("stop"));
$("wk-cancel").addEventListener("click", confirmCancel);
$("conn-retry").addEventListener("click", () => {
  if (!state.stream) return;
  showError($("worker-error"), null);
  state.stream.retryNow();
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

loadRuntimes().then(route);
