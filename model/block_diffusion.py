"""Block-diffusion chat models (DiffusionGemma), loaded through transformers' own class.

DiffusionGemma is not a mask model: its prompt runs causally (K/V kept), then a canvas of random
tokens is denoised with bidirectional attention, block after block. diffill does not
re-implement its mixture-of-experts transformer: ``DiffusionGemmaForBlockDiffusion`` (transformers
>= 5.11) is loaded from safetensors only, with no ``trust_remote_code``, and driven through its
own ``generate``. This module knows the checkpoint, its memory and its tokenizer; prompts and
answers are ``infill.block``'s business.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import psutil
import torch
from safetensors import safe_open

from .errors import CheckpointError
from .weights import WeightsError, weight_files

log = logging.getLogger("diffill.model")

BLOCK_DIFFUSION_TYPES = ("diffusion_gemma",)
FAMILY = "diffusiongemma"
MIN_TRANSFORMERS = "5.11"
WORKING_FRACTION, WORKING_MIN = 0.1, 1 << 30
"""Memory beyond the weights: K/V of the prompt, the canvas' activations and logits
(256 x 262,144 floats is 268 MB per copy), CUDA's own context."""
GB = 1e9


def is_block_diffusion(config: Mapping[str, Any]) -> bool:
    return str(config.get("model_type", "")).lower() in BLOCK_DIFFUSION_TYPES


def _model_class():
    """transformers' DiffusionGemma class, or a CheckpointError that says which version has it.
    (transformers is imported where it is needed: seconds that a diffill checkpoint never pays.)"""
    try:
        from transformers import DiffusionGemmaForBlockDiffusion
    except ImportError:
        import transformers
        raise CheckpointError(f"DiffusionGemma checkpoints need transformers >= {MIN_TRANSFORMERS} "
                              f"(installed: {transformers.__version__}); "
                              "pip install -U transformers") from None
    return DiffusionGemmaForBlockDiffusion


def weight_census(folder: Path) -> tuple[int, dict[str, int]]:
    """(parameters, parameters per stored dtype) read from the safetensors headers alone."""
    total, by_dtype = 0, {}
    for f in weight_files(folder):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                n = 1
                for d in piece.get_shape():
                    n *= int(d)
                total += n
                dt = piece.get_dtype()
                by_dtype[dt] = by_dtype.get(dt, 0) + n
    return total, by_dtype


def memory_needed(parameters: int, dtype: torch.dtype) -> int:
    """Bytes to hold ``parameters`` in ``dtype`` and run one canvas."""
    weights = parameters * torch.empty((), dtype=dtype).element_size()
    return weights + max(WORKING_MIN, int(weights * WORKING_FRACTION))


def free_memory(device: torch.device) -> int:
    """Bytes this device can still give: free CUDA memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def check_memory(name: str, parameters: int, dtype: torch.dtype, device: torch.device) -> None:
    """A CheckpointError, before anything is read, when the model cannot fit on ``device``."""
    need, free = memory_needed(parameters, dtype), free_memory(device)
    if need <= free:
        return
    what = (f"{name} needs about {need / GB:.1f} GB of memory "
            f"({_count(parameters)} parameters in {str(dtype).replace('torch.', '')}, "
            f"plus working memory)")
    if device.type == "cpu" and not torch.cuda.is_available():
        raise CheckpointError(f"{what}; this machine has no CUDA GPU and {free / GB:.1f} GB of "
                              f"memory available. Run it on a GPU with at least "
                              f"{need / GB:.0f} GB free, or use a smaller checkpoint")
    raise CheckpointError(f"{what}; {device} has {free / GB:.1f} GB free")


@dataclass
class BlockDiffusionModel:
    """A loaded block-diffusion checkpoint: transformers' model, its tokenizer and settings."""

    net: Any
    """``DiffusionGemmaForBlockDiffusion``, in eval mode."""
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    path: Path
    load_seconds: float
    parameters: int
    family: str = FAMILY

    @property
    def canvas_length(self) -> int:
        return int(self.net.config.canvas_length)

    def stop_ids(self) -> set[int]:
        """Tokens that end an answer: the generation config's EOS ids, the tokenizer's EOS
        and the pad the generator writes after them."""
        ids: set[int] = set()
        gen = self.net.generation_config
        for value in (gen.eos_token_id, gen.pad_token_id, self.tokenizer.eos_token_id,
                      self.tokenizer.pad_token_id):
            if value is None:
                continue
            ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        return ids

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.net.parameters())

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.path), "family": self.family,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "parameters": self.parameters, "load_seconds": round(self.load_seconds, 3),
                "canvas_length": self.canvas_length}


def load_tokenizer(folder: Path):
    """The checkpoint's tokenizer with its chat template (``AutoTokenizer``: these checkpoints
    ship a tokenizer class and a template that ``PreTrainedTokenizerFast`` alone would drop)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer of {folder}: {exc}") from exc
    if not getattr(tok, "chat_template", None):
        raise CheckpointError(f"{folder}: the tokenizer has no chat template; a block-diffusion "
                              "chat model is prompted through it (chat_template.jinja or "
                              "tokenizer_config.json's chat_template)")
    return tok


def check(folder: Path) -> tuple[int, Any]:
    """What can be checked without loading the weights: the tokenizer, its chat template and
    every weight file's header. Returns the parameter count and the tokenizer."""
    _model_class()
    tokenizer = load_tokenizer(folder)
    try:
        return weight_census(folder)[0], tokenizer
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from exc
    except Exception as exc:  # safetensors' own errors: truncated or not safetensors at all
        raise CheckpointError(f"{folder}: unreadable weights ({exc})") from exc


def load(folder: Path, device: torch.device, dtype: torch.dtype) -> BlockDiffusionModel:
    """Load a DiffusionGemma checkpoint folder onto ``device`` in ``dtype``."""
    t0 = time.perf_counter()
    cls = _model_class()
    parameters, tokenizer = check(folder)
    check_memory(folder.name, parameters, dtype, device)
    place = {}
    if device.type != "cpu":
        # Straight onto the GPU, shard by shard (transformers does that through accelerate);
        # without it the whole model would pass through host memory first.
        if importlib.util.find_spec("accelerate") is None:
            raise CheckpointError("loading a DiffusionGemma checkpoint onto a GPU needs "
                                  "accelerate: pip install 'diffill[gpu]'")
        place = {"device_map": {"": str(device)}}
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # a daemon's log and the CLI's stderr want no bars
    try:
        net = cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                  local_files_only=True, **place)
    except torch.cuda.OutOfMemoryError as exc:
        raise CheckpointError(f"{folder}: out of GPU memory while loading ({exc})") from exc
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[:2]
        raise CheckpointError(f"{folder}: cannot load the model: {' '.join(first)[:400]}") from exc
    net.eval()
    vocab = int(net.config.text_config.vocab_size)
    if len(tokenizer) > vocab:
        raise CheckpointError(f"{folder}: tokenizer has {len(tokenizer)} tokens but the model's "
                              f"vocabulary is {vocab}")
    seconds = time.perf_counter() - t0
    model = BlockDiffusionModel(net, tokenizer, device, dtype, folder, seconds, parameters)
    log.info("loaded %s (diffusiongemma, %.2fB parameters, canvas %d) on %s as %s in %.2fs",
             folder.name, parameters / 1e9, model.canvas_length, device,
             model.describe()["dtype"], seconds)
    return model
