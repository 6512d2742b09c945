// The page's two modal dialogs (the token prompt, the confirmation of a
// change) and its messages. Native <dialog> elements rather than
// window.prompt/confirm, so they can be styled, do not block the page's
// polling, and are clicked like any other element by the browser tests.

import { el } from "./format.js";

let pendingToken = null;

/**
 * Asks for the API token; resolves to it, or to null if the operator cancels.
 * Calls refused at the same time share one prompt.
 */
export function askToken(reason) {
  if (pendingToken) return pendingToken;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent =
    reason || "This dashboard asks for a token for changes.";
  input.value = "";
  pendingToken = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        pendingToken = null;
        const token = input.value.trim();
        resolve(dialog.returnValue === "ok" && token ? token : null);
      },
      { once: true },
    );
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return pendingToken;
}

/** Shows `text` and resolves to true if the operator confirms. */
export function confirmAction(title, text) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

/** A message at the bottom of the page; errors stay until clicked. */
export function notify(text, isError = false) {
  const box = document.createElement("div");
  box.className = isError ? "message error" : "message";
  box.textContent = text;
  box.addEventListener("click", () => box.remove());
  document.getElementById("messages").append(box);
  if (!isError) setTimeout(() => box.remove(), 6000);
}

// The changes on their way, by `what`. Views redraw every second, so a
// button cannot simply be disabled while its change runs (the redraw makes a
// fresh one); a second click of the same change is dropped here instead,
// rather than sent again and refused ("group 5 already exists") after the
// first succeeded.
const inFlight = new Set();

/**
 * Runs a change: `action` is an async function calling the API. Reports its
 * outcome as a message; resolves to its result, or null if it was refused
 * (or is a repeat of one still on its way).
 */
export async function change(what, action) {
  if (inFlight.has(what)) return null;
  inFlight.add(what);
  document.body.classList.add("busy");
  try {
    const result = await action();
    notify((result && result.message) || what + ": done");
    window.dispatchEvent(new Event("reborn:changed"));
    return result;
  } catch (e) {
    notify(what + " refused: " + e.message, true);
    return null;
  } finally {
    inFlight.delete(what);
    document.body.classList.toggle("busy", inFlight.size > 0);
  }
}

/**
 * A form for one change. On submit (instead of a page load) it asks
 * `confirm()` = [title, text] first when given, then runs `change(what,
 * action)`. `fields` are its labels and its button.
 */
export function changeForm({ id, className = "panel inline", what, confirm, action }, ...fields) {
  const onsubmit = async (e) => {
    e.preventDefault();
    if (inFlight.has(what)) return;
    if (confirm && !(await confirmAction(...confirm()))) return;
    await change(what, action);
  };
  return el("form", { class: className, id, onsubmit }, ...fields);
}
