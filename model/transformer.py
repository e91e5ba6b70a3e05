"""The bidirectional transformer behind every supported checkpoint.

One decoder stack (RMSNorm, RoPE, grouped-query attention, SwiGLU) run with *full* attention:
every position sees prefix, masks and suffix. ``causal=True`` exists only so tests can check the
weights against the autoregressive reference implementation.

Module names mirror the Hugging Face Qwen2/LLaMA names, so a checkpoint's state dict loads as is
(``model.layers.3.self_attn.q_proj.weight``); other layouts are renamed in ``model/weights.py``.
This module knows nothing of tokens as text, of masks or of editors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 like the reference implementations, then cast back.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(head_dim: int, theta: float, positions: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for ``positions`` (T,), each (T, head_dim), computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.float32) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on (B, H, T, D) with cos/sin of shape (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class KVCache:
    """Keys and values of every layer for a whole window, (B, H_kv, T, D) each.

    Filled by a full forward pass; a span pass then overwrites the span's own entries and attends
    to the rest as they were (Fast-dLLM's dual cache: context K/V reused across a block's steps).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def reuse(self, upto: int, length: int, rows: int) -> "KVCache":
        """A cache for a new window of ``length`` positions and ``rows`` rows whose first
        ``upto`` positions are this cache's (row 0's, for every row) and the rest empty, to be
        filled by a span pass from ``upto`` on."""
        keys, values = [], []
        for k, v in zip(self.keys, self.values):
            shape = (rows, k.shape[1], length, k.shape[3])  # (B, H_kv, T, D)
            nk, nv = k.new_zeros(shape), v.new_zeros(shape)
            nk[:, :, :upto] = k[:1, :, :upto]
            nv[:, :, :upto] = v[:1, :, :upto]
            keys.append(nk)
            values.append(nv)
        return KVCache(keys, values)


@dataclass(frozen=True)
class SpanRows:
    """Rows a pass carries beside its window row (one pass, one trip through the weights):
    ``count`` variants of the window positions ``start..start+length``, each attending to
    its own span and, elsewhere, to the window row's keys and values of the same layer. The
    dual cache built and used in the same pass: the same numbers as a pass that fills the
    cache and a span pass per row against it."""
    count: int
    start: int
    length: int


def fuse_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) whose row blocks are ``linears``' own, which become views into
    it: a pass can then run them as one matmul, and the state dict keeps its names."""
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears])
        bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
        at = 0
        for m in linears:
            n = m.weight.shape[0]
            grad = m.weight.requires_grad
            m.weight = nn.Parameter(weight[at:at + n], requires_grad=grad)
            if bias is not None:
                m.bias = nn.Parameter(bias[at:at + n], requires_grad=grad)
            at += n
    return weight, bias


def fused_for(fused: tuple[torch.Tensor, torch.Tensor | None] | None,
              first: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``fused`` when an inference pass may use it: no gradient wanted, and the weights still
    its views (``Module.to`` or an assigning ``load_state_dict`` replaces them)."""
    if fused is None or torch.is_grad_enabled() or \
            first.weight.data_ptr() != fused[0].data_ptr():
        return None
    return fused


