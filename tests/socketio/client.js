// Connects N socket.io clients (polling first, then the websocket
// upgrade: socket.io's default) to URL, has each say hello twice, and
// prints a JSON summary. Each client keeps its own cookie jar
// (withCredentials), as separate browsers would.
// usage: node client.js <url> <count>
const { io } = require("socket.io-client");
const [url, count] = process.argv.slice(2);

function one(i) {
  return new Promise((resolve) => {
    const socket = io(url, {
      forceNew: true,
      reconnection: false,
      withCredentials: true,
      timeout: 5000,
    });
    let settled = false;
    const done = (result) => {
      if (settled) return;
      settled = true;
      resolve(result);
      socket.close();
    };
    const timer = setTimeout(() => done({ ok: false, why: "timeout" }), 8000);
    socket.on("connect_error", (err) => {
      clearTimeout(timer);
      done({ ok: false, why: String(err && err.message) });
    });
    socket.on("disconnect", (reason) => {
      clearTimeout(timer);
      done({ ok: false, why: `disconnect: ${reason}` });
    });
    socket.on("connect", async () => {
      try {
        const first = await socket.timeout(5000).emitWithAck("hello", `c${i}`);
        // Wait for the websocket upgrade, then talk again over it.
        await new Promise((r) => setTimeout(r, 300));
        const second = await socket.timeout(5000).emitWithAck("hello", `c${i}`);
        clearTimeout(timer);
        const transport = socket.io.engine.transport.name;
        done({ ok: first === second, node: first.split(":")[0], transport });
      } catch (e) {
        clearTimeout(timer);
        done({ ok: false, why: String(e && e.message) });
      }
    });
  });
}

(async () => {
  const results = await Promise.all(Array.from({ length: Number(count) }, (_, i) => one(i)));
  const summary = { ok: 0, failed: 0, nodes: {}, transports: {}, errors: {} };
  for (const r of results) {
    if (r.ok) {
      summary.ok++;
      summary.nodes[r.node] = (summary.nodes[r.node] || 0) + 1;
      summary.transports[r.transport] = (summary.transports[r.transport] || 0) + 1;
    } else {
      summary.failed++;
      summary.errors[r.why] = (summary.errors[r.why] || 0) + 1;
    }
  }
  console.log(JSON.stringify(summary));
  process.exit(0);
})();
