"""One error module: what can go wrong, its CLI exit code and its LSP error code.

Lower layers raise their own exceptions (``CheckpointError``, ``InputError``, ``Cancelled`` ...);
this module maps them once, so the CLI prints one clear line and the LSP server answers with a
proper error instead of dying.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffill.infill.api import Cancelled
from diffill.infill.text import InputError

# LSP / JSON-RPC codes (LSP 3.17 §ErrorCodes).
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_FAILED = -32803
REQUEST_CANCELLED = -32800

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_CANCELLED = 5
EXIT_DAEMON = 6
EXIT_INTERNAL = 70


class DiffillError(Exception):
    """Base of the errors diffill reports to a user."""

    exit_code = EXIT_INTERNAL
    lsp_code = INTERNAL_ERROR


class UsageError(DiffillError):
    exit_code = EXIT_USAGE
    lsp_code = INVALID_PARAMS


class BadInput(DiffillError):
    """A file, position or text diffill cannot work on."""

    exit_code = EXIT_INPUT
    lsp_code = INVALID_PARAMS


class ModelUnavailable(DiffillError):
    """The checkpoint is missing or broken, the device ran out of memory, or the engine's
    server does not answer as it should."""

    exit_code = EXIT_MODEL
    lsp_code = REQUEST_FAILED


class RequestCancelled(DiffillError):
    exit_code = EXIT_CANCELLED
    lsp_code = REQUEST_CANCELLED


class DaemonUnavailable(DiffillError):
    """The daemon could not be reached or started, or died during a request."""

    exit_code = EXIT_DAEMON
    lsp_code = REQUEST_FAILED


class UnsafeSocket(DaemonUnavailable):
    """The daemon's socket folder, path or peer is not this user's own (never repaired)."""


@dataclass
class ErrorInfo:
    kind: str
    message: str
    exit_code: int
    lsp_code: int


def classify(exc: BaseException) -> DiffillError:
    """The :class:`DiffillError` for any exception a request can raise."""
    if isinstance(exc, DiffillError):
        return exc
    if isinstance(exc, Cancelled):
        return RequestCancelled("the request was cancelled")
    if isinstance(exc, InputError):
        return BadInput(str(exc))
    name = type(exc).__name__
    if name in ("CheckpointError", "ConfigError", "WeightsError", "ProfileError", "EngineError"):
        return ModelUnavailable(str(exc))
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return ModelUnavailable("the device ran out of memory; try a smaller --max-tokens, a "
                                "shorter context budget, or --device cpu")
    if isinstance(exc, ValueError):
        return UsageError(str(exc))
    if isinstance(exc, (ConnectionError, EOFError)):
        return DaemonUnavailable(str(exc) or "the daemon connection was lost")
    return DiffillError(f"{name}: {exc}")


def describe(exc: BaseException) -> ErrorInfo:
    err = classify(exc)
    return ErrorInfo(type(err).__name__, str(err), err.exit_code, err.lsp_code)


KINDS: dict[str, type[DiffillError]] = {
    cls.__name__: cls for cls in (DiffillError, UsageError, BadInput, ModelUnavailable,
                                  RequestCancelled, DaemonUnavailable, UnsafeSocket)
}


def from_kind(kind: str, message: str) -> DiffillError:
    """Rebuild an error sent over the daemon socket."""
    return KINDS.get(kind, DiffillError)(message)
