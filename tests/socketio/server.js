// A plain socket.io server, as people run them behind nginx: it answers
// `hello` with its own id so the test can see which node served a client.
// usage: node server.js <port> <id>
const { Server } = require("socket.io");
const [port, id] = process.argv.slice(2);
const io = new Server(Number(port), { cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.on("hello", (text, ack) => ack(`${id}:${text}`));
});
console.log(`socket.io server ${id} listening on ${port}`);
