// The extension's protocol logic against the real `diffill lsp`, through the same protocol layer
// vscode-languageclient uses. Needs DIFFILL_TEST_MODEL (the counting model pytest builds) and a
// diffill executable (DIFFILL_SERVER, or the repository's .venv).
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as cp from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { createProtocolConnection, StreamMessageReader, StreamMessageWriter }
  from "vscode-languageserver-protocol/node";
import { SERVER_COMMANDS, STATUS_NOTIFICATION, StatusNote, initializationOptions,
         resolveServerPath, rewriteArguments, statusText } from "../logic";

const repo = path.resolve(__dirname, "..", "..", "..", "..");
const model = process.env.DIFFILL_TEST_MODEL;
const exe = process.env.DIFFILL_SERVER || resolveServerPath("", [repo]);

test("inline completion, rewrite and status against the real server",
     { skip: !model || !exe ? "set DIFFILL_TEST_MODEL (pytest does) and build the .venv" : false,
       timeout: 180_000 },
     async () => {
  const sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dfl-")), "d.sock");
  const proc = cp.spawn(exe!, ["lsp"], { env: { ...process.env, HF_HUB_OFFLINE: "1" },
                                         stdio: ["pipe", "pipe", "inherit"] });
  const conn = createProtocolConnection(new StreamMessageReader(proc.stdout!),
                                        new StreamMessageWriter(proc.stdin!));
  const edits: any[] = [];
  const notes: StatusNote[] = [];
  conn.onRequest("workspace/applyEdit", (params: any) => { edits.push(params); return { applied: true }; });
  conn.onRequest("window/workDoneProgress/create", () => null);
  conn.onNotification(STATUS_NOTIFICATION, (n: StatusNote) => { notes.push(n); });
  conn.onNotification("window/logMessage", () => undefined);
  conn.onNotification("$/progress", () => undefined);
  conn.listen();
  const settings: Record<string, unknown> = { model, socket: sock, maxTokens: 8, ensemble: 1,
                                              debounceMs: 0 };
  try {
    const init: any = await conn.sendRequest("initialize", {
      processId: process.pid, rootUri: null,
      capabilities: { textDocument: { inlineCompletion: {} },
                      // As vscode-languageclient 11 advertises them.
                      workspace: { applyEdit: true, workspaceEdit: {
                        documentChanges: true, changeAnnotationSupport: { groupsOnLabel: true } } },
                      window: { workDoneProgress: true } },
      initializationOptions: initializationOptions((k) => settings[k]) });
    assert.ok("inlineCompletionProvider" in init.capabilities);
    assert.deepEqual(init.capabilities.executeCommandProvider.commands.sort(),
                     Object.values(SERVER_COMMANDS).sort());
    await conn.sendNotification("initialized", {});
    const uri = "file:///work/count.txt";
    await conn.sendNotification("textDocument/didOpen", { textDocument: {
      uri, languageId: "plaintext", version: 1, text: "c0 c1 c2 c3 c4  c8 c9 c10" } });
    const pos = { line: 0, character: 15 };
    const inline: any = await conn.sendRequest("textDocument/inlineCompletion", {
      textDocument: { uri }, position: pos, context: { triggerKind: 1 } });  // LSP Invoked = 1
    assert.equal(inline.items[0].insertText, "c5 c6 c7");
    assert.deepEqual(inline.items[0].range, { start: pos, end: pos });

    const range = { start: { line: 0, character: 3 }, end: { line: 0, character: 8 } };
    const reply: any = await conn.sendRequest("workspace/executeCommand", {
      command: SERVER_COMMANDS.rewrite, arguments: rewriteArguments(uri, range, 1) });
    assert.equal(reply.applied, true);
    const change = edits[0].edit.documentChanges[0];
    assert.deepEqual(change.edits[0].range, range);
    // Never applied silently: VS Code shows an edit that needs confirmation in its refactor
    // preview, and applies it only when the user accepts.
    const note = edits[0].edit.changeAnnotations[change.edits[0].annotationId];
    assert.equal(note.needsConfirmation, true);
    assert.equal(note.label, "diffill: rewrite selection");
    // An instruction reaches the engine; this mask model says it cannot follow one.
    await assert.rejects(conn.sendRequest("workspace/executeCommand", {
      command: SERVER_COMMANDS.rewrite, arguments: rewriteArguments(uri, range, 1, "count up") }),
      /cannot follow an instruction/);

    const st: any = await conn.sendRequest("workspace/executeCommand",
                                           { command: SERVER_COMMANDS.status, arguments: [] });
    assert.equal(st.loads, 1);
    const ready = notes.filter((n) => n.state === "ready").pop();
    assert.ok(ready, "a ready status notification");
    assert.match(statusText(ready), /diffill: \S+ cpu/);
    await conn.sendRequest("shutdown");
    await conn.sendNotification("exit");
  } finally {
    conn.dispose();
    proc.kill();
    cp.spawnSync(exe!, ["serve", "--stop", "--socket", sock]);
  }
});