FEW_QUERIES = 128
"""Queries per key/value head up to which, and keys above which, a CPU inference pass uses
:func:`few_query_attention`."""


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None, group: int) -> torch.Tensor:
    """Bidirectional attention of few queries (B, H, T, D) over many keys and values
    (B, H/group, T_k, D): the query heads sharing a key/value head go as one, scores and
    softmax in fp32. The same math as SDPA, faster on a CPU for a block pass of the dual cache
    (few queries, many keys), slower past :data:`FEW_QUERIES` (docs/design.md, "model/")."""
    B, H, T, D = q.shape
    grouped = q.reshape(B, H // group, group * T, D)
    scores = torch.matmul(grouped, k.transpose(-1, -2)).float().mul_(D ** -0.5)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1).to(v.dtype), v).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=cfg.o_bias)
        self.qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def fuse(self) -> None:
        self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys (RoPE applied) and values, (B, heads, T, D) each."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        qkv = fused_for(self.qkv, self.q_proj)
        if qkv is not None:  # one matmul, and RoPE over queries and keys at once
            heads = F.linear(x, *qkv).view(B, T, H + 2 * Hkv, D).transpose(1, 2)
            qk = apply_rope(heads[:, :H + Hkv], cos, sin)
            return qk[:, :H], qk[:, H:], heads[:, H + Hkv:]
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                causal: bool, key_mask: torch.Tensor | None,
                cache: KVCache | None, layer: int, start: int, fill_cache: bool,
                positions: torch.Tensor | None = None,
                rows: "SpanRows | None" = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if rows is not None:  # the window's own positions first, then the rows' spans
            T = T - rows.count * rows.length
            (q, qr), (k, kr), (v, vr) = (t.split([T, t.shape[2] - T], dim=2)
                                         for t in (q, k, v))
        if cache is not None:
            if fill_cache:
                # Stored contiguous: the projections' (B, T, H, D) layout seen as (B, H, T, D)
                # would be copied again by every span pass's matmuls.
                k, v = k.contiguous(), v.contiguous()
                cache.keys.append(k)
                cache.values.append(v)
            else:
                # Span pass: refresh this span's K/V in place, attend to the whole window.
                if positions is None:
                    cache.keys[layer][:, :, start:start + T] = k
                    cache.values[layer][:, :, start:start + T] = v
                else:  # scattered positions of the window
                    cache.keys[layer].index_copy_(2, positions, k)
                    cache.values[layer].index_copy_(2, positions, v)
                k, v = cache.keys[layer], cache.values[layer]
        mask = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]  # (B, 1, 1, T_k): False = padding, never attended
        out = self._attend(q, k, v, mask, causal).transpose(1, 2).reshape(B, T, -1)
        if rows is not None:
            out = torch.cat([out, self._attend_rows(rows, qr, kr, vr, k, v, mask)], dim=1)
        return self.o_proj(out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Attention of queries (B, H, T, D) over keys and values (B, H_kv, T_k, D)."""
        group = self.n_heads // self.n_kv
        if not causal and q.device.type == "cpu" and group * q.shape[2] <= FEW_QUERIES \
                < k.shape[2] and not torch.is_grad_enabled():  # inference: training keeps SDPA's
            return few_query_attention(q, k, v, mask, group)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=group > 1,
        )  # (B, H, T, D)

    def _attend_rows(self, rows: "SpanRows", q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     window_k: torch.Tensor, window_v: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
        """The rows' attention (1, R*S, H*D): each row's span queries (1, H, R*S, D) over the
        window's keys and values of this layer (1, H_kv, T_k, D), its own span's in place of
        the window's there."""
        R, S, at = rows.count, rows.length, rows.start
        own = [t.reshape(t.shape[1], R, S, t.shape[3]).transpose(0, 1) for t in (q, k, v)]
        keys, values = (w.expand(R, -1, -1, -1).clone() for w in (window_k, window_v))
        keys[:, :, at:at + S] = own[1]
        values[:, :, at:at + S] = own[2]
        out = self._attend(own[0], keys, values, mask, False)  # (R, H, S, D)
        return out.transpose(1, 2).reshape(1, R * S, -1)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def fuse(self) -> None:
        self.gate_up = fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = fused_for(self.gate_up, self.gate_proj)
        if gate_up is not None:
            both = F.linear(x, gate_up[0])
            n = both.shape[-1] // 2
            return self.down_proj(F.silu(both[..., :n]) * both[..., n:])
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, **kw) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, **kw)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    """Token ids in, logits out; bidirectional unless ``causal=True``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def fuse_projections(self) -> None:
        """For inference: each layer's query, key and value projections, and its MLP's gate
        and up projections, become row blocks of one weight, and a pass without gradients
        runs each group as one matmul. On a CPU a pass over a few positions is mostly the
        cost of each call, not of its arithmetic (design.md). Same weights, same memory, same
        state dict; a module moved or re-assigned afterwards runs them separately again."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def output_weight(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def hidden(self, input_ids: torch.Tensor, *, causal: bool = False,
               key_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, d) for ``input_ids`` (B, T) at positions start..start+T.

        With an empty ``cache`` the pass fills it; with a filled one only the span is computed
        and it attends to the cached window (``key_mask`` then covers the whole window).
        ``positions`` (T,), ascending, with a filled cache: the window positions of
        ``input_ids`` when they are not one run from ``start`` (a pass over scattered ones).
        """
        B, T = input_ids.shape
        fill = cache is not None and cache.length == 0
        if positions is not None and (cache is None or fill or positions.shape[0] != T):
            raise ValueError("scattered positions need a filled cache and one per input token")
        last = start + T if positions is None else int(positions[-1]) + 1 if T else 0
        if cache is not None and not fill and last > cache.length:
            raise ValueError(f"positions up to {last} are outside the cached window")
        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        where = positions if positions is not None else \
            torch.arange(start, start + T, device=input_ids.device)
        return self._layers(x, where, causal=causal, key_mask=key_mask, cache=cache,
                            start=start, fill_cache=fill, positions=positions)

    def hidden_with_rows(self, input_ids: torch.Tensor, rows: torch.Tensor, rows_start: int, *,
                         cache: KVCache, key_mask: torch.Tensor | None = None,
                         start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over a window row and :class:`SpanRows` beside it: ``input_ids`` (1, T)
        as :meth:`hidden` runs them (filling an empty ``cache``, or writing positions
        start..start+T of a filled one), and ``rows`` (R, S), variants of window positions
        rows_start..rows_start+S attending to the window row's keys and values elsewhere.
        Hidden states (1, T, d) and (R, S, d)."""
        B, T = input_ids.shape
        R, S = rows.shape
        fill = cache.length == 0
        if B != 1 or (fill and start != 0):
            raise ValueError("rows go beside one window row, which fills a cache from 0")
        window = T if fill else cache.length
        if rows_start < 0 or rows_start + S > window:
            raise ValueError(f"rows at {rows_start}..{rows_start + S} are outside the window")
        x = torch.cat([self.model.embed_tokens(input_ids)[0],
                       self.model.embed_tokens(rows).reshape(R * S, -1)])[None]
        where = torch.cat([torch.arange(start, start + T, device=input_ids.device),
                           torch.arange(rows_start, rows_start + S,
                                        device=input_ids.device).repeat(R)])
        out = self._layers(x, where, causal=False, key_mask=key_mask, cache=cache, start=start,
                           fill_cache=fill, rows=SpanRows(R, rows_start, S))
        return out[:, :T], out[0, T:].reshape(R, S, -1)

    def _layers(self, x: torch.Tensor, where: torch.Tensor, **kw) -> torch.Tensor:
        """Embeddings (B, T, d) at window positions ``where`` through every layer, normed."""
        cos, sin = rope_tables(self.config.head_dim, self.config.rope_theta, where, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, layer=i, **kw)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states (..., d) to logits (..., V) in fp32."""
        return F.linear(hidden, self.output_weight()).float()

    def forward(self, input_ids: torch.Tensor, *, causal: bool = False,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for every position; for tests and training."""
        return self.logits(self.hidden(input_ids, causal=causal, key_mask=key_mask))
