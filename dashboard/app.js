// The page: the header (product, leadership, ZooKeeper), the tabs, and the
// refresh loop. Each view is a module with `mount(root)` (build its parts
// once) and `refresh()` (fetch and redraw); the loop refreshes the view on
// screen about once a second, never two refreshes at once, so a slow
// ZooKeeper or server makes the page lag rather than pile up requests.
import { get, ApiError } from "./api.js";
import * as overview from "./views/overview.js";
import * as slots from "./views/slots.js";
import * as groups from "./views/groups.js";
import * as proxies from "./views/proxies.js";
import * as tasks from "./views/tasks.js";
import * as rebalance from "./views/rebalance.js";
import * as push from "./views/push.js";

const VIEWS = { overview, slots, groups, proxies, tasks, rebalance, push };
const PERIOD_MS = 1000;

let current = null;
let timer = null;
// Bumped by every refreshNow: a round that finds it changed does not schedule
// another, so there is never more than one loop.
let round = 0;

function show(name) {
  const view = VIEWS[name] || overview;
  const root = document.getElementById("view");
  if (current && current.unmount) current.unmount();
  root.replaceChildren();
  delete root.dataset.loaded;
  root.dataset.view = VIEWS[name] ? name : "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === "#" + root.dataset.view);
  }
  current = view;
  view.mount(root);
  refreshNow();
}

function refreshNow() {
  clearTimeout(timer);
  loop(++round);
}

// When the view last drew fresh data.
let freshAt = null;

// Refreshes the header and the view, then schedules the next round. The two
// fail apart: a view whose reads hang (a ZooKeeper stall) is dimmed and
// said to be old, while the header still tells what the dashboard knows.
async function loop(mine) {
  const view = current;
  const status = document.getElementById("status");
  const root = document.getElementById("view");
  const [head, body] = await Promise.allSettled([header(), view.refresh()]);
  if (mine === round) root.classList.toggle("stale", body.status === "rejected");
  const failed = [head, body].find((r) => r.status === "rejected");
  if (!failed) {
    freshAt = new Date();
    status.textContent = "updated " + freshAt.toLocaleTimeString();
    status.classList.remove("error");
    // Read by the browser tests: the view on screen has drawn real data.
    if (mine === round) root.dataset.loaded = "true";
  } else {
    const e = failed.reason;
    const old = body.status === "rejected" && freshAt ? ` (showing data of ${freshAt.toLocaleTimeString()})` : "";
    status.textContent = e.message + old;
    status.classList.add("error");
    if (head.status === "rejected") unknownHeader();
    // A standby's 503 is expected (the banner says where to go); anything
    // else is a fault of the page or the dashboard.
    if (!(e instanceof ApiError && e.status === 503)) console.error("refresh failed:", e.message);
  }
  if (mine === round) timer = setTimeout(() => loop(mine), PERIOD_MS);
}

// The header when the dashboard itself did not answer: not the last "leader".
function unknownHeader() {
  for (const id of ["zk", "leadership"]) {
    const badge = document.getElementById(id);
    badge.textContent = id === "zk" ? "ZooKeeper ?" : "no answer";
    badge.className = "badge warn";
  }
}

async function header() {
  const [d, stats] = await Promise.all([get("/api/dashboard"), get("/api/stats")]);
  const zk = document.getElementById("zk");
  zk.textContent = "ZooKeeper " + (stats.zk_connected ? "connected" : "disconnected");
  zk.className = "badge " + (stats.zk_connected ? "ok" : "bad");
  document.getElementById("product").textContent = d.product;
  const lead = document.getElementById("leadership");
  lead.textContent = d.role;
  lead.className = "badge " + (d.role === "leader" ? "ok" : "warn");
  const banner = document.getElementById("banner");
  if (d.role !== "leader") {
    banner.hidden = false;
    banner.replaceChildren(
      "This dashboard is a standby. ",
      d.leader
        ? Object.assign(document.createElement("a"), {
            href: "http://" + d.leader.addr + "/",
            textContent: "The leader is at " + d.leader.addr + ".",
          })
        : "No dashboard leads right now.",
    );
  } else {
    banner.hidden = true;
  }
}

// A change (dialog.js's `change`) redraws at once instead of at the next tick.
window.addEventListener("reborn:changed", refreshNow);
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
show(location.hash.slice(1) || "overview");
