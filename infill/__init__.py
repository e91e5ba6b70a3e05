"""Context windows, the denoising sampler and post-processing. Knows nothing of LSP.

Names are imported lazily, so that light users (the LSP server converting positions with
``infill.text``) do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ContextBudget": "context", "Window": "context", "build_window": "context",
    "ACTIONS": "api", "Completion": "api", "InfillRequest": "api", "InfillResult": "api",
    "InfillSettings": "api", "with_overrides": "api", "Cancelled": "api",
    "SamplerSettings": "api", "Submission": "api", "DocumentKey": "api", "Engine": "engine",
    "make_engine": "engines", "InfillEngine": "engines", "Candidate": "sampler",
    "denoise": "sampler", "infill": "sampler", "infill_many": "sampler", "refine": "sampler",
    "InputError": "text", "PositionError": "text", "decode_source": "text", "offset_at": "text",
    "position_of": "text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'infill' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
