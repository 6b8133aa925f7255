// The service's web console: the jobs table (/ui/), a job's page (/ui/jobs/<id>) and the submit
// page (/ui/submit), drawn from the REST API with the tab's bearer token. No build step, no
// library: the DOM is built with createElement and textContent only (nothing the API returns is
// ever parsed as HTML), charts are SVG, pictures are fetched with the token and shown as blobs.
"use strict";

const TOKEN_KEY = "simclr-api-token";
const POLL_MS = 2000;
const CHART_POINTS = 1000; // the server downsamples each metric to this many points
const LOG_LINES = 400;
const ANSI_ESCAPES = /\x1b\[[0-9;]*[A-Za-z]/g; // Ray colours its workers' prefixes
const FIRST_CURVES = ["loss", "lr", "images_per_s", "knn_top1"];
const HIDDEN_CURVES = new Set(["bf16", "bf16_speedup", "total_steps"]);
const STATUSES = document.body.dataset.statuses.split(",");
const TERMINAL = new Set(document.body.dataset.terminal.split(","));

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `the API answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

// -- the API --------------------------------------------------------------------------------

async function api(path, { method = "GET", json, headers = {} } = {}) {
  const sent = new Headers(headers);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) sent.set("Authorization", `Bearer ${token}`);
  let body;
  if (json !== undefined) {
    sent.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers: sent, body, credentials: "omit", cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  return response;
}

async function getJson(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// -- building the page ----------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

const main = () => document.getElementById("main");

function show(...nodes) {
  main().replaceChildren(...nodes.filter((node) => node));
}

function table(headings, rows, empty = "none yet") {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el("table", {}, el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function statusBadge(status) {
  return el("span", { class: `status ${status}`, "data-status": status }, status);
}

function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function age(iso) {
  return `${duration(Math.max(0, (Date.now() - Date.parse(iso)) / 1000))} ago`;
}

function number(value, digits = 4) {
  if (typeof value !== "number") return value === undefined || value === null ? "" : String(value);
  return Math.abs(value) >= 1000 ? value.toFixed(0) : Number(value.toPrecision(digits)).toString();
}

function progressCell(job) {
  const p = job.progress || {};
  if (p.step === null || p.step === undefined) return el("td", { class: "muted" }, "—");
  if (!p.total_steps) return el("td", { class: "num" }, `step ${p.step}`);
  const fraction = Math.min(1, p.step / p.total_steps);
  const bar = el("span", { class: "bar" }, el("span"));
  bar.firstChild.style.width = `${(100 * fraction).toFixed(1)}%`;
  const eta = job.status === "running" && p.eta_seconds != null ? ` · ${duration(p.eta_seconds)} left` : "";
  return el("td", { class: "num" }, bar, `${p.step} / ${p.total_steps}${eta}`);
}

function bestScore(best) {
  return best ? `${best.top1.toFixed(2)} % (${best.protocol}${best.dataset ? `, ${best.dataset}` : ""})` : "";
}

// -- polling that stops when the page is left or the job has ended -----------------------------

function every(ms, work) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    try {
      if ((await work()) === false) stopped = true;
    } catch (error) {
      if (error instanceof Unauthorized) {
        stopped = true;
        signIn();
        return;
      }
      console.warn("refresh failed", error);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// -- sign-in ----------------------------------------------------------------------------------

function signIn(message) {
  const input = el("input", { type: "password", id: "token", autocomplete: "off", placeholder: "SIMCLR_API_TOKEN" });
  const form = el("form", { class: "signin", id: "sign-in" },
    el("h1", {}, "Sign in"),
    el("p", {}, "This service asks for its API token. It is kept in this tab only (sessionStorage) and sent as a bearer header."),
    message ? el("p", { class: "error" }, message) : null,
    el("label", { for: "token" }, "API token"), input,
    el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    window.location.reload();
  });
  show(form);
  input.focus();
}

// -- the jobs table -----------------------------------------------------------------------------

async function jobsPage() {
  const query = new URLSearchParams(window.location.search);
  const kinds = await getJson("/v1/kinds");
  const select = (name, values) => {
    const node = el("select", { id: `filter-${name}` }, el("option", { value: "" }, `any ${name}`),
      values.map((v) => el("option", { value: v, selected: v === query.get(name) }, v)));
    node.addEventListener("change", () => {
      const next = new URLSearchParams(window.location.search);
      if (node.value) next.set(name, node.value); else next.delete(name);
      next.delete("cursor");
      window.location.search = next.toString();
    });
    return node;
  };
  const body = el("tbody", { id: "jobs" });
  const older = el("button", { type: "button", id: "older", disabled: true }, "Older →");
  const newer = el("button", { type: "button", id: "newer", disabled: !query.get("cursor") }, "← Newest");
  newer.addEventListener("click", () => { query.delete("cursor"); window.location.search = query.toString(); });
  const count = el("span", { class: "muted", id: "count" });
  show(el("h1", {}, "Jobs"),
    el("div", { class: "toolbar" }, select("status", STATUSES), select("kind", kinds.map((k) => k.name)),
      newer, older, count, el("a", { href: "/ui/submit" }, "Submit a job")),
    el("table", {}, el("thead", {}, el("tr", {}, ["Name", "Kind", "Status", "Progress", "Loss",
      "Best evaluation", "Workers", "Age"].map((h) => el("th", {}, h)))), body));
  const params = new URLSearchParams({ limit: "50" });
  for (const name of ["status", "kind", "cursor"]) if (query.get(name)) params.set(name, query.get(name));
  every(POLL_MS, async () => {
    const page = await getJson(`/v1/jobs?${params}`);
    body.replaceChildren(...page.items.map((job) => el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, job.name), el("div", { class: "muted" }, job.id)),
      el("td", {}, job.kind),
      el("td", {}, statusBadge(job.status)),
      progressCell(job),
      el("td", { class: "num" }, number(job.progress && job.progress.loss)),
      el("td", { class: "num" }, bestScore(job.progress && job.progress.best)),
      el("td", { class: "num" }, job.resources.num_workers ?? 1),
      el("td", { title: job.created_at }, age(job.created_at)))));
    if (!page.items.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no jobs")));
    count.textContent = `${page.items.length} shown${page.next_cursor ? ", more older" : ""}`;
    older.disabled = !page.next_cursor;
    older.onclick = () => { query.set("cursor", page.next_cursor); window.location.search = query.toString(); };
  });
}

// -- a job's page -----------------------------------------------------------------------------

function lineChart(name, points) {
  const width = 460, height = 190, left = 62, right = 10, top = 10, bottom = 24;
  const finite = points.filter((p) => typeof p.value === "number");
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": name });
  const figure = el("div", { class: "chart", "data-metric": name, "data-points": String(finite.length) },
    el("h3", {}, name), box);
  if (!finite.length) return figure;
  const steps = finite.map((p) => p.step), values = finite.map((p) => p.value);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  let [y0, y1] = [Math.min(...values), Math.max(...values)];
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const x = (s) => left + (x1 === x0 ? 0.5 : (s - x0) / (x1 - x0)) * (width - left - right);
  const y = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
  box.append(
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, number(y1, 3)),
    svg("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, number(y0, 3)),
    svg("text", { x: left, y: height - 6 }, `step ${x0}`),
    svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, `step ${x1}`),
    svg("polyline", { points: finite.map((p) => `${x(p.step).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ") }),
  );
  if (finite.length <= 60) { // few points (an evaluation every 25 steps): each one shows
    for (const p of finite) box.append(svg("circle", { cx: x(p.step).toFixed(1), cy: y(p.value).toFixed(1), r: 2.5 }));
  }
  const last = finite[finite.length - 1];
  figure.querySelector("h3").append(el("span", { class: "muted" }, `  ${number(last.value)} at step ${last.step}`));
  return figure;
}

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new ApiError(response.status, null);
  return URL.createObjectURL(await response.blob());
}

