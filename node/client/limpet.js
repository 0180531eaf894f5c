// limpet.js: the client for limpet-node, for browsers and Node 20+.
// One ES module, no dependencies.
//
//   import { connect } from "limpet";
//   const lp = connect("wss://chat.example/ws", { getToken: () => fetchToken() });
//   lp.on("event", (e) => console.log(e.room, e.event, e.data));
//   await lp.join("lobby");
//   await lp.emit("lobby", "chat", { text: "hi" });
//
// What it does for you: reconnects with jittered exponential backoff,
// rejoins every room with `since` (the last offset and epoch it saw) so
// the node replays what was missed, drops duplicates by offset, refreshes
// the token before it expires (with `getToken`), and rejects pending
// requests when the connection drops.

/**
 * @typedef {{type: "event", room: string, event: string, from: string,
 *   user?: string, data: any, offset?: number, epoch?: string}} RoomEvent
 * @typedef {{type: "direct", event: string, from: string, user?: string, data: any}} DirectEvent
 * @typedef {{type: "joined" | "left", room: string, socket: string, node: string,
 *   user?: string, reason?: string}} MemberEvent
 * @typedef {{room: string, missed: number}} Recovered
 * @typedef {{room: string, epoch?: string, offset?: number}} Resync
 * @typedef {{
 *   "open": {socket: string, node: string},
 *   "close": {code: number, reason: string, willReconnect: boolean},
 *   "event": RoomEvent, "direct": DirectEvent,
 *   "joined": MemberEvent, "left": MemberEvent,
 *   "recovered": Recovered, "resync": Resync,
 *   "error": {code: string, message: string},
 *   "shutdown": {reconnect_ms: number},
 * }} Events
 */

/** An error frame from the node, or a dropped connection (`code: "disconnected"`). */
export class LimpetError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "LimpetError";
    this.code = code;
  }
}

const CLOSE_TOKEN_EXPIRED = 4004;

