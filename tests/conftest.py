"""Shared fixtures: tiny checkpoints in the real on-disk format, built per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

# Test models are tiny: one thread is as fast, and it does not fight other processes for cores.
torch.set_num_threads(1)

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def bpe():
    return helpers.bpe_tokenizer(extra_special=["<|fill|>"])


@pytest.fixture(scope="session")
def qwen2_ckpt(tmp_path_factory, bpe):
    """Untied Qwen2 with q/k/v bias, Dream-shaped config (mask id in config.json)."""
    return helpers.save_checkpoint(tmp_path_factory.mktemp("qwen2"), "qwen2", tokenizer=bpe,
                                   config_updates=helpers.diffill_config())


@pytest.fixture(scope="session")
def llama_tied_ckpt(tmp_path_factory, bpe):
    return helpers.save_checkpoint(tmp_path_factory.mktemp("llama"), "llama", tokenizer=bpe,
                                   tied=True, config_updates=helpers.diffill_config())


@pytest.fixture(scope="session")
def diffill_ckpt(tmp_path_factory, bpe) -> Path:
    """A random diffill-family checkpoint with a code tokenizer, for CLI and server tests."""
    folder, _ = helpers.save_checkpoint(tmp_path_factory.mktemp("diffill"), "qwen2",
                                        tokenizer=bpe, tied=True,
                                        config_updates=helpers.diffill_config())
    return folder


@pytest.fixture(scope="session")
def pattern_ckpt(tmp_path_factory) -> Path:
    return helpers.train_pattern_model(tmp_path_factory.mktemp("pattern"))


@pytest.fixture(scope="session")
def pattern_model(pattern_ckpt):
    from diffill.model import load_model
    return load_model(pattern_ckpt)
