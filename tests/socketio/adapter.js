// Two socket.io servers sharing rooms through the Redis adapter, pointed
// at a Redis-protocol broker (limpet-broker in the test). A client on each
// server joins one room; each emits to the room; both must receive the
// other's message. Runs the classic adapter (PUBLISH/SUBSCRIBE, node-redis),
// the sharded adapter (SPUBLISH/SSUBSCRIBE) and the classic adapter over
// ioredis. Prints a JSON summary.
// usage: node adapter.js <redis-url>
const { Server } = require("socket.io");
const { io: connect } = require("socket.io-client");
const { createClient } = require("redis");
const Redis = require("ioredis");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const http = require("node:http");

const url = process.argv[2];
// Closing the clients rejects the adapters' pending requests; that is expected.
process.on("unhandledRejection", (e) => {
  if (!/Disconnects client|Connection is closed/.test(String(e && e.message))) {
    console.error("unhandled:", e);
  }
});

async function pair(kind) {
  const servers = [];
  const clients = [];
  const closers = [];
  for (let i = 0; i < 2; i++) {
    let adapter;
    if (kind === "ioredis") {
      const pub = new Redis(url);
      const sub = pub.duplicate();
      closers.push(() => pub.disconnect(), () => sub.disconnect());
      adapter = createAdapter(pub, sub);
    } else {
      const pub = createClient({ url });
      const sub = pub.duplicate();
      await Promise.all([pub.connect(), sub.connect()]);
      closers.push(() => pub.disconnect(), () => sub.disconnect());
      adapter = kind === "sharded" ? createShardedAdapter(pub, sub) : createAdapter(pub, sub);
    }
    const httpServer = http.createServer();
    const io = new Server(httpServer, { adapter });
    io.on("connection", (socket) => {
      socket.on("join", (room, ack) => { socket.join(room); ack("ok"); });
      socket.on("say", (room, text) => io.to(room).emit("said", `${i}:${text}`));
    });
    await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
    servers.push({ io, httpServer });
  }
  const got = [[], []];
  for (let i = 0; i < 2; i++) {
    const port = servers[i].httpServer.address().port;
    const c = connect(`http://127.0.0.1:${port}`, { transports: ["websocket"], forceNew: true });
    c.on("said", (m) => got[i].push(m));
    await new Promise((r, j) => { c.on("connect", r); c.on("connect_error", j); });
    await c.timeout(5000).emitWithAck("join", "room");
    clients.push(c);
  }
  // Let the adapters' subscriptions settle, then talk both ways.
  await new Promise((r) => setTimeout(r, 300));
  clients[0].emit("say", "room", "from-0");
  clients[1].emit("say", "room", "from-1");
  const until = Date.now() + 5000;
  while (Date.now() < until && (got[0].length < 2 || got[1].length < 2)) {
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const c of clients) c.close();
  for (const s of servers) s.io.close();
  for (const close of closers) { try { await close(); } catch (_) { /* closing */ } }
  const want = ["0:from-0", "1:from-1"];
  const ok = got.every((g) => want.every((w) => g.includes(w)) && g.length === 2);
  return { kind, ok, got };
}

(async () => {
  const results = [];
  for (const kind of ["classic", "sharded", "ioredis"]) {
    try {
      results.push(await pair(kind));
    } catch (e) {
      results.push({ kind, ok: false, error: String(e && e.message) });
    }
  }
  console.log(JSON.stringify(results));
  process.exit(0);
})();
