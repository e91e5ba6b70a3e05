// Pure logic of the extension: no `vscode` import, so it is unit-tested under plain node.
import * as fs from "fs";
import * as path from "path";

/** Settings the server understands (server/protocol.py `Settings`), camelCase on the wire. */
export const SERVER_SETTINGS = [
  "engine", "model", "engineUrl", "engineApiKeyFile", "engineAllowPlainHttp", "device", "dtype",
  "family", "maxTokens", "steps", "schedule", "threshold", "cache",
  "ensemble", "mode", "prefixTokens", "suffixTokens", "extraTokens", "debounceMs", "enable",
  "completionFallback", "socket", "idleTimeout", "minConfidence", "preview",
  "reviewEdits", "shedLoad", "fastTyping", "hideUnknownNames", "drafts", "workspaceFiles",
] as const;

/** Commands the server registers (workspace/executeCommand). */
export const SERVER_COMMANDS = {
  rewrite: "diffill.rewriteSelection",
  refine: "diffill.refineSelection",
  status: "diffill.status",
} as const;

export const STATUS_NOTIFICATION = "$/diffill/status";
export const PREVIEW_NOTIFICATION = "$/diffill/preview";

/** A `$/diffill/preview` note: what the model has committed so far for a pending ghost. */
export interface PreviewNote {
  textDocument: { uri: string };
  position: { line: number; character: number };
  text: string;
  done: number;
}

/** The text to draw for a preview in an editor showing `uri` with its cursor at
 * line/character, or undefined: another document or place, nothing committed yet, or the
 * last preview (done = 1), after which the real ghost arrives. Only its first line is drawn
 * (an after-text decoration is one line). */
export function previewText(note: PreviewNote, uri: string, line: number,
                            character: number): string | undefined {
  if (note.textDocument.uri !== uri || note.position.line !== line ||
      note.position.character !== character || note.done >= 1) return undefined;
  const first = note.text.split("\n")[0];
  return first ? first : undefined;
}

export interface StatusNote {
  state: "loading" | "ready" | "error" | string;
  model?: string | null;
  device?: string | null;
  dtype?: string | null;
  lastLatencyMs?: number | null;
  /** Completions the last request held back under minConfidence, when it showed none. */
  withheld?: number | null;
  error?: string | null;
}

/** Reads a configuration value; the extension passes VS Code's `WorkspaceConfiguration.get`. */
export type ConfigGetter = (key: string) => unknown;

/** initializationOptions for the server: every server setting that is set (null = default). */
export function initializationOptions(get: ConfigGetter): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const value = get(key);
    if (value !== undefined && value !== null && value !== "") {
      out[key] = value;
    }
  }
  return out;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * The diffill executable: the configured path, else `.venv/bin/diffill` of a workspace folder,
 * else the first `diffill` on PATH. Returns undefined when none exists.
 */
export function resolveServerPath(configured: string | undefined, workspaceFolders: string[],
                                  envPath: string = process.env.PATH ?? ""): string | undefined {
  const exe = process.platform === "win32" ? "diffill.exe" : "diffill";
  if (configured && configured.trim()) {
    return isExecutable(configured) ? configured : undefined;
  }
  for (const folder of workspaceFolders) {
    for (const venv of [".venv", "venv"]) {
      const bin = process.platform === "win32" ? "Scripts" : "bin";
      const candidate = path.join(folder, venv, bin, exe);
      if (isExecutable(candidate)) return candidate;
    }
  }
  for (const dir of envPath.split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, exe);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** Whether ghost text is on for a language under the `enable` setting (the server's rule:
 * the language's own entry, else "*", else on). */
export function enabledFor(enable: Record<string, boolean> | undefined, language: string): boolean {
  const map = enable ?? {};
  if (language in map) return map[language];
  return map["*"] ?? true;
}

/** The `enable` setting with `language` switched the other way. */
export function toggledEnable(enable: Record<string, boolean> | undefined,
                              language: string): Record<string, boolean> {
  return { ...(enable ?? {}), [language]: !enabledFor(enable, language) };
}

/** `enable` with the default for every language (`"*"`) switched, and the per-language
 * entries dropped, so "off everywhere" means everywhere. */
export function toggledEverywhere(enable: Record<string, boolean> | undefined
                                  ): Record<string, boolean> {
  return { "*": !(enable?.["*"] ?? true) };
}

/** Models offered by the menu's "Pick the model": the bundled one and the supported
 * checkpoints (README), with where each runs. */
export const MODEL_CHOICES: { label: string; model: string | null; description: string }[] = [
  { label: "diffill-small", model: null, description: "bundled, 6.8M, any CPU" },
  { label: "Dream-Coder 7B Instruct", model: "Dream-org/Dream-Coder-v0-Instruct-7B",
    description: "GPU, ~16 GB" },
  { label: "DreamOn 7B", model: "Dream-org/DreamOn-v0-7B",
    description: "GPU, ~16 GB; finds the fill's length itself" },
  { label: "DiffuCoder 7B Instruct", model: "apple/DiffuCoder-7B-Instruct", description: "GPU, ~16 GB" },
  { label: "Open-dCoder 0.5B", model: "fredzzp/open-dcoder-0.5B", description: "CPU or GPU" },
  { label: "DiffusionGemma 26B-A4B", model: "google/diffusiongemma-26B-A4B-it",
    description: "GPU, ~57 GB; follows rewrite instructions" },
];

/**
 * What is wrong with a server URL for `engine: openai` (the server's rule, so the user hears
 * it while typing it), or undefined when it is fine: http(s) with a host; plain http only to
 * loopback unless `allowPlainHttp`.
 */
export function serverUrlProblem(url: string, allowPlainHttp = false): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    return "give http(s)://HOST[:PORT][/v1]";
  }
  if (!["http:", "https:"].includes(parsed.protocol) || !parsed.hostname) {
    return "give http(s)://HOST[:PORT][/v1]";
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, "");
  const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
  if (parsed.protocol === "http:" && !loopback && !allowPlainHttp) {
    return `plain http to ${host} sends your code unencrypted: use https (or set ` +
      "diffill.engineAllowPlainHttp)";
  }
  return undefined;
}

