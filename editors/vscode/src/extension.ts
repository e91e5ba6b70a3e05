// Wiring only: the language client, six commands, a status-bar item and its menu, preview
// decorations. Logic is in logic.ts.
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions, State } from "vscode-languageclient/node";
import { MODEL_CHOICES, PREVIEW_NOTIFICATION, PreviewNote, SERVER_COMMANDS, STATUS_NOTIFICATION,
         StatusNote, enabledFor, formatStatus, initializationOptions, menuItems, previewText,
         resolveServerPath, rewriteArguments, serverUrlProblem, statusText, statusTooltip,
         toggledEnable, toggledEverywhere } from "./logic";

let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;
let lastNote: StatusNote | undefined;
let pending = 0;  // ghost-text requests in flight: the status says "generating" meanwhile
const previewStyle = vscode.window.createTextEditorDecorationType({
  after: { color: new vscode.ThemeColor("editorGhostText.foreground"), fontStyle: "italic" },
});

/** Draw a `$/diffill/preview` note at the cursor while its ghost is pending (setting
 * diffill.preview); any edit, cursor move or the last note clears it. */
function showPreview(note: PreviewNote): void {
  const editor = vscode.window.activeTextEditor;
  if (!editor) return;
  const pos = editor.selection.active;
  const text = previewText(note, editor.document.uri.toString(), pos.line, pos.character);
  if (text === undefined) {
    editor.setDecorations(previewStyle, []);
    return;
  }
  editor.setDecorations(previewStyle, [{ range: new vscode.Range(pos, pos),
                                          renderOptions: { after: { contentText: text } } }]);
}

function clearPreview(): void {
  for (const editor of vscode.window.visibleTextEditors) editor.setDecorations(previewStyle, []);
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration("diffill");
}

async function start(context: vscode.ExtensionContext): Promise<void> {
  const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
  const exe = resolveServerPath(config().get<string>("serverPath"), folders);
  if (!exe) {
    showError("diffill: no `diffill` executable found. Install it (pip install -e .) or set " +
              "diffill.serverPath.");
    return;
  }
  const serverOptions: ServerOptions = { command: exe, args: ["lsp"] };
  const languages = config().get<string[]>("languages") ?? ["python"];
  const clientOptions: LanguageClientOptions = {
    documentSelector: languages.map((language) => ({ language })),
    initializationOptions: initializationOptions((k) => config().get(k)),
    synchronize: { configurationSection: "diffill" },
    outputChannelName: "diffill",
    middleware: {
      provideInlineCompletionItems: async (document, position, ctx, token, next) => {
        pending += 1;
        updateStatus();
        try {
          return await next(document, position, ctx, token);
        } finally {
          pending -= 1;
          updateStatus();
        }
      },
    },
  };
  client = new LanguageClient("diffill", "diffill", serverOptions, clientOptions);
  client.onDidChangeState((e) => {
    if (e.newState === State.Stopped) {
      lastNote = { state: "error", error: "server stopped" };
      updateStatus();
    }
  });
  try {
    await client.start();
  } catch (err) {
    showError(`diffill: the server could not start (${exe} lsp): ${String(err)}`);
    return;
  }
  context.subscriptions.push(client.onNotification(STATUS_NOTIFICATION, (note: StatusNote) => {
    lastNote = note;
    updateStatus();
  }));
  context.subscriptions.push(client.onNotification(PREVIEW_NOTIFICATION, showPreview));
}

function showError(message: string): void {
  lastNote = { state: "error", error: message };
  updateStatus();
  void vscode.window.showErrorMessage(message);
}

function activeLanguage(): string | undefined {
  return vscode.window.activeTextEditor?.document.languageId;
}

function updateStatus(): void {
  const lang = activeLanguage();
  const off = lang && !enabledFor(config().get<Record<string, boolean>>("enable"), lang)
    ? lang : undefined;
  status.text = statusText(lastNote, off, pending);
  status.tooltip = statusTooltip(lastNote);
  status.show();
}

async function rewrite(kind: "rewrite" | "refine", askInstruction = false): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!client || !editor || editor.selection.isEmpty) {
    void vscode.window.showInformationMessage("diffill: select the code to " + kind + " first.");
    return;
  }
  let instruction: string | undefined;
  if (askInstruction) {
    instruction = await vscode.window.showInputBox({
      title: "diffill: rewrite selection",
      prompt: "What should the rewrite do? (chat models such as DiffusionGemma follow it)",
      placeHolder: "add type hints",
    });
    if (instruction === undefined) return;  // dismissed
  }
  const doc = editor.document;
  const sel = editor.selection;
  const args = rewriteArguments(doc.uri.toString(),
    { start: { line: sel.start.line, character: sel.start.character },
      end: { line: sel.end.line, character: sel.end.character } }, doc.version, instruction);
  await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Window, title: `diffill: ${kind}` },
    () => client!.sendRequest("workspace/executeCommand",
                              { command: SERVER_COMMANDS[kind], arguments: args }));
}

