// Slots: the 1,024 slots as a map coloured by group, marking pre_migrate and
// migrate; hovering or clicking a slot tells its group, state, master and
// where it is going (a migrating slot's destination, or the task queued for it).
// Slots can be assigned to a group without moving data (`reborn admin
// slots-assign`): for unassigned slots, or slots whose data does not matter.
import { get, post } from "../api.js";
import { changeForm } from "../dialog.js";
import { el, expandSlots, masterOf } from "../format.js";
import { SlotMap, legend } from "../slotmap.js";

let map = null;
let legendBox = null;
let detail = null;
let last = null; // {slots, topo, tasks}
let pinned = null;

function describe(id) {
  if (!last) return;
  const s = last.slots[id];
  const task = last.tasks.find((t) => !["done", "cancelled", "failed"].includes(t.state) && t.slots.includes(id));
  let going = "stays";
  if (s.state !== "online" && s.from) going = "moving from group " + s.from + " to group " + s.group;
  else if (task) going = "queued to move to group " + task.to + " (task " + task.id + ")";
  const row = (k, v) => el("tr", {}, el("th", {}, k), el("td", { "data-field": k }, v));
  detail.replaceChildren(
    el("h3", {}, "Slot " + id + (pinned === id ? " (pinned)" : "")),
    el(
      "table",
      { class: "kv" },
      row("group", s.group ? String(s.group) : "unassigned"),
      row("state", s.state),
      row("master", masterOf(last.topo, s.group) || "none"),
      row("going", going),
    ),
  );
  detail.dataset.slot = id;
}

/** The form that assigns slots to a group without moving their keys. */
function assignForm() {
  const start = el("input", { type: "number", min: 0, max: 1023, name: "assign-start", placeholder: "first", required: true });
  const end = el("input", { type: "number", min: 0, max: 1023, name: "assign-end", placeholder: "last" });
  const group = el("input", { type: "number", min: 0, name: "assign-group", placeholder: "group (0: none)", required: true, style: "width: 9.5em" });
  const range = () => [Number(start.value), Number(end.value || start.value), Number(group.value)];
  return changeForm(
    {
      id: "assign-slots",
      what: "assign slots",
      confirm: () => {
        const [s, t, g] = range();
        return [
          "Assign slots " + s + "-" + t + (g ? " to group " + g : " to no group") + "?",
          "Only the routing changes: keys already in these slots stay where they are and are no longer reachable. To move keys too, start a migration in Tasks.",
        ];
      },
      action: () => {
        const [s, t, g] = range();
        return post("/api/slots/assign", { start: s, end: t, group: g });
      },
    },
    el("label", {}, "Assign slots ", start),
    el("label", {}, "to ", end),
    el("label", {}, "to group ", group),
    el("button", {}, "Assign without moving data"),
  );
}

export function mount(root) {
  pinned = null;
  last = null;
  map = new SlotMap((id, pin) => {
    if (pin) pinned = pinned === id ? null : id;
    if (pin || pinned === null) describe(id);
  });
  legendBox = el("div");
  detail = el("aside", { class: "panel detail", id: "slot-detail" }, el("p", { class: "hint" }, "Hover over a slot, or click to pin it."));
  root.append(
    el("h2", {}, "Slots"),
    legendBox,
    el("div", { class: "split" }, el("section", { class: "panel" }, map.root), detail),
    assignForm(),
  );
}

export async function refresh() {
  const [topo, tasks] = await Promise.all([get("/api/topology"), get("/api/tasks")]);
  const slots = expandSlots(topo.slots);
  last = { slots, topo, tasks };
  map.draw(slots);
  legendBox.replaceChildren(legend(slots));
  if (pinned !== null) describe(pinned);
}
