"""The engine interface the daemon and the CLI talk to, and the engine for a loaded model."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from diffill.model.block_diffusion import BlockDiffusionModel

from .api import InfillRequest, InfillResult, InfillSettings, Submission
from .block import BlockEngine
from .engine import Engine


@runtime_checkable
class InfillEngine(Protocol):
    """What a front end needs of an engine (:class:`~infill.engine.Engine` for mask models,
    :class:`~infill.block.BlockEngine` for block-diffusion chat models in this process,
    :class:`~infill.remote.OpenAIEngine` for a chat model on an OpenAI-compatible server)."""

    model: Any
    tokenizer: Any
    serves_between_steps: bool
    prefix_reuses: int
    shed: int
    quick: int

    def run(self, req: InfillRequest, settings: InfillSettings | None = None,
            cancel: Callable[[], bool] | None = None) -> InfillResult: ...

    def run_batch(self, submissions: Sequence[Submission], settings: InfillSettings,
                  contended: bool = False) -> list[InfillResult | BaseException]: ...

    def min_confidence(self, settings: InfillSettings, mode: str) -> float: ...

    def close(self) -> None: ...


def make_engine(model, settings: InfillSettings = InfillSettings()) -> InfillEngine:
    """:class:`~infill.engine.Engine` for mask-diffusion checkpoints,
    :class:`~infill.block.BlockEngine` for block-diffusion chat models (DiffusionGemma)."""
    if isinstance(model, BlockDiffusionModel):
        return BlockEngine(model, settings)
    return Engine(model, settings)
