// The operator page. Everything it shows comes from /v1/* with the operator's token, which is
// kept in sessionStorage and sent only as an `Authorization` header: never in a URL (so the
// event stream is read with fetch(), not EventSource, and images are fetched as blobs).
// Data is only ever written with textContent / append(string), never parsed as HTML.

const TOKEN_KEY = "imagejobs.api-token";
const JOB_ID = /^job_[0-9A-HJKMNP-TV-Z]{26}$/;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const AUDIT_RECHECK_MS = 3000; // `pending` lasts a few seconds at most (CONTRACT.md, Audit chain)
const WEBHOOK_RECHECK_MS = 5000;

const $ = (id) => document.getElementById(id);

class AuthRequired extends Error {}

// --- the API ---------------------------------------------------------------------------------

async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const response = await fetch(path, { ...init, headers, cache: "no-store" });
  if (response.status === 401) {
    askForToken(token ? "That token was refused." : "");
    throw new AuthRequired();
  }
  return response;
}

async function apiJson(path, init) {
  const response = await api(path, init);
  const body = await response.json().catch(() => null);
  return { status: response.status, ok: response.ok, body };
}

function errorText(result) {
  const error = result.body && result.body.error;
  return error ? `${error.message} (${error.code})` : `HTTP ${result.status}`;
}

// Background work stops quietly when the token is asked for or the job is left.
function quietly(promise) {
  promise.catch((error) => {
    if (!(error instanceof AuthRequired) && error.name !== "AbortError") notify(String(error));
  });
}

// --- small DOM helpers -----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function timeEl(iso) {
  if (!iso) return el("span", { class: "muted" }, "—");
  return el("time", { datetime: iso, title: iso }, new Date(iso).toLocaleString());
}

const statusEl = (status) => el("span", { class: `status status-${status}` }, status);
const json = (value) => el("pre", { class: "json" }, JSON.stringify(value, null, 2));
const shortHash = (hash) => `${hash.slice(0, 12)}…`;

function notify(text) {
  $("notice").textContent = text;
}

// --- the token -------------------------------------------------------------------------------

function askForToken(error) {
  closeJob();
  $("main").hidden = true;
  $("forget-token").hidden = true;
  $("token-panel").hidden = false;
  $("token-error").textContent = error;
  $("token-input").focus();
}

function useToken(event) {
  event.preventDefault(); // the form is never submitted: its value must not reach a URL
  const input = $("token-input");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  start();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  start();
}

// --- the list --------------------------------------------------------------------------------

const list = { cursor: null, generation: 0 };

async function loadJobs(append = false) {
  const generation = append ? list.generation : ++list.generation;
  const params = new URLSearchParams();
  const form = new FormData($("filters"));
  for (const name of ["provider", "status", "q"]) {
    const value = String(form.get(name) || "").trim();
    if (value) params.set(name, value);
  }
  if (append && list.cursor) params.set("cursor", list.cursor);
  $("jobs-state").textContent = "Loading…";
  const result = await apiJson(`/v1/jobs?${params}`);
  if (generation !== list.generation) return; // a newer search has started
  if (!result.ok) {
    $("jobs-state").textContent = `Could not list jobs: ${errorText(result)}`;
    return;
  }
  const rows = $("jobs-table").tBodies[0];
  if (!append) rows.replaceChildren();
  for (const job of result.body.jobs) rows.append(jobRow(job));
  list.cursor = result.body.next_cursor;
  $("more").hidden = !list.cursor;
  const shown = rows.rows.length;
  $("jobs-state").textContent = shown ? `${shown} job${shown > 1 ? "s" : ""} shown` : "No jobs found.";
  markSelected();
}

function jobRow(job) {
  const link = el("a", { href: `#${job.id}`, class: "mono" }, job.id);
  return el("tr", { "data-job": job.id },
    el("td", {}, link), el("td", {}, job.provider),
    el("td", { class: "row-status" }, statusEl(job.status)), el("td", {}, timeEl(job.created_at)));
}

function markSelected() {
  for (const row of $("jobs-table").tBodies[0].rows) {
    if (view && row.dataset.job === view.id) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
  }
}

// --- one job ---------------------------------------------------------------------------------

let view = null; // the open job: its id, abort signal, rendered events, timers, image URLs

function closeJob() {
  if (!view) return;
  view.abort.abort();
  for (const timer of Object.values(view.timers)) clearTimeout(timer);
  for (const url of view.images.values()) URL.revokeObjectURL(url);
  view = null;
  $("job-body").hidden = true;
  $("job-empty").hidden = false;
  markSelected();
}