async function download(path, filename) {
  const response = await api(path);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

function problemBox(error) {
  if (error instanceof ApiError) {
    const items = ((error.body && error.body.errors) || []).map((e) => el("li", {}, `${e.field}: ${e.message}`));
    return el("div", { class: "problem", role: "alert" }, error.message, items.length ? el("ul", {}, items) : null);
  }
  return el("div", { class: "problem", role: "alert" }, String(error.message || error));
}

async function jobPage(jobId) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  let job;
  try {
    job = await getJson(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return show(el("h1", {}, "No such job"), problemBox(error));
    throw error;
  }
  const kinds = await getJson("/v1/kinds");
  const role = (kinds.find((k) => k.name === job.kind) || {}).role;
  const protocols = kinds.filter((k) => k.role === "evaluate").map((k) => k.protocol);
  const header = el("div", { id: "job-header" });
  const notice = el("div", { id: "notice" });
  const charts = el("div", { class: "charts", id: "charts" });
  const attempts = el("div", { id: "attempts" });
  const checkpoints = el("div", { id: "checkpoints" });
  const artifacts = el("div", { class: "artifacts", id: "artifacts" });
  const log = el("pre", { class: "log", id: "log" });
  show(header, notice, el("h2", {}, "Curves"), charts, el("h2", {}, "Checkpoints"), checkpoints,
    el("h2", {}, "Artifacts"), artifacts, el("h2", {}, "Attempts"), attempts,
    el("h2", {}, "Log (latest attempt)"), log,
    el("h2", {}, "Config"), el("pre", { class: "log" }, JSON.stringify(job.config, null, 2)));

  const act = async (verb) => {
    if (!window.confirm(`${verb === "cancel" ? "Cancel" : "Retry"} job ${job.name} (${job.id})?`)) return;
    try {
      await getJson(`${path}/${verb}`, { method: "POST" });
      follow(); // a retried job runs again: the page follows it, whether or not it still did
    } catch (error) {
      if (error instanceof Unauthorized) return signIn();
      notice.replaceChildren(problemBox(error));
    }
  };
  const drawHeader = () => {
    const p = job.progress || {};
    header.replaceChildren(...[
      el("h1", {}, job.name, " ", statusBadge(job.status)),
      el("p", { class: "muted" }, `${job.id} · ${job.kind} · ${job.resources.num_workers ?? 1} worker(s) · created ${age(job.created_at)}`),
      el("table", {}, el("tbody", {}, el("tr", {}, el("th", {}, "Progress"), progressCell(job),
        el("th", {}, "Loss"), el("td", { class: "num" }, number(p.loss)),
        el("th", {}, "Best evaluation"), el("td", {}, bestScore(p.best))))),
      job.error ? el("pre", { class: "problem", id: "job-error" }, job.error) : null,
      el("div", { class: "toolbar" },
        ["queued", "running"].includes(job.status)
          ? el("button", { type: "button", class: "danger", id: "cancel", onclick: () => act("cancel") }, "Cancel") : null,
        ["failed", "cancelled"].includes(job.status)
          ? el("button", { type: "button", id: "retry", onclick: () => act("retry") }, "Retry") : null),
    ].filter((node) => node));
  };

  // each metric's history: cut down on the server once, then only the points after the newest
  // step shown; read whole again when the appended points have doubled it
  let series = null, newestStep = -1;
  const drawCharts = async () => {
    const appended = series !== null;
    const points = appended
      ? await getJson(`${path}/metrics?after_step=${newestStep}`)
      : await getJson(`${path}/metrics?max_points=${CHART_POINTS}`);
    if (!appended) series = new Map();
    for (const point of points) {
      newestStep = Math.max(newestStep, point.step);
      if (HIDDEN_CURVES.has(point.name)) continue;
      if (!series.has(point.name)) series.set(point.name, []);
      series.get(point.name).push(point);
    }
    if (appended && !points.length) return;
    const names = [...FIRST_CURVES.filter((n) => series.has(n)), ...[...series.keys()].filter((n) => !FIRST_CURVES.includes(n)).sort()];
    charts.replaceChildren(...(names.length ? names.map((n) => lineChart(n, series.get(n))) : [el("p", { class: "muted" }, "no metrics reported yet")]));
    if ([...series.values()].some((s) => s.length > 2 * CHART_POINTS)) series = null;
  };

  const drawAttempts = () => {
    attempts.replaceChildren(table(["#", "State", "Started", "Finished", "Ray", "Message"], job.attempts.map((a) => el("tr", {},
      el("td", {}, a.number), el("td", {}, a.state), el("td", {}, a.started_at ? age(a.started_at) : ""),
      el("td", {}, a.finished_at ? age(a.finished_at) : ""),
      el("td", {}, a.dashboard_url ? el("a", { href: a.dashboard_url, target: "_blank", rel: "noopener noreferrer" }, a.submission_id) : a.submission_id),
      el("td", {}, el("span", { class: "muted" }, (a.message || "").slice(0, 300)))))));
  };

  const evaluate = async (checkpoint, protocol, button) => {
    button.disabled = true;
    try {
      const evaluation = await getJson("/v1/evaluations", { method: "POST", json: { job_id: job.id, checkpoint, protocol } });
      notice.replaceChildren(el("p", { class: "muted" }, `evaluation ${evaluation.id} submitted (${protocol} of ${checkpoint})`));
      follow(); // until the evaluation has its score
    } catch (error) {
      if (error instanceof Unauthorized) return signIn();
      notice.replaceChildren(problemBox(error));
    } finally {
      button.disabled = false;
    }
  };

  let evaluationsLive = false;
  const drawCheckpoints = async () => {
    const [reported, evaluations] = await Promise.all([getJson(`${path}/checkpoints`),
      role === "pretrain" ? getJson(`${path}/evaluations`) : Promise.resolve([])]);
    evaluationsLive = evaluations.some((e) => !TERMINAL.has(e.status));
    const rows = reported.slice().reverse().map((c) => {
      const scores = evaluations.filter((e) => e.checkpoint === c.name).map((e) =>
        el("div", {}, `${e.protocol}: `, e.result ? `${e.result.top1.toFixed(2)} %` : statusBadge(e.status)));
      const actions = [];
      if (role === "pretrain" && c.available) {
        const protocol = el("select", { "aria-label": "protocol" }, protocols.map((p) => el("option", { value: p }, p)));
        const go = el("button", { type: "button", class: "evaluate" }, "Evaluate");
        go.addEventListener("click", () => evaluate(c.name, protocol.value, go));
        const format = el("select", { "aria-label": "format" }, ["safetensors", "torchvision", "torchscript", "card"].map((f) => el("option", { value: f }, f)));
        const out = el("button", { type: "button", class: "export" }, "Export");
        out.addEventListener("click", () => download(`${path}/checkpoints/${encodeURIComponent(c.name)}/export?format=${format.value}`,
          `${job.id}-${c.name}.${{ card: "json", torchscript: "pt", torchvision: "pth" }[format.value] || format.value}`)
          .catch((error) => error instanceof Unauthorized ? signIn() : notice.replaceChildren(problemBox(error))));
        actions.push(protocol, go, " ", format, out);
      }
      return el("tr", { "data-checkpoint": c.name }, el("td", {}, c.name), el("td", { class: "num" }, c.step),
        el("td", { class: "num" }, c.epoch), el("td", {}, c.available ? "kept" : "pruned"), el("td", {}, scores), el("td", {}, actions));
    });
    checkpoints.replaceChildren(table(["Name", "Step", "Epoch", "Kept", "Evaluations", ""], rows));
  };

  const shown = new Map(); // artifact name -> created_at of the picture shown
  const drawArtifacts = async () => {
    const listed = await getJson(`${path}/artifacts`);
    if (listed.length) artifacts.querySelector(":scope > p.muted")?.remove();
    for (const a of listed) {
      if (shown.get(a.name) === a.created_at) continue;
      let figure = artifacts.querySelector(`figure[data-artifact="${CSS.escape(a.name)}"]`);
      if (!figure) {
        figure = el("figure", { "data-artifact": a.name });
        artifacts.append(figure);
      }
      if (a.content_type.startsWith("image/")) {
        const img = el("img", { alt: a.name, src: await blobUrl(a.url) });
        const old = figure.querySelector("img");
        if (old) URL.revokeObjectURL(old.src);
        figure.replaceChildren(img, el("figcaption", { class: "muted" }, a.name));
      } else {
        const link = el("a", { href: "#" }, `${a.name} (${a.size} bytes)`);
        link.addEventListener("click", (event) => { event.preventDefault(); download(a.url, a.name); });
        figure.replaceChildren(link);
      }
      shown.set(a.name, a.created_at); // only once shown: a failed fetch is tried again
    }
    if (!artifacts.children.length) artifacts.replaceChildren(el("p", { class: "muted" }, "none yet"));
  };

  let logAttempt = null, logOffset = 0, logTail = "";
  const drawLog = async () => {
    const attempt = job.attempts.length ? job.attempts[job.attempts.length - 1].number : null;
    if (attempt === null) return;
    if (attempt !== logAttempt) { logAttempt = attempt; logOffset = 0; logTail = ""; }
    for (;;) { // read up to the end of what the service holds, then follow from there
      const page = await getJson(`${path}/logs?attempt=${attempt}&offset=${logOffset}&limit=262144`);
      // a page may end inside a line: the tail is text, cut to whole lines only at its start
      logTail = (logTail + page.text).split("\n").slice(-LOG_LINES).join("\n");
      logOffset = page.next_offset;
      if (!page.text.length || page.text.length < 262144) break;
    }
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = logTail.replace(ANSI_ESCAPES, "") || "(empty)";
    if (atBottom) log.scrollTop = log.scrollHeight; // following the log, unless scrolled up
  };

  // polled until the job and its evaluations have ended, then once more
  const refresh = async () => {
    const wasLive = !TERMINAL.has(job.status) || evaluationsLive;
    job = await getJson(path);
    drawHeader();
    drawAttempts();
    await Promise.all([drawCharts(), drawCheckpoints(), drawArtifacts(), drawLog()]);
    return wasLive || !TERMINAL.has(job.status) || evaluationsLive;
  };
  let stop = () => {};
  const follow = () => { stop(); stop = every(POLL_MS, refresh); };
  drawHeader();
  follow();
}

// -- the submit page ------------------------------------------------------------------------------

function leaves(value, prefix, out = []) {
  if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
    for (const [key, child] of Object.entries(value)) leaves(child, `${prefix}.${key}`, out);
  } else {
    out.push([prefix, value]);
  }
  return out;
}

