// The demo page in headless Chromium, through limpet-proxy, over three
// limpet-node processes and limpet-broker (the debug binaries that
// `cargo test` built). Two browser contexts (separate cookie jars) land
// on different nodes, join one room and talk; then the first page's node
// is killed and the page must reconnect elsewhere and keep working.
// Screenshots go to tests/artifacts/ (ignored by git).
"use strict";
const { test } = require("node:test");
const assert = require("node:assert");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");

const root = path.resolve(__dirname, "../..");
const bin = process.env.LIMPET_BIN_DIR || path.join(root, "target/debug");
const artifacts = path.join(root, "tests/artifacts");
const DEADLINE = 30000;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function waitPort(port) {
  const until = Date.now() + DEADLINE;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => { s.end(); resolve(true); });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`port ${port} never opened`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const children = [];
function run(name, exe, config, dir) {
  const file = path.join(dir, `${name}.toml`);
  fs.writeFileSync(file, config);
  const child = spawn(path.join(bin, exe), ["--config", file], {
    env: { ...process.env, RUST_LOG: "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.log = "";
  child.stderr.on("data", (d) => { child.log += d; });
  child.label = name;
  children.push(child);
  return child;
}

function cleanup() {
  for (const c of children) {
    try { c.kill("SIGKILL"); } catch (_) { /* gone */ }
  }
}
process.on("exit", cleanup);

test("two browsers on two nodes share a room and survive a node dying", { timeout: 120000 }, async () => {
  for (const exe of ["limpet-broker", "limpet-node", "limpet-proxy"]) {
    assert.ok(fs.existsSync(path.join(bin, exe)), `${exe} not built in ${bin}: run cargo build first`);
  }
  fs.mkdirSync(artifacts, { recursive: true });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "limpet-browser-"));
  const brokerPort = await freePort();
  const proxyPort = await freePort();
  const nodePorts = { a: await freePort(), b: await freePort(), c: await freePort() };

  run("broker", "limpet-broker", `bind = ["127.0.0.1:${brokerPort}"]\n[metrics]\nenabled = false\n`, dir);
  await waitPort(brokerPort);
  const nodes = {};
  for (const [n, port] of Object.entries(nodePorts)) {
    nodes[`node-${n}`] = run(`node-${n}`, "limpet-node",
      `id = "node-${n}"\nbind = "127.0.0.1:${port}"\nbroker = ["redis://127.0.0.1:${brokerPort}/"]\n` +
      `static_dir = "${path.join(root, "node/static")}"\n[heartbeat]\nnode_interval = "300ms"\nnode_timeout = "2s"\n` +
      `[history]\nsize = 100\n`, dir);
  }
  let backends = "";
  for (const [n, port] of Object.entries(nodePorts)) {
    backends += `[[pool.backend]]\nid = "node-${n}"\naddress = "127.0.0.1:${port}"\n`;
  }
  const proxyConfig = `[[listen]]\nbind = "127.0.0.1:${proxyPort}"\n[admin]\nenabled = false\n` +
    `[[pool]]\nname = "nodes"\naffinity = "cookie"\nbackend_header = true\n[pool.cookie]\nsecret = "browser-test-secret"\n` +
    `[pool.health]\npath = "/health"\ninterval = "200ms"\ntimeout = "500ms"\nrise = 1\nfall = 1\n${backends}[[route]]\npool = "nodes"\n`;
  run("proxy", "limpet-proxy", proxyConfig, dir);
  for (const port of [...Object.values(nodePorts), proxyPort]) await waitPort(port);

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const url = `http://127.0.0.1:${proxyPort}/`;
    const open = async (name) => {
      const ctx = await browser.newContext({ viewport: { width: 1100, height: 720 } });
      const page = await ctx.newPage();
      page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
      await page.goto(url);
      await page.waitForFunction(() => document.getElementById("node").textContent.startsWith("node-"), null, { timeout: DEADLINE });
      await page.fill("#name", name);
      return { ctx, page, node: await page.textContent("#node") };
    };
    const alice = await open("alice");
    let bob = await open("bob");
    // Separate cookie jars; least-connections sends the second session to
    // another node, but do not rely on it: retry until they differ.
    for (let i = 0; bob.node === alice.node && i < 10; i++) {
      await bob.ctx.close();
      bob = await open("bob");
    }
    assert.notStrictEqual(bob.node, alice.node, "the two pages should sit on different nodes");

    for (const p of [alice, bob]) {
      await p.page.fill("#room", "lobby");
      await p.page.click("#join-form button");
    }
    for (const p of [alice, bob]) {
      await p.page.waitForFunction(() => document.getElementById("member-count").textContent === "2", null, { timeout: DEADLINE });
    }
    const say = async (from, text) => {
      await from.page.fill("#text", text);
      await from.page.click("#send");
    };
    const sees = (p, text) => p.page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, { timeout: DEADLINE });
    await say(alice, "hello from alice");
    await sees(bob, "hello from alice");
    await say(bob, "hi alice, bob here");
    await sees(alice, "hi alice, bob here");
    await alice.page.screenshot({ path: path.join(artifacts, "alice-before.png") });
    await bob.page.screenshot({ path: path.join(artifacts, "bob-before.png") });

    // Kill alice's node outright. Her page must reconnect to another node.
    // Her browser is offline meanwhile, so bob's next three messages are
    // surely sent before she is back: she must recover exactly those.
    const dead = alice.node;
    await alice.ctx.setOffline(true);
    nodes[dead].kill("SIGKILL");
    await alice.page.waitForFunction(() => document.getElementById("state").textContent !== "connected", null, { timeout: DEADLINE });
    const missed = ["missed one", "missed two", "missed three"];
    for (const text of missed) {
      await say(bob, text);
      await sees(bob, text);
    }
    await alice.ctx.setOffline(false);
    await alice.page.waitForFunction((d) => {
      const n = document.getElementById("node").textContent;
      return n.startsWith("node-") && n !== d && document.getElementById("state").textContent === "connected";
    }, dead, { timeout: DEADLINE });
    const moved = await alice.page.textContent("#node");
    // Back in the room with bob, across nodes again (or on bob's node).
    await alice.page.waitForFunction(() => document.getElementById("log").textContent.includes("joined lobby"), null, { timeout: DEADLINE });
    // The rejoin recovered bob's three messages from the history, and the
    // page says so.
    await sees(alice, "recovered 3 missed message(s) in lobby");
    const log = await alice.page.textContent("#log");
    const at = missed.map((t) => log.indexOf(t));
    assert.ok(at.every((i, k) => i >= 0 && (k === 0 || i > at[k - 1])), `alice's log lacks the missed messages in order: ${log}`);
    await say(alice, "alice is back on another node");
    await sees(bob, "alice is back on another node");
    await say(bob, "welcome back");
    await sees(alice, "welcome back");
    // Bob sees alice's old socket reported as left when her node died.
    await sees(bob, "left (node_down)");
    await alice.page.screenshot({ path: path.join(artifacts, "alice-after-failover.png") });
    await bob.page.screenshot({ path: path.join(artifacts, "bob-after-failover.png") });
    console.log(`alice ${dead} -> ${moved}, bob on ${bob.node}; screenshots in ${artifacts}`);
  } catch (e) {
    for (const c of children) console.error(`---- ${c.label} ----\n${c.log.slice(-3000)}`);
    throw e;
  } finally {
    await browser.close();
    cleanup();
  }
});
