// The dashboard's pictures drawn with Apache ECharts (served by this server from /static/lib/):
// usage and earnings per day, and a price's split as one stacked bar. Amounts stay integer
// nano-USD in the charts' data; only labels and tooltips format them.
"use strict";

const FAMILY_COLOURS = {
  permissive: "#2e9e5b",
  "share-alike": "#2f7fd4",
  "non-commercial": "#e08a1e",
  restricted: "#b23b8c",
};
const PALETTE = ["#2f55d4", "#2e9e5b", "#e08a1e", "#b23b8c", "#17a2b8", "#7a5cd6", "#c9472b", "#6b8e23", "#d4a72f", "#5f6b7f"];
const charts = new Map(); // element id -> ECharts instance

/** ECharts, or null when this server has not installed it (see `make install`). */
const chartLib = () => (typeof window.echarts === "object" ? window.echarts : null);

/** Replace a picture's box with a message saying why it is missing and how to get it. */
function missingLibrary(el) {
  el.classList.add("chart-missing");
  el.replaceChildren(
    h("p", {}, h("b", { text: "This picture needs the charting library (Apache ECharts), which this server has not installed. " })),
    h("p", {}, "Run ", h("code", { text: "make install" }), " (it runs ", h("code", { text: "npm ci" }), " in ", h("code", { text: "src/constellation/web" }), ") and reload. The tables show the same numbers."),
  );
}

/** The chart drawn in `el`, created on first use; null (and a message) without the library. */
function chartIn(el) {
  const lib = chartLib();
  if (!lib) {
    missingLibrary(el);
    return null;
  }
  el.classList.remove("chart-missing");
  let chart = charts.get(el.id);
  if (!chart || chart.isDisposed()) {
    el.replaceChildren();
    chart = lib.init(el, null, { renderer: "canvas" });
    charts.set(el.id, chart);
  }
  return chart;
}

/** Fit every chart to its box again (after a window resize, or when its tab is shown). */
function resizeCharts() {
  charts.forEach((c) => c.isDisposed() || c.resize());
}

window.addEventListener("resize", resizeCharts);

/** A short dollar label for an axis: nano-USD -> "$0.0012". Exact amounts go through usd(). */
function usdShort(nanos) {
  const v = Number(nanos) / 1e9;
  if (v === 0) return "$0";
  const digits = Math.min(9, Math.max(2, 2 - Math.floor(Math.log10(Math.abs(v)))));
  return `$${v.toFixed(digits)}`;
}

const dayLabel = (iso) => iso.slice(8); // "2026-11-05" -> "05"
const emptyNote = (text) => ({
  type: "text",
  left: "center",
  top: "middle",
  style: { text, fontSize: 15, fill: "#5f6b7f" },
});

function tooltipLines(params, fmt) {
  const rows = params.filter((p) => Number(p.value) !== 0);
  const head = params.length ? params[0].axisValueLabel : "";
  return [head, ...rows.map((p) => `${p.marker}${p.seriesName}: ${fmt(p.value)}`)].join("<br>");
}

const METRICS = {
  spend: { title: "Spend per day", fmt: usd, axis: usdShort, values: (l) => l.spend_nanos },
  requests: { title: "Requests per day", fmt: String, axis: String, values: (l) => l.requests },
  tokens: {
    title: "Tokens per day (in + out)",
    fmt: String,
    axis: String,
    values: (l) => l.input_tokens.map((x, i) => x + l.output_tokens[i]),
  },
};

const modelLabel = (line) => (line.operation === "finetune" ? `${line.model} (fine-tuning)` : line.model);

/** A tenant's month as stacked bars per day, one series per model (GET /api/usage/daily). */
function drawUsageChart(el, doc, metric) {
  const chart = chartIn(el);
  if (!chart) return;
  const m = METRICS[metric] || METRICS.spend;
  chart.setOption(
    {
      color: PALETTE,
      animation: false,
      title: { text: `${m.title}, ${doc.period} (UTC)`, left: 0, textStyle: { fontSize: 14 } },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, formatter: (p) => tooltipLines(p, m.fmt) },
      legend: { type: "scroll", bottom: 0 },
      grid: { left: 70, right: 20, top: 40, bottom: 60 },
      xAxis: { type: "category", data: doc.days.map(dayLabel), name: "day", nameLocation: "end" },
      yAxis: { type: "value", axisLabel: { formatter: m.axis } },
      graphic: doc.series.length ? [] : [emptyNote(`No usage in ${doc.period}`)],
      series: doc.series.map((line) => ({
        name: modelLabel(line),
        type: "bar",
        stack: "day",
        emphasis: { focus: "series" },
        data: m.values(line),
      })),
    },
    { notMerge: true },
  );
}

const earningsLabel = (line) => (line.artifact ? `${line.role} · ${line.artifact}` : line.role);

/** A contributor's month: stacked bars per day by role and artifact, and the running total
 *  (GET /api/statements/daily). */
function drawEarningsChart(el, doc) {
  const chart = chartIn(el);
  if (!chart) return;
  const perDay = doc.days.map((_, i) => doc.series.reduce((sum, l) => sum + l.amount_nanos[i], 0));
  let running = 0;
  const cumulative = perDay.map((x) => (running += x));
  chart.setOption(
    {
      color: PALETTE,
      animation: false,
      title: { text: `Earnings per day, ${doc.period} (UTC)`, left: 0, textStyle: { fontSize: 14 } },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, formatter: (p) => tooltipLines(p, usd) },
      legend: { type: "scroll", bottom: 0 },
      grid: { left: 70, right: 70, top: 64, bottom: 60 },
      xAxis: { type: "category", data: doc.days.map(dayLabel), name: "day", nameLocation: "end" },
      yAxis: [
        { type: "value", name: "per day", axisLabel: { formatter: usdShort } },
        { type: "value", name: "so far", axisLabel: { formatter: usdShort }, splitLine: { show: false } },
      ],
      graphic: doc.series.length ? [] : [emptyNote(`No earnings in ${doc.period}`)],
      series: [
        ...doc.series.map((line) => ({
          name: earningsLabel(line),
          type: "bar",
          stack: "day",
          emphasis: { focus: "series" },
          data: line.amount_nanos,
        })),
        ...(doc.series.length
          ? [{ name: "Earned so far", type: "line", yAxisIndex: 1, data: cumulative, color: "#1d2b53", symbolSize: 4 }]
          : []),
      ],
    },
    { notMerge: true },
  );
}

const legName = (leg) => [leg.account, leg.role, leg.artifact].filter(Boolean).join(" · ");

/** One price split among its contributors as a single horizontal stacked bar. */
function drawSplitBar(el, split, label) {
  el.style.height = `${90 + 22 * Math.ceil(split.length / 2)}px`; // room for a legend of every leg
  const chart = chartIn(el);
  if (!chart) return;
  chart.setOption(
    {
      color: PALETTE,
      animation: false,
      tooltip: { trigger: "item", formatter: (p) => `${p.marker}${p.seriesName}: ${usd(p.value)}` },
      legend: { bottom: 0, itemWidth: 14, textStyle: { fontSize: 11 } },
      grid: { left: 10, right: 30, top: 8, bottom: 30 + 22 * Math.ceil(split.length / 2), containLabel: true },
      xAxis: { type: "value", splitNumber: 3, axisLabel: { formatter: usdShort } },
      yAxis: { type: "category", data: [label || "price"] },
      series: split.map((leg) => ({
        name: legName(leg),
        type: "bar",
        stack: "price",
        barWidth: 34,
        data: [leg.amount_nanos],
      })),
    },
    { notMerge: true },
  );
  chart.resize();
}
