"""Transformer sizes read from a checkpoint's own ``config.json``.

Three spellings are understood: Qwen2 / Dream (``hidden_size``, q/k/v bias always on), LLaMA
(``attention_bias`` decides), and LLaDA's OLMo-style names (``d_model``, ``n_heads`` ...). All of
them describe the same block: RMSNorm, RoPE, grouped-query attention, SwiGLU.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe a model this transformer can run."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    qkv_bias: bool = False
    """q/k/v projections carry a bias (Qwen2 and Dream always do)."""
    o_bias: bool = False
    tie_word_embeddings: bool = False
    layout: str = "hf"
    """Weight-name layout: ``hf`` (Qwen2/LLaMA/Dream names) or ``llada`` (OLMo-style names)."""
    model_type: str = "qwen2"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def n_params(self) -> int:
        """Parameter count, for logs and the model card."""
        d, f, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0)
        block = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return L * block + emb + d


def _rope_theta(cfg: dict[str, Any], default: float) -> float:
    """RoPE base; transformers ≥ 5 nests it in ``rope_parameters``, older files keep it flat."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for block in (params, scaling):
        kind = block.get("rope_type") or block.get("type")
        if kind not in (None, "default"):
            raise ConfigError(f"unsupported RoPE scaling {kind!r}: only plain RoPE is implemented")
    theta = params.get("rope_theta", cfg.get("rope_theta", default))
    return float(theta)


def _require(cfg: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in cfg]
    if missing:
        raise ConfigError(f"config.json lacks {', '.join(missing)}")


def from_hf_config(cfg: dict[str, Any]) -> ModelConfig:
    """Map a Hugging Face ``config.json`` (as a dict) onto :class:`ModelConfig`."""
    model_type = str(cfg.get("model_type", "")).lower()
    archs = [a.lower() for a in cfg.get("architectures") or []]
    if model_type == "llada" or any("llada" in a for a in archs) or "d_model" in cfg:
        return _from_llada(cfg)
    if model_type in ("qwen2", "dream", "diffill"):
        qkv_bias = True
    elif model_type in ("llama", "mistral"):
        qkv_bias = bool(cfg.get("attention_bias", False))
    else:
        raise ConfigError(
            f"model_type {cfg.get('model_type')!r} is not a Qwen2-, LLaMA- or LLaDA-shaped model"
        )
    if cfg.get("mlp_bias"):
        raise ConfigError("MLP biases are not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act {act!r} is not supported (SwiGLU with silu only)")
    _require(cfg, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return ModelConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(cfg, 10000.0),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        qkv_bias=qkv_bias,
        o_bias=bool(cfg.get("attention_bias", False)) and model_type == "llama",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        layout="hf",
        model_type=model_type,
    )


def _from_llada(cfg: dict[str, Any]) -> ModelConfig:
    """LLaDA keeps OLMo's config names: ``d_model``, ``n_heads``, ``mlp_hidden_size`` ..."""
    _require(cfg, "d_model", "n_heads", "n_layers", "mlp_hidden_size")
    if cfg.get("layer_norm_type", "rms") != "rms":
        raise ConfigError("only RMSNorm LLaDA checkpoints are supported")
    if cfg.get("include_bias"):
        raise ConfigError("LLaDA checkpoints with include_bias are not supported")
    d, heads = int(cfg["d_model"]), int(cfg["n_heads"])
    return ModelConfig(
        vocab_size=int(cfg.get("embedding_size") or cfg["vocab_size"]),
        hidden_size=d,
        intermediate_size=int(cfg["mlp_hidden_size"]),
        num_hidden_layers=int(cfg["n_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("n_kv_heads") or heads),
        head_dim=d // heads,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_position_embeddings=int(cfg.get("max_sequence_length", 4096)),
        qkv_bias=bool(cfg.get("include_qkv_bias", False)),
        o_bias=False,
        tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        layout="llada",
        model_type="llada",
    )
