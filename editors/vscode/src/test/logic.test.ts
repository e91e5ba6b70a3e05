import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MODEL_CHOICES, SERVER_SETTINGS, enabledFor, formatStatus, initializationOptions,
         menuItems, previewText, resolveServerPath, rewriteArguments, serverUrlProblem,
         statusText, statusTooltip, toggledEnable, toggledEverywhere } from "../logic";

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
/** Every declared setting, from the basic and the advanced group. */
const settings: Record<string, any> = Object.assign(
  {}, ...pkg.contributes.configuration.map((group: { properties: object }) => group.properties));

test("every server setting is declared in package.json with a type, default and description", () => {
  const props = settings;
  for (const key of SERVER_SETTINGS) {
    const p = props[`diffill.${key}`];
    assert.ok(p, `diffill.${key} is not declared`);
    assert.ok("type" in p && "default" in p && p.description, `diffill.${key} is incomplete`);
  }
});

test("the extension activates on languages, not on everything", () => {
  assert.ok(pkg.activationEvents.length > 0);
  assert.ok(pkg.activationEvents.every((e: string) => e.startsWith("onLanguage:")));
});

test("every default language of diffill.languages activates the extension", () => {
  const langs: string[] = settings["diffill.languages"].default;
  for (const lang of langs) {
    assert.ok(pkg.activationEvents.includes(`onLanguage:${lang}`), `${lang} never activates it`);
  }
});

test("extension commands never collide with the server's own command ids", () => {
  const ids = pkg.contributes.commands.map((c: { command: string }) => c.command);
  assert.ok(!ids.includes("diffill.rewriteSelection") && !ids.includes("diffill.status"));
});

test("initializationOptions carries only the settings that are set", () => {
  const values: Record<string, unknown> = { maxTokens: 32, model: null, device: "", schedule: "fixed",
                                            serverPath: "/x" };
  const opts = initializationOptions((k) => values[k]);
  assert.deepEqual(opts, { maxTokens: 32, schedule: "fixed" });
});

test("the server is found in the setting, then the workspace venv, then PATH", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "dfl-ext-"));
  const bin = path.join(root, "ws", ".venv", "bin");
  fs.mkdirSync(bin, { recursive: true });
  const exe = path.join(bin, "diffill");
  fs.writeFileSync(exe, "#!/bin/sh\n");
  fs.chmodSync(exe, 0o755);
  const onPath = path.join(root, "path");
  fs.mkdirSync(onPath);
  fs.writeFileSync(path.join(onPath, "diffill"), "#!/bin/sh\n");
  fs.chmodSync(path.join(onPath, "diffill"), 0o755);
  assert.equal(resolveServerPath("", [path.join(root, "ws")], onPath), exe);
  assert.equal(resolveServerPath("", [path.join(root, "nothing")], onPath),
               path.join(onPath, "diffill"));
  assert.equal(resolveServerPath(exe, [], ""), exe);
  assert.equal(resolveServerPath(path.join(root, "missing"), [], onPath), undefined);
  assert.equal(resolveServerPath("", [], ""), undefined);
});

test("status text and tooltip follow the server's notifications", () => {
  assert.match(statusText(undefined), /diffill/);
  assert.match(statusText({ state: "loading" }), /loading/);
  assert.equal(statusText({ state: "ready", model: "/m/diffill-small", device: "cpu",
                            lastLatencyMs: 41.6 }), "$(sparkle) diffill: diffill-small cpu 42 ms");
  assert.match(statusTooltip({ state: "error", error: "no model" }), /no model/);
  // A request that held back every completion says why nothing was shown.
  const unsure = { state: "ready", model: "/m/diffill-small", device: "cpu", lastLatencyMs: 40,
                   withheld: 2 };
  assert.equal(statusText(unsure), "$(sparkle) diffill: diffill-small cpu 40 ms, unsure");
  assert.match(statusTooltip(unsure), /nothing shown: 2 completions scored under minConfidence/);
  assert.doesNotMatch(statusTooltip({ ...unsure, withheld: 0 }), /nothing shown/);
  // While a ghost is being asked for: generating, then back to the model and its latency.
  assert.equal(statusText({ state: "ready", model: "/m/diffill-small" }, undefined, 1),
               "$(sync~spin) diffill: generating (diffill-small)");
  assert.match(statusText({ state: "loading" }, undefined, 1), /loading/);
  assert.match(statusText({ state: "ready", model: "m" }, "markdown", 1), /off for markdown/);
});

test("rewrite arguments are [uri, range, version]", () => {
  const r = { start: { line: 1, character: 2 }, end: { line: 3, character: 0 } };
  assert.deepEqual(rewriteArguments("file:///a.py", r, 7), ["file:///a.py", r, 7]);
  assert.deepEqual(rewriteArguments("file:///a.py", r, 7, " add type hints "),
                   ["file:///a.py", r, 7, "add type hints"]);
  assert.deepEqual(rewriteArguments("file:///a.py", r, 7, "  "), ["file:///a.py", r, 7]);
});

