// Proxies: every registered proxy with its addresses and what its /stats said
// at the dashboard's last sample (ops/s, clients, errors, p99, whether it
// serves slot traffic, its routing epoch). A proxy that stopped answering is
// marked with how long it has been silent; one whose ZooKeeper node went is
// listed as gone for ten minutes; one an operator set offline too.
import { get, post } from "../api.js";
import { change, confirmAction } from "../dialog.js";
import { duration, el, micros, num } from "../format.js";

let table = null;

export function mount(root) {
  table = el("tbody");
  root.append(
    el("h2", {}, "Proxies"),
    el(
      "section",
      { class: "panel scroll" },
      el(
        "table",
        { id: "proxies" },
        el("thead", {}, el("tr", {}, ...["id", "address", "admin", "state", "ops/s", "clients", "errors", "p99", "ZooKeeper session", "epoch", ""].map((h) => el("th", {}, h)))),
        table,
      ),
    ),
  );
}

async function setOnline(id, online) {
  if (!online) {
    const ok = await confirmAction("Set " + id + " offline?", "It stops serving clients until it is set online again.");
    if (!ok) return;
  }
  await change("proxy " + (online ? "online" : "offline"), () =>
    post("/api/proxies/" + encodeURIComponent(id) + (online ? "/online" : "/offline")),
  );
}

export async function refresh() {
  const [stats, listed] = await Promise.all([get("/api/stats"), get("/api/proxies")]);
  const sampled = new Map(stats.proxies.map((p) => [p.id, p]));
  // A proxy whose ZooKeeper node went (stopped, crashed, or cut off past its
  // session) is listed by the dashboard for a while, so it does not simply
  // vanish from this table.
  const ids = new Set(listed.map((p) => p.id));
  const gone = stats.proxies
    .filter((s) => s.gone_ms != null && !ids.has(s.id))
    .map((s) => ({ id: s.id, online: true, running: false, info: { addr: s.addr, admin_addr: s.admin_addr }, gone: true }));
  const rows = [...listed, ...gone].sort((a, b) => (a.id < b.id ? -1 : 1)).map((p) => {
    const s = sampled.get(p.id);
    let state = "answering";
    let cls = "ok";
    if (!p.running && s && s.gone_ms != null) {
      state = "gone " + duration(s.gone_ms / 1000) + " ago: stopped, crashed or lost its ZooKeeper session";
      cls = "bad";
    } else if (!p.running) {
      state = "not running";
      cls = "bad";
    } else if (!s) {
      state = "not sampled yet";
      cls = "";
    } else if (!s.answering) {
      state = s.silent_ms === null ? "never answered" : "silent for " + duration(s.silent_ms / 1000);
      cls = "bad";
    }
    if (!p.online) state += ", set offline";
    const info = p.info || {};
    const figures = s && s.silent_ms !== null && s.gone_ms == null;
    return el(
      "tr",
      // A silent proxy keeps its last figures, greyed: they are not current.
      { "data-proxy": p.id, "data-answering": s ? String(s.answering) : "false", "data-gone": String(!!p.gone), class: cls === "bad" ? "down stale" : "" },
      el("td", {}, p.id),
      el("td", {}, info.addr || ""),
      el("td", {}, info.admin_addr || ""),
      el("td", { class: cls, title: (s && s.error) || "" }, state),
      el("td", { class: "num" }, figures ? num(s.ops_per_sec) : ""),
      el("td", { class: "num" }, figures ? num(s.clients) : ""),
      el("td", { class: "num" }, figures ? num(s.errors) : ""),
      // No timed request in the last sample (idle, or only blocking calls,
      // whose wait is not latency): a dash, not "0 µs".
      el("td", { class: "num" }, figures ? (s.p99_us > 0 ? micros(s.p99_us) : "–") : ""),
      el("td", { class: figures && !s.routing_online ? "bad" : "" }, figures ? (s.routing_online ? "alive" : "unproven: refusing slot traffic") : ""),
      el("td", { class: "num" }, figures ? num(s.routing_epoch) : ""),
      el(
        "td",
        { class: "actions" },
        p.gone
          ? null
          : p.online
            ? el("button", { class: "quiet", onclick: () => setOnline(p.id, false) }, "Set offline")
            : el("button", { onclick: () => setOnline(p.id, true) }, "Set online"),
      ),
    );
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 11, class: "hint" }, "No proxy has registered.")));
  table.replaceChildren(...rows);
}
