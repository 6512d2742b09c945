// Rebalance: a weight per group, then the planned moves (the dry run, GET
// /api/rebalance/plan) drawn as a diff on the slot map, each moving slot
// split between its group's colour and its destination's; then apply (POST
// /api/rebalance), which queues one migration task per move.
import { get, post } from "../api.js";
import { change, confirmAction } from "../dialog.js";
import { el, expandSlots, groupColour, groupList, num, rangeText } from "../format.js";
import { SlotMap, legend } from "../slotmap.js";

let weightsBox = null;
let map = null;
let legendBox = null;
let planBox = null;
let plan = null;
let slots = null;
let applyButton = null;

function weights() {
  return [...weightsBox.querySelectorAll("input")]
    .map((i) => i.dataset.group + ":" + Math.max(0, Number(i.value) || 0))
    .join(",");
}

async function dryRun() {
  try {
    plan = await get("/api/rebalance/plan?weights=" + encodeURIComponent(weights()));
  } catch (e) {
    plan = null;
    planBox.replaceChildren(el("p", { class: "bad" }, "The plan was refused: " + e.message));
    return;
  }
  drawPlan();
}

function drawPlan() {
  map.draw(slots, plan ? plan.moves : []);
  applyButton.disabled = !plan || plan.moves.length === 0;
  if (!plan) return;
  const moved = plan.moves.reduce((n, m) => n + m.end - m.start + 1, 0);
  planBox.replaceChildren(
    el("h3", {}, plan.moves.length ? num(moved) + " slots move" : "Nothing to move"),
    el(
      "table",
      { id: "plan-shares" },
      el("thead", {}, el("tr", {}, el("th", {}, "group"), el("th", {}, "weight"), el("th", {}, "slots now"), el("th", {}, "after"))),
      el("tbody", {}, plan.groups.map((g) => el("tr", {}, el("td", {}, "group " + g.group), el("td", { class: "num" }, g.weight), el("td", { class: "num" }, num(g.before)), el("td", { class: "num" }, num(g.after))))),
    ),
    el(
      "ul",
      { id: "plan-moves" },
      plan.moves.map((m) =>
        el("li", { "data-start": m.start, "data-end": m.end, "data-to": m.to },
          el("span", { class: "swatch", style: "background-color: " + groupColour(m.from) }),
          "→",
          el("span", { class: "swatch", style: "background-color: " + groupColour(m.to) }),
          " slots " + rangeText(Array.from({ length: m.end - m.start + 1 }, (_, i) => m.start + i)) + ": " + (m.from ? "group " + m.from : "unassigned") + " → group " + m.to),
      ),
    ),
    el("ul", { class: "hint" }, plan.notes.map((n) => el("li", {}, n))),
  );
}

async function apply() {
  const w = weights();
  const ok = await confirmAction("Apply the rebalance?", "One migration task is queued per move; follow them in Tasks.");
  if (!ok) return;
  const done = await change("rebalance", () =>
    post("/api/rebalance?weights=" + encodeURIComponent(w)).then((a) => ({ message: a.tasks.length + " migration tasks queued" })),
  );
  if (done) {
    plan = null;
    planBox.replaceChildren();
  }
}

export function mount(root) {
  plan = null;
  weightsBox = el("div", { class: "weights", id: "weights" });
  map = new SlotMap(null);
  legendBox = el("div");
  planBox = el("div", { id: "plan" });
  applyButton = el("button", { class: "primary", id: "apply-plan", disabled: true, onclick: apply }, "Apply");
  root.append(
    el("h2", {}, "Rebalance"),
    el(
      "section",
      { class: "panel" },
      el("p", { class: "hint" }, "Weights: a group with weight 2 gets twice the slots of a group with weight 1; 0 empties it."),
      weightsBox,
      el("div", { class: "inline" }, el("button", { id: "dry-run", onclick: dryRun }, "Dry run"), applyButton),
    ),
    legendBox,
    el("div", { class: "split" }, el("section", { class: "panel" }, map.root), el("aside", { class: "panel detail" }, planBox)),
  );
}

export async function refresh() {
  const topo = await get("/api/topology");
  slots = expandSlots(topo.slots);
  // One weight input per group with a master; typed values survive refreshes.
  const groups = groupList(topo).filter((g) => g.servers.some((s) => s.role === "master"));
  const have = new Set([...weightsBox.querySelectorAll("input")].map((i) => i.dataset.group));
  if (groups.length !== have.size || groups.some((g) => !have.has(String(g.id)))) {
    weightsBox.replaceChildren(
      ...groups.map((g) =>
        el("label", {}, el("span", { class: "swatch", style: "background-color: " + groupColour(g.id) }), "group " + g.id + " ",
          el("input", { type: "number", min: 0, value: 1, "data-group": g.id, class: "weight" })),
      ),
    );
  }
  legendBox.replaceChildren(legend(slots));
  drawPlan();
}
