// Tasks: the migration queue with a progress bar, keys moved, keys/s, ETA
// and errors; start a migration (slots to a group); pause, resume or cancel
// one.
//
// The migrator does not know how many keys a task has until it has scanned
// them all (stock Redis cannot count the keys of a slot), so the bar is an
// estimate while a task migrates: the keys still on the source are taken to
// spread evenly over its slots. It reaches 100% when the task is done.
import { get, post } from "../api.js";
import { change, changeForm, confirmAction } from "../dialog.js";
import { duration, el, expandSlots, groupList, num, rangeText } from "../format.js";

let body = null;
let groupSelect = null;

function startForm() {
  const start = el("input", { type: "number", min: 0, max: 1023, name: "start", placeholder: "first", required: true });
  const end = el("input", { type: "number", min: 0, max: 1023, name: "end", placeholder: "last", required: true });
  groupSelect = el("select", { name: "to", required: true });
  const range = () => [Number(start.value), Number(end.value || start.value), Number(groupSelect.value)];
  return changeForm(
    {
      id: "start-migration",
      what: "migration",
      confirm: () => {
        const [s, t, to] = range();
        return ["Migrate slots " + s + "-" + t + "?", "Slots " + s + "-" + t + " and their keys move to group " + to + ". Clients keep working meanwhile."];
      },
      action: () => {
        const [s, t, to] = range();
        return post("/api/migrate", { start: s, end: t, to }).then((task) => ({ message: "task " + task.id + " queued" }));
      },
    },
    el("label", {}, "Move slots ", start),
    el("label", {}, "to ", end),
    el("label", {}, "to group ", groupSelect),
    el("button", { class: "primary" }, "Start migration"),
  );
}

export function mount(root) {
  body = el("tbody");
  root.append(
    el("h2", {}, "Tasks"),
    startForm(),
    el(
      "section",
      { class: "panel scroll" },
      el(
        "table",
        { id: "tasks" },
        el("thead", {}, el("tr", {}, ...["task", "slots", "from → to", "state", "progress", "keys moved", "keys/s", "ETA", "errors", ""].map((h) => el("th", {}, h)))),
        body,
      ),
    ),
  );
}

/**
 * The share of the task done, 0..1, and the keys estimated left. Only the
 * task's slots drain, so the source's keys now are its other slots' keys
 * (about what they were) plus what is left of the task's: at the start the
 * source held `keys + moved`, spread evenly over its slots, the task's share
 * of that is what the task has to move. (Spreading the keys now over all the
 * source's slots, as before, read 70% at 92% done.)
 */
export function estimate(t, slots, masterKeys) {
  if (t.state === "done") return { share: 1, left: 0 };
  if (t.state === "queued" || !t.from) return { share: 0, left: null };
  const moved = t.progress.moved || 0;
  const otherSlots = slots.filter((s) => s.group === t.from && s.state === "online").length;
  const keys = masterKeys.get(t.from);
  if (keys === undefined) return { share: 0, left: null };
  const total = ((keys + moved) * t.slots.length) / Math.max(1, otherSlots + t.slots.length);
  const left = Math.max(0, Math.round(total - moved));
  return { share: moved + left === 0 ? 0 : moved / (moved + left), left };
}

function controls(t) {
  const act = (what, path) => () => change(what + " task " + t.id, () => post("/api/tasks/" + t.id + "/" + path).then(() => ({ message: "task " + t.id + " " + what })));
  const out = el("td", { class: "actions" });
  if (["done", "cancelled", "failed"].includes(t.state)) return out;
  if (t.paused) out.append(el("button", { "data-action": "resume", onclick: act("resumed", "resume") }, "Resume"));
  else out.append(el("button", { "data-action": "pause", onclick: act("paused", "pause") }, "Pause"));
  out.append(
    el("button", {
      class: "quiet",
      "data-action": "cancel",
      onclick: async () => {
        if (await confirmAction("Cancel task " + t.id + "?", "Only a task whose slots have not switched yet can be cancelled.")) await act("cancelled", "cancel")();
      },
    }, "Cancel"),
  );
  return out;
}

// The source group: recorded when the task starts; for a queued one, where
// its slots are now; none for a task that ended before it started.
function from(t, slots) {
  if (t.from) return String(t.from);
  const now = t.state === "queued" ? slots[t.slots[0]] : null;
  return now && now.group ? String(now.group) : "–";
}

function row(t, slots, masterKeys) {
  const { share, left } = estimate(t, slots, masterKeys);
  const p = t.progress || {};
  const rate = p.busy_ms > 0 ? (p.moved * 1000) / p.busy_ms : 0;
  const pct = Math.round(share * 100);
  const ended = ["done", "failed", "cancelled"].includes(t.state);
  const state = t.state + (t.paused && !ended ? " (paused)" : "");
  // A done task's last batch error was retried and overcome: not a fault now.
  const error = t.error || (p.last_error && t.state === "done" ? "earlier: " + p.last_error : p.last_error);
  return el(
    "tr",
    { "data-task": t.id, "data-state": t.state },
    el("td", {}, String(t.id)),
    el("td", {}, rangeText(t.slots)),
    el("td", {}, from(t, slots) + " → " + t.to),
    el("td", { class: t.state === "failed" ? "bad" : t.state === "done" ? "ok" : "" }, state),
    el(
      "td",
      {},
      el("div", { class: "bar", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100, "data-progress": pct },
        el("div", { class: "fill " + t.state, style: "width: " + pct + "%" })),
      el("span", { class: "hint" }, (t.state === "migrating" ? "≈" : "") + pct + "%"),
    ),
    el("td", { class: "num" }, num(p.moved)),
    el("td", { class: "num" }, rate ? num(Math.round(rate)) : ""),
    el("td", {}, t.state === "migrating" && !t.paused && rate && left !== null ? duration(left / rate) : ""),
    el(
      "td",
      // A cancelled task's note ("cancelled by an operator") is no fault.
      { class: error && !["cancelled", "done"].includes(t.state) ? "bad" : "" },
      num((p.errors || 0) + (t.switch_failures || 0)),
      error ? el("div", { class: "hint" }, error) : null,
    ),
    controls(t),
  );
}

export async function refresh() {
  const [tasks, topo, servers] = await Promise.all([get("/api/tasks"), get("/api/topology"), get("/api/servers")]);
  const slots = expandSlots(topo.slots);
  const masterKeys = new Map(servers.filter((s) => s.role === "master" && s.up).map((s) => [s.group, s.keys]));
  // Rebuilt only when the groups change: rebuilding every second would close
  // the list under the operator's pointer (and lose the choice).
  const ids = groupList(topo).map((g) => String(g.id));
  const shown = [...groupSelect.options].map((o) => o.value).filter((v) => v !== "");
  if (ids.join() !== shown.join()) {
    const chosen = groupSelect.value;
    // No group is chosen for the operator: a migration to the first one in
    // the list would be one click of "Start migration" away.
    const none = el("option", { value: "", disabled: true }, "choose…");
    groupSelect.replaceChildren(none, ...ids.map((id) => el("option", { value: id }, "group " + id)));
    groupSelect.value = ids.includes(chosen) ? chosen : "";
  }
  const rows = [...tasks].sort((a, b) => b.id - a.id).map((t) => row(t, slots, masterKeys));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 10, class: "hint" }, "No migration yet.")));
  body.replaceChildren(...rows);
}
