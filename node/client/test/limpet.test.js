// Tests of limpet.js against real limpet-node processes, started by
// node/tests/client_js.rs, which passes LIMPET_URLS (two nodes, comma
// separated) and LIMPET_SECRET (their HS256 secret).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { connect, tokenExpiry } from "../limpet.js";

const URLS = (process.env.LIMPET_URLS ?? "").split(",");
const SECRET = process.env.LIMPET_SECRET ?? "";
if (!URLS[0] || !SECRET) throw new Error("run through node/tests/client_js.rs (LIMPET_URLS, LIMPET_SECRET)");

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
function mint(sub, { ttl = 600, secret = SECRET, ...claims } = {}) {
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + ttl, ...claims });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Resolves with the next `type` event of `client` matching `pred`. */
function next(client, type, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(type, (e) => {
      if (pred(e)) {
        off();
        resolve(e);
      }
    });
  });
}

test("the token's expiry is read", () => {
  const t = mint("ann", { ttl: 100 });
  assert.ok(Math.abs(tokenExpiry(t) - (Date.now() / 1000 + 100)) < 5);
  assert.equal(tokenExpiry("garbage"), undefined);
});

test("join, emit, presence and send between two nodes", async () => {
  const a = connect(URLS[0], { token: mint("ann") });
  const b = connect(URLS[1], { getToken: () => mint("bob") });
  await Promise.all([a.ready, b.ready]);
  const at = await a.join("lobby");
  assert.equal(typeof at.epoch, "string");
  await b.join("lobby");
  const got = next(a, "event", (e) => e.event === "chat");
  await b.emit("lobby", "chat", { text: "hi" });
  const e = await got;
  assert.deepEqual([e.user, e.data, e.room], ["bob", { text: "hi" }, "lobby"]);
  assert.equal(e.offset, at.offset + 1);
  const p = await a.presence("lobby");
  assert.equal(p.members.length, 2);
  const direct = next(b, "direct");
  await a.send(b.socket, "ping", 1);
  assert.equal((await direct).user, "ann");
  await assert.rejects(a.leave("nowhere"), { code: "not_member" });
  a.close();
  b.close();
});

test("a dropped connection rejoins with since and recovers what it missed", async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  let calls = 0;
  let attempt = 0;
  const recovered = [];
  const a = connect(() => URLS[attempt++ % 2], {
    // The second connection waits until the messages were sent.
    getToken: async () => {
      if (calls++ > 0) await gate;
      return mint("ann");
    },
    minDelay: 10,
    onRecovered: (room, missed) => recovered.push([room, missed]),
  });
  const b = connect(URLS[1], { token: mint("bob") });
  await a.join("rec");
  await b.join("rec");
  const first = next(a, "event", (e) => e.event === "m0");
  await b.emit("rec", "m0", 0);
  await first;

  const seen = [];
  a.on("event", (e) => seen.push([e.event, e.offset]));
  const closed = next(a, "close");
  a.ws.close(); // as if the network dropped
  assert.equal((await closed).willReconnect, true);
  for (let i = 1; i <= 3; i++) await b.emit("rec", `m${i}`, i);
  // b's own copy of m3 proves all three are in the history.
  const done = next(a, "recovered");
  release();
  assert.deepEqual(await done, { room: "rec", missed: 3 });
  assert.deepEqual(recovered, [["rec", 3]]);
  const base = seen[0][1];
  assert.deepEqual(seen, [["m1", base], ["m2", base + 1], ["m3", base + 2]]);
  assert.notEqual(a.node, undefined);
  a.close();
  b.close();
});

test("an unknown epoch makes the client resync", async () => {
  let attempt = 0;
  const resyncs = [];
  const a = connect(() => URLS[attempt++ % 2], {
    token: mint("ann"),
    minDelay: 10,
    onResync: (room, info) => resyncs.push([room, typeof info.epoch]),
  });
  await a.join("lost");
  // As if the history was lost while we were away.
  a.rooms.get("lost").epoch = "0000000000000000";
  a.rooms.get("lost").offset = 0;
  const resync = next(a, "resync");
  a.ws.close();
  const info = await resync;
  assert.equal(info.room, "lost");
  assert.deepEqual(resyncs, [["lost", "string"]]);
  a.close();
});

test("a refused token is fetched again on the next attempt", async () => {
  let calls = 0;
  const a = connect(URLS[0], {
    getToken: () => (calls++ === 0 ? mint("ann", { secret: "not-the-secret-but-32-bytes-long!!" }) : mint("ann")),
    minDelay: 10,
  });
  await a.ready;
  assert.ok(calls >= 2, `getToken called ${calls} times`);
  a.close();
});

test("refresh sends a fresh token", async () => {
  const a = connect(URLS[0], { getToken: () => mint("ann", { ttl: 3600 }) });
  await a.ready;
  const r = await a.refresh();
  assert.ok(r.exp > Date.now() / 1000 + 3000);
  await assert.rejects(a.refresh(mint("eve")), { code: "unauthorized" });
  a.close();
});

test("close() rejects what is pending and never reconnects", async () => {
  let opens = 0;
  const a = connect(URLS[0], { token: mint("ann"), minDelay: 1 });
  a.on("open", () => opens++);
  await a.ready;
  a.close();
  await assert.rejects(a.join("x"), { code: "closed" });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(opens, 1);
});

/** A WebSocket stand-in the test drives by hand. */
class FakeSocket {
  static last;
  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.sent = [];
    FakeSocket.last = this;
    queueMicrotask(() => this.push({ type: "welcome", socket: "n.a.1", node: "n" }));
  }
  push(v) {
    this.onmessage?.({ data: JSON.stringify(v) });
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
}

test("events are deduplicated by offset, not dropped when they arrive out of order", async () => {
  const a = connect("ws://fake/ws", { WebSocket: FakeSocket });
  await a.ready;
  const ws = FakeSocket.last;
  const joining = a.join("r");
  await new Promise((r) => setImmediate(r));
  const req = ws.sent.find((m) => m.op === "join");
  ws.push({ type: "ack", id: req.id, result: { room: "r", members: [], epoch: "e1", offset: 5 } });
  await joining;
  const got = [];
  a.on("event", (e) => got.push(e.offset));
  const ev = (offset, epoch = "e1") => ws.push({ type: "event", room: "r", event: "x", from: "n.b.1", data: null, offset, epoch });
  ev(7);
  ev(6); // from another node, later: still new
  ev(7); // a second copy: dropped
  ev(1, "e2"); // a new epoch starts again
  assert.deepEqual(got, [7, 6, 1]);
  assert.deepEqual({ ...a.rooms.get("r"), seen: undefined }, { epoch: "e2", offset: 1, seen: undefined });
  a.close();
});
