"""``diffill bench`` for block-diffusion models (DiffusionGemma): canvases per second against an
autoregressive model of the same shape, in the same process.

The diffusion side is diffill's own path (``infill.block.generate``, the model's entropy-bound
sampler); the baseline is transformers' Gemma 4 decoder with the same text config (the
architecture DiffusionGemma was adapted from), greedy, with its KV cache, writing the same
number of tokens. Random weights never reach the sampler's confidence stop, so every canvas
runs its full step budget: the diffusion figure is the slowest case of that budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffill.server.errors import UsageError

BLOCK_PRESETS = {
    # CPU-sized: the real layer pattern and MoE routing at a few million parameters.
    "diffusiongemma-tiny": {
        "text_config": {"vocab_size": 8192, "hidden_size": 256, "intermediate_size": 512,
                        "num_hidden_layers": 6, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "num_global_key_value_heads": 1,
                        "head_dim": 64, "global_head_dim": 128, "num_experts": 8,
                        "top_k_experts": 2, "moe_intermediate_size": 256,
                        "sliding_window": 512},
        "canvas_length": 256},
    # google/diffusiongemma-26B-A4B-it's text shape (its config.json): 51.6 GB in bf16.
    "diffusiongemma-26b-a4b": {
        "text_config": {"vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
                        "num_hidden_layers": 30, "num_attention_heads": 16,
                        "num_key_value_heads": 8, "num_global_key_value_heads": 2,
                        "head_dim": 256, "global_head_dim": 512, "num_experts": 128,
                        "top_k_experts": 8, "moe_intermediate_size": 704,
                        "sliding_window": 1024, "attention_k_eq_v": False},
        "canvas_length": 256},
}
TINY_VISION = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
               "head_dim": 8}
"""Text benchmarks need no vision tower: a token one keeps the model's structure."""


def is_block_preset(spec: str | None) -> bool:
    return bool(spec) and spec in BLOCK_PRESETS


def _device_dtype(device: str | None, dtype: str | None):
    from diffill.model.loader import parse_device, parse_dtype
    dev = parse_device(device)
    return dev, parse_dtype(dtype, dev)


def random_block_model(spec: str, device: str | None, dtype: str | None):
    """A DiffusionGemma of a preset shape with random weights, built on the device."""
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    from diffill.model.block_diffusion import BlockDiffusionModel, check_memory
    shape = BLOCK_PRESETS[spec]
    dev, dt_ = _device_dtype(device, dtype)
    cfg = DiffusionGemmaConfig(text_config=dict(shape["text_config"]), vision_config=TINY_VISION,
                               canvas_length=shape["canvas_length"])
    with torch.device("meta"):
        n = sum(p.numel() for p in DiffusionGemmaForBlockDiffusion(cfg).parameters())
    check_memory(spec, n, dt_, dev)
    with torch.device(dev):
        net = DiffusionGemmaForBlockDiffusion._from_config(cfg, dtype=dt_)
    net.eval()
    # Random weights: no EOS, so every canvas is written; no tokenizer, so no stop ids.
    net.generation_config.update(eos_token_id=None, pad_token_id=None)
    return BlockDiffusionModel(net, None, dev, dt_, Path(f"random:{spec}"), 0.0, n)


def ar_twin(model):
    """Gemma 4's autoregressive decoder with the diffusion model's text shape, random
    weights, on the same device and dtype."""
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig
    text = model.net.config.text_config.to_dict()
    known = set(Gemma4TextConfig.__dataclass_fields__)  # type: ignore[attr-defined]
    values = {k: v for k, v in text.items() if k in known and k not in (
        "model_type", "transformers_version", "use_bidirectional_attention", "sliding_window",
        "architectures", "dtype")}
    values.update(enable_moe_block=True, hidden_size_per_layer_input=0,
                  sliding_window=text["sliding_window"])
    with torch.device(model.device):
        net = Gemma4ForCausalLM._from_config(Gemma4TextConfig(**values), dtype=model.dtype)
    return net.eval()


def run_block_bench(args: argparse.Namespace) -> int:
    import gc

    import torch

    from diffill.infill.block import generate
    from diffill.model import load_model

    from .bench import publish, timed
    if args.random_config:
        model = random_block_model(args.random_config, args.device, args.dtype)
    else:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
    canvases = max(1, args.canvases)
    new = canvases * model.canvas_length
    vocab = int(model.net.config.text_config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (args.context,), generator=gen).tolist()
    passes = []

    def diffusion():
        out = generate(model, prompt, max_new_tokens=new, steps=args.steps or 0)
        passes.append(out.forward_passes)

    t_diff = timed(diffusion, model.device, args.repeats)
    rows = [(f"DiffusionGemma path, {canvases} canvas(es) of {model.canvas_length}",
             t_diff, passes[-1])]
    if not args.no_ar:
        twin = ar_twin(model)
        if model.device.type == "cuda":  # both at once may not fit: the twin runs alone
            del model.net
            gc.collect()
            torch.cuda.empty_cache()
        ids = torch.tensor([prompt], device=twin.device)

        def autoregressive():
            with torch.inference_mode():
                twin.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)

        rows.append((f"autoregressive Gemma 4 decoder, same shape, {new} tokens",
                     timed(autoregressive, twin.device, args.repeats), new))
    header = ("| path | ms for the answer | tokens/s | forward passes | vs autoregressive |\n"
              "| --- | ---: | ---: | ---: | ---: |")
    ar_time = rows[-1][1] if len(rows) > 1 else None
    lines = [f"| {name} | {t * 1000:.0f} | {new / t:.0f} | {p} | "
             f"{(ar_time / t if ar_time else float('nan')):.2f}x |" for name, t, p in rows]
    what = f"random weights, {args.random_config}" if args.random_config else args.model
    steps = f"at most {args.steps} steps" if args.steps else "the checkpoint's step budget"
    publish(f"{what} ({model.parameters / 1e6:,.1f}M parameters), {model.device} "
            f"{str(model.dtype).replace('torch.', '')}",
            [f"prompt of {args.context} tokens, {new} new tokens per answer, {steps} per "
             f"canvas; median of {args.repeats} runs after a warm-up"], header, lines, args.write)
    return 0


def check_args(args: argparse.Namespace) -> None:
    if args.canvases < 1 or args.context < 1:
        raise UsageError("--canvases and --context must be at least 1")
