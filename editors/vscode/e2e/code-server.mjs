// The extension in a real VS Code: code-server serves the workbench on localhost, headless
// Chromium drives it through Playwright. Opens a file, types, waits for the ghost text, takes a
// screenshot, accepts one word (Ctrl+Right) then the rest with Tab, saves, checks the file on
// disk, and turns ghost text off from the status-bar menu; every status-bar text is recorded.
//
//   node e2e/code-server.mjs scenario.json
//
// scenario.json: { "server": diffill executable, "model": checkpoint, "socket": daemon socket,
//   "file": name, "content": text (or "contentFile": a file to copy), "line": 1-based,
//   "column": 1-based, "type": text to type,
//   "screenshot": png path (optional), "expect": the accepted completion (optional),
//   "settings": extra VS Code settings (optional) }
// Prints one JSON line: { ghost, afterWord, accepted, saved, toasts, statuses }. Exits 1 with a reason on failure
// (keeping its temporary folder, with a failure.png, for a look).
// Needs `npm install` in e2e/ (code-server, playwright-core; see setup.sh), a packaged
// ../diffill.vsix and a Chromium (CHROMIUM, default /usr/bin/chromium).
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const codeServer = path.join(here, "node_modules", ".bin", "code-server");
const vsix = path.join(here, "..", "diffill.vsix");
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";

class E2EError extends Error {}

function fail(reason) {
  throw new E2EError(reason);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForHttp(url, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  fail(`${url} did not answer within ${ms / 1000}s`);
}

const scenario = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
scenario.content ??= fs.readFileSync(scenario.contentFile, "utf8");
for (const f of [codeServer, vsix, browserPath]) {
  if (!fs.existsSync(f)) {
    console.error(`code-server e2e: ${f} missing (run editors/vscode/e2e/setup.sh)`);
    process.exit(1);
  }
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), "diffill-cs-"));
const workspace = path.join(root, "workspace");
const userData = path.join(root, "user");
const extensions = path.join(root, "extensions");
fs.mkdirSync(workspace);
fs.mkdirSync(path.join(userData, "User"), { recursive: true });
const target = path.join(workspace, scenario.file);
fs.writeFileSync(target, scenario.content);
fs.writeFileSync(path.join(userData, "User", "settings.json"), JSON.stringify({
  "diffill.serverPath": scenario.server,
  "diffill.model": scenario.model,
  "diffill.socket": scenario.socket,
  "diffill.debounceMs": 0,
  "editor.inlineSuggest.enabled": true,
  // VS Code for the web saves after a delay by default; the test saves itself (Ctrl+S).
  "files.autoSave": "off",
  "editor.quickSuggestions": { other: false, comments: false, strings: false },
  "editor.minimap.enabled": false,
  "workbench.startupEditor": "none",
  "workbench.tips.enabled": false,
  "security.workspace.trust.enabled": false,
  "telemetry.telemetryLevel": "off",
  "extensions.ignoreRecommendations": true,
  "window.zoomLevel": 1,
  ...(scenario.settings || {}),
}, null, 2));

const common = ["--user-data-dir", userData, "--extensions-dir", extensions];
const inst = spawnSync(codeServer, [...common, "--install-extension", vsix], { encoding: "utf8" });
if (inst.status !== 0) {
  console.error(`code-server e2e: installing the extension failed:\n${inst.stdout}${inst.stderr}`);
  process.exit(1);
}

const port = await freePort();
const server = spawn(codeServer, [...common, "--bind-addr", `127.0.0.1:${port}`, "--auth", "none",
                                  "--disable-telemetry", "--disable-update-check",
                                  "--disable-workspace-trust", "--disable-getting-started-override",
                                  workspace],
                     { stdio: ["ignore", "pipe", "pipe"], detached: true,  // own process group
                       env: { ...process.env, HF_HUB_OFFLINE: "1" } });
let serverLog = "";
server.stdout.on("data", (d) => { serverLog += d; });
server.stderr.on("data", (d) => { serverLog += d; });