function openJob(jobId) {
  closeJob();
  if (!JOB_ID.test(jobId)) return;
  const abort = new AbortController();
  view = { id: jobId, abort, signal: abort.signal, events: new Map(), lastEventId: null,
           timers: {}, images: new Map(), job: null };
  $("job-empty").hidden = true;
  $("job-body").hidden = false;
  $("job-title").textContent = jobId;
  for (const id of ["job-status", "audit", "fields", "outputs", "timeline", "webhooks"]) {
    $(id).replaceChildren();
  }
  $("cancel").hidden = true;
  markSelected();
  const current = view;
  quietly(refreshJob(current).then((found) => {
    if (!found) return;
    quietly(follow(current));
    quietly(refreshWebhooks(current));
    quietly(checkAudit(current));
  }));
}

function later(current, name, ms, task) {
  clearTimeout(current.timers[name]);
  current.timers[name] = setTimeout(() => quietly(task(current)), ms);
}

async function refreshJob(current) {
  const result = await apiJson(`/v1/jobs/${current.id}`, { signal: current.signal });
  if (current !== view) return false;
  if (!result.ok) {
    $("fields").replaceChildren(el("p", { class: "error" }, `Could not read the job: ${errorText(result)}`));
    return false;
  }
  renderJob(current, result.body);
  return true;
}

function renderJob(current, job) {
  current.job = job;
  $("job-status").replaceChildren(statusEl(job.status));
  $("cancel").hidden = TERMINAL.has(job.status);
  $("cancel").disabled = false;
  const fields = [
    ["Status", statusEl(job.status)], ["Provider", job.provider], ["Model", job.model],
    ["Provider job id", job.provider_job_id || "—"],
    ["Created", timeEl(job.created_at)], ["Updated", timeEl(job.updated_at)],
    ["Completed", timeEl(job.completed_at)],
    ["Cancel requested", job.cancel_requested ? "yes" : "no"],
    ["Webhook URL", job.webhook_url || "—"],
    ["Input", json(job.input)], ["Metadata", job.metadata ? json(job.metadata) : "—"],
    ["Error", job.error ? json(job.error) : "—"],
  ];
  if (job.attempts) fields.push(["Attempts", json(job.attempts)]);
  $("fields").replaceChildren(...fields.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  renderOutputs(current, job);
  const cell = document.querySelector(`tr[data-job="${job.id}"] .row-status`);
  if (cell) cell.replaceChildren(statusEl(job.status));
}

function renderOutputs(current, job) {
  if (!job.outputs.length) {
    $("outputs").replaceChildren(el("p", { class: "muted" }, "No outputs."));
    return;
  }
  $("outputs").replaceChildren(...job.outputs.map((output, index) => {
    const facts = [output.content_type, output.width && `${output.width}×${output.height}`,
                   output.bytes && `${output.bytes} bytes`].filter(Boolean).join(", ");
    const caption = el("figcaption", {}, `Output ${index + 1}${facts ? ` (${facts})` : ""}`);
    if (output.sha256) caption.append(el("br"), el("code", { title: output.sha256 }, `sha256 ${shortHash(output.sha256)}`));
    const figure = el("figure", { class: "output" });
    // Only this service's own paths are fetched: the token must go nowhere else.
    if (output.archived_url && output.archived_url.startsWith("/v1/")) {
      const img = el("img", { alt: `Output ${index + 1} of ${job.id}` });
      figure.append(img);
      quietly(showImage(current, img, output.archived_url));
    } else {
      const safe = /^https?:\/\//i.test(output.url);
      caption.append(el("br"), safe
        ? el("a", { href: output.url, rel: "noopener noreferrer", target: "_blank" }, "provider's URL")
        : el("span", { class: "mono" }, output.url),
      " · ", el("em", {}, "not archived yet"));
    }
    figure.append(caption);
    return figure;
  }));
}

async function showImage(current, img, url) {
  let objectUrl = current.images.get(url);
  if (!objectUrl) {
    const response = await api(url, { signal: current.signal });
    if (!response.ok) {
      img.replaceWith(el("p", { class: "error" }, `Archived image unavailable (HTTP ${response.status}).`));
      return;
    }
    const blob = await response.blob();
    if (current !== view) return;
    objectUrl = URL.createObjectURL(blob);
    current.images.set(url, objectUrl);
  }
  img.src = objectUrl;
}

// --- the live timeline: server-sent events read with fetch() so the token stays in a header ---

async function follow(current) {
  let retryMs = 1000;
  while (!current.signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (current.lastEventId) headers["Last-Event-ID"] = current.lastEventId;
      const response = await api(`/v1/events/stream?job_id=${current.id}`, { headers, signal: current.signal });
      if (!response.ok) throw new Error(`the event stream answered HTTP ${response.status}`);
      $("stream-state").textContent = "(live)";
      for await (const message of serverSentEvents(response.body)) {
        if (message.retry) retryMs = message.retry;
        if (message.id) current.lastEventId = message.id;
        if (message.data) addEvent(current, JSON.parse(message.data));
      }
    } catch (error) {
      if (current.signal.aborted || error instanceof AuthRequired) return;
    }
    $("stream-state").textContent = "(reconnecting…)";
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, retryMs);
      current.signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }
}

