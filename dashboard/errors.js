// Records every uncaught error, rejected promise, failed resource load and
// console.error of the page in window.rebornErrors, so that the browser tests
// (and an operator without the developer tools open) can see what went wrong.
// A classic script loaded first, so it is in place before the others run.
"use strict";
window.rebornErrors = [];
window.addEventListener(
  "error",
  (e) => {
    // Resource errors do not bubble: caught here in the capture phase.
    const target = e.target;
    if (target && target !== window && (target.src || target.href)) {
      window.rebornErrors.push("failed to load " + (target.src || target.href));
    } else {
      window.rebornErrors.push(String(e.message || e.error || e));
    }
  },
  true,
);
window.addEventListener("unhandledrejection", (e) => {
  const reason = e.reason;
  window.rebornErrors.push("unhandled rejection: " + ((reason && reason.message) || reason));
});
{
  const original = console.error.bind(console);
  console.error = (...args) => {
    window.rebornErrors.push(args.map(String).join(" "));
    original(...args);
  };
}
