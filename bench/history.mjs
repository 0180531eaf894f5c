// History cost and recovery time through one limpet-node (issue 16), driven
// by bench/recovery.sh. Usage:
//   node --experimental-websocket bench/history.mjs <node addr> <broker port> <broker pid> [messages] [rounds]
// Prints one JSON line: broker memory growth per stored message (INFO
// used_memory_dataset and VmRSS) for <messages> messages in one room, and
// the time from a rejoin with `since` to its ack for 100 missed messages.
import net from "node:net";
import fs from "node:fs";

const [addr, brokerPort, brokerPid, nMsg = "20000", nRounds = "20"] = process.argv.slice(2);
const MESSAGES = Number(nMsg), ROUNDS = Number(nRounds), MISSED = 100;
const TEXT = "m".repeat(64);

function info() {
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(brokerPort), "127.0.0.1", () => s.write("INFO memory\r\n"));
    let buf = "";
    s.on("data", (d) => {
      buf += d;
      const m = buf.match(/used_memory_dataset:(\d+)/);
      if (m && buf.includes("used_memory:")) { s.end(); resolve(Number(m[1])); }
    });
    s.on("error", reject);
  });
}
const rss = () => Number(fs.readFileSync(`/proc/${brokerPid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) * 1024;

class Client {
  constructor() {
    this.ws = new WebSocket(`ws://${addr}/ws`);
    this.id = 0; this.waiters = new Map(); this.onEvent = null;
    this.open = new Promise((resolve, reject) => {
      this.ws.onerror = reject;
      this.ws.onmessage = (m) => {
        const f = JSON.parse(m.data);
        if (f.type === "welcome") resolve();
        else if ((f.type === "ack" || f.type === "error") && this.waiters.has(f.id)) {
          const w = this.waiters.get(f.id); this.waiters.delete(f.id);
          f.type === "ack" ? w.resolve(f.result) : w.reject(new Error(JSON.stringify(f)));
        } else if (f.type === "event" && this.onEvent) this.onEvent(f);
      };
    });
  }
  req(op) {
    const id = ++this.id;
    return new Promise((resolve, reject) => {
      this.waiters.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...op, id }));
    });
  }
}

// Emits `count` messages into `room` (at most 256 unacknowledged) and waits
// for the sender's own copy of the last one, which has its offset.
async function emitMany(c, room, count) {
  let last = null;
  const done = new Promise((resolve) => {
    c.onEvent = (e) => { if (e.room === room && e.data.i === count - 1) { last = e; resolve(); } };
  });
  const inflight = new Set();
  for (let i = 0; i < count; i++) {
    const p = c.req({ op: "emit", room, event: "chat", data: { i, text: TEXT }, self: true });
    inflight.add(p); p.finally(() => inflight.delete(p));
    if (inflight.size >= 256) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  await done;
  c.onEvent = null;
  return last;
}

const sender = new Client(); await sender.open;

// Memory: one warm-up message creates the stream and the epoch, then
// MESSAGES more; the growth between is the cost of the messages alone.
await sender.req({ op: "join", room: "mem" });
const warm = await emitMany(sender, "mem", 1);
const frameBytes = Buffer.byteLength(JSON.stringify(warm));
await new Promise((r) => setTimeout(r, 200));
const d0 = await info(), r0 = rss();
await emitMany(sender, "mem", MESSAGES);
await new Promise((r) => setTimeout(r, 200));
const d1 = await info(), r1 = rss();

// Recovery: 100 messages after offset `base`; ROUNDS fresh sockets each
// rejoin with since = base and time the rejoin until its ack.
await sender.req({ op: "join", room: "rec" });
const first = await emitMany(sender, "rec", 1);
await emitMany(sender, "rec", MISSED);
const times = [];
for (let i = 0; i < ROUNDS; i++) {
  const c = new Client(); await c.open;
  let got = 0; c.onEvent = (e) => { if (e.room === "rec") got++; };
  const t0 = performance.now();
  const ack = await c.req({ op: "join", room: "rec", since: { offset: first.offset, epoch: first.epoch } });
  times.push(performance.now() - t0);
  if (!ack.recovered || ack.missed !== MISSED || got !== MISSED) {
    throw new Error(`round ${i}: recovered=${ack.recovered} missed=${ack.missed} events before the ack=${got}`);
  }
  c.ws.close();
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({
  messages: MESSAGES,
  event_frame_bytes: frameBytes,
  dataset_bytes_per_message: +((d1 - d0) / MESSAGES).toFixed(1),
  rss_bytes_per_message: +((r1 - r0) / MESSAGES).toFixed(1),
  recovery_ms_median: +((times[(ROUNDS - 1) >> 1] + times[ROUNDS >> 1]) / 2).toFixed(2),
  recovery_ms_min: +times[0].toFixed(2),
  recovery_ms_max: +times[ROUNDS - 1].toFixed(2),
  rounds: ROUNDS,
}));
sender.ws.close();
process.exit(0);
