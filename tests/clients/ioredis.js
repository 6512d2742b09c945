#!/usr/bin/env node
// ioredis 5, with its default settings (RESP2, ready check by INFO, offline queue,
// auto-resubscribe), against a reborn proxy.
//
// Run by tests/clients.rs with the packages that scripts/nodeenv.sh installs:
//
//     NODE_PATH=target/nodeenv/node_modules node tests/clients/ioredis.js --port 19000 \
//         --keys KEY_IN_GROUP_1,KEY_IN_GROUP_2 --checks ping,pipeline
//
// Each check prints `ok <name>` or `FAIL <name>: <why>`; the exit status is 0 only if
// every selected check passed. `--list` prints the checks. Every check runs on fresh
// clients (`new Redis(port, host)`, nothing else set) and has 20 s to finish.
"use strict";

const assert = require("node:assert/strict");
const Redis = require("ioredis");

const CHECK_TIMEOUT_MS = 20000;

// The lock of the Redis docs' "distributed lock" pattern: SET NX PX to take it, a
// script that deletes the key only if it still holds our token to release it.
const RELEASE = `if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
else
  return 0
end`;

const checks = {
  async ping(ctx) {
    const r = ctx.client();
    assert.equal(await r.ping(), "PONG");
    assert.equal(await r.ping("hello"), "hello");
  },

  // The ready check (INFO) passed if we got here with status "ready".
  async set_get(ctx) {
    const r = ctx.client();
    const [k1, k2] = ctx.keys;
    assert.equal(await r.set(k1, "v1"), "OK");
    assert.equal(await r.set(k2, "v2"), "OK");
    assert.equal(await r.get(k1), "v1");
    assert.equal(await r.get(k1 + ":missing"), null);
    assert.deepEqual(await r.mget(k1, k1 + ":missing", k2), ["v1", null, "v2"]);
    assert.equal(r.status, "ready");
  },

  // A pipeline without a transaction, across keys of both groups: one write of all
  // the commands, the replies in order.
  async pipeline(ctx) {
    const r = ctx.client();
    const [k1, k2] = ctx.keys;
    const got = await r
      .pipeline()
      .set(k1, "p1")
      .set(k2, "p2")
      .get(k1)
      .get(k2)
      .mget(k1, k2)
      .del(k1 + ":none")
      .incr(k1) // an error in the middle stays in its place
      .get(k2)
      .exec();
    assert.deepEqual(
      got.slice(0, 6),
      [[null, "OK"], [null, "OK"], [null, "p1"], [null, "p2"], [null, ["p1", "p2"]], [null, 0]],
    );
    assert.ok(got[6][0] instanceof Error && /not an integer/.test(got[6][0].message), String(got[6]));
    assert.deepEqual(got[7], [null, "p2"]);
  },

  // MULTI ... EXEC written in one go (ioredis's multi()), on keys of one slot, an
  // EXECABORT for a queued syntax error, and a WATCH conflict.
  async transaction(ctx) {
    const r = ctx.client();
    const tag = "{" + ctx.keys[0] + "}";
    const a = tag + "a";
    const b = tag + "b";
    await r.del(a, b);
    const got = await r.multi().incr(a).incr(a).set(b, "x").get(b).exec();
    assert.deepEqual(got, [[null, 1], [null, 2], [null, "OK"], [null, "x"]]);

    // multi({ pipeline: false }) sends MULTI at once; then each command answers
    // QUEUED and exec() sends EXEC.
    assert.equal(await r.multi({ pipeline: false }), "OK");
    assert.equal(await r.incr(a), "QUEUED");
    assert.deepEqual(await r.exec(), [[null, 3]]);

    await assert.rejects(r.multi().set(a).get(a).exec(), /EXECABORT/);

    // WATCH on this connection, a write from another: EXEC returns null.
    const other = ctx.client();
    assert.equal(await r.watch(a), "OK");
    assert.equal(await other.set(a, "changed"), "OK");
    assert.equal(await r.multi().set(a, "lost").exec(), null);
    assert.equal(await r.get(a), "changed");
  },

  // A lock: SET NX PX takes it, a Lua script releases it only for its owner.
  async lock(ctx) {
    const r = ctx.client();
    for (const key of ctx.keys) {
      const lock = key + ":lock";
      await r.del(lock);
      assert.equal(await r.set(lock, "token-1", "PX", 10000, "NX"), "OK");
      assert.equal(await r.set(lock, "token-2", "PX", 10000, "NX"), null, "taken twice");
      const ttl = await r.pttl(lock);
      assert.ok(ttl > 0 && ttl <= 10000, `pttl ${ttl}`);
      assert.equal(await r.eval(RELEASE, 1, lock, "token-2"), 0, "released by a stranger");
      assert.equal(await r.eval(RELEASE, 1, lock, "token-1"), 1);
      assert.equal(await r.exists(lock), 0);
      assert.equal(await r.set(lock, "token-2", "PX", 10000, "NX"), "OK", "free again");
      await r.del(lock);
    }
  },

  // Scripts: defineCommand (EVAL the first time on a connection, EVALSHA after, EVAL
  // again on NOSCRIPT: the proxy's one connection reaches groups that may not have the
  // script yet), inside pipelines and transactions, and SCRIPT LOAD + EVALSHA by hand.
  async script(ctx) {
    const r = ctx.client();
    const [k1, k2] = ctx.keys;
    // A body unique to this run, so no group has it cached from an earlier one.
    const nonce = `${process.pid}-${Date.now()}`;
    r.defineCommand("incrTwice", {
      numberOfKeys: 1,
      lua: `-- ${nonce}\nredis.call('INCRBY', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[1], ARGV[1])`,
    });
    const tag = "{" + k1 + "}";
    await r.del(k1 + ":n", k2 + ":n", tag + "m");
    assert.equal(await r.incrTwice(k1 + ":n", 2), 4); // EVAL
    assert.equal(await r.incrTwice(k1 + ":n", 2), 8); // EVALSHA, group 1 has it
    assert.equal(await r.incrTwice(k2 + ":n", 3), 6); // EVALSHA on group 2: NOSCRIPT, then EVAL
    assert.equal(await r.incrTwice(k2 + ":n", 3), 12);
    const piped = await r.pipeline().incrTwice(k1 + ":n", 1).incrTwice(k2 + ":n", 1).exec();
    assert.deepEqual(piped, [[null, 10], [null, 14]]);
    const txn = await r.multi().incrTwice(tag + "m", 5).get(tag + "m").exec();
    assert.deepEqual(txn, [[null, 10], [null, "10"]]);

    const lua = `-- ${nonce}\nreturn {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}`;
    const sha = await r.script("LOAD", lua); // every group
    assert.match(sha, /^[0-9a-f]{40}$/);
    assert.deepEqual(await r.script("EXISTS", sha), [1]);
    await r.set(k1, "one");
    await r.set(k2, "two");
    assert.deepEqual(await r.evalsha(sha, 1, k1, "a"), [k1, "a", "one"]);
    assert.deepEqual(await r.evalsha(sha, 1, k2, "b"), [k2, "b", "two"]);
    await assert.rejects(r.evalsha("0".repeat(40), 1, k1), /NOSCRIPT/);
  },

  // SUBSCRIBE and PSUBSCRIBE on one client, PUBLISH from another; UNSUBSCRIBE leaves the
  // subscriber mode so ordinary commands work again.
  async pubsub(ctx) {
    const sub = ctx.client();
    const pub = ctx.client();
    const channel = `ioredis-check:${process.pid}`;
    const got = [];
    let notify;
    sub.on("message", (ch, msg) => {
      got.push(["message", ch, msg]);
      if (notify) notify();
    });
    sub.on("pmessage", (pattern, ch, msg) => {
      got.push(["pmessage", pattern, ch, msg]);
      if (notify) notify();
    });
    const until = async (n) => {
      while (got.length < n) await new Promise((resolve) => (notify = resolve));
    };
    assert.equal(await sub.subscribe(channel), 1);
    assert.equal(await sub.psubscribe("ioredis-check:*"), 2);
    assert.equal(await pub.publish(channel, "hi"), 2); // the channel and the pattern
    await until(2);
    got.sort((x, y) => x[0].localeCompare(y[0]));
    assert.deepEqual(got, [
      ["message", channel, "hi"],
      ["pmessage", "ioredis-check:*", channel, "hi"],
    ]);
    // (By name: ioredis 5's unsubscribe() without names waits for ever, direct too.)
    assert.equal(await sub.unsubscribe(channel), 1);
    assert.equal(await sub.punsubscribe("ioredis-check:*"), 0);
    assert.equal(await pub.publish(channel, "nobody"), 0);
    assert.equal(await sub.ping(), "PONG");
  },

  // scanStream walks every group: each key once (SCAN's guarantee is at least once;
  // a Set makes the check about completeness), with MATCH and COUNT.
  async scan_stream(ctx) {
    const r = ctx.client();
    const prefix = `ioredis-scan-check:${process.pid}:`;
    const want = new Set();
    const pipe = r.pipeline();
    for (let i = 0; i < 300; i++) {
      want.add(prefix + i);
      pipe.set(prefix + i, "1");
    }
    await pipe.exec();
    const got = new Set();
    const stream = r.scanStream({ match: prefix + "*", count: 50 });
    for await (const batch of stream) for (const k of batch) got.add(k);
    const missing = [...want].filter((k) => !got.has(k));
    const extra = [...got].filter((k) => !want.has(k));
    assert.ok(missing.length === 0 && extra.length === 0, `missing ${missing.slice(0, 5)}, extra ${extra.slice(0, 5)}`);
    await r.del(...want);
  },
};

