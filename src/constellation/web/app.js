// Constellation dashboard: one page that talks to this server's /v1 and /api routes with the
// API key kept in sessionStorage. Plain DOM, no framework, nothing loaded from elsewhere.
"use strict";

const KEY_STORE = "constellation.key";
const TABS = ["models", "lineage", "playground", "usage", "statements", "workflows", "admin"];
const state = { key: null, me: null, models: [], loaded: new Set(), streaming: null, usageSeries: null };

const byId = (id) => document.getElementById(id);

/** Build an element; text goes through textContent so API data is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------- formatting ----------

/** Integer nano-USD -> "$0.000000710": exact (BigInt), always 9 decimals so columns align. */
function usd(nanos) {
  if (nanos === null || nanos === undefined) return "—";
  let n = BigInt(Math.round(Number(nanos)));
  const neg = n < 0n;
  if (neg) n = -n;
  const frac = (n % 1000000000n).toString().padStart(9, "0");
  return `${neg ? "-" : ""}$${n / 1000000000n}.${frac}`;
}

function duration(ns) {
  if (ns === null || ns === undefined) return "—";
  const ms = Number(ns) / 1e6;
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;
}

function when(iso) {
  if (!iso) return "—";
  return iso.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$|Z$/, "");
}

const humanTerm = (kind) => kind.replaceAll("_", " ");
const thisMonth = () => new Date().toISOString().slice(0, 7);
const dash = (v) => (v === null || v === undefined || v === "" ? "—" : v);

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function apiError(res) {
  let message = `${res.status} ${res.statusText}`;
  let code = null;
  try {
    const body = await res.json();
    if (body && body.error) ({ message, code } = body.error);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, message, code);
}

/** Call the API with the key; JSON in and out, OpenAI-shaped errors thrown as ApiError. */
async function api(path, { body, method, raw, signal } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method: method || (body !== undefined ? "POST" : "GET"),
    headers,
    body: body !== undefined ? JSON.stringify(body) : undefined,
    signal,
  });
  if (!res.ok) throw await apiError(res);
  return raw ? res : res.json();
}

function showError(err) {
  const box = byId("error");
  box.replaceChildren();
  const what = err instanceof ApiError ? `Error ${err.status}${err.code ? ` (${err.code})` : ""}` : "Error";
  box.append(
    h(
      "div",
      { class: "error-body" },
      h("strong", { text: `${what}: ` }),
      h("span", { class: "error-message", text: err.message || String(err) }),
    ),
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: clearError }, "×"),
  );
  box.hidden = false;
}

function clearError() {
  byId("error").hidden = true;
}

/** Run an async UI action, showing any error in the banner. */
async function guarded(fn) {
  try {
    clearError();
    await fn();
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  }
}

// ---------- tables ----------

function fillTable(id, rows, render, empty = "Nothing yet.") {
  const table = byId(id);
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const cols = table.tHead.rows[0].cells.length;
    body.append(h("tr", { class: "empty" }, h("td", { colspan: cols, text: empty })));
    return;
  }
  for (const row of rows) body.append(render(row));
  labelCells(table);
}

/** Give each cell its column's header as `data-label`: narrow screens stack rows as cards. */
function labelCells(table) {
  const heads = [...table.tHead.rows[0].cells].map((c) => c.textContent);
  for (const row of table.tBodies[0].rows) {
    if (row.cells.length !== heads.length) continue; // detail and empty rows span the table
    [...row.cells].forEach((cell, i) => cell.setAttribute("data-label", heads[i]));
  }
}

const td = (value, cls) => h("td", { class: cls }, value instanceof Node ? value : dash(value));
const money = (nanos) => td(usd(nanos), "num");

// ---------- key and tabs ----------

async function connect(key) {
  state.key = key;
  state.loaded.clear();
  try {
    state.me = await api("/api/me");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
      throw err;
    }
    state.me = null; // a server without /api/me: show every tab and let the API decide
  }
  sessionStorage.setItem(KEY_STORE, key);
  renderWhoami();
  byId("welcome").hidden = true;
  byId("tabs").hidden = false;
  const wanted = location.hash.slice(1);
  const first = TABS.find((t) => !tabButton(t).hidden);
  await selectTab(TABS.includes(wanted) && tabButton(wanted).hidden === false ? wanted : first);
}

