// The Workflows tab (GET /api/workflows, GET /api/workflows/{name}/runs): each workflow's step
// graph drawn as SVG -- steps in columns by depth, solid edges carry outputs, dashed ones are a
// switch's possible continuations -- and its recent runs with each step's price.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const WF = { colW: 190, rowH: 62, nodeW: 160, nodeH: 42 };

async function loadWorkflows() {
  const list = await api("/api/workflows");
  const box = byId("workflows-list");
  box.replaceChildren();
  if (!list.data.length) {
    box.append(h("p", { class: "muted" }, "No workflows yet: `constellation workflows add FILE --name NAME --author ID`."));
    return;
  }
  for (const wf of list.data) {
    const runs = await api(`/api/workflows/${encodeURIComponent(wf.name)}/runs?limit=10`);
    box.append(workflowCard(wf, runs.data));
  }
}

function workflowCard(wf, runs) {
  const card = h("div", { class: "workflow-card", "data-workflow": wf.name });
  card.append(
    h("h3", {}, `${wf.name}@${wf.version}`, " ", h("span", { class: "badge" }, wf.output_kind)),
    h("p", { class: "muted" }, wf.description || ""),
    h("p", {}, `author ${wf.author} · fee ${usd(wf.fee_per_run_nanos)} per run · `,
      wf.effective_terms.commercial_use ? "commercial use permitted" : "non-commercial models reached"),
    workflowGraph(wf.graph),
    runsTable(runs),
  );
  return card;
}

/** Depth of each step: 0 for steps that wait for nothing, else one more than the deepest of
 *  what they read (or of the switch that selects them: a target sits right of its switch). */
function depths(graph) {
  const incoming = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) incoming.get(e.to).push(e.from);
  const depth = new Map();
  const visit = (id, seen) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...incoming.get(id).map((p) => visit(p, seen))) + 1;
    depth.set(id, d);
    return d;
  };
  for (const n of graph.nodes) visit(n.id, new Set());
  return depth;
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function workflowGraph(graph) {
  const depth = depths(graph);
  const columns = new Map();
  for (const n of graph.nodes) {
    const d = depth.get(n.id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n);
  }
  const pos = new Map();
  let rows = 1;
  for (const [d, nodes] of columns) {
    nodes.forEach((n, i) => pos.set(n.id, { x: 10 + d * WF.colW, y: 10 + i * WF.rowH }));
    rows = Math.max(rows, nodes.length);
  }
  const width = 20 + columns.size * WF.colW;
  const height = 20 + rows * WF.rowH;
  const root = svg("svg", { class: "workflow-graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  root.append(svg("title", {}, `steps of the workflow, output: ${graph.output}`));
  for (const e of graph.edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    const line = svg("line", {
      x1: a.x + WF.nodeW, y1: a.y + WF.nodeH / 2, x2: b.x, y2: b.y + WF.nodeH / 2,
      class: `wf-edge wf-edge-${e.kind}`,
    });
    root.append(line);
  }
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const g = svg("g", { class: `wf-node wf-${n.kind}${n.id === graph.output ? " wf-output" : ""}`, "data-step": n.id });
    g.append(svg("rect", { x: p.x, y: p.y, width: WF.nodeW, height: WF.nodeH, rx: 6 }));
    g.append(svg("text", { x: p.x + 8, y: p.y + 17, class: "wf-name" }, `${n.id} · ${n.kind}`));
    const detail = n.workflow ? `→ ${n.workflow}` : n.models.join(", ");
    g.append(svg("text", { x: p.x + 8, y: p.y + 33, class: "wf-models" }, detail.slice(0, 26)));
    root.append(g);
  }
  return h("div", { class: "chart workflow-graph-wrap" }, root);
}

function runsTable(runs) {
  const table = h("table", { class: "workflow-runs" },
    h("thead", {}, h("tr", {}, ...["Run", "Version", "Status", "Steps (price)", "Price (USD)"].map((t) => h("th", {}, t)))));
  const body = h("tbody");
  if (!runs.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No runs yet.")));
  for (const r of runs) {
    const steps = r.steps.map((s) => `${s.step} (${s.model}) ${usd(s.price_nanos)}`).join(" · ");
    const status = r.status === "failed" ? `failed at ${r.failed_step || "?"}` : r.status;
    body.append(h("tr", { "data-run": r.run_id },
      h("td", { "data-label": "Run" }, r.run_id), h("td", { "data-label": "Version" }, String(r.version)),
      h("td", { "data-label": "Status" }, status), h("td", { "data-label": "Steps" }, steps),
      h("td", { "data-label": "Price", class: "num" }, usd(r.price_nanos))));
  }
  table.append(body);
  return h("div", { class: "table-wrap" }, table);
}