function setPath(target, path, value) {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) node = node[key] ??= {};
  node[keys[keys.length - 1]] = value;
}

function fieldRow(field, initial, label = field) {
  const id = `f-${field}`;
  const input = typeof initial === "boolean"
    ? el("input", { type: "checkbox", id, checked: initial })
    : el("input", { type: "text", id, value: initial === null ? "" : typeof initial === "object" ? JSON.stringify(initial) : String(initial),
      placeholder: initial === null ? "null" : undefined, spellcheck: "false" });
  return el("div", { class: "field", "data-field": field }, el("label", { for: id }, label), input,
    el("span", { class: "field-error", "data-error-for": field }));
}

// The JSON types the config schema allows at ``path`` (a list of keys): through $refs, and into
// a union's first member with properties, as the defaults are built (services/kinds.py).
function schemaTypes(schema, path) {
  const defs = schema.$defs || {};
  const resolve = (node) => (node && node.$ref ? defs[node.$ref.split("/").pop()] : node) || {};
  const members = (node) => (node.anyOf || node.oneOf || [node]).map(resolve);
  let node = resolve(schema);
  for (const key of path) {
    const holder = members(node).find((member) => member.properties) || {};
    node = resolve((holder.properties || {})[key]);
  }
  return new Set(members(node).map((member) => member.type).filter(Boolean));
}

