"""Protocol types in one module: custom LSP commands and notifications, the settings an editor
sends, the daemon socket and its wire format. Tests and the editors' docs import from here."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import cattrs
import platformdirs

from diffill.infill.api import (MAX_CONTEXT, MAX_LENGTHS, MAX_MASKS, MAX_STEPS, InfillSettings,
                                SamplerSettings)
from diffill.infill.context import ContextBudget
from diffill.infill.wire import converter

from .errors import UnsafeSocket

SERVER_NAME = "diffill"
VERSION = "0.1.0"


@functools.cache
def build_id() -> str:
    """The version and a fingerprint of the code this process runs (every ``.py`` file of
    ``server``, ``infill`` and ``model``): two checkouts, or one before and after an upgrade,
    differ, so a client never talks to a daemon running other code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha1()
    for package in ("server", "infill", "model"):
        for f in sorted((root / package).rglob("*.py")):
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return f"{VERSION}+{digest.hexdigest()[:12]}"


# ---------------------------------------------------------------- LSP custom names

CMD_REWRITE = "diffill.rewriteSelection"
"""Arguments: ``[uri, range, version?, instruction?]``; regenerates the range and applies a
WorkspaceEdit. An instruction ("add type hints") is followed by chat models (DiffusionGemma);
a mask model answers it with an error."""
CMD_REFINE = "diffill.refineSelection"
"""Arguments: ``[uri, range, version?]``; re-does only the range's low-confidence tokens
(mask models)."""
CMD_STATUS = "diffill.status"
"""No arguments; returns the daemon status (model, device, dtype, memory, counters)."""
COMMANDS = (CMD_REWRITE, CMD_REFINE, CMD_STATUS)

NOTIFY_STATUS = "$/diffill/status"
"""Server -> client after a model load and after each request: ``{model, device, dtype,
state, lastLatencyMs, withheld, error?}``, for status bars; ``withheld`` counts the
completions the last request held back under ``minConfidence`` when it showed none (0
otherwise). Clients may ignore it."""

NOTIFY_PREVIEW = "$/diffill/preview"
"""Server -> client while a ghost is denoised, only with the ``preview`` setting on:
``{textDocument: {uri}, position, text, done}``: ``text`` is what the model has committed so
far from the cursor on (cleaned like a finished fill), ``done`` the share of the gap decided
(0-1). Sent before the ``textDocument/inlineCompletion`` answer of the same position, which
replaces it; a client shows it only while that request is pending and the buffer unchanged."""

REVIEW_ANNOTATION = "diffill.review"
"""Change annotation id of a rewrite or refine that the client should show for confirmation
(``needsConfirmation``) before applying it."""

# ---------------------------------------------------------------- settings


