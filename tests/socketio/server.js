// A plain socket.io server, as people run them behind nginx: it answers
// `hello` with its own id so the test can see which node served a client.
// usage: node server.js <port> <id>
const { Server } = require("socket.io");
const http = require("node:http");
const [port, id] = process.argv.slice(2);
// Bind loopback only, the address the test gave the proxy.
const httpServer = http.createServer();
const io = new Server(httpServer, { cors: { origin: "*" } });
httpServer.listen(Number(port), "127.0.0.1");
io.on("connection", (socket) => {
  socket.on("hello", (text, ack) => ack(`${id}:${text}`));
});
console.log(`socket.io server ${id} listening on ${port}`);
