"""Context windows, the denoising sampler and post-processing. Knows nothing of LSP."""

from .context import ContextBudget, Window, build_window
from .engine import (ACTIONS, Completion, Engine, InfillRequest, InfillResult, InfillSettings,
                     with_overrides)
from .sampler import Cancelled, Candidate, SamplerSettings, denoise, infill, refine
from .text import InputError, PositionError, decode_source, offset_at, position_of

__all__ = [
    "ACTIONS", "Cancelled", "Candidate", "Completion", "ContextBudget", "Engine", "InfillRequest",
    "InfillResult", "InfillSettings", "InputError", "PositionError", "SamplerSettings", "Window",
    "build_window", "decode_source", "denoise", "infill", "offset_at", "position_of", "refine",
    "with_overrides",
]