@dataclass
class Settings:
    """What an editor can set, in ``initializationOptions`` or ``workspace/didChangeConfiguration``
    (section ``diffill``). Names are camelCase on the wire."""

    engine: Literal["local", "openai"] = "local"
    """Where the model runs: ``local`` (in the daemon) or ``openai`` (an OpenAI-compatible
    server such as vLLM serving DiffusionGemma, at ``engineUrl``)."""
    model: str | None = None
    """Checkpoint: a folder, a bundled model's name or a hub id (default: diffill-small); with
    ``engine: openai``, the served model's id (default: the server's first)."""
    engineUrl: str | None = None
    """The OpenAI-compatible server of ``engine: openai``, e.g. ``https://gpu-box:8000/v1``."""
    engineApiKeyFile: str | None = None
    """A file (on the daemon's machine) whose first line is that server's API key; default:
    the daemon's ``$DIFFILL_ENGINE_API_KEY``. The key itself is never a setting."""
    engineAllowPlainHttp: bool = False
    """Allow ``http://`` to a host other than loopback (your code and the key in clear
    text); refused otherwise."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1`` ... (default: cuda when present)."""
    dtype: str | None = None
    """``float32`` | ``bfloat16`` | ``float16`` (default: bf16 on CUDA, fp32 on CPU)."""
    family: str | None = None
    """Force the checkpoint family (dream, dream-coder, diffucoder, dreamon, llada, ...)."""
    maxTokens: int = InfillSettings.max_tokens
    """Most tokens a completion may take."""
    steps: int = SamplerSettings.steps
    """Forward passes for the fixed/blocks schedules (0: one per two tokens)."""
    schedule: Literal["threshold", "fixed", "blocks"] = SamplerSettings.schedule
    """``threshold`` | ``fixed`` | ``blocks``."""
    threshold: float = SamplerSettings.threshold
    """Commit probability of the threshold schedule."""
    cache: Literal["auto", "none", "dual"] = SamplerSettings.cache
    """``auto`` (the checkpoint's) | ``none`` | ``dual`` (reuse context keys/values within a
    block)."""
    ensemble: int = InfillSettings.ensemble
    """Mask counts tried at once; each gives a candidate."""
    minConfidence: float | None = None
    """Completions scored below this (0-1) are not shown; null: the model's calibrated value."""
    mode: Literal["auto", "line", "block"] = InfillSettings.mode
    """``auto`` | ``line`` | ``block``."""
    prefixTokens: int = ContextBudget.prefix_tokens
    """Context budget before the cursor."""
    suffixTokens: int = ContextBudget.suffix_tokens
    """Context budget after the cursor."""
    extraTokens: int = ContextBudget.extra_tokens
    """Context budget for other open files of the same language (the stretch of each that
    shares the most names with the lines before the cursor), ahead of the prefix; only what
    the model's trained window leaves after prefix and suffix is used. 0 (the default) sends
    none: what it gains is unmeasured, since the bundled model's window has no room for it."""
    debounceMs: int | None = None
    """Wait this long after typing (automatic triggers) before asking the model; null:
    adaptive, 1.5 times the user's usual pause between keystrokes, within 100-400 ms."""
    reviewEdits: bool = True
    """Send rewrites and refines as edits that need the user's confirmation, to clients that
    support change annotations (VS Code shows its refactor preview; the Neovim plugin a diff
    with accept/reject); false applies them at once."""
    fastTyping: bool = True
    """While you type (automatic requests), a line completion tries one mask count instead of
    the ensemble: with the bundled model about 2.5 times faster and 1 point less often
    exact on held-out lines; invoked requests and blocks keep the ensemble."""
    hideUnknownNames: bool = True
    """Do not show a ghost that uses a name defined nowhere (in the file, the extra context,
    builtins or keywords): with the bundled model such ghosts were almost never right."""
    drafts: bool = True
    """Verify drafts from the code at hand before the model writes its own: the typed line's
    tail found elsewhere (the file, the other open files, the workspace's files, the line as
    the last ghost would have made it) and what followed it there; the line after the
    cursor's found elsewhere and the line before it there (those found both ways first); and
    the words that complete the partial word. Each is cut where the model vetoes it (a
    ghost's; an explicit ask gets them whole), scored by how likely its first word is typed
    next, and shown after one pass."""
    workspaceFiles: int = 2000
    """Drafts also come from the workspace's files of the document's kind (by suffix): the
    most recently modified ones up to this many (and 50 MB), read once in the background and
    again after a save; hidden, vendored and built folders are skipped. 0: none."""
    shedLoad: bool = True
    """When completions of several editors wait together, or one comes while a rewrite runs,
    each tries one mask count instead of the ensemble, so all are answered near idle speed
    (slightly less often right); false keeps the full ensemble at any load."""
    preview: bool = False
    """Send ``$/diffill/preview`` notifications with the committed tokens while a ghost is
    denoised, so a slow machine shows something early (clients that draw them: Neovim)."""
    enable: dict[str, bool] = field(default_factory=lambda: {"*": True})
    """Per language id; ``"*"`` is the default for the others."""
    completionFallback: Literal["auto", "always", "never"] = "auto"
    """Answer ``textDocument/completion``: ``auto`` (only for clients without inline
    completion), ``always`` or ``never``."""
    socket: str | None = None
    """Daemon socket path (default: per user, see ``default_socket``)."""
    idleTimeout: int = 1800
    """Seconds without requests after which a daemon started by the server exits."""

    def enabled_for(self, language_id: str | None) -> bool:
        if language_id and language_id in self.enable:
            return bool(self.enable[language_id])
        return bool(self.enable.get("*", True))

    def model_spec(self) -> dict[str, Any]:
        return {"engine": self.engine, "checkpoint": self.model, "device": self.device,
                "dtype": self.dtype, "family": self.family, "url": self.engineUrl,
                "key_file": self.engineApiKeyFile,
                "allow_plain_http": self.engineAllowPlainHttp}

    def infill_settings(self, automatic: bool = False) -> InfillSettings:
        """The engine's settings for a request (``automatic``: one the client made on typing,
        not one the user invoked): the one place editor settings become engine settings."""
        return InfillSettings(
            sampler=dataclasses.replace(SamplerSettings(), steps=self.steps,
                                        schedule=self.schedule, threshold=self.threshold,
                                        cache=self.cache),
            budget=ContextBudget(self.prefixTokens, self.suffixTokens, self.extraTokens),
            max_tokens=self.maxTokens, mode=self.mode, ensemble=self.ensemble,
            # The floor is for ghosts that appear by themselves: an invoked request gets the
            # best candidate (explicit).
            min_confidence=self.minConfidence if automatic else None,
            shed_load=self.shedLoad, quick_lines=automatic and self.fastTyping,
            hide_unknown_names=self.hideUnknownNames, explicit=not automatic,
            drafts=self.drafts)


SPEC_FLAGS = {"checkpoint": "--model", "device": "--device", "dtype": "--dtype",
              "family": "--family", "engine": "--engine", "url": "--engine-url",
              "key_file": "--engine-api-key-file"}


