"""Checkpoint tensors by their Hugging Face names, memory-mapped, renamed in one explicit table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# LLaDA (OLMo-style) name -> the Qwen2/LLaMA name this transformer uses. First match wins.
LLADA_NAMES: list[tuple[str, str]] = [
    (r"^model\.transformer\.wte\.weight$", r"model.embed_tokens.weight"),
    (r"^model\.transformer\.ln_f\.weight$", r"model.norm.weight"),
    (r"^model\.transformer\.ff_out\.weight$", r"lm_head.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.(q_proj|k_proj|v_proj)\.(weight|bias)$",
     r"model.layers.\1.self_attn.\2.\3"),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_out\.weight$", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.weight$", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.up_proj\.weight$", r"model.layers.\1.mlp.up_proj.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_out\.weight$", r"model.layers.\1.mlp.down_proj.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.weight$",
     r"model.layers.\1.post_attention_layernorm.weight"),
]

# Tensors some checkpoints carry that hold nothing this model needs (recomputed RoPE tables).
IGNORED = re.compile(r"rotary_emb\.inv_freq$")


class WeightsError(ValueError):
    """Weight files missing, unreadable, or not matching the config."""


def rename(name: str, layout: str) -> str:
    if layout != "llada":
        return name
    for pattern, target in LLADA_NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, target, name)
    return name


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, single or sharded."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"{index} is not a valid safetensors index: {exc}") from exc
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{folder}: shard(s) listed in {INDEX_FILE} are missing: "
                               + ", ".join(missing))
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise WeightsError(f"{folder} holds PyTorch pickle weights only; diffill loads "
                           "safetensors (convert with transformers' save_pretrained)")
    raise WeightsError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}")


def read_state_dict(folder: Path, cfg: ModelConfig, device: torch.device,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, renamed, on ``device`` in ``dtype`` (memory-mapped reads)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            # safe_open memory-maps the file: each tensor is read once, straight to the device.
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    if IGNORED.search(name):
                        continue
                    state[rename(name, cfg.layout)] = f.get_tensor(name).to(dtype)
        except WeightsError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"cannot read {path}: {exc}") from exc
    if cfg.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        emb = state.get("model.embed_tokens.weight")
        if head is not None and emb is not None and not torch.equal(head, emb):
            raise WeightsError("config says tie_word_embeddings but lm_head differs from the "
                               "embedding")
    return state


def save_state_dict(model: torch.nn.Module, folder: Path,
                    max_shard_bytes: int | None = None) -> Path:
    """Write a model's tensors under their Hugging Face names: ``model.safetensors``, or shards
    of at most ``max_shard_bytes`` each with a ``model.safetensors.index.json`` (the layout
    ``save_pretrained`` uses), for transports that limit a file's size."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    total = sum(t.numel() * t.element_size() for t in state.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        path = folder / SINGLE_FILE
        save_file(state, str(path), metadata={"format": "pt"})
        return path
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if n > max_shard_bytes:
            raise WeightsError(f"tensor {name} ({n} bytes) is larger than a shard")
        if size + n > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    path = folder / INDEX_FILE
    path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                               indent=1))
    return path