export type MenuAction = "status" | "toggle" | "toggleAll" | "model" | "restart" | "settings"
  | "log";

/** The status-bar menu: what the user can do from where things stand. */
export function menuItems(note: StatusNote | undefined, language: string | undefined,
                          enable: Record<string, boolean> | undefined
                          ): { label: string; description?: string; action: MenuAction }[] {
  const items: { label: string; description?: string; action: MenuAction }[] = [];
  if (note?.state === "error") {
    items.push({ label: "$(debug-restart) Restart the server", description: note.error ?? "",
                 action: "restart" });
    items.push({ label: "$(output) Show the log", action: "log" });
  }
  if (language) {
    const on = enabledFor(enable, language);
    items.push({ label: on ? `$(circle-slash) Turn ghost text off for ${language}`
                           : `$(sparkle) Turn ghost text on for ${language}`, action: "toggle" });
  }
  const everywhere = enable?.["*"] ?? true;
  items.push({ label: everywhere ? "$(circle-slash) Turn ghost text off everywhere"
                                 : "$(sparkle) Turn ghost text on everywhere",
               action: "toggleAll" });
  items.push({ label: "$(symbol-class) Pick the model…",
               description: note?.model ? path.basename(note.model) : undefined, action: "model" });
  items.push({ label: "$(info) Show the daemon status", action: "status" });
  if (note?.state !== "error") {
    items.push({ label: "$(debug-restart) Restart the server", action: "restart" });
    items.push({ label: "$(output) Show the log", action: "log" });
  }
  items.push({ label: "$(gear) Settings", action: "settings" });
  return items;
}

/** The status-bar text for a status notification (``pending``: ghost-text requests in
 * flight, shown as "generating"). */
export function statusText(note: StatusNote | undefined, off?: string, pending = 0): string {
  if (off && note?.state !== "error") return `$(circle-slash) diffill: off for ${off}`;
  if (!note) return "$(loading~spin) diffill";
  if (note.state === "loading") return "$(loading~spin) diffill: loading";
  if (note.state === "error") return "$(error) diffill";
  const model = note.model ? path.basename(note.model) : "model";
  if (pending > 0) return `$(sync~spin) diffill: generating (${model})`;
  const latency = note.lastLatencyMs != null ? ` ${Math.round(note.lastLatencyMs)} ms` : "";
  const unsure = note.withheld ? ", unsure" : "";
  return `$(sparkle) diffill: ${model} ${note.device ?? ""}${latency}`.replace(/\s+$/, "") + unsure;
}

/** The status-bar tooltip. */
export function statusTooltip(note: StatusNote | undefined): string {
  if (!note) return "diffill: starting";
  if (note.state === "error") return `diffill: ${note.error ?? "error"}`;
  const parts = [`model: ${note.model ?? "?"}`, `device: ${note.device ?? "?"}`,
                 `dtype: ${note.dtype ?? "?"}`];
  if (note.lastLatencyMs != null) parts.push(`last completion: ${note.lastLatencyMs} ms`);
  if (note.withheld) {
    parts.push(`nothing shown: ${note.withheld} completion${note.withheld > 1 ? "s" : ""} ` +
               "scored under minConfidence");
  }
  return parts.join("\n");
}

/** Arguments of the server's rewrite/refine commands: [uri, range, version, instruction?].
 * An instruction (followed by chat models such as DiffusionGemma) is sent only when given. */
export function rewriteArguments(uri: string,
                                 range: { start: { line: number; character: number };
                                          end: { line: number; character: number } },
                                 version: number, instruction?: string): unknown[] {
  const args: unknown[] = [uri, { start: { ...range.start }, end: { ...range.end } }, version];
  if (instruction && instruction.trim()) args.push(instruction.trim());
  return args;
}

/** Human-readable daemon status (the reply of `diffill.status`). */
export function formatStatus(st: Record<string, any>): string {
  const lines = [`daemon pid ${st.pid}, up ${Math.round(st.uptime_s ?? 0)} s, ${st.state}`];
  for (const m of st.models ?? []) {
    lines.push(`model ${m.checkpoint} (${m.family}, ${(m.parameters / 1e6).toFixed(1)}M ` +
               `parameters) on ${m.device} ${m.dtype}`);
  }
  const c = st.counters ?? {};
  lines.push(`requests ${c.requests ?? 0}: ${c.completed ?? 0} completed, ` +
             `${c.cancelled ?? 0} cancelled, ${c.failed ?? 0} failed; loads ${st.loads ?? 0}`);
  if (st.lastLatencyMs != null) lines.push(`last latency ${st.lastLatencyMs} ms`);
  return lines.join("\n");
}
