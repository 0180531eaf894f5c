// A typical socket.io room server scaled out with the Redis adapter: the
// contender limpet-node is benchmarked against (bench scenario 5).
// usage: node room-server.js <port> <redis-url>
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-adapter");

(async () => {
  const [port, url] = process.argv.slice(2);
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server(Number(port), { adapter: createAdapter(pub, sub), transports: ["websocket"] });
  io.on("connection", (socket) => {
    socket.on("join", (room) => socket.join(room));
    socket.on("msg", (room, data) => socket.to(room).emit("msg", data));
  });
  console.log(`room server on ${port}`);
})();