// The text/event-stream format: messages end with a blank line; `field: value` lines;
// `:` starts a comment (keep-alive). Yields {id, data, retry} per message.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { id: null, data: [], retry: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") {
        yield { id: message.id, data: message.data.join("\n"), retry: message.retry };
        message = { id: null, data: [], retry: null };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(text);
        else if (field === "id") message.id = text;
        else if (field === "retry" && /^\d+$/.test(text)) message.retry = Number(text);
      }
    }
  }
}

function addEvent(current, event) {
  if (current !== view || current.events.has(event.id)) return;
  const change = event.to_status
    ? el("span", {}, " ", event.from_status ? statusEl(event.from_status) : null, " → ", statusEl(event.to_status))
    : null;
  const item = el("li", { class: "event", "data-seq": event.seq, "data-type": event.type },
    el("div", { class: "event-head" },
      el("span", { class: "seq" }, `#${event.seq}`), " ", timeEl(event.created_at), " ",
      el("strong", {}, event.type), change, " ", el("span", { class: "source" }, event.source)),
    el("span", { class: "hash mono" }));
  if (Object.keys(event.data).length) {
    item.append(el("details", {}, el("summary", {}, "data"), json(event.data)));
  }
  current.events.set(event.id, item);
  showHash(item, event);
  $("timeline").append(item);
  // The job, its deliveries and its verification change with its events: read them again,
  // once per burst of events.
  later(current, "job", 250, refreshJob);
  later(current, "webhooks", 500, refreshWebhooks);
  later(current, "audit", 1000, checkAudit);
}

function showHash(item, event) {
  if (!("hash" in event)) return; // a service without the audit chain
  const span = item.querySelector(".hash");
  span.textContent = event.hash ? `hash ${shortHash(event.hash)}` : "hash pending";
  span.title = event.hash ? `hash ${event.hash}\nprev ${event.prev_hash || "none"}` : "not sealed yet";
}

// --- the audit chain ---------------------------------------------------------------------------

async function checkAudit(current) {
  const response = await api(`/v1/jobs/${current.id}/audit`, { signal: current.signal });
  if (current !== view) return;
  const box = $("audit");
  if (response.status === 404) { // the job exists: this service does not verify chains
    box.className = "audit audit-unavailable";
    box.replaceChildren("Audit chain: verification unavailable on this service.");
    return;
  }
  const result = await response.json().catch(() => null);
  if (!response.ok || !result) {
    box.className = "audit audit-unavailable";
    box.replaceChildren(`Audit chain: could not verify (HTTP ${response.status}).`);
    return;
  }
  box.className = `audit audit-${result.status}`;
  box.dataset.status = result.status;
  const counts = `${result.sealed} of ${result.events} events sealed`;
  const lines = {
    verified: [`Audit chain verified (${counts}).`],
    pending: [`Audit chain pending: ${counts}, no failure so far. Checking again shortly…`],
    failed: ["Audit chain FAILED: ", el("strong", {}, result.failure ? result.failure.reason : "unknown reason"),
             result.failure && result.failure.seq ? ` at event #${result.failure.seq}` : "",
             result.failure && result.failure.event_id ? ` (id ${result.failure.event_id})` : ""],
  }[result.status] || [`Audit chain: ${result.status}.`];
  box.replaceChildren(...lines, " ", el("span", { class: "small" }, "checked ", timeEl(result.checked_at)));
  for (const item of current.events.values()) item.classList.remove("tampered");
  if (result.status === "failed" && result.failure && result.failure.event_id) {
    const item = current.events.get(result.failure.event_id);
    if (item) item.classList.add("tampered");
  }
  if (result.status === "pending") later(current, "audit", AUDIT_RECHECK_MS, checkAudit);
  await refreshHashes(current);
}