function forget() {
  sessionStorage.removeItem(KEY_STORE);
  Object.assign(state, { key: null, me: null, models: [] });
  state.loaded.clear();
  byId("key-input").value = "";
  byId("whoami").hidden = true;
  byId("tabs").hidden = true;
  for (const t of TABS) byId(`tab-${t}`).hidden = true;
  byId("welcome").hidden = false;
  clearError();
}

function renderWhoami() {
  const me = state.me;
  const box = byId("whoami");
  box.replaceChildren();
  if (me) {
    box.append(
      "Signed in as tenant ",
      h("b", { text: me.tenant }),
      ` with key ${me.key_id} · scopes: `,
      ...me.scopes.map((s) => h("span", { class: "badge", text: s })),
    );
  } else {
    box.append("Key set.");
  }
  box.hidden = false;
  // A statement-only key (contributor:<id>) reads that statement and nothing of its tenant's.
  const canTenant = !me || me.admin || me.scopes.includes("inference");
  for (const t of ["models", "lineage", "playground", "usage"]) tabButton(t).hidden = !canTenant;
  const canStatements = !me || me.admin || me.contributors.length > 0;
  tabButton("statements").hidden = !canStatements;
  tabButton("admin").hidden = !(!me || me.admin);
  tabButton("workflows").hidden = !(!me || me.admin); // /api/workflows is the operator's
  const list = byId("statement-contributors");
  list.replaceChildren(...(me ? me.contributors : []).map((c) => h("option", { value: c })));
  if (me && me.contributors.length) byId("statement-contributor").value = me.contributors[0];
}

const tabButton = (name) => document.querySelector(`[data-tab="${name}"]`);

const LOADERS = {
  models: loadModels,
  lineage: () => loadLineage(),
  playground: async () => {
    if (!state.models.length) await loadModels();
  },
  usage: loadUsage,
  statements: async () => {
    if (byId("statement-contributor").value) await loadStatement();
  },
  workflows: () => loadWorkflows(), // workflows.js, loaded after this script
  admin: loadAdmin,
};

async function selectTab(name) {
  for (const t of TABS) {
    byId(`tab-${t}`).hidden = t !== name;
    tabButton(t).setAttribute("aria-selected", String(t === name));
  }
  history.replaceState(null, "", `#${name}`);
  resizeCharts();
  if (!state.loaded.has(name)) {
    state.loaded.add(name);
    await guarded(LOADERS[name]);
  }
}

// ---------- models ----------

async function loadModels() {
  const body = await api("/v1/models");
  state.models = body.data;
  state.loaded.add("models");
  fillTable("models-table", state.models, modelRow, "No models are registered yet.");
  fillModelSelect();
}

function verdict(ext) {
  if (ext.permitted === undefined) return h("span", { class: "muted", text: "—" });
  if (ext.permitted) return h("span", { class: "badge ok", text: "Permitted" });
  return h(
    "div",
    {},
    h("span", { class: "badge bad", text: ext.refusal ? ext.refusal.code : "Refused" }),
    h("div", { class: "refusal", text: ext.refusal ? ext.refusal.message : "" }),
  );
}

function modelRow(m) {
  const ext = m.constellation || {};
  const notices = ext.notices || [];
  const row = h(
    "tr",
    { class: "clickable", tabindex: "0", title: "Show lineage", "data-model": m.id },
    td(h("code", { text: m.id })),
    td(ext.task),
    td(ext.kind),
    td(ext.base),
    td(ext.license),
    td(verdict(ext)),
    td(notices.length ? h("ul", { class: "notices compact" }, notices.map((n) => h("li", { text: n }))) : null),
  );
  const toggle = () => toggleLineage(row, m);
  row.addEventListener("click", toggle);
  row.addEventListener("keydown", (e) => e.key === "Enter" && toggle());
  return row;
}

