// Three socket.io servers on @socket.io/redis-streams-adapter (node-redis
// client) with connectionStateRecovery, pointed at a Redis-protocol
// broker (limpet-broker in the test). Checks:
//  1. "room": a room emit from server 0 reaches clients on servers 1 and 2
//     (XADD by one server, XREAD BLOCK by the others);
//  2. "recovery": a client whose transport is cut while three messages are
//     emitted to its room reconnects with socket.recovered === true and
//     has all three (SET PX of the session, MULTI GET DEL EXEC, XRANGE).
// Prints one JSON line: {"room":{...},"recovery":{...}}.
// usage: node streams-adapter.js <redis-url>
const { Server } = require("socket.io");
const { io: connect } = require("socket.io-client");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");
const http = require("node:http");

const url = process.argv[2];
// Closing the clients rejects the adapters' pending reads; that is expected.
process.on("unhandledRejection", (e) => {
  if (!/Disconnects client|closed|abort/i.test(String(e && e.message))) {
    console.error("unhandled:", e);
  }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function main() {
  const servers = [];
  const redisClients = [];
  for (let i = 0; i < 3; i++) {
    const redis = createClient({ url });
    redis.on("error", () => {});
    await redis.connect();
    redisClients.push(redis);
    const httpServer = http.createServer();
    const io = new Server(httpServer, {
      adapter: createAdapter(redis, { blockTimeInMs: 1000 }),
      connectionStateRecovery: { maxDisconnectionDuration: 60000 },
    });
    io.on("connection", (socket) => {
      socket.on("join", (room, ack) => {
        socket.join(room);
        ack("ok");
      });
    });
    await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
    servers.push({ io, httpServer, port: httpServer.address().port });
  }
  const clients = [];
  const got = [[], [], []];
  for (let i = 0; i < 3; i++) {
    const c = connect(`http://127.0.0.1:${servers[i].port}`, {
      transports: ["websocket"],
      forceNew: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
    });
    c.on("msg", (m) => got[i].push(m));
    await new Promise((r, j) => {
      c.once("connect", r);
      c.once("connect_error", j);
    });
    await c.timeout(5000).emitWithAck("join", "room");
    clients.push(c);
  }
  const result = {};

  // 1. A room emit from server 0 crosses to servers 1 and 2. The adapters
  // start reading at "$", so repeat until the first one arrives.
  let n = 0;
  await until("the first cross-server message", () => {
    if (got[1].length === 0 || got[2].length === 0) {
      servers[0].io.to("room").emit("msg", `warmup-${n++}`);
      return false;
    }
    return true;
  });
  servers[0].io.to("room").emit("msg", "cross");
  await until("'cross' on every server", () => got.every((g) => g.includes("cross")));
  result.room = { ok: true, got: got.map((g) => g.filter((m) => m === "cross")) };

  // 2. Cut client 1's transport; while it is away, server 2 emits three
  // messages to the room; it must come back recovered with all three.
  const c = clients[1];
  const disconnected = new Promise((r) => c.once("disconnect", r));
  const reconnected = new Promise((r) => c.once("connect", r));
  c.io.engine.close();
  await disconnected;
  // Let server 1 notice the cut, so it stores the session.
  const sid = c.id;
  await until("server 1 to drop the cut socket", () => !servers[1].io.sockets.sockets.has(sid));
  got[1].length = 0;
  for (const m of ["away-1", "away-2", "away-3"]) {
    servers[2].io.to("room").emit("msg", m);
  }
  await reconnected;
  const recovered = c.recovered;
  await until("the three missed messages", () => got[1].length >= 3);
  result.recovery = { ok: recovered === true, recovered, got: got[1] };

  for (const cl of clients) cl.close();
  for (const s of servers) s.io.close();
  for (const r of redisClients) {
    try {
      await r.disconnect();
    } catch (_) {
      /* closing */
    }
  }
  return result;
}

main()
  .then((r) => {
    console.log(JSON.stringify(r));
    process.exit(0);
  })
  .catch((e) => {
    console.log(JSON.stringify({ error: String(e && e.stack) }));
    process.exit(1);
  });
