// Limpet demo: one WebSocket to whichever node the proxy picked, rooms
// that span all nodes, presence, and reconnection with backoff, all through
// the client library (limpet.js, served next to this page). After a node
// dies the library reconnects elsewhere and rejoins with `since`; with
// `[history]` on, the page shows how many missed messages it recovered.
import { connect } from "./limpet.js";

const $ = (id) => document.getElementById(id);
const palette = ["#38bdf8", "#34d399", "#fbbf24", "#f472b6", "#a78bfa", "#fb923c"];
const nodeColor = (node) => {
  let h = 0;
  for (const c of node || "") h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return palette[h % palette.length];
};

let me = { socket: null, node: null };
let room = null;          // the room we are in (rejoined after a reconnect)
const members = new Map(); // socket -> node
const names = new Map();   // socket -> display name

const nameInput = $("name");
nameInput.value = localStorage.getItem("limpet-name") || "guest-" + Math.random().toString(36).slice(2, 6);

function setState(text, cls) {
  const el = $("state");
  el.textContent = text;
  el.className = "pill " + cls;
}

function log(kind, html) {
  const li = document.createElement("li");
  li.className = kind;
  const t = new Date().toLocaleTimeString();
  li.innerHTML = `<span class="meta">${t}</span>${html}`;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "end" });
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const nodeTag = (node) => `<span class="tag" style="background:${nodeColor(node)}">${esc(node)}</span>`;
const who = (socket) => esc(names.get(socket) || socket);

const proto = location.protocol === "https:" ? "wss:" : "ws:";
const lp = connect(`${proto}//${location.host}/ws`, {
  onRecovered: (r, missed) => log("sys", `recovered <b>${missed}</b> missed message(s) in <b>${esc(r)}</b>`),
  onResync: (r) => log("sys", `the history of <b>${esc(r)}</b> could not fill the gap: some messages were missed`),
});
setState("connecting…", "off");

function renderMembers() {
  const ul = $("members");
  ul.innerHTML = "";
  const sorted = [...members.entries()].sort((a, b) => a[1].localeCompare(b[1]) || a[0].localeCompare(b[0]));
  for (const [socket, node] of sorted) {
    const li = document.createElement("li");
    if (socket === me.socket) li.className = "me";
    li.innerHTML = `<span class="who">${who(socket)}${socket === me.socket ? " (you)" : ""}</span>${nodeTag(node)}`;
    li.title = socket;
    if (socket !== me.socket) li.onclick = () => sendOffer(socket);
    ul.appendChild(li);
  }
  $("member-count").textContent = members.size;
}

async function sendOffer(socket) {
  try {
    await lp.send(socket, "offer", { sdp: "v=0 (demo offer)", name: nameInput.value });
    log("sys", `sent an <b>offer</b> to ${who(socket)} on ${nodeTag(members.get(socket))}`);
  } catch (e) {
    log("sys", `offer failed: ${esc(e.message)}`);
  }
}

async function join(name) {
  if (room && room !== name) {
    try { await lp.leave(room); } catch (_) { /* not joined */ }
  }
  room = name;
  members.clear();
  const res = await lp.join(room);
  for (const m of res.members) members.set(m.socket, m.node);
  const presence = await lp.presence(room);
  for (const m of presence.members) members.set(m.socket, m.node);
  renderMembers();
  $("room-title").textContent = `# ${room}`;
  $("text").disabled = false;
  $("send").disabled = false;
  // Tell the room who we are, so names show instead of socket ids.
  await lp.emit(room, "hello", { name: nameInput.value });
  log("sys", `joined <b>${esc(room)}</b> on ${nodeTag(me.node)} — ${members.size} member(s) across ${new Set(members.values()).size} node(s)`);
}

lp.on("open", ({ socket, node }) => {
  me = { socket, node };
  $("node").textContent = node;
  $("node").style.background = nodeColor(node);
  $("socket").textContent = socket;
  setState("connected", "on");
  names.set(me.socket, nameInput.value);
  log("sys", `connected to node ${nodeTag(node)}`);
  // The library has rejoined (recovering what it can); refresh the list.
  if (room) join(room).catch((e) => log("sys", esc(e.message)));
});

lp.on("close", ({ code, willReconnect }) => {
  setState(willReconnect ? "reconnecting…" : "closed", "down");
  log("sys", `disconnected (code ${code})${willReconnect ? "; reconnecting" : ""}`);
  $("text").disabled = true;
  $("send").disabled = true;
});

lp.on("error", (e) => log("sys", `error ${esc(e.code)}: ${esc(e.message)}`));

lp.on("event", (msg) => {
  if (msg.event === "hello") {
    names.set(msg.from, msg.data && msg.data.name);
    renderMembers();
    if (msg.data && msg.data.reply !== false && msg.from !== me.socket) {
      // Introduce ourselves back, once, so newcomers learn our name.
      lp.send(msg.from, "name", { name: nameInput.value }).catch(() => {});
    }
  } else if (msg.event === "chat") {
    const mine = msg.from === me.socket;
    log(mine ? "msg mine" : "msg", `<b>${who(msg.from)}</b> ${nodeTag(members.get(msg.from) || "?")} ${esc(msg.data && msg.data.text)}`);
  }
});

lp.on("direct", (msg) => {
  if (msg.event === "name") {
    names.set(msg.from, msg.data && msg.data.name);
    renderMembers();
  } else {
    log("direct", `<b>${esc(msg.event)}</b> from ${who(msg.from)}: <code>${esc(JSON.stringify(msg.data))}</code>`);
  }
});

lp.on("joined", (msg) => {
  members.set(msg.socket, msg.node);
  renderMembers();
  log("sys", `${who(msg.socket)} joined on ${nodeTag(msg.node)}`);
});

lp.on("left", (msg) => {
  members.delete(msg.socket);
  renderMembers();
  log("sys", `${who(msg.socket)} left (${esc(msg.reason)}) from ${nodeTag(msg.node)}`);
});

lp.on("shutdown", (msg) => {
  log("sys", `node ${nodeTag(me.node)} is shutting down; moving in ${msg.reconnect_ms} ms`);
});

$("join-form").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem("limpet-name", nameInput.value);
  names.set(me.socket, nameInput.value);
  join($("room").value.trim() || "demo").catch((err) => log("sys", esc(err.message)));
};
$("send-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !room) return;
  lp.emit(room, "chat", { text }, { self: true })
    .then(() => { $("text").value = ""; })
    .catch((err) => log("sys", esc(err.message)));
};