function toggleLineage(row, m) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("detail")) {
    next.remove();
    return;
  }
  const ext = m.constellation || {};
  const lin = ext.lineage || {};
  const datasets = lin.datasets || [];
  const detail = h(
    "div",
    { class: "lineage" },
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "Author" }),
      h("dd", { text: dash(m.owned_by) }),
      h("dt", { text: "Base model" }),
      h("dd", { text: lin.base ? `${lin.base} (${dash(lin.base_license)})` : "none: this is a base model" }),
      h("dt", { text: "Labels" }),
      h("dd", { text: ext.labels && ext.labels.length ? ext.labels.join(", ") : "—" }),
      h("dt", { text: "Trained on" }),
      h(
        "dd",
        {},
        datasets.length
          ? h(
              "ul",
              {},
              datasets.map((d) =>
                h("li", { text: `${d.name} (${dash(d.license)}), provided by ${dash(d.provider)}, weight ${dash(d.weight)}` }),
              ),
            )
          : "no recorded data sets",
      ),
    ),
    h("button", { type: "button", class: "secondary", onclick: () => tryModel(m.id) }, "Try in Playground"),
  );
  const cols = row.cells.length;
  row.after(h("tr", { class: "detail" }, h("td", { colspan: cols }, detail)));
}

function tryModel(name) {
  byId("play-model").value = name;
  onModelChange();
  selectTab("playground");
}

// ---------- playground ----------

const TASK_UI = {
  embedding: { label: "Texts to embed, one per line", placeholder: "A red bicycle\nQuarterly revenue grew", sampling: false },
  classification: { label: "Texts to classify, one per line", placeholder: "My invoice is wrong\nThe app crashes on start", sampling: false },
  "causal-lm": { label: "Your message", placeholder: "Write a haiku about the sea.", sampling: true },
};

function fillModelSelect() {
  const select = byId("play-model");
  const current = select.value;
  const groups = new Map();
  for (const m of state.models) {
    const task = (m.constellation || {}).task || "other";
    if (!groups.has(task)) groups.set(task, []);
    groups.get(task).push(m);
  }
  select.replaceChildren(
    ...[...groups].map(([task, ms]) =>
      h(
        "optgroup",
        { label: task },
        ms.map((m) =>
          h("option", { value: m.id, text: m.constellation && m.constellation.permitted === false ? `${m.id} (refused)` : m.id }),
        ),
      ),
    ),
  );
  if (current && state.models.some((m) => m.id === current)) select.value = current;
  else if (usable()) select.value = usable().id;
  onModelChange();
}

/** The first model the playground can run that this tenant's declarations permit. */
const usable = () => state.models.find((m) => (m.constellation || {}).permitted !== false && TASK_UI[(m.constellation || {}).task]);

const selectedModel = () => state.models.find((m) => m.id === byId("play-model").value);

function onModelChange() {
  const m = selectedModel();
  const task = m ? (m.constellation || {}).task : null;
  const ui = TASK_UI[task];
  byId("play-task").textContent = task || "";
  byId("play-input-label").textContent = ui ? ui.label : "Input";
  byId("play-input").placeholder = ui ? ui.placeholder : "";
  byId("play-sampling").hidden = !(ui && ui.sampling);
  byId("play-run").disabled = !ui;
  byId("play-status").textContent = m && !ui ? `The playground cannot run '${task}' models.` : "";
}

function playInput() {
  const text = byId("play-input").value.trim() || byId("play-input").placeholder;
  byId("play-input").value = text;
  return text;
}

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

async function runPlayground() {
  if (state.streaming) {
    state.streaming.abort();
    return;
  }
  const m = selectedModel();
  if (!m) throw new Error("pick a model first");
  const task = m.constellation.task;
  const text = playInput();
  byId("play-result").hidden = true;
  byId("play-ext").hidden = true;
  byId("play-status").textContent = "Running…";
  try {
    if (task === "embedding") await runEmbeddings(m.id, lines(text));
    else if (task === "classification") await runClassify(m.id, lines(text));
    else await runChat(m.id, text);
    byId("play-status").textContent = "";
  } catch (err) {
    byId("play-status").textContent = "";
    throw err;
  }
}

function showCurl(path, body) {
  const json = JSON.stringify(body).replaceAll("'", "'\\''");
  byId("play-curl").textContent =
    `curl -s ${location.origin}${path} \\\n  -H "Authorization: Bearer $CONSTELLATION_API_KEY" \\\n` +
    `  -H "Content-Type: application/json" \\\n  -d '${json}'`;
  byId("play-curl-box").hidden = false;
}

function showResult(title, ...content) {
  byId("play-result-title").textContent = title;
  byId("play-output").replaceChildren(...content);
  byId("play-result").hidden = false;
}

