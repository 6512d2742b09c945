// The dashboard's JSON API as the views call it: one fetch per call, errors
// turned into ApiError with the server's message, and the token.
//
// A dashboard with `[auth] token` refuses changes (and, with read_auth, reads)
// with 401. The first 401 asks the operator for the token once, keeps it in
// sessionStorage (this tab only, gone when the tab closes) and retries; every
// later call sends it as `Authorization: Bearer <token>`.
import { askToken } from "./dialog.js";

const TOKEN_KEY = "reborn.token";
// How long a read may take. A ZooKeeper that stalls makes the reads that go
// to it hang until its request timeout; the page then says its data is old
// rather than freeze with the last figures. Changes are not cut short: the
// server may still be making one, and "no answer" would be a false report.
const READ_TIMEOUT_MS = 4000;

/** A refused or failed call: the HTTP status and the server's message. */
export class ApiError extends Error {
  constructor(status, message, leader) {
    super(message);
    this.status = status;
    // A standby names the leader (503 with "leader": "host:port").
    this.leader = leader || null;
  }
}

async function once(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const abort = new AbortController();
  const timer = method === "GET" ? setTimeout(() => abort.abort(), READ_TIMEOUT_MS) : null;
  init.signal = abort.signal;
  let res;
  let text;
  try {
    res = await fetch(path, init);
    text = await res.text();
  } catch (e) {
    if (abort.signal.aborted) {
      throw new ApiError(0, `${path} did not answer within ${READ_TIMEOUT_MS / 1000} s (is ZooKeeper slow?)`);
    }
    throw new ApiError(0, "the dashboard does not answer (" + e.message + ")");
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  return { res, data };
}

// The operator cancelled the last token prompt. The page refreshes every
// second; without this, a read refused for want of the token reopened the
// prompt at once, so Cancel could not close it. Reads then fail with a
// message until a change (the operator's own click) asks again.
let declined = false;
// The last token typed was refused: the next prompt says so (the refusal
// itself went to the footer, behind the prompt).
let wrong = false;

/** Calls the API; resolves to the JSON body of a 2xx reply. */
export async function call(method, path, body) {
  let { res, data } = await once(method, path, body);
  if (res.status === 401 && !(declined && method === "GET")) {
    // A stored token that is refused is wrong: forget it before asking.
    sessionStorage.removeItem(TOKEN_KEY);
    const reason = (data && data.error) || "";
    const token = await askToken(wrong ? "The token you gave was wrong. " + reason : reason);
    declined = !token;
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      ({ res, data } = await once(method, path, body));
      wrong = res.status === 401;
      if (wrong) sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  if (!res.ok) {
    throw new ApiError(res.status, (data && data.error) || res.statusText, data && data.leader);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const del = (path) => call("DELETE", path);