async function refreshHashes(current) {
  const result = await apiJson(`/v1/jobs/${current.id}/events`, { signal: current.signal });
  if (current !== view || !result.ok) return;
  for (const event of result.body.events) {
    const item = current.events.get(event.id);
    if (item) showHash(item, event);
  }
}

// --- client webhooks -------------------------------------------------------------------------

async function refreshWebhooks(current) {
  const result = await apiJson(`/v1/jobs/${current.id}/webhooks`, { signal: current.signal });
  if (current !== view) return;
  if (!result.ok) {
    $("webhooks").replaceChildren(el("p", { class: "error" }, `Could not read deliveries: ${errorText(result)}`));
    return;
  }
  const deliveries = result.body.deliveries;
  if (!deliveries.length) {
    const why = current.job && current.job.webhook_url ? "No deliveries yet." : "This job has no webhook_url.";
    $("webhooks").replaceChildren(el("p", { class: "muted" }, why));
    return;
  }
  $("webhooks").replaceChildren(...deliveries.map(deliveryEl));
  if (deliveries.some((d) => d.state === "pending")) {
    later(current, "webhooks", WEBHOOK_RECHECK_MS, refreshWebhooks);
  }
}

function deliveryEl(delivery) {
  const attempts = el("tbody", {}, ...delivery.attempts.map((a) => el("tr", {},
    el("td", {}, String(a.attempt)), el("td", {}, timeEl(a.started_at)),
    el("td", {}, a.status_code === null ? "—" : String(a.status_code)),
    el("td", {}, a.duration_ms === null ? "—" : `${Math.round(a.duration_ms)} ms`),
    el("td", {}, a.error || ""))));
  return el("article", { class: "delivery" },
    el("p", {}, el("strong", {}, delivery.type), " ",
      el("span", { class: `status delivery-${delivery.state}` }, delivery.state), " → ",
      el("span", { class: "mono" }, delivery.url)),
    el("p", { class: "small muted" }, `webhook-id ${delivery.webhook_id}`,
      delivery.next_attempt_at ? el("span", {}, " · next attempt ", timeEl(delivery.next_attempt_at)) : null,
      delivery.last_error ? ` · last error: ${delivery.last_error}` : null),
    delivery.attempts.length
      ? el("table", { class: "attempts" },
          el("thead", {}, el("tr", {}, ...["#", "Started", "HTTP", "Took", "Error"].map((h) => el("th", { scope: "col" }, h)))),
          attempts)
      : el("p", { class: "muted" }, "No attempt yet."));
}

// --- cancel ----------------------------------------------------------------------------------

async function cancelJob() {
  const current = view;
  if (!current || !window.confirm(`Cancel job ${current.id}?`)) return;
  $("cancel").disabled = true;
  const result = await apiJson(`/v1/jobs/${current.id}/cancel`, { method: "POST" });
  if (result.status === 202) {
    notify(`Cancellation of ${current.id} requested; the provider is being asked to stop it.`);
  } else if (result.status === 409 && result.body && result.body.error.code === "job_finished") {
    notify(`Nothing to cancel: ${current.id} had already finished.`);
  } else {
    notify(`Could not cancel ${current.id}: ${errorText(result)}`);
  }
  if (current === view) await refreshJob(current);
}

// --- start -----------------------------------------------------------------------------------

function start() {
  $("token-panel").hidden = true;
  $("main").hidden = false;
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  quietly(loadJobs().then(() => {
    const wanted = location.hash.slice(1);
    if (wanted && (!view || view.id !== wanted)) openJob(wanted);
  }));
}

$("token-form").addEventListener("submit", useToken);
$("forget-token").addEventListener("click", forgetToken);
$("filters").addEventListener("submit", (event) => { event.preventDefault(); quietly(loadJobs()); });
$("filters").addEventListener("change", (event) => {
  if (event.target.tagName === "SELECT") quietly(loadJobs());
});
$("more").addEventListener("click", () => quietly(loadJobs(true)));
$("cancel").addEventListener("click", () => quietly(cancelJob()));
$("verify").addEventListener("click", () => { if (view) quietly(checkAudit(view)); });
window.addEventListener("hashchange", () => openJob(location.hash.slice(1)));
start();
