// A typical socket.io room server scaled out with the Redis adapter: the
// contender limpet-node is benchmarked against (bench scenario 5).
// usage: node room-server.js <port> <redis-url>
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-adapter");
const http = require("node:http");

(async () => {
  const [port, url] = process.argv.slice(2);
  const pub = createClient({ url });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  // Bind loopback only: a wildcard bind can collide with the load
  // generator's own connections on 127.0.0.2-8 using the same port.
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), transports: ["websocket"] });
  io.on("connection", (socket) => {
    socket.on("join", (room) => socket.join(room));
    socket.on("msg", (room, data) => socket.to(room).emit("msg", data));
  });
  httpServer.listen(Number(port), "127.0.0.1", () => console.log(`room server on ${port}`));
})();
