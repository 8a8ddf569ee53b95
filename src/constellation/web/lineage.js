// The lineage graph (GET /api/lineage) drawn in four columns -- bases, adapters and fine-tunes,
// data sets, contributors -- with a base's derived models folded into one node when there are
// more than GROUP_LIMIT of them, so that hundreds of adapters stay readable.
"use strict";

const GROUP_LIMIT = 8;
const ROW = 30; // px between two nodes of a column
const COLUMNS = ["Base models", "Adapters & fine-tunes", "Data sets", "Contributors"];
const COLUMN_OF = { base: 0, adapter: 1, finetune: 1, group: 1, dataset: 2, contributor: 3 };
const lineage = { graph: null, expanded: new Set(), selected: null, byId: new Map() };

async function loadLineage() {
  lineage.graph = await api("/api/lineage");
  lineage.byId = new Map(lineage.graph.nodes.map((n) => [n.id, n]));
  const models = lineage.graph.nodes.filter((n) => COLUMN_OF[n.type] <= 1).length;
  byId("lineage-count").textContent = `${models} model${models === 1 ? "" : "s"} you can see`;
  drawLineage();
}

/** The derived models of each base: base node id -> [node ids]. */
function childrenOfBases(nodes) {
  const out = new Map();
  for (const n of nodes) {
    if (!n.base) continue;
    const base = `model:${n.base}`;
    if (!out.has(base)) out.set(base, []);
    out.get(base).push(n.id);
  }
  return out;
}

/** The nodes and edges to draw: big families folded into group nodes, and the data sets and
 *  contributors that only folded models lead to left out. */
function visibleGraph(graph) {
  const hidden = new Set();
  const groups = [];
  for (const [base, kids] of childrenOfBases(graph.nodes)) {
    if (kids.length <= GROUP_LIMIT || lineage.expanded.has(base)) continue;
    kids.forEach((k) => hidden.add(k));
    const datasets = new Set(graph.edges.filter((e) => kids.includes(e.source) && e.target.startsWith("dataset:")).map((e) => e.target));
    groups.push({ id: `group:${base}`, type: "group", base, name: `${kids.length} derived models`, count: kids.length, datasets: datasets.size });
  }
  const reached = new Set();
  const shown = (id) => !hidden.has(id) && (COLUMN_OF[lineage.byId.get(id).type] <= 1 || reached.has(id));
  // Data sets, then contributors, are shown when something shown leads to them.
  for (const prefix of ["dataset:", "contributor:"]) {
    for (const e of graph.edges) if (e.target.startsWith(prefix) && shown(e.source)) reached.add(e.target);
  }
  const nodes = [...graph.nodes.filter((n) => shown(n.id)), ...groups];
  const edges = graph.edges.filter((e) => shown(e.source) && shown(e.target));
  for (const g of groups) edges.push({ source: g.base, target: g.id, relations: ["group"] });
  return { nodes, edges };
}

/** y of each node: derived models in rows grouped by base, every other column at the mean of
 *  its neighbours' rows, then pushed apart to at least ROW. */
function layout(nodes, edges) {
  const y = new Map();
  const cols = [[], [], [], []];
  for (const n of nodes) cols[COLUMN_OF[n.type]].push(n);
  const baseOrder = new Map(cols[0].map((n, i) => [n.id, i]));
  const baseOf = (n) => (n.type === "group" ? n.base : n.base ? `model:${n.base}` : n.id);
  cols[1].sort((a, b) => (baseOrder.get(baseOf(a)) ?? -1) - (baseOrder.get(baseOf(b)) ?? -1) || a.name.localeCompare(b.name));
  cols[1].forEach((n, i) => y.set(n.id, i * ROW));
  const neighbours = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) {
    neighbours.get(e.source).push(e.target);
    neighbours.get(e.target).push(e.source);
  }
  const place = (col, fallback) => {
    const want = col.map((n, i) => {
      const ys = neighbours.get(n.id).filter((m) => y.has(m)).map((m) => y.get(m));
      return [n, ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : fallback(i)];
    });
    want.sort((a, b) => a[1] - b[1] || a[0].name.localeCompare(b[0].name));
    let last = -Infinity;
    for (const [n, w] of want) {
      last = Math.max(w, last + ROW);
      y.set(n.id, last);
    }
  };
  place(cols[0], (i) => i * ROW);
  place(cols[2], (i) => i * ROW);
  place(cols[3], (i) => i * ROW);
  return { y, cols };
}