function parseArgs(argv) {
  const args = { host: "127.0.0.1", port: 19000, keys: "k1,k2", checks: Object.keys(checks).join(","), list: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--list") args.list = true;
    else if (["--host", "--port", "--keys", "--checks"].includes(flag) && i + 1 < argv.length) args[flag.slice(2)] = argv[++i];
    else throw new Error(`unknown or incomplete argument ${flag}`);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.list) {
    console.log(Object.keys(checks).join("\n"));
    return 0;
  }
  const keys = args.keys.split(",");
  if (keys.length !== 2) throw new Error("--keys takes two keys");
  const selected = args.checks.split(",").filter((c) => c);
  const unknown = selected.filter((c) => !(c in checks));
  if (unknown.length) throw new Error(`unknown checks ${unknown}; known: ${Object.keys(checks)}`);
  const version = require("ioredis/package.json").version;
  console.log(`ioredis ${version}, node ${process.version}, default settings, ${args.host}:${args.port}`);

  let failed = 0;
  for (const name of selected) {
    const clients = [];
    const ctx = {
      keys,
      client() {
        const c = new Redis(Number(args.port), args.host);
        c.on("error", () => {}); // reported through the commands that fail
        clients.push(c);
        return c;
      },
    };
    let timer;
    try {
      await Promise.race([
        checks[name](ctx),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS);
        }),
      ]);
      console.log(`ok ${name}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${name}: ${e && e.message ? e.message.split("\n").join(" ") : e}`);
      console.error(e && e.stack ? e.stack : e);
    } finally {
      clearTimeout(timer);
      clients.forEach((c) => c.disconnect());
    }
  }
  console.log(`passed ${selected.length - failed} of ${selected.length}`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exit(2);
  },
);