/** The `exp` claim of a JWT (seconds), or undefined. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function"
      ? atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))
      : Buffer.from(part, "base64").toString("utf8");
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

export class Limpet {
  /**
   * @param {string | (() => string)} url  ws(s)://host/ws, or a function
   *   giving the URL to use for each attempt.
   * @param {{
   *   token?: string,
   *   getToken?: () => string | Promise<string>,
   *   WebSocket?: typeof WebSocket,
   *   minDelay?: number, maxDelay?: number,
   *   requestTimeout?: number,
   *   refreshMargin?: number,
   *   onRecovered?: (room: string, missed: number) => void,
   *   onResync?: (room: string, info: Resync) => void,
   * }} [options]
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { minDelay: 250, maxDelay: 10000, requestTimeout: 10000, refreshMargin: 30, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket: pass options.WebSocket");
    /** @type {string | undefined} */ this.socket = undefined;
    /** @type {string | undefined} */ this.node = undefined;
    /** rooms joined → {offset, epoch} of the last message seen */
    this.rooms = new Map();
    this.handlers = new Map();
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.closed = false;
    this.ws = null;
    this.token = options.token;
    this.timers = new Set();
    this.#newReady();
    this.#open();
  }

  /**
   * Listens to `type`; returns a function that stops listening.
   * @template {keyof Events} K
   * @param {K} type
   * @param {(e: Events[K]) => void} fn
   */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type)?.delete(fn);
  }

  /** Joins `room`; rejoined automatically after a reconnect. */
  async join(room) {
    // Tracked before the ack: live messages may come first.
    const fresh = !this.rooms.has(room);
    if (fresh) this.rooms.set(room, {});
    try {
      const result = await this.#request({ op: "join", room });
      this.#position(room, result.epoch, result.offset);
      return result;
    } catch (e) {
      if (fresh) this.rooms.delete(room);
      throw e;
    }
  }

  async leave(room) {
    this.rooms.delete(room);
    return this.#request({ op: "leave", room });
  }

  /** A room message; `self: true` to get it back too. */
  emit(room, event, data, { self = false } = {}) {
    return this.#request({ op: "emit", room, event, data, self });
  }

  /** A message to one socket, anywhere (at-most-once: no history). */
  send(to, event, data) {
    return this.#request({ op: "send", to, event, data });
  }

  presence(room) {
    return this.#request({ op: "presence", room });
  }

  /** Sends a fresh token (from `getToken` when none is given). */
  async refresh(token) {
    const fresh = token ?? (await this.#token());
    const result = await this.#request({ op: "refresh", token: fresh });
    this.token = fresh;
    this.#scheduleRefresh();
    return result;
  }

  /** Resolves once connected (again). */
  get ready() {
    return this.readyPromise;
  }

  /** Closes for good: no reconnect, pending requests rejected. */
  close() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.#failPending("closed");
    if (this.ws) this.ws.close(1000);
    this.rejectReady?.(new LimpetError("closed", "closed"));
  }

  #newReady() {
    this.isReady = false;
    this.readyPromise = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.readyPromise.catch(() => {});
  }

  #emitLocal(type, value) {
    for (const fn of this.handlers.get(type) ?? []) {
      try {
        fn(value);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  #timer(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  async #token() {
    if (this.options.getToken) return await this.options.getToken();
    return this.token;
  }

  async #open() {
    if (this.closed) return;
    let token;
    try {
      token = await this.#token();
    } catch (e) {
      return this.#retry(0, `getToken failed: ${e}`);
    }
    if (this.closed) return;
    this.token = token;
    let url = typeof this.url === "function" ? this.url() : this.url;
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    const ws = new this.WebSocket(url);
    this.ws = ws;
    ws.onmessage = (m) => {
      if (typeof m.data !== "string") return; // binary frames: not handled here
      let v;
      try {
        v = JSON.parse(m.data);
      } catch {
        return;
      }
      this.#frame(v);
    };
    const lost = (code, reason) => {
      if (this.ws !== ws) return; // already handled
      this.ws = null;
      this.#failPending("disconnected");
      if (this.refreshTimer) clearTimeout(this.refreshTimer);
      const expired = code === CLOSE_TOKEN_EXPIRED;
      const willReconnect = !this.closed && !(expired && !this.options.getToken);
      this.#emitLocal("close", { code, reason, willReconnect });
      if (willReconnect) {
        if (this.isReady) this.#newReady();
        this.#retry(code, reason);
      }
    };
    ws.onclose = (e) => lost(e.code, e.reason);
    // Some implementations (Node 20's) report a refused handshake (a 401)
    // as an error with no close event.
    ws.onerror = () => {
      if (ws.readyState !== 1) lost(1006, "connection failed");
    };
  }

  #retry(_code, _reason) {
    // Full jitter: a random wait up to an exponentially growing cap, so
    // clients of a dead node do not all come back at the same instant.
    const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this.attempt);
    this.attempt += 1;
    this.#timer(() => this.#open(), Math.random() * cap);
  }

  #frame(v) {
    switch (v.type) {
      case "welcome":
        this.socket = v.socket;
        this.node = v.node;
        this.attempt = 0;
        this.#scheduleRefresh();
        this.#rejoin();
        this.isReady = true;
        this.resolveReady();
        this.#emitLocal("open", { socket: v.socket, node: v.node });
        break;
      case "ack":
      case "error": {
        const p = this.pending.get(v.id);
        if (!p) {
          if (v.type === "error") this.#emitLocal("error", { code: v.code, message: v.message });
          break;
        }
        this.pending.delete(v.id);
        clearTimeout(p.timer);
        if (v.type === "ack") p.resolve(v.result);
        else p.reject(new LimpetError(v.code, v.message));
        break;
      }
      case "event": {
        const pos = this.rooms.get(v.room);
        if (pos && typeof v.offset === "number" && typeof v.epoch === "string") {
          // Offsets seen lately, to drop a copy seen twice (a replay
          // overlapping a live message). Not "offset <= last": two nodes
          // emitting at once can deliver 7 before 6, and 6 is still new.
          if (pos.epoch !== v.epoch) pos.seen = new Set();
          else if (pos.seen?.has(v.offset)) break;
          pos.seen ??= new Set();
          pos.seen.add(v.offset);
          if (pos.seen.size > 1024) pos.seen.delete(pos.seen.values().next().value);
          this.#position(v.room, v.epoch, v.offset);
        }
        this.#emitLocal("event", v);
        break;
      }
      case "direct":
      case "joined":
      case "left":
      case "shutdown":
        this.#emitLocal(v.type, v);
        break;
    }
  }

  #position(room, epoch, offset) {
    const pos = this.rooms.get(room);
    if (!pos || typeof offset !== "number" || typeof epoch !== "string") return;
    if (pos.epoch !== epoch || pos.offset === undefined || offset > pos.offset) {
      pos.epoch = epoch;
      pos.offset = offset;
    }
  }

  /** After a reconnect: every room again, with `since` where known. */
  #rejoin() {
    for (const [room, pos] of this.rooms) {
      const req = { op: "join", room };
      const since = pos.epoch !== undefined && pos.offset !== undefined;
      if (since) req.since = { offset: pos.offset, epoch: pos.epoch };
      this.#send(req)
        .then((r) => {
          if (!since) return this.#position(room, r.epoch, r.offset);
          if (r.recovered) {
            this.options.onRecovered?.(room, r.missed ?? 0);
            this.#emitLocal("recovered", { room, missed: r.missed ?? 0 });
          } else {
            // The history cannot fill the gap: start over from here.
            pos.epoch = r.epoch;
            pos.offset = r.offset;
            pos.seen = new Set();
            const info = { room, epoch: r.epoch, offset: r.offset };
            this.options.onResync?.(room, info);
            this.#emitLocal("resync", info);
          }
        })
        .catch((e) => {
          if (e.code !== "disconnected" && e.code !== "closed") {
            this.#emitLocal("error", { code: e.code, message: `rejoin ${room}: ${e.message}` });
          }
        });
    }
  }

  #scheduleRefresh() {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    if (!this.options.getToken || !this.token) return;
    const exp = tokenExpiry(this.token);
    if (exp === undefined) return;
    const lifetime = exp * 1000 - Date.now();
    const wait = Math.max(0, Math.min(lifetime - this.options.refreshMargin * 1000, lifetime * 0.8));
    this.refreshTimer = this.#timer(() => {
      this.refresh().catch((e) => this.#emitLocal("error", { code: e.code ?? "refresh", message: String(e.message ?? e) }));
    }, wait);
  }

  async #request(req) {
    if (this.closed) throw new LimpetError("closed", "closed");
    await this.readyPromise;
    return this.#send(req);
  }

  #send(req) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== 1) {
        return reject(new LimpetError("disconnected", "not connected"));
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new LimpetError("timeout", `no reply to ${req.op} in ${this.options.requestTimeout} ms`));
      }, this.options.requestTimeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...req, id }));
    });
  }

  #failPending(code) {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new LimpetError(code, code === "closed" ? "closed" : "connection lost"));
    }
    this.pending.clear();
  }
}

/**
 * Connects to a limpet-node (see {@link Limpet} for the options).
 * @param {string | (() => string)} url
 * @param {ConstructorParameters<typeof Limpet>[1]} [options]
 */
export function connect(url, options) {
  return new Limpet(url, options);
}