const weightLabel = (e) => `w ${e.weight} (${Math.round((100 * e.weight) / e.weight_total)}%)`;

function nodeStyle(n) {
  if (n.type === "contributor") return { color: "#5f6b7f" };
  if (n.type === "group") return { color: "#9aa5b8", borderColor: "#1d2b53", borderWidth: 1 };
  const style = { color: FAMILY_COLOURS[n.family] || "#5f6b7f" };
  if (n.permitted === false) Object.assign(style, { borderColor: "#b3261e", borderWidth: 3, borderType: "dashed" });
  if (lineage.selected === n.id) Object.assign(style, { borderColor: "#1d2b53", borderWidth: 4, borderType: "solid" });
  return style;
}

const SYMBOLS = { base: ["circle", 22], adapter: ["circle", 15], finetune: ["diamond", 17], dataset: ["rect", 13], contributor: ["triangle", 14], group: ["roundRect", [26, 18]] };

/** Lineage edges solid; who is paid for what curved and lighter, so that it reads as a second
 *  layer over the columns it crosses; a folded family dashed. */
function edgeStyle(e) {
  if (e.relations.includes("group")) return { type: "dashed", color: "#1d2b53" };
  if (e.target.startsWith("contributor:") && !e.source.startsWith("dataset:")) return { curveness: 0.18, opacity: 0.55 };
  return {};
}

function nodeLabel(n) {
  if (n.type === "group") return `${n.count} derived models, ${n.datasets} data sets (click to show)`;
  return n.permitted === false ? `${n.name} (refused)` : n.name;
}

function drawLineage() {
  const el = byId("lineage-graph");
  const { nodes, edges } = visibleGraph(lineage.graph);
  const { y } = layout(nodes, edges);
  const bottom = Math.max(ROW, ...y.values());
  el.style.height = `${Math.max(320, bottom + 100)}px`;
  const chart = chartIn(el);
  if (!chart) return;
  chart.resize();
  // Coordinates on hidden value axes: columns 0..3 across, rows in px down; labels need the
  // room on the right of the last column.
  const grid = { left: 30, right: 240, top: 44, bottom: 24 };
  const colPx = (c) => grid.left + (c * (el.clientWidth - grid.left - grid.right)) / 3;
  chart.setOption(
    {
      animation: false,
      tooltip: { formatter: lineageTooltip },
      grid,
      xAxis: { type: "value", min: 0, max: 3, show: false },
      yAxis: { type: "value", min: -ROW / 2, max: bottom + ROW / 2, inverse: true, show: false },
      graphic: COLUMNS.map((text, c) => ({
        type: "text",
        left: Math.max(4, colPx(c) - 12),
        top: 8,
        style: { text, fontSize: 13, fontWeight: "bold", fill: "#1d2b53" },
      })),
      series: [
        {
          type: "graph",
          coordinateSystem: "cartesian2d",
          label: { show: true, position: "right", fontSize: 12, color: "#1c2333" },
          edgeLabel: { fontSize: 10, color: "#5f6b7f" },
          lineStyle: { color: "#b6bfd0", width: 1.2, opacity: 0.9 },
          emphasis: { focus: "adjacency", lineStyle: { width: 2.5 } },
          data: nodes.map((n) => ({
            id: n.id,
            name: n.id,
            value: [COLUMN_OF[n.type], y.get(n.id)],
            symbol: SYMBOLS[n.type][0],
            symbolSize: SYMBOLS[n.type][1],
            itemStyle: nodeStyle(n),
            label: { formatter: nodeLabel(n) },
          })),
          links: edges.map((e) => ({
            source: e.source,
            target: e.target,
            weight: e.weight,
            relations: e.relations,
            label: { show: Boolean(e.weight), formatter: e.weight ? weightLabel(e) : "" },
            lineStyle: edgeStyle(e),
          })),
        },
      ],
    },
    { notMerge: true },
  );
  chart.off("click");
  chart.on("click", (p) => {
    if (p.dataType === "node") onLineageClick(p.data.id);
  });
}

