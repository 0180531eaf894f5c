// Limpet demo: one WebSocket to whichever node the proxy picked, rooms
// that span all nodes, presence, and reconnection with backoff.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const palette = ["#38bdf8", "#34d399", "#fbbf24", "#f472b6", "#a78bfa", "#fb923c"];
  const nodeColor = (node) => {
    let h = 0;
    for (const c of node || "") h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return palette[h % palette.length];
  };

  let ws = null;
  let me = { socket: null, node: null };
  let room = null;          // the room we are in (rejoined after a reconnect)
  let nextId = 1;
  const pending = new Map(); // request id -> resolve
  const members = new Map(); // socket -> node
  const names = new Map();   // socket -> display name
  let backoff = 500;

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

  function request(op) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return reject(new Error("not connected"));
      const id = nextId++;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ ...op, id }));
    });
  }

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
      await request({ op: "send", to: socket, event: "offer", data: { sdp: "v=0 (demo offer)", name: nameInput.value } });
      log("sys", `sent an <b>offer</b> to ${who(socket)} on ${nodeTag(members.get(socket))}`);
    } catch (e) {
      log("sys", `offer failed: ${esc(e.message)}`);
    }
  }

  async function join(name) {
    if (room && room !== name) {
      try { await request({ op: "leave", room }); } catch (_) { /* not joined */ }
    }
    room = name;
    members.clear();
    const res = await request({ op: "join", room });
    for (const m of res.members) members.set(m.socket, m.node);
    const presence = await request({ op: "presence", room });
    for (const m of presence.members) members.set(m.socket, m.node);
    renderMembers();
    $("room-title").textContent = `# ${room}`;
    $("text").disabled = false;
    $("send").disabled = false;
    // Tell the room who we are, so names show instead of socket ids.
    await request({ op: "emit", room, event: "hello", data: { name: nameInput.value } });
    log("sys", `joined <b>${esc(room)}</b> on ${nodeTag(me.node)} — ${members.size} member(s) across ${new Set(members.values()).size} node(s)`);
  }

  function onFrame(msg) {
    switch (msg.type) {
      case "welcome":
        me = { socket: msg.socket, node: msg.node };
        $("node").textContent = msg.node;
        $("node").style.background = nodeColor(msg.node);
        $("socket").textContent = msg.socket;
        setState("connected", "on");
        names.set(me.socket, nameInput.value);
        backoff = 500;
        log("sys", `connected to node ${nodeTag(msg.node)}`);
        if (room) join(room).catch((e) => log("sys", esc(e.message)));
        break;
      case "ack":
      case "error": {
        const p = pending.get(msg.id);
        if (p) {
          pending.delete(msg.id);
          msg.type === "ack" ? p.resolve(msg.result) : p.reject(new Error(`${msg.code}: ${msg.message}`));
        } else if (msg.type === "error") {
          log("sys", `error ${esc(msg.code)}: ${esc(msg.message)}`);
        }
        break;
      }
      case "event":
        if (msg.event === "hello") {
          names.set(msg.from, msg.data && msg.data.name);
          renderMembers();
          if (msg.data && msg.data.reply !== false && msg.from !== me.socket) {
            // Introduce ourselves back, once, so newcomers learn our name.
            request({ op: "send", to: msg.from, event: "name", data: { name: nameInput.value } }).catch(() => {});
          }
        } else if (msg.event === "chat") {
          const mine = msg.from === me.socket;
          log(mine ? "msg mine" : "msg", `<b>${who(msg.from)}</b> ${nodeTag(members.get(msg.from) || "?")} ${esc(msg.data && msg.data.text)}`);
        }
        break;
      case "direct":
        if (msg.event === "name") {
          names.set(msg.from, msg.data && msg.data.name);
          renderMembers();
        } else {
          log("direct", `<b>${esc(msg.event)}</b> from ${who(msg.from)}: <code>${esc(JSON.stringify(msg.data))}</code>`);
        }
        break;
      case "joined":
        members.set(msg.socket, msg.node);
        renderMembers();
        log("sys", `${who(msg.socket)} joined on ${nodeTag(msg.node)}`);
        break;
      case "left":
        members.delete(msg.socket);
        renderMembers();
        log("sys", `${who(msg.socket)} left (${esc(msg.reason)}) from ${nodeTag(msg.node)}`);
        break;
      case "shutdown":
        log("sys", `node ${nodeTag(me.node)} is shutting down; moving in ${msg.reconnect_ms} ms`);
        backoff = Math.max(100, msg.reconnect_ms);
        break;
    }
  }

  function connect() {
    setState("connecting…", "off");
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws`);
    ws.onmessage = (e) => {
      try { onFrame(JSON.parse(e.data)); } catch (err) { console.error(err); }
    };
    ws.onclose = (e) => {
      for (const p of pending.values()) p.reject(new Error("disconnected"));
      pending.clear();
      const wait = backoff;
      backoff = Math.min(backoff * 2, 8000);
      setState(`reconnecting in ${(wait / 1000).toFixed(1)} s`, "down");
      log("sys", `disconnected (code ${e.code}); reconnecting in ${(wait / 1000).toFixed(1)} s`);
      $("text").disabled = true;
      $("send").disabled = true;
      setTimeout(connect, wait);
    };
  }

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
    request({ op: "emit", room, event: "chat", data: { text }, self: true })
      .then(() => { $("text").value = ""; })
      .catch((err) => log("sys", esc(err.message)));
  };
  connect();
})();