test("status is formatted for people", () => {
  const text = formatStatus({ pid: 9, uptime_s: 12.4, state: "idle", loads: 1,
    models: [{ checkpoint: "/m", family: "diffill", parameters: 6.8e6, device: "cpu", dtype: "float32" }],
    counters: { requests: 3, completed: 2, cancelled: 1 } });
  assert.match(text, /pid 9/);
  assert.match(text, /6\.8M parameters/);
  assert.match(text, /3: 2 completed, 1 cancelled, 0 failed; loads 1/);
});

test("the enable rule is the server's: the language's entry, else '*', else on", () => {
  assert.equal(enabledFor(undefined, "python"), true);
  assert.equal(enabledFor({ "*": false, python: true }, "python"), true);
  assert.equal(enabledFor({ "*": false, python: true }, "markdown"), false);
  assert.deepEqual(toggledEnable({ "*": true }, "markdown"), { "*": true, markdown: false });
  assert.deepEqual(toggledEnable({ markdown: false }, "markdown"), { markdown: true });
});

test("the status-bar menu offers what fits the state", () => {
  const ready = menuItems({ state: "ready" }, "python", undefined).map((i) => i.action);
  assert.deepEqual(ready, ["toggle", "toggleAll", "model", "status", "restart", "log", "settings"]);
  const broken = menuItems({ state: "error", error: "no model" }, "python", undefined);
  assert.equal(broken[0].action, "restart");  // first, with the error beside it
  assert.equal(broken[0].description, "no model");
  assert.match(menuItems({ state: "ready" }, "python", { python: false })[0].label, /on for python/);
  assert.ok(!menuItems({ state: "ready" }, undefined, undefined).some((i) => i.action === "toggle"));
  assert.equal(statusText({ state: "ready", model: "m" }, "markdown"),
               "$(circle-slash) diffill: off for markdown");
});


test("a preview is drawn only at its own document and cursor, and never after the last one", () => {
  const note = { textDocument: { uri: "file:///a.py" }, position: { line: 3, character: 8 },
                 text: "return a\n    + b", done: 0.5 };
  assert.equal(previewText(note, "file:///a.py", 3, 8), "return a");
  assert.equal(previewText(note, "file:///b.py", 3, 8), undefined);
  assert.equal(previewText(note, "file:///a.py", 3, 9), undefined);
  assert.equal(previewText({ ...note, done: 1 }, "file:///a.py", 3, 8), undefined);
  assert.equal(previewText({ ...note, text: "" }, "file:///a.py", 3, 8), undefined);
});

test("settings come in a short basic group and an advanced one", () => {
  const [basic, advanced] = pkg.contributes.configuration;
  const names = Object.keys(basic.properties);
  assert.ok(names.length <= 10, `${names.length} basic settings`);
  for (const key of ["diffill.languages", "diffill.enable", "diffill.model", "diffill.minConfidence"]) {
    assert.ok(names.includes(key), `${key} is basic`);
  }
  assert.match(advanced.title, /Advanced/);
  assert.ok("diffill.schedule" in advanced.properties && "diffill.threshold" in advanced.properties);
});

test("the menu turns ghost text off everywhere and back, and offers the supported models", () => {
  const off = toggledEverywhere({ python: true, "*": true });
  assert.deepEqual(off, { "*": false });
  assert.equal(enabledFor(off, "python"), false);
  assert.deepEqual(toggledEverywhere(off), { "*": true });
  assert.match(menuItems({ state: "ready" }, "python", off)
    .find((i) => i.action === "toggleAll")!.label, /on everywhere/);
  const readme = fs.readFileSync(path.join(__dirname, "..", "..", "..", "..", "README.md"), "utf8");
  for (const choice of MODEL_CHOICES) {
    if (choice.model) assert.ok(readme.includes(choice.model), `${choice.model} is in the README`);
  }
  assert.equal(MODEL_CHOICES[0].model, null);  // the bundled default
});

test("a server URL is checked as the server checks it: http(s), plain http to loopback only", () => {
  assert.equal(serverUrlProblem("https://gpu-box:8000/v1"), undefined);
  assert.equal(serverUrlProblem("http://127.0.0.1:8000"), undefined);
  assert.equal(serverUrlProblem("http://localhost:8000/v1"), undefined);
  assert.equal(serverUrlProblem("http://[::1]:8000/v1"), undefined);
  assert.match(serverUrlProblem("http://gpu-box:8000/v1") ?? "", /unencrypted/);
  assert.equal(serverUrlProblem("http://gpu-box:8000/v1", true), undefined);
  assert.match(serverUrlProblem("gpu-box:8000") ?? "", /http\(s\)/);
  assert.match(serverUrlProblem("ftp://gpu-box/v1") ?? "", /http\(s\)/);
});