/** Set `diffill.model` from a list of the supported checkpoints or a local folder (the
 * daemon runs it: `engine: local`), or point diffill at a model on a server (`engine:
 * openai`); the server loads it on the configuration change. */
async function pickModel(): Promise<void> {
  const folder = { label: "$(folder) A checkpoint folder…", model: undefined, description: "" };
  const served = { label: "$(server) A model on a server…", model: undefined,
                   description: "OpenAI-compatible, e.g. vLLM serving DiffusionGemma" };
  const pick = await vscode.window.showQuickPick([...MODEL_CHOICES, folder, served],
                                                 { title: "diffill: model" });
  if (!pick) return;
  const target = vscode.ConfigurationTarget.Global;
  if (pick === served) {
    const allow = config().get<boolean>("engineAllowPlainHttp") ?? false;
    const url = await vscode.window.showInputBox({
      title: "diffill: the server's URL", value: config().get<string>("engineUrl") ?? "",
      placeHolder: "https://gpu-box:8000/v1",
      validateInput: (v) => serverUrlProblem(v, allow) });
    if (!url) return;
    const id = await vscode.window.showInputBox({
      title: "diffill: the served model's id (empty: the server's first)",
      placeHolder: "RedHatAI/diffusiongemma-26B-A4B-it-FP8-dynamic" });
    if (id === undefined) return;
    await config().update("engineUrl", url.trim(), target);
    await config().update("model", id.trim() || null, target);
    await config().update("engine", "openai", target);
    return;
  }
  let model = pick.model;
  if (model === undefined) {
    const dirs = await vscode.window.showOpenDialog({ canSelectFolders: true,
                                                      canSelectFiles: false, openLabel: "Use" });
    if (!dirs || dirs.length === 0) return;
    model = dirs[0].fsPath;
  }
  await config().update("model", model, target);
  await config().update("engine", "local", target);  // a checkpoint runs in the daemon
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  context.subscriptions.push(previewStyle,
    vscode.workspace.onDidChangeTextDocument(clearPreview),
    vscode.window.onDidChangeTextEditorSelection(clearPreview));
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.command = "diffill.editor.menu";
  context.subscriptions.push(status);
  updateStatus();
  context.subscriptions.push(
    vscode.commands.registerCommand("diffill.editor.rewriteSelection", () => rewrite("rewrite")),
    vscode.commands.registerCommand("diffill.editor.rewriteWithInstruction",
                                    () => rewrite("rewrite", true)),
    vscode.commands.registerCommand("diffill.editor.refineSelection", () => rewrite("refine")),
    vscode.commands.registerCommand("diffill.editor.restartServer", async () => {
      if (client) await client.stop();
      client = undefined;
      await start(context);
    }),
    vscode.commands.registerCommand("diffill.editor.menu", async () => {
      const lang = activeLanguage();
      const enable = config().get<Record<string, boolean>>("enable");
      const pick = await vscode.window.showQuickPick(menuItems(lastNote, lang, enable),
                                                     { title: statusTooltip(lastNote) });
      if (!pick) return;
      if (pick.action === "toggle" && lang) {
        await config().update("enable", toggledEnable(enable, lang),
                              vscode.ConfigurationTarget.Global);
        updateStatus();
      } else if (pick.action === "toggleAll") {
        await config().update("enable", toggledEverywhere(enable),
                              vscode.ConfigurationTarget.Global);
        updateStatus();
      } else if (pick.action === "model") {
        await pickModel();
      } else if (pick.action === "status") {
        await vscode.commands.executeCommand("diffill.editor.showStatus");
      } else if (pick.action === "restart") {
        await vscode.commands.executeCommand("diffill.editor.restartServer");
      } else if (pick.action === "log") {
        client?.outputChannel.show();
      } else if (pick.action === "settings") {
        await vscode.commands.executeCommand("workbench.action.openSettings", "diffill");
      }
    }),
    vscode.window.onDidChangeActiveTextEditor(() => updateStatus()),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration("diffill.enable")) updateStatus();
      // The client's document selector is fixed when it starts: a new language list (or
      // server path) takes a restart, done here rather than left to the user.
      if (e.affectsConfiguration("diffill.languages") ||
          e.affectsConfiguration("diffill.serverPath")) {
        await vscode.commands.executeCommand("diffill.editor.restartServer");
      }
    }),
    vscode.commands.registerCommand("diffill.editor.showStatus", async () => {
      if (!client) return showError("diffill: the server is not running");
      const st = await client.sendRequest("workspace/executeCommand",
                                          { command: SERVER_COMMANDS.status, arguments: [] });
      void vscode.window.showInformationMessage(formatStatus(st as Record<string, unknown>),
                                                { modal: true });
    }),
  );
  await start(context);
}

export async function deactivate(): Promise<void> {
  if (client) await client.stop();
}
