// Small helpers shared by the views: building elements, numbers as operators
// read them, slot ranges, and the colour of each group.

/** `el("td", {class: "num"}, "12")`: an element with attributes and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** 12345 → "12,345". */
export function num(n) {
  return Number(n || 0).toLocaleString("en-US");
}

/** Bytes as KiB/MiB/GiB. */
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n || 0);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

/** Microseconds, shown in ms above 1 ms. */
export function micros(us) {
  return us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs";
}

/** Seconds as "1h 2m", "3m 4s", "5s". */
export function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s >= 3600) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  if (s >= 60) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return s + "s";
}

/** [0,1,2,5,7,8] → "0-2,5,7-8". */
export function rangeText(slots) {
  const sorted = [...slots].sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    out.push(i === j ? String(sorted[i]) : sorted[i] + "-" + sorted[j]);
    i = j + 1;
  }
  return out.join(",");
}

/** The slot table's ranges (as the API sends them) → 1,024 slot entries. */
export function expandSlots(ranges) {
  const slots = [];
  for (let id = 0; id < 1024; id++) slots.push({ id, group: 0, state: "online", from: null });
  for (const r of ranges) {
    for (let id = r.start; id <= r.end; id++) {
      slots[id] = { id, group: r.group, state: r.state || "online", from: r.from ?? null };
    }
  }
  return slots;
}

/**
 * The colour of group `g`: hues a golden angle apart, so neighbouring ids
 * differ clearly; grey for unassigned slots (group 0).
 */
export function groupColour(g) {
  if (!g) return "rgb(204, 204, 204)";
  const hue = (g * 137.508 + 200) % 360;
  return "hsl(" + hue.toFixed(1) + ", 60%, 50%)";
}

/** The groups of a topology, by id, as an array. */
export function groupList(topo) {
  return Object.values(topo.groups || {}).sort((a, b) => a.id - b.id);
}

/** The master's address of group `g`, or "". */
export function masterOf(topo, g) {
  const group = (topo.groups || {})[g];
  const m = group && group.servers.find((s) => s.role === "master");
  return m ? m.addr : "";
}