function lineageTooltip(p) {
  if (p.dataType === "edge") {
    const rel = (p.data.relations || []).join(", ");
    const weight = p.data.weight ? `<br>lineage weight ${p.data.weight}` : "";
    return `${escapeHtml(p.data.source)} → ${escapeHtml(p.data.target)}<br>${rel}${weight}`;
  }
  const n = lineage.byId.get(p.data.id);
  if (!n) return "click to show these models";
  const bits = [`<b>${escapeHtml(n.name)}</b> (${n.type})`];
  if (n.license) bits.push(`${n.license}: ${n.family}`);
  if (n.permitted === false) bits.push("not permitted for your tenant");
  if (n.title) bits.push(escapeHtml(n.title));
  return bits.join("<br>");
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function onLineageClick(id) {
  if (id.startsWith("group:")) {
    lineage.expanded.add(id.slice(6));
    drawLineage();
    return;
  }
  lineage.selected = id;
  drawLineage();
  showNodeDetail(lineage.byId.get(id));
}

/** Find a node by (part of) its name: unfold its family, select it and show its details. */
function findInLineage(text) {
  const q = text.trim().toLowerCase();
  if (!q || !lineage.graph) return;
  const n = lineage.graph.nodes.find((m) => m.name.toLowerCase() === q) || lineage.graph.nodes.find((m) => m.name.toLowerCase().includes(q));
  if (!n) throw new Error(`nothing in the lineage is called '${text}'`);
  if (n.base) lineage.expanded.add(`model:${n.base}`);
  onLineageClick(n.id);
}

// ---------- the details of one node ----------

const related = (id, relation, side) =>
  lineage.graph.edges.filter((e) => e[side === "out" ? "source" : "target"] === id && e.relations.includes(relation)).map((e) => (side === "out" ? e.target : e.source).split(":")[1]);

function showNodeDetail(n) {
  const box = byId("lineage-detail");
  const parts = [h("h3", {}, h("code", { text: n.name }), " ", h("span", { class: "badge", text: n.type }))];
  if (n.license) parts.push(h("p", {}, h("span", { class: `badge family ${n.family}`, text: n.family }), ` licence ${n.license}`));
  if (n.type === "dataset") parts.push(datasetFacts(n));
  else if (n.type === "contributor") parts.push(contributorFacts(n));
  else parts.push(...modelFacts(n));
  box.replaceChildren(...parts);
  box.hidden = false;
  if (n.price) drawSplitBar(byId("lineage-split-chart"), n.price.reference.split, "reference");
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
}

const list = (items, empty = "none") => (items.length ? h("ul", { class: "compact-list" }, items.map((t) => h("li", { text: t }))) : empty);

function modelFacts(n) {
  const t = n.effective_terms || {};
  const kids = childrenOfBases(lineage.graph.nodes).get(n.id) || [];
  const verdict =
    n.permitted === false
      ? h("div", {}, h("span", { class: "badge bad", text: n.refusal.code }), h("div", { class: "refusal", text: n.refusal.message }))
      : h("span", { class: "badge ok", text: "Permitted" });
  const out = [
    facts([
      ["For your tenant", verdict],
      ["Task", n.task],
      ["Base", n.base || "none: a base model"],
      ["Trained on", list(related(n.id, "trained_on", "out"), "no recorded data sets")],
      ["Commercial use", t.commercial_use ? "allowed by every licence in its lineage" : list((t.commercial_blockers || []).map((b) => `${b.artifact} (${b.license}): ${b.text}`))],
      ["Use restrictions", list((t.restrictions || []).map((r) => `${r.text} (${r.license})`))],
      ["Share-alike", list((t.share_alike || []).map((r) => `${r.artifact}: ${r.text}`))],
      ["User limit", t.user_limit ? `${t.user_limit.toLocaleString()} monthly active users` : "none"],
      ["Notices", list(t.notices || [])],
    ]),
  ];
  if (kids.length > GROUP_LIMIT) {
    const open = lineage.expanded.has(n.id);
    out.push(h("button", { type: "button", class: "secondary", onclick: () => toggleFamily(n.id) }, open ? `Fold its ${kids.length} derived models` : `Show its ${kids.length} derived models`));
  }
  out.push(...priceFacts(n.price));
  return out;
}

function toggleFamily(baseId) {
  if (lineage.expanded.has(baseId)) lineage.expanded.delete(baseId);
  else lineage.expanded.add(baseId);
  drawLineage();
  showNodeDetail(lineage.byId.get(baseId));
}

function priceFacts(price) {
  if (!price) return [];
  const ref = price.reference;
  const termRows = price.terms.map((t) => {
    const share = t.weight_total > 1 ? ` × ${t.weight}/${t.weight_total}` : "";
    return h("tr", {}, td(t.contributor), td(t.role), td(t.artifact), td(`${humanTerm(t.kind)}${share}`), money(t.amount_nanos));
  });
  const terms = h(
    "table",
    { class: "terms-table" },
    h("thead", {}, h("tr", {}, ["Paid to", "For", "Artifact", "Term", "Amount (USD)"].map((c, i) => h("th", { class: i === 4 ? "num" : null, text: c })))),
    h("tbody", {}, termRows.length ? termRows : h("tr", { class: "empty" }, h("td", { colspan: 5, text: "No contribution terms: infrastructure and platform fee only." }))),
  );
  const splitRows = ref.split.map((leg) => h("tr", {}, td(leg.account), td(leg.role), td(leg.artifact), money(leg.amount_nanos)));
  const split = h(
    "table",
    { id: "lineage-split" },
    h("thead", {}, h("tr", {}, ["Paid to", "For", "Artifact", "Amount (USD)"].map((c, i) => h("th", { class: i === 3 ? "num" : null, text: c })))),
    h("tbody", {}, splitRows),
  );
  return [
    h("h4", { text: "Contribution terms along its lineage" }),
    h("p", { class: "hint", text: `Plus infrastructure at ${usd(price.infra_nanos_per_second)} per compute-second and a platform fee of ${price.platform_fee_bps / 100}%.` }),
    h("div", { class: "table-wrap" }, terms),
    h("h4", { text: "Price split of a reference request" }),
    h(
      "p",
      { class: "hint" },
      `${ref.input_tokens.toLocaleString()} input tokens, ${ref.output_tokens.toLocaleString()} output tokens, ${duration(ref.compute_ns)} of compute: `,
      h("b", { id: "lineage-price", text: usd(ref.price_nanos) }),
    ),
    h("div", { class: "split-pair" }, h("div", { id: "lineage-split-chart", class: "chart split-chart" }), h("div", { class: "table-wrap" }, split)),
  ];
}

function datasetFacts(n) {
  return facts([
    ["Examples", String(n.examples)],
    ["Provided by", list(related(n.id, "provider", "out"))],
    ["Paid to", list(related(n.id, "paid", "out"))],
    ["Trained", list(related(n.id, "trained_on", "in"))],
  ]);
}

function contributorFacts(n) {
  return facts([
    ["Name", n.title],
    ["Kind", n.kind],
    ["Author of", list(related(n.id, "author", "in"))],
    ["Provider of", list(related(n.id, "provider", "in"))],
    ["Paid for", list(related(n.id, "paid", "in"))],
  ]);
}
