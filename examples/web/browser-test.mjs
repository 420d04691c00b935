#!/usr/bin/env node
// node browser-test.mjs BUNDLE [--screenshot FILE.png] [--chromium /usr/bin/chromium] TEXT ...
// Serves the page on 127.0.0.1 (serve.mjs), opens it in headless Chromium (playwright-core driving the
// system's browser: no browser download), types each TEXT, clicks Classify and prints one JSON line per
// text: {text, label, scores, latency_ms}. A screenshot of the last result goes to --screenshot.
import { chromium } from "playwright-core";
import { serve } from "./serve.mjs";

const args = process.argv.slice(2);
let screenshot = null;
let executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const positional = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--screenshot") screenshot = args[++i];
  else if (args[i] === "--chromium") executablePath = args[++i];
  else positional.push(args[i]);
}
const [bundleDir, ...texts] = positional;
const { server, url } = await serve(bundleDir);
// As root in a container, Chromium needs --no-sandbox; the network flags keep it from calling out.
const browser = await chromium.launch({ executablePath, headless: true, args: [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 60000 });
  if (await page.evaluate(() => document.body.dataset.ready) !== "true") {
    throw new Error(`the page did not load the bundle: ${await page.textContent("#error")} ${errors.join(" | ")}`);
  }
  for (const [i, text] of texts.entries()) {
    const item = text.trimStart().startsWith("{") ? JSON.parse(text) : { text };
    await page.fill("#text", "");
    await page.type("#text", item.text);  // keystrokes, as a person types
    if (item.text_pair !== undefined) await page.fill("#text-pair", item.text_pair);
    await page.click("#classify");
    await page.waitForFunction((n) => Number(document.body.dataset.predictions || 0) >= n, i + 1, { timeout: 30000 });
    const error = await page.textContent("#error");
    if (error) throw new Error(error);
    const result = await page.evaluate(() => ({
      label: document.getElementById("label").textContent,
      scores: Object.fromEntries([...document.querySelectorAll("#scores tr")].map((tr) =>
        [tr.querySelector(".name").textContent, Number(tr.querySelector(".score").textContent)])),
      latency: document.getElementById("latency").textContent,
    }));
    const latency = Number(/latency ([\d.]+) ms/.exec(result.latency)?.[1]);
    process.stdout.write(JSON.stringify({ text: item.text, label: result.label, scores: result.scores, latency_ms: latency }) + "\n");
  }
  const meta = await page.textContent("#meta");
  process.stderr.write(`page: ${meta}\n`);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
  server.close();
}
