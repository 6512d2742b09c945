// The map of the 1,024 slots: one cell per slot, coloured by its group,
// outlined while it migrates; with a plan, each slot that would move shows
// its group and its destination side by side (the Rebalance view's diff).
// Used by the Slots and Rebalance views.
import { el, groupColour, num } from "./format.js";

export class SlotMap {
  /** `onPick(id, pinned)` is called on hover (pinned false) and click (true). */
  constructor(onPick) {
    this.root = el("div", { class: "slotmap", role: "grid", "aria-label": "slot map" });
    this.cells = [];
    for (let id = 0; id < 1024; id++) {
      const cell = el("div", { class: "slot", "data-slot": id });
      this.cells.push(cell);
      this.root.append(cell);
    }
    // One listener for all cells.
    const pick = (pinned) => (e) => {
      const id = e.target && e.target.dataset && e.target.dataset.slot;
      if (id !== undefined && onPick) onPick(Number(id), pinned);
    };
    this.root.addEventListener("mouseover", pick(false));
    this.root.addEventListener("click", pick(true));
  }

  /**
   * Paints `slots` (1,024 entries: {id, group, state, from}); `moves` (a
   * rebalance plan's, optional) marks the slots that would move.
   */
  draw(slots, moves = []) {
    const dest = new Map();
    for (const m of moves) for (let id = m.start; id <= m.end; id++) dest.set(id, m.to);
    for (const s of slots) {
      const cell = this.cells[s.id];
      const colour = groupColour(s.group);
      cell.dataset.group = s.group;
      cell.dataset.state = s.state;
      cell.style.backgroundColor = colour;
      cell.classList.toggle("pre_migrate", s.state === "pre_migrate");
      cell.classList.toggle("migrate", s.state === "migrate");
      const to = dest.get(s.id);
      if (to !== undefined) {
        cell.dataset.to = to;
        cell.classList.add("moving");
        cell.style.backgroundImage =
          "linear-gradient(135deg, " + colour + " 50%, " + groupColour(to) + " 50%)";
      } else if (cell.dataset.to !== undefined) {
        delete cell.dataset.to;
        cell.classList.remove("moving");
        cell.style.backgroundImage = "";
      }
      cell.title = "slot " + s.id + (s.group ? " · group " + s.group : " · unassigned");
    }
  }
}

/** The legend: one swatch per group (and unassigned), with its slot count. */
export function legend(slots) {
  const counts = new Map();
  for (const s of slots) counts.set(s.group, (counts.get(s.group) || 0) + 1);
  const box = el("div", { class: "legend" });
  for (const g of [...counts.keys()].sort((a, b) => a - b)) {
    box.append(
      el(
        "span",
        { class: "legend-item", "data-group": g },
        el("span", { class: "swatch", "data-group": g, style: "background-color: " + groupColour(g) }),
        (g ? "group " + g : "unassigned") + " · " + num(counts.get(g)),
      ),
    );
  }
  box.append(
    el("span", { class: "legend-item" }, el("span", { class: "swatch pre_migrate" }), "pre_migrate"),
    el("span", { class: "legend-item" }, el("span", { class: "swatch migrate" }), "migrate"),
  );
  return box;
}
