// The admin status page in headless Chromium: logs in with the admin token
// as HTTP Basic (as a person's browser would after the prompt), waits for
// the live table and charts, clicks "drain" on one backend, takes a
// screenshot and prints a JSON summary of what the page showed.
// playwright-core comes from tests/browser (NODE_PATH).
// usage: node status-page.js <admin url> <token> <backend to drain> <screenshot.png>
"use strict";
const { chromium } = require("playwright-core");
const [adminUrl, token, drainId, shot] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const summary = { elsewhere: [], console_errors: [], api_calls: 0 };
  try {
    const ctx = await browser.newContext({
      viewport: { width: 1280, height: 720 },
      httpCredentials: { username: "admin", password: token },
    });
    const page = await ctx.newPage();
    const origin = new URL(adminUrl).origin;
    page.on("request", (r) => {
      if (new URL(r.url()).origin !== origin) summary.elsewhere.push(r.url());
      if (r.url().includes("/api/")) summary.api_calls++;
    });
    page.on("console", (m) => { if (m.type() === "error") summary.console_errors.push(m.text()); });
    page.on("pageerror", (e) => summary.console_errors.push(String(e)));
    await page.goto(`${adminUrl}/`, { timeout: 30000 });
    await page.waitForSelector(`tr[data-backend="${drainId}"]`, { timeout: 30000 });
    // Five polls, so the rates and charts have something to show.
    await page.waitForFunction(() => document.querySelectorAll("polyline").length > 0, null, { timeout: 30000 });
    await page.waitForTimeout(8000);
    await page.click(`button[data-id="${drainId}"][data-state="drain"]`);
    await page.waitForFunction(
      (id) => document.querySelector(`tr[data-backend="${id}"] .badge.drain`) !== null,
      drainId, { timeout: 30000 });
    await page.screenshot({ path: shot, fullPage: true });
    summary.rows = await page.$$eval("tr[data-backend]", (rows) =>
      rows.map((r) => Array.from(r.querySelectorAll("td")).slice(0, 9).map((td) => td.textContent)));
    summary.polylines = await page.$$eval("polyline", (l) => l.length);
    summary.error_text = await page.$eval("#error", (e) => e.textContent);
    summary.ok = true;
  } catch (e) {
    summary.ok = false;
    summary.why = String(e && e.message);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(summary));
})();
