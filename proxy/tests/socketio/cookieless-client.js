// Opens N socket.io sessions the way a Node service does by default: no
// withCredentials, so no cookie jar, and the default transports (HTTP
// long-polling first, then the WebSocket upgrade). Each session says hello
// over polling, waits for its upgrade, says hello again over the WebSocket
// and must get both answers from the same node. Prints a JSON summary.
// The socket.io packages come from tests/socketio (NODE_PATH).
// usage: node cookieless-client.js <url> <count>
const { io } = require("socket.io-client");
const [url, count] = process.argv.slice(2);

const errors = { connect_error: 0, disconnect: 0 };

function one(i) {
  return new Promise((resolve) => {
    const socket = io(url, { forceNew: true, reconnection: false, timeout: 10000 });
    let settled = false;
    const done = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
      socket.close();
    };
    const timer = setTimeout(() => done({ ok: false, why: "timeout" }), 20000);
    socket.on("connect_error", (err) => {
      errors.connect_error++;
      done({ ok: false, why: `connect_error: ${err && err.message}` });
    });
    socket.on("disconnect", (reason) => {
      if (settled) return;
      errors.disconnect++;
      done({ ok: false, why: `disconnect: ${reason}` });
    });
    socket.on("connect", async () => {
      try {
        const engine = socket.io.engine;
        const before = engine.transport.name;
        const first = await socket.timeout(10000).emitWithAck("hello", `c${i}`);
        if (engine.transport.name !== "websocket") {
          await new Promise((ok, fail) => {
            const t = setTimeout(() => fail(new Error("no upgrade within 10 s")), 10000);
            engine.once("upgrade", () => { clearTimeout(t); ok(); });
          });
        }
        const second = await socket.timeout(10000).emitWithAck("hello", `c${i}`);
        done({
          ok: first === second && engine.transport.name === "websocket",
          why: `answers ${first} then ${second} on ${engine.transport.name}`,
          node: first.split(":")[0],
          first_transport: before,
          transport: engine.transport.name,
        });
      } catch (e) {
        done({ ok: false, why: String(e && e.message) });
      }
    });
  });
}

(async () => {
  const results = await Promise.all(Array.from({ length: Number(count) }, (_, i) => one(i)));
  const summary = { ok: 0, failed: 0, upgraded: 0, nodes: {}, errors, why: {} };
  for (const r of results) {
    if (r.ok) {
      summary.ok++;
      summary.nodes[r.node] = (summary.nodes[r.node] || 0) + 1;
      if (r.transport === "websocket") summary.upgraded++;
    } else {
      summary.failed++;
      summary.why[r.why] = (summary.why[r.why] || 0) + 1;
    }
  }
  console.log(JSON.stringify(summary));
  process.exit(0);
})();
