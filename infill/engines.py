"""The engine for a loaded model, whichever kind it is."""

from __future__ import annotations

from .api import InfillSettings
from .engine import Engine


def make_engine(model, settings: InfillSettings = InfillSettings()) -> Engine:
    """:class:`~infill.engine.Engine` for mask-diffusion checkpoints,
    :class:`~infill.block.BlockEngine` for block-diffusion chat models (DiffusionGemma)."""
    from diffill.model.block_diffusion import BlockDiffusionModel
    if isinstance(model, BlockDiffusionModel):
        from .block import BlockEngine
        return BlockEngine(model, settings)
    return Engine(model, settings)