async function runEmbeddings(model, inputs) {
  const body = { model, input: inputs };
  showCurl("/v1/embeddings", body);
  const res = await api("/v1/embeddings", { body });
  const dims = res.data.length ? res.data[0].embedding.length : 0;
  const table = h(
    "table",
    { id: "embed-table" },
    h("thead", {}, h("tr", {}, h("th", { text: "Input" }), h("th", { class: "num", text: "Dims" }), h("th", { text: "First values" }))),
    h(
      "tbody",
      {},
      res.data.map((d) =>
        h(
          "tr",
          {},
          td(inputs[d.index]),
          td(String(d.embedding.length), "num"),
          td(h("code", { text: `[${d.embedding.slice(0, 6).map((x) => x.toFixed(4)).join(", ")}, …]` })),
        ),
      ),
    ),
  );
  labelCells(table);
  showResult(`${res.data.length} vector${res.data.length === 1 ? "" : "s"} × ${dims} dimensions`, h("div", { class: "table-wrap" }, table));
  showExtension(res.constellation, res.usage);
}

async function runClassify(model, inputs) {
  const body = { model, input: inputs };
  showCurl("/v1/classify", body);
  const res = await api("/v1/classify", { body });
  const blocks = res.data.map((d) => {
    const probs = Object.entries(d.probs).sort((a, b) => b[1] - a[1]);
    return h(
      "div",
      { class: "classified" },
      h("p", {}, h("q", { text: inputs[d.index] }), " → ", h("b", { class: "label", text: d.label })),
      probs.map(([label, p]) => labelBar(label, p, label === d.label)),
    );
  });
  showResult("Labels", ...blocks);
  showExtension(res.constellation, res.usage);
}

function labelBar(label, p, top) {
  const fill = h("span", { class: `bar-fill${top ? " top" : ""}` });
  fill.style.width = `${(p * 100).toFixed(1)}%`;
  return h(
    "div",
    { class: "bar" },
    h("span", { class: "bar-label", text: label }),
    h("span", { class: "bar-track" }, fill),
    h("span", { class: "bar-value", text: `${(p * 100).toFixed(1)}%` }),
  );
}

function chatBody(model, text) {
  const body = {
    model,
    messages: [{ role: "user", content: text }],
    stream: true,
    stream_options: { include_usage: true },
  };
  const maxTokens = byId("play-max-tokens").value;
  const temperature = byId("play-temperature").value;
  const seed = byId("play-seed").value;
  if (maxTokens) body.max_tokens = Number(maxTokens);
  if (temperature !== "") body.temperature = Number(temperature);
  if (seed !== "") body.seed = Number(seed);
  return body;
}

/** Yield each parsed `data:` payload of an SSE response as it arrives. */
async function* sseEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function runChat(model, text) {
  const body = chatBody(model, text);
  showCurl("/v1/chat/completions", body);
  const answer = h("div", { id: "chat-answer", class: "answer streaming" });
  const controller = new AbortController();
  state.streaming = controller;
  byId("play-run").textContent = "Stop";
  let ext = null;
  let usage = null;
  let finish = null;
  try {
    const res = await api("/v1/chat/completions", { body, raw: true, signal: controller.signal });
    showResult("Answer (streaming)", answer);
    for await (const chunk of sseEvents(res)) {
      if (chunk.error) throw new ApiError(200, chunk.error.message, chunk.error.code);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) answer.append(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
      if (chunk.constellation) ext = chunk.constellation;
    }
  } finally {
    state.streaming = null;
    byId("play-run").textContent = "Run";
    answer.classList.remove("streaming");
    byId("play-result-title").textContent = `Answer${finish ? ` (finished: ${finish})` : " (stopped)"}`;
  }
  if (ext) showExtension(ext, usage);
}