// The value a row holds, read as its field's type; undefined: not JSON where JSON is due.
function readRow(row, initial, types = new Set()) {
  const input = row.querySelector("input");
  if (input.type === "checkbox") return input.checked;
  const raw = input.value.trim();
  if (typeof initial === "number") return raw === "" ? null : Number.isFinite(Number(raw)) ? Number(raw) : raw;
  if (typeof initial === "string") return input.value;
  if (initial === null && raw === "") return null;
  if ([...types].every((type) => type === "string" || type === "null") && types.size) return input.value;
  try {
    return JSON.parse(raw);
  } catch {
    return initial === null ? raw : undefined; // a null default of several types: a string
  }
}

// An error beside the row of the field it names. An error about a whole (sub-)config, or from a
// union's alternatives (their locations hold the member: config.data.ToyDataConfig.name, or
// config.data.function-after[..., DatasetConfig].root), is not any one row's: false, for the
// box above the form.
function markError(form, field, message) {
  if (field.split(".").some((part) => /^[A-Z]\w*$|^function-|\[/.test(part))) return false;
  const row = [...form.querySelectorAll(".field")].find((r) => r.dataset.field === field);
  if (!row) return false;
  row.classList.add("invalid");
  const slot = row.querySelector(".field-error");
  slot.textContent = slot.textContent ? `${slot.textContent}; ${message}` : message;
  return true;
}

async function submitPage() {
  const kinds = (await getJson("/v1/kinds")).filter((k) => k.role !== "evaluate");
  const query = new URLSearchParams(window.location.search);
  const chosen = kinds.find((k) => k.name === query.get("kind")) || kinds[0];
  const kind = el("select", { id: "f-kind" }, kinds.map((k) => el("option", { value: k.name, selected: k === chosen }, `${k.name} (${k.role})`)));
  kind.addEventListener("change", () => { window.location.search = `kind=${encodeURIComponent(kind.value)}`; });
  const defaults = leaves(chosen.defaults, "config");
  const general = el("div", { id: "general-errors" });
  const resources = [["resources.num_workers", 1, "workers"], ["resources.cpus_per_worker", 1, "CPUs per worker"],
    ["resources.use_gpu", false, "use GPUs"], ["resources.gpus_per_worker", 1, "GPUs per worker"]];
  const form = el("form", { class: "submit", id: "submit-form", novalidate: true },
    el("fieldset", {}, el("legend", {}, "Job"),
      el("div", { class: "field", "data-field": "kind" }, el("label", { for: "f-kind" }, "kind"), kind, el("span", { class: "field-error" })),
      fieldRow("name", "", "name"), fieldRow("idempotency_key", "", "Idempotency-Key (optional)"),
      resources.map(([field, initial, label]) => fieldRow(field, initial, label))),
    el("fieldset", {}, el("legend", {}, `config (${chosen.name}: its defaults; change what you need, the rest stays the default)`),
      defaults.map(([field, initial]) => fieldRow(field, initial))),
    el("button", { type: "submit", id: "submit" }, "Submit"));
  show(el("h1", {}, "Submit a job"), general, form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    general.replaceChildren();
    for (const row of form.querySelectorAll(".field")) {
      row.classList.remove("invalid");
      row.querySelector(".field-error").textContent = "";
    }
    const config = {};
    let unreadable = false;
    // what differs from the defaults, and every required sub-config whole (it has no default)
    const required = new Set(chosen.config_schema.required || []);
    for (const [field, initial] of defaults) {
      const path = field.split(".").slice(1);
      const row = form.querySelector(`[data-field="${CSS.escape(field)}"]`);
      const value = readRow(row, initial, schemaTypes(chosen.config_schema, path));
      if (value === undefined) unreadable = markError(form, field, "not valid JSON") || true;
      else if (required.has(path[0]) || JSON.stringify(value) !== JSON.stringify(initial)) setPath(config, path.join("."), value);
    }
    if (unreadable) return;
    const body = { kind: kind.value, config, resources: {} };
    for (const [field, initial] of resources) {
      setPath(body, field, readRow(form.querySelector(`[data-field="${field}"]`), initial));
    }
    const name = form.querySelector("#f-name").value.trim();
    if (name) body.name = name;
    const key = form.querySelector("#f-idempotency_key").value.trim();
    const button = form.querySelector("#submit");
    button.disabled = true;
    try {
      const job = await getJson("/v1/jobs", { method: "POST", json: body, headers: key ? { "Idempotency-Key": key } : {} });
      window.location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
    } catch (error) {
      if (error instanceof Unauthorized) return signIn();
      const errors = (error.body && error.body.errors) || [];
      const unplaced = errors.filter((e) => !markError(form, e.field, e.message));
      if (!errors.length || unplaced.length) {
        general.replaceChildren(problemBox(new ApiError(error.status, { detail: error.message, errors: unplaced })));
      }
    } finally {
      button.disabled = false;
    }
  });
}

// -- routing ------------------------------------------------------------------------------------

async function route() {
  const signOut = document.getElementById("sign-out");
  signOut.hidden = !sessionStorage.getItem(TOKEN_KEY);
  signOut.addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); window.location.reload(); });
  const path = window.location.pathname;
  try {
    const job = path.match(/^\/ui\/jobs\/([^/]+)$/);
    if (job) await jobPage(decodeURIComponent(job[1]));
    else if (path === "/ui/submit") await submitPage();
    else await jobsPage();
  } catch (error) {
    if (error instanceof Unauthorized) {
      signIn(sessionStorage.getItem(TOKEN_KEY) ? "The service refused this token." : undefined);
    } else {
      show(el("h1", {}, "Something went wrong"), problemBox(error));
    }
  }
}

route();