def spec_flags(spec: dict[str, Any]) -> list[str]:
    """The command-line options that give ``spec`` (:func:`model_spec` read backwards)."""
    flags = [part for key, flag in SPEC_FLAGS.items() if spec.get(key)
             for part in (flag, str(spec[key]))]
    return flags + (["--engine-allow-plain-http"] if spec.get("allow_plain_http") else [])


POSITIVE = ("maxTokens", "ensemble", "prefixTokens", "suffixTokens", "idleTimeout")
UPPER = {"maxTokens": MAX_MASKS, "workspaceFiles": 20000, "ensemble": MAX_LENGTHS,
         "steps": MAX_STEPS, "prefixTokens": MAX_CONTEXT, "suffixTokens": MAX_CONTEXT,
         "extraTokens": MAX_CONTEXT, "debounceMs": 2000, "idleTimeout": 7 * 24 * 3600}
"""Largest accepted value of each numeric setting: the engine's caps, and waits a person
would still call a delay (a debounce of 11 days was accepted before)."""
# Keys editor clients keep in the same "diffill" section for themselves (VS Code's executable
# path and language list, vscode-languageclient's trace level). A client that synchronises
# the whole section sends them; they are not the server's and not an error.
CLIENT_SETTINGS = frozenset({"serverPath", "languages", "trace"})


def _in_bounds(key: str, value: Any) -> bool:
    if key == "threshold":
        return 0 < value <= 1
    if key == "minConfidence":
        return value is None or 0 <= value <= 1
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return (1 if key in POSITIVE else 0) <= value <= UPPER.get(key, value)


def parse_settings(raw: Mapping[str, Any] | None, base: Settings | None = None
                   ) -> tuple[Settings, list[str]]:
    """Settings from a client's JSON; an invalid entry keeps the value it had in ``base`` and
    is reported.

    Accepts the settings object itself or one wrapped as ``{"diffill": {...}}``.
    """
    base = base or Settings()
    if not raw:
        return base, []
    if isinstance(raw, Mapping) and isinstance(raw.get("diffill"), Mapping):
        raw = raw["diffill"]
    if not isinstance(raw, Mapping):
        return base, [f"settings must be an object, got {type(raw).__name__}"]
    types_of = typing.get_type_hints(Settings)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        if key in CLIENT_SETTINGS:
            continue
        if key not in types_of:
            problems.append(f"unknown setting {key!r}")
            continue
        try:
            parsed = converter().structure(value, types_of[key])
            ok = _in_bounds(key, parsed)
        except (cattrs.BaseValidationError, cattrs.errors.CattrsError, TypeError, ValueError,
                AttributeError):
            ok = False
        if ok:
            values[key] = parsed
        else:
            low = 1 if key in POSITIVE else 0
            bound = f"; at least {low}, at most {UPPER[key]}" if key in UPPER else ""
            problems.append(f"invalid value for {key!r}: {value!r}{bound} (keeping "
                            f"{getattr(base, key)!r})")
    return dataclasses.replace(base, **values), problems


def is_message_id(value: Any) -> bool:
    """A JSON-RPC id as LSP and the daemon's wire take it: a number or a string (JSON's
    true/false decode to bool, a subclass of int, and are not ids)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


# ---------------------------------------------------------------- daemon socket

ENV_SOCKET = "DIFFILL_SOCKET"


def default_socket() -> Path:
    """Per-user socket: ``$DIFFILL_SOCKET``, else ``diffill/daemon.sock`` in the user's runtime
    folder as platformdirs finds it: ``$XDG_RUNTIME_DIR`` when it is a 0700 folder of this
    user's (not a symlink), else ``/run/user/$UID``, else a private ``runtime-$UID`` in the
    temp dir, created 0700; one another user planted is refused."""
    if os.environ.get(ENV_SOCKET):
        return Path(os.environ[ENV_SOCKET])
    with warnings.catch_warnings():
        # Falling back from an unset or unsafe $XDG_RUNTIME_DIR is normal, not news.
        warnings.simplefilter("ignore", platformdirs.RuntimeDirWarning)
        try:
            folder = platformdirs.user_runtime_dir("diffill", appauthor=False,
                                                   ensure_exists=True)
        except PermissionError as exc:
            raise UnsafeSocket(f"no private folder for the diffill socket: {exc} (or set the "
                               "socket setting to a path in a folder of your own)") from None
    return Path(folder) / "daemon.sock"


def socket_path(setting: str | None) -> Path:
    return Path(setting).expanduser() if setting else default_socket()


# Daemon wire format: one JSON object per line, both ways.
#   request       {"id": int, "method": str, "params": {...}}
#   response      {"id": int, "result": ...} | {"id": int, "error": {"kind": str, "message": str}}
#   notification  {"method": "cancel", "params": {"id": int}}
# Methods: hello, status, load, infill, shutdown; notification: cancel.
