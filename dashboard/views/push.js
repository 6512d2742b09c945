// Push system: the comets (connections, IPs, weight, offline), logics and
// jobs registered in ZooKeeper (<product>/im/<kind>/<id>); each instance
// rewrites its node every 10 s, so "updated" shows whether it is current.
// Then the busiest rooms (every comet's counts as logic stores them, summed)
// and the queue: each stream's length, and how far job lags behind it.
import { get } from "../api.js";
import { duration, el, num } from "../format.js";

let box = null;

export function mount(root) {
  box = el("div", { id: "push" });
  root.append(el("h2", {}, "Push system"), box);
}

function age(updated) {
  return updated ? duration(Date.now() / 1000 - updated) + " ago" : "";
}

function table(id, heads, rows, empty) {
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      { id },
      el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: heads.length, class: "hint" }, empty))),
    ),
  );
}

export async function refresh() {
  const roles = await get("/api/push");
  const comets = roles.comet.map((c) =>
    el(
      "tr",
      { "data-comet": c.id, class: c.offline ? "down" : "" },
      el("td", {}, c.id),
      el("td", {}, (c.addrs || []).join(", ")),
      el("td", {}, [c.tcp_port && "tcp " + c.tcp_port, c.ws_port && "ws " + c.ws_port, c.wss_port && "wss " + c.wss_port].filter(Boolean).join(" · ")),
      el("td", { class: "num" }, num(c.conn_count)),
      el("td", { class: "num" }, num(c.ip_count)),
      el("td", { class: "num" }, num(c.weight)),
      el("td", { class: c.offline ? "bad" : "ok" }, c.offline ? "offline" : "online"),
      el("td", {}, age(c.updated)),
    ),
  );
  const logics = roles.logic.map((l) =>
    el("tr", { "data-logic": l.id }, el("td", {}, l.id), el("td", {}, l.http || ""), el("td", {}, l.grpc || ""), el("td", {}, age(l.updated))),
  );
  const jobs = roles.job.map((j) => el("tr", { "data-job": j.id }, el("td", {}, j.id), el("td", {}, age(j.updated))));
  const queue = roles.queue;
  const streams = queue.streams.map((q) =>
    el(
      "tr",
      { "data-stream": q.key },
      el("td", {}, q.key),
      el("td", { class: "num" }, num(q.length)),
      el("td", { class: "num" + (q.lag ? " warn" : "") }, q.lag === null ? "unknown" : num(q.lag)),
      el("td", { class: "num" }, num(q.pending)),
    ),
  );
  const rooms = roles.rooms.top.map((r) =>
    el("tr", { "data-room": r.room }, el("td", {}, r.room), el("td", { class: "num" }, num(r.online))),
  );
  const backlog = queue.streams.reduce((n, q) => n + (q.lag || 0), 0);
  const total = roles.comet.reduce((n, c) => n + (c.conn_count || 0), 0);
  box.replaceChildren(
    el("section", { class: "panel" }, el("h3", {}, "Comets · " + num(total) + " connections"),
      table("comets", ["id", "addresses", "ports", "connections", "IPs", "weight", "state", "updated"], comets, "No comet registered.")),
    el(
      "section",
      { class: "panel" },
      el("h3", {}, "Top rooms by online count"),
      roles.rooms.error ? el("p", { class: "bad" }, "Not every comet's rooms could be read: " + roles.rooms.error) : null,
      table("rooms", ["room", "online"], rooms, "No client is in a room."),
    ),
    el("section", { class: "panel" }, el("h3", {}, "Logic"), table("logics", ["id", "HTTP", "gRPC", "updated"], logics, "No logic registered.")),
    el("section", { class: "panel" }, el("h3", {}, "Job"), table("jobs", ["consumer", "updated"], jobs, "No job registered.")),
    el(
      "section",
      { class: "panel" },
      el("h3", {}, "Queue · " + num(queue.streams.length) + " streams · ", el("span", { id: "queue-lag", "data-lag": backlog }, num(backlog) + " not delivered")),
      // A master that did not answer cuts the list short: say so, rather
      // than let the missing streams look absent.
      queue.error ? el("p", { class: "bad" }, "Not every stream could be read: " + queue.error) : null,
      table("queue", ["stream", "length", "lag", "pending"], streams, "No stream yet: job creates them when it starts."),
    ),
  );
}