let browser;
let page;
try {
  await waitForHttp(`http://127.0.0.1:${port}/healthz`, 60_000);
  browser = await chromium.launch({ executablePath: browserPath, args: ["--no-sandbox"] });
  page = await browser.newPage({ viewport: { width: 1100, height: 620 } });
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
  await page.waitForSelector(".monaco-workbench", { timeout: 60_000 });
  // Every text the diffill status-bar item shows, in order (loading, the model, generating...).
  await page.evaluate(() => {
    window.__statuses = [];
    const record = () => {
      for (const e of document.querySelectorAll(".statusbar-item")) {
        const t = e.textContent.trim();
        if (/diffill/.test(t) && window.__statuses.at(-1) !== t) window.__statuses.push(t);
      }
    };
    new MutationObserver(record).observe(document.body,
      { subtree: true, childList: true, characterData: true });
    record();
  });
  await page.waitForTimeout(2_000);

  // Open the file from the Explorer, then go to the position.
  await page.locator(".explorer-folders-view .monaco-list-row", { hasText: scenario.file })
    .first().dblclick({ timeout: 30_000 });
  await page.waitForSelector(".monaco-editor .view-lines", { timeout: 30_000 });
  await page.click(".monaco-editor .view-lines");
  await page.keyboard.press("Control+G");
  await page.waitForSelector(".quick-input-widget input", { state: "visible" });
  await page.keyboard.type(`${scenario.line}:${scenario.column}`);
  await page.keyboard.press("Enter");
  await page.waitForTimeout(500);

  // Type once the server reports its model loaded ("diffill: <model> <device>" in the status
  // bar): inline completion is asked for on typing, and only once the provider is registered.
  await page.waitForFunction(
    () => [...document.querySelectorAll(".statusbar-item")]
      .some((e) => /diffill: (?!loading)\S/.test(e.textContent)),
    null, { timeout: 120_000 }).catch(() => fail("the diffill status never showed a loaded model"));
  await page.keyboard.type(scenario.type, { delay: 60 });

  const ghostSel = ".ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text";
  await page.waitForSelector(ghostSel, { timeout: 180_000 })
    .catch(() => fail("no ghost text within 180s"));
  await page.waitForTimeout(500);
  // Monaco renders spaces as U+00A0.
  const ghost = (await page.$$eval(ghostSel, (els) => els.map((e) => e.textContent).join("")))
    .replace(/\u00a0/g, " ");
  if (scenario.screenshot) await page.screenshot({ path: scenario.screenshot });

  // Accept one word (VS Code's acceptNextWord, Ctrl+Right): the rest stays as ghost text.
  await page.keyboard.press("Control+ArrowRight");
  await page.waitForFunction(
    ([sel, before]) => {
      const now = [...document.querySelectorAll(sel)].map((e) => e.textContent).join("");
      return now !== before;  // the rest of the ghost, or nothing when it was one word
    }, [ghostSel, ghost.replace(/ /g, "\u00a0")], { timeout: 15_000 })
    .catch(() => fail("Ctrl+Right did not accept a word of the ghost text"));
  const afterWord = (await page.$$eval(ghostSel, (els) => els.map((e) => e.textContent).join("")))
    .replace(/\u00a0/g, " ");

  if (afterWord) {
    await page.keyboard.press("Tab");
    // Accepted: the ghost text is gone (it became buffer text).
    await page.waitForSelector(ghostSel, { state: "detached", timeout: 15_000 })
      .catch(() => fail("the ghost text stayed after Tab"));
  }
  // Save, and wait for the editor to be clean, so the file on disk is what the editor holds.
  await page.waitForSelector(".tab.active.dirty", { timeout: 15_000 })
    .catch(() => fail("the editor never showed unsaved changes"));
  await page.keyboard.press("Control+S");
  await page.waitForSelector(".tab.active.dirty", { state: "detached", timeout: 15_000 })
    .catch(() => fail("the file was not saved"));
  const saved = fs.readFileSync(target, "utf8");
  const lines = saved.split("\n");
  const accepted = lines[scenario.line - 1];
  // Any notification from the extension or the server (a settings error, a crash) is a failure.
  const toasts = await page.$$eval(".notification-toast", (els) => els.map((e) => e.textContent));

  // The status-bar menu: turn ghost text off everywhere; the item then says so.
  await page.locator(".statusbar-item", { hasText: "diffill" }).first().click();
  await page.waitForSelector(".quick-input-widget .monaco-list-row", { state: "visible" });
  await page.locator(".quick-input-widget .monaco-list-row",
                     { hasText: "Turn ghost text off everywhere" }).first().click();
  await page.waitForFunction(
    () => [...document.querySelectorAll(".statusbar-item")]
      .some((e) => /diffill: off for/.test(e.textContent)),
    null, { timeout: 15_000 }).catch(() => fail("the status never said ghost text was off"));
  const statuses = await page.evaluate(() => window.__statuses);
  console.log(JSON.stringify({ ghost, afterWord, accepted, saved, toasts, statuses }));
  const ours = toasts.filter((t) => /diffill/i.test(t));
  if (ours.length) fail(`notifications shown: ${JSON.stringify(ours)}`);
  if (scenario.expect !== undefined && accepted !== scenario.expect) {
    fail(`line ${scenario.line} after Tab is ${JSON.stringify(accepted)}, ` +
         `expected ${JSON.stringify(scenario.expect)}`);
  }
} catch (err) {
  let detail = err instanceof E2EError ? err.message : String(err.stack || err);
  if (page) {
    const shot = path.join(root, "failure.png");
    await page.screenshot({ path: shot }).then(() => { detail += `\n(screenshot ${shot})`; },
                                             () => undefined);
  }
  console.error(`code-server e2e: ${detail}\n--- code-server log ---\n${serverLog.slice(-4000)}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  process.kill(-server.pid);  // code-server and its helpers (file watcher, extension host)
  // The daemon the extension started outlives code-server; stop it (none may be running).
  spawnSync(scenario.server, ["serve", "--stop", "--socket", scenario.socket]);
  if (process.exitCode !== 1) fs.rmSync(root, { recursive: true, force: true });
}
