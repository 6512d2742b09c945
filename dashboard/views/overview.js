// Overview: the product at a glance (groups, proxies, keys, memory, ops/s,
// clients) and a live chart of the cluster's ops/s and p50/p99 latency over
// the last ten minutes, added up from every proxy's stats by the dashboard
// (GET /api/stats keeps the history, so a freshly opened page has it all).
import { get } from "../api.js";
import { bytes, el, groupList, micros, num } from "../format.js";

let cards = null;
let chartBox = null;
let chart = null;
let onResize = null;

function card(key, label) {
  const value = el("div", { class: "value", "data-card": key }, "…");
  return { box: el("div", { class: "card" }, el("div", { class: "label" }, label), value), value };
}

export function mount(root) {
  cards = {};
  const grid = el("section", { class: "cards" });
  for (const [key, label] of [
    ["groups", "groups"],
    ["servers", "servers"],
    ["proxies", "proxies answering"],
    ["keys", "keys"],
    ["memory", "memory used"],
    ["ops", "ops/s"],
    ["clients", "clients"],
    ["p99", "p99 latency"],
  ]) {
    const c = card(key, label);
    cards[key] = c.value;
    grid.append(c.box);
  }
  chartBox = el("div", { id: "chart", class: "chart" });
  root.append(
    el("h2", {}, "Overview"),
    grid,
    el(
      "section",
      { class: "panel" },
      el("h3", {}, "Cluster ops/s and latency, last 10 minutes"),
      el("p", { class: "hint" }, "Every proxy's requests of each second, added up: ops/s, and p50/p99 latency of those requests."),
      chartBox,
    ),
  );
  chart = null;
  onResize = () => chart && chart.setSize({ width: chartBox.clientWidth, height: 260 });
  window.addEventListener("resize", onResize);
}

export function unmount() {
  window.removeEventListener("resize", onResize);
  if (chart) chart.destroy();
  chart = null;
}

function makeChart(data) {
  const opts = {
    width: Math.max(300, chartBox.clientWidth),
    height: 260,
    // At least a minute wide, so a young history is not stretched over the
    // whole width with sub-second ticks.
    scales: {
      x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
      ops: { auto: true },
      ms: { auto: true },
    },
    series: [
      {},
      { label: "ops/s", scale: "ops", stroke: "hsl(210, 70%, 45%)", fill: "hsla(210, 70%, 45%, 0.12)", width: 2 },
      { label: "p50 ms", scale: "ms", stroke: "hsl(140, 55%, 40%)", width: 1 },
      { label: "p99 ms", scale: "ms", stroke: "hsl(20, 80%, 50%)", width: 1 },
    ],
    // Room for six-digit ops/s beside the axis label.
    axes: [{}, { scale: "ops", label: "ops/s", size: 70 }, { scale: "ms", side: 1, label: "ms", grid: { show: false } }],
  };
  return new uPlot(opts, data, chartBox);
}

export async function refresh() {
  const [stats, topo, servers] = await Promise.all([get("/api/stats"), get("/api/topology"), get("/api/servers")]);
  const groups = groupList(topo);
  const masters = servers.filter((s) => s.role === "master");
  cards.groups.textContent = num(groups.length);
  cards.servers.textContent =
    num(servers.filter((s) => s.up).length) + " / " + num(servers.length) + " up";
  // Proxies gone from ZooKeeper are listed for a while (see Proxies): they
  // are not counted, only named.
  const registered = stats.proxies.filter((p) => p.gone_ms == null);
  const gone = stats.proxies.length - registered.length;
  const answering = registered.filter((p) => p.answering).length;
  cards.proxies.textContent =
    num(answering) + " / " + num(registered.length) + (gone ? " (" + num(gone) + " gone)" : "");
  cards.proxies.classList.toggle("bad", answering < registered.length || gone > 0);
  // A master that does not answer has no count: the sum is then a floor,
  // and says whose keys it lacks, rather than drop them silently.
  const silent = masters.filter((s) => !s.up);
  const keys = num(masters.reduce((n, s) => n + (s.up ? s.keys : 0), 0));
  cards.keys.textContent = silent.length
    ? "≥ " + keys + " (group " + silent.map((s) => s.group).join(", ") + " unknown)"
    : keys;
  cards.keys.classList.toggle("bad", silent.length > 0);
  cards.memory.textContent = bytes(servers.reduce((n, s) => n + s.memory, 0));
  cards.ops.textContent = num(stats.now.ops);
  cards.clients.textContent = num(stats.clients);
  cards.p99.textContent = micros(stats.now.p99);

  const h = stats.history;
  const data = [
    h.map((s) => s.t / 1000),
    h.map((s) => s.ops),
    h.map((s) => s.p50 / 1000),
    h.map((s) => s.p99 / 1000),
  ];
  if (!chart) chart = makeChart(data);
  else chart.setData(data);
  // What the browser tests read: the points drawn and the latest ops/s.
  chartBox.dataset.points = h.length;
  chartBox.dataset.lastOps = h.length ? h[h.length - 1].ops : 0;
  chartBox.dataset.maxOps = Math.max(0, ...data[1]);
  chartBox.dataset.lastP99 = h.length ? h[h.length - 1].p99 : 0;
}
