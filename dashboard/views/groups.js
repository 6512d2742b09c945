// Groups: each group's servers as their INFO describes them (role, link,
// memory, keys, clients, ops/s, replication offset and lag), and the changes:
// add a group, add a server, promote a replica (after a confirmation that
// says what a promote does), remove a server or an empty group. Below the
// groups, the failovers the dashboard ran and the promotes operators asked for
// (`reborn admin failovers`).
import { del, get, post } from "../api.js";
import { change, changeForm, confirmAction } from "../dialog.js";
import { bytes, el, expandSlots, groupColour, groupList, num } from "../format.js";

let list = null;

function forms() {
  const groupId = el("input", { type: "number", min: 1, name: "group-id", placeholder: "id", required: true });
  const addGroup = changeForm(
    { id: "add-group", className: "inline", what: "add group", action: () => post("/api/groups", { id: Number(groupId.value) }) },
    el("label", {}, "New group ", groupId),
    el("button", { class: "primary" }, "Add group"),
  );
  const target = el("input", { type: "number", min: 1, name: "server-group", placeholder: "group", required: true });
  const addr = el("input", { name: "server-addr", placeholder: "host:port", required: true });
  const role = el("select", { name: "server-role" }, el("option", { value: "master" }, "master"), el("option", { value: "replica" }, "replica"));
  const addServer = changeForm(
    {
      id: "add-server",
      className: "inline",
      what: "add server",
      action: () => post("/api/groups/" + Number(target.value) + "/servers", { addr: addr.value.trim(), role: role.value }),
    },
    el("label", {}, "Server ", addr),
    el("label", {}, "to group ", target),
    el("label", {}, "as ", role),
    el("button", { class: "primary" }, "Add server"),
  );
  return el("section", { class: "panel forms" }, addGroup, addServer);
}

let failovers = null;

export function mount(root) {
  list = el("div", { id: "groups" });
  failovers = el("tbody");
  root.append(
    el("h2", {}, "Groups"),
    forms(),
    list,
    el(
      "section",
      { class: "panel scroll" },
      el("h3", {}, "Failovers and promotes"),
      el(
        "table",
        { id: "failovers" },
        el("thead", {}, el("tr", {}, ...["#", "when", "group", "old master", "new master", "detection", "switch", "outcome", "why"].map((h) => el("th", {}, h)))),
        failovers,
      ),
    ),
  );
}

/** One row of the failover history, newest first. */
function failoverRow(f) {
  return el(
    "tr",
    { "data-failover": f.seq, class: f.new_master ? "" : "down" },
    el("td", {}, String(f.seq)),
    el("td", {}, new Date(f.at_ms).toLocaleString()),
    el("td", {}, String(f.group)),
    el("td", {}, f.old_master),
    el("td", {}, f.new_master || "none"),
    // An operator's promote detected nothing.
    el("td", { class: "num" }, f.detection_ms ? num(f.detection_ms) + " ms" : "–"),
    el("td", { class: "num" }, num(f.switch_ms) + " ms"),
    el("td", { class: f.new_master ? "ok" : "bad" }, f.outcome),
    el("td", { class: "hint" }, [f.reason, ...(f.notes || [])].join("; ")),
  );
}

async function promote(group, addr) {
  const ok = await confirmAction(
    "Promote " + addr + "?",
    addr + " becomes the master of group " + group + ". Every proxy switches to it, and the other servers of the group replicate from it.",
  );
  if (ok) await change("promote", () => post("/api/groups/" + group + "/promote", { addr }));
}

async function removeServer(group, addr) {
  const ok = await confirmAction("Remove " + addr + "?", addr + " leaves group " + group + ". Its data stays on the server.");
  if (ok) await change("remove server", () => del("/api/groups/" + group + "/servers/" + encodeURIComponent(addr)));
}

async function removeGroup(group) {
  const ok = await confirmAction("Remove group " + group + "?", "Only a group without servers and slots can be removed.");
  if (ok) await change("remove group", () => del("/api/groups/" + group));
}

function serverRow(group, s, info) {
  const i = info || { up: false, error: "not asked yet" };
  const actions = el("td", { class: "actions" });
  // A replica that does not answer cannot be promoted (the dashboard
  // refuses it): no button for it.
  if (s.role === "replica" && i.up) {
    actions.append(el("button", { "data-action": "promote", "data-addr": s.addr, onclick: () => promote(group, s.addr) }, "Promote"));
  }
  actions.append(el("button", { class: "quiet", "data-action": "remove", onclick: () => removeServer(group, s.addr) }, "Remove"));
  const link = s.role === "replica" ? i.link || "down" : "—";
  return el(
    "tr",
    { "data-addr": s.addr, "data-role": s.role, class: i.up ? "" : "down" },
    el("td", {}, s.addr),
    el("td", {}, s.role, i.up && i.reported_role && (i.reported_role === "slave") !== (s.role === "replica") ? el("span", { class: "warn" }, " (reports " + i.reported_role + ")") : null),
    el("td", { class: i.up ? "ok" : "bad" }, i.up ? "up" : "down", i.error ? el("span", { class: "hint" }, " " + i.error) : null),
    el("td", { class: link === "up" || link === "—" ? "" : "bad" }, link),
    el("td", { class: "num" }, i.up ? bytes(i.memory) : ""),
    el("td", { class: "num", "data-keys": i.up ? i.keys : "" }, i.up ? num(i.keys) : ""),
    el("td", { class: "num" }, i.up ? num(i.clients) : ""),
    el("td", { class: "num" }, i.up ? num(i.ops_per_sec) : ""),
    el("td", { class: "num" }, i.up ? num(i.offset) : ""),
    el("td", { class: "num" }, i.lag === null || i.lag === undefined ? "" : num(i.lag)),
    actions,
  );
}

export async function refresh() {
  const [topo, servers, history] = await Promise.all([get("/api/topology"), get("/api/servers"), get("/api/failovers")]);
  const rows = history.slice().sort((a, b) => b.seq - a.seq).map(failoverRow);
  failovers.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "hint" }, "No automatic failover so far."))]));
  const slots = expandSlots(topo.slots);
  const info = new Map(servers.map((s) => [s.group + "/" + s.addr, s]));
  const sections = groupList(topo).map((g) => {
    const owned = slots.filter((s) => s.group === g.id).length;
    const master = g.servers.find((s) => s.role === "master");
    const masterInfo = master && info.get(g.id + "/" + master.addr);
    const keys = masterInfo && masterInfo.up ? masterInfo.keys : null;
    const head = el(
      "h3",
      {},
      el("span", { class: "swatch", style: "background-color: " + groupColour(g.id) }),
      "Group " + g.id,
      el("span", { class: "hint" }, " · " + num(owned) + " slots · ", el("span", { "data-group-keys": keys ?? "" }, keys === null ? "keys unknown" : num(keys) + " keys")),
      owned === 0 && g.servers.length === 0 ? el("button", { class: "quiet", onclick: () => removeGroup(g.id) }, "Remove group") : null,
    );
    const table = el(
      "table",
      { class: "servers" },
      el("thead", {}, el("tr", {}, ...["server", "role", "health", "link", "memory", "keys", "clients", "ops/s", "offset", "lag", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, g.servers.map((s) => serverRow(g.id, s, info.get(g.id + "/" + s.addr)))),
    );
    return el("section", { class: "panel group", "data-group": g.id, "data-master": master ? master.addr : "" }, head, el("div", { class: "scroll" }, table));
  });
  if (sections.length === 0) sections.push(el("p", { class: "hint" }, "No groups yet: add one above."));
  list.replaceChildren(...sections);
}