function showExtension(ext, usage) {
  if (!ext) return;
  const facts = [
    ["Price", h("span", { id: "play-price", class: "price", text: usd(ext.price_nanos) })],
    ["In nano-USD", `${ext.price_nanos} (1e-9 USD)`],
    ["Compute time", duration(ext.compute_ns)],
    ["Tokens", usage ? `${usage.prompt_tokens} in${usage.completion_tokens !== undefined ? ` / ${usage.completion_tokens} out` : ""}` : "—"],
    ["Request id", h("code", { text: ext.request_id })],
  ];
  byId("play-ext-facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
  fillTable("play-split", ext.split || [], (leg) =>
    h("tr", {}, td(leg.account), td(leg.role), td(leg.artifact), money(leg.amount_nanos)),
  );
  byId("play-ext").hidden = false; // before drawing: a chart in a hidden box has no size
  drawSplitBar(byId("play-split-chart"), ext.split || [], "this request");
  byId("play-notices").replaceChildren(...(ext.notices || []).map((n) => h("li", { text: n })));
  byId("play-ext").hidden = false;
}

// ---------- usage, invoice, statements ----------

function cards(id, items) {
  byId(id).replaceChildren(
    ...items.map(([label, value]) => h("div", { class: "card" }, h("div", { class: "card-label", text: label }), h("div", { class: "card-value", text: value }))),
  );
}

async function loadUsage() {
  const input = byId("usage-period");
  if (!input.value) input.value = thisMonth();
  const q = `period=${encodeURIComponent(input.value)}`;
  const [invoice, usage, daily] = await Promise.all([
    api(`/api/invoices?${q}`),
    api(`/api/usage?${q}&limit=50`),
    api(`/api/usage/daily?${q}`),
  ]);
  state.usageSeries = daily;
  drawUsage();
  cards("invoice-summary", [
    ["Total this month", usd(invoice.total_nanos)],
    ["Requests", String(invoice.requests)],
    ["Period (UTC)", invoice.period],
    ["Tenant", invoice.tenant],
  ]);
  fillTable("invoice-models", invoice.lines_by_model, (l) => h("tr", {}, td(l.operation === "finetune" ? `${l.model} (fine-tuning)` : l.model), td(String(l.requests), "num"), money(l.amount_nanos)));
  fillTable("invoice-artifacts", invoice.lines_by_artifact, (l) =>
    h("tr", {}, td(l.contributor), td(l.role), td(l.artifact), td(String(l.requests), "num"), money(l.amount_nanos)),
  );
  const notices = (invoice.notices || []).flatMap((n) => n.notices);
  byId("invoice-notices").replaceChildren(...[...new Set(notices)].map((n) => h("li", { text: n })));
  byId("invoice-notices-box").hidden = notices.length === 0;
  fillTable(
    "usage-table",
    usage,
    (u) =>
      h(
        "tr",
        {},
        td(when(u.finished_at)),
        td(h("code", { text: u.request_id })),
        td(u.model),
        td(h("span", { class: `badge ${u.status === "succeeded" ? "ok" : "bad"}`, text: u.status })),
        td(`${u.input_tokens} / ${u.output_tokens}`, "num"),
        td(duration(u.compute_ns), "num"),
        money(u.price_nanos),
      ),
    "No requests in this month yet. Try one in the Playground.",
  );
}

async function loadStatement() {
  const contributor = byId("statement-contributor").value.trim();
  if (!contributor) throw new Error("enter a contributor id");
  const input = byId("statement-period");
  if (!input.value) input.value = thisMonth();
  const q = `contributor=${encodeURIComponent(contributor)}&period=${encodeURIComponent(input.value)}`;
  const [doc, daily] = await Promise.all([api(`/api/statements?${q}`), api(`/api/statements/daily?${q}`)]);
  drawEarningsChart(byId("statement-chart"), daily);
  byId("statement-series-total").textContent =
    `Sum of the days: ${usd(daily.totals.amount_nanos)} from ${daily.totals.requests} request${daily.totals.requests === 1 ? "" : "s"}, ` +
    "the statement's total.";
  cards("statement-summary", [
    ["Earned this month", usd(doc.total_nanos)],
    ["Requests", String(doc.requests)],
    ["Period (UTC)", doc.period],
    ["Contributor", doc.contributor],
  ]);
  fillTable("statement-models", doc.lines_by_model, (l) => h("tr", {}, td(l.model), td(String(l.requests), "num"), money(l.amount_nanos)));
  fillTable("statement-artifacts", doc.lines_by_artifact, (l) =>
    h("tr", {}, td(l.role), td(l.artifact), td(String(l.requests), "num"), money(l.amount_nanos)),
  );
}

function drawUsage() {
  const daily = state.usageSeries;
  if (!daily) return;
  drawUsageChart(byId("usage-chart"), daily, byId("usage-metric").value);
  const t = daily.totals;
  byId("usage-series-total").textContent =
    `Sum of the days: ${usd(t.spend_nanos)} for ${t.billed_requests} billed request${t.billed_requests === 1 ? "" : "s"} ` +
    `(the invoice's total) out of ${t.requests} (${t.failed} failed); ${t.input_tokens} tokens in, ${t.output_tokens} out.`;
}

/** Fetch a CSV with the key (a plain link cannot send the Authorization header) and save it. */
async function downloadCsv(path) {
  const res = await api(path, { raw: true });
  const blob = await res.blob();
  const match = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: match ? match[1] : "constellation.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------- admin ----------

async function loadAdmin() {
  const paths = ["/api/tenants", "/api/contributors", "/api/terms", "/api/balances", "/api/keys"];
  const [tenants, contributors, terms, balances, keys] = await Promise.allSettled(paths.map((p) => api(p)));
  const failed = [tenants, contributors, terms, balances, keys].find((r) => r.status === "rejected");
  const ok = (r) => (r.status === "fulfilled" ? r.value : []);
  fillTable("admin-tenants", ok(tenants), (t) =>
    h("tr", {}, td(t.id), td(t.name), td(t.declared_use), td(String(t.monthly_active_users), "num"), td(when(t.created_at))),
  );
  fillTable("admin-contributors", ok(contributors), (c) => h("tr", {}, td(c.id), td(c.name), td(c.kind), td(c.email)));
  fillTable("admin-terms", ok(terms), (t) =>
    h("tr", {}, td(`${t.subject_type} ${t.subject}`), td(t.contributor), td(humanTerm(t.kind)), money(t.amount_nanos)),
  );
  fillTable("admin-balances", ok(balances), (b) =>
    h("tr", {}, td(b.account), td(b.kind), money(b.balance_nanos), td(b.floor_nanos === null ? "—" : usd(b.floor_nanos), "num")),
  );
  fillTable("admin-keys", ok(keys), (k) =>
    h("tr", {}, td(h("code", { text: k.id })), td(k.tenant), td(k.name), td(k.scopes.join(", ")), td(when(k.created_at)), td(when(k.revoked_at))),
  );
  const names = ok(contributors).map((c) => h("option", { value: c.id }));
  if (names.length) byId("statement-contributors").replaceChildren(...names);
  if (failed) throw failed.reason;
}

// ---------- wiring ----------

function wire() {
  byId("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = byId("key-input").value.trim();
    if (!key) return showError(new Error("paste an API key (cst_...) first"));
    guarded(() => connect(key));
  });
  byId("key-forget").addEventListener("click", forget);
  for (const t of TABS) tabButton(t).addEventListener("click", () => selectTab(t));
  byId("models-refresh").addEventListener("click", () => guarded(loadModels));
  byId("play-model").addEventListener("change", onModelChange);
  byId("play-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(runPlayground);
  });
  byId("usage-refresh").addEventListener("click", () => guarded(loadUsage));
  byId("usage-period").addEventListener("change", () => guarded(loadUsage));
  byId("usage-metric").addEventListener("change", drawUsage);
  byId("lineage-refresh").addEventListener("click", () => guarded(loadLineage));
  byId("lineage-find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(async () => findInLineage(byId("lineage-find").value));
  });
  byId("invoice-csv").addEventListener("click", () =>
    guarded(() => downloadCsv(`/api/invoices?format=csv&period=${encodeURIComponent(byId("usage-period").value || thisMonth())}`)),
  );
  byId("statement-refresh").addEventListener("click", () => guarded(loadStatement));
  byId("statement-csv").addEventListener("click", () =>
    guarded(() => {
      const c = encodeURIComponent(byId("statement-contributor").value.trim());
      const p = encodeURIComponent(byId("statement-period").value || thisMonth());
      return downloadCsv(`/api/statements?format=csv&contributor=${c}&period=${p}`);
    }),
  );
  byId("admin-refresh").addEventListener("click", () => guarded(loadAdmin));
  byId("workflows-refresh").addEventListener("click", () => guarded(loadWorkflows));
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) {
    byId("key-input").value = key;
    guarded(() => connect(key));
  }
});
