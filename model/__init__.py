"""The bidirectional transformer, checkpoint loading and training of the bundled model.

Knows nothing of editors; text enters only as the tokenizer a checkpoint ships with.
"""

from .config import ConfigError, ModelConfig, from_hf_config
from .loader import (DEFAULT_CHECKPOINT, CheckpointError, DiffusionModel, load_model,
                     resolve_checkpoint)
from .profile import FAMILIES, FamilyProfile, ProfileError, build_profile, detect_family
from .transformer import KVCache, Transformer

__all__ = [
    "CheckpointError", "ConfigError", "DEFAULT_CHECKPOINT", "DiffusionModel", "FAMILIES",
    "FamilyProfile", "KVCache", "ModelConfig", "ProfileError", "Transformer", "build_profile",
    "detect_family", "from_hf_config", "load_model", "resolve_checkpoint",
]
