"""``diffill bench``: sampler speed as ratios against a baseline run in the same process.

The baseline is the plain masked-diffusion sampler (fixed steps, one token per forward pass,
no cache, plain confidence order for the filler); the other variants use the checkpoint's
filler order. Every variant fills the same gap in the same window; the table gives time per fill,
masked tokens per second, forward passes, the speed-up over the baseline and how many output
tokens agree with the baseline's (a speed trick that changes the answer must say so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from diffill.server.errors import UsageError

PRESETS = {
    # Shapes of real checkpoints (the README's table of checkpoints), run with random weights.
    "open-dcoder-0.5b": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
                         "intermediate_size": 4864, "num_hidden_layers": 24,
                         "num_attention_heads": 14, "num_key_value_heads": 2,
                         "tie_word_embeddings": True, "rope_theta": 1e6},
    "dream-7b": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
                 "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "tie_word_embeddings": False, "rope_theta": 1e6},
}


def random_model(spec: str, device: str | None, dtype: str | None):
    """A model of a preset or JSON shape with random weights, for speed only."""
    import torch

    from diffill.model.config import from_hf_config
    from diffill.model.loader import DiffusionModel, cpu_threads, parse_device, parse_dtype
    from diffill.model.profile import FamilyProfile
    from diffill.model.transformer import Transformer
    try:
        raw = PRESETS[spec] if spec in PRESETS else json.loads(spec)
        cfg = from_hf_config(raw)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--random-config: a preset ({', '.join(PRESETS)}) or config JSON "
                         f"({exc})") from None
    dev = parse_device(device)
    dt_ = parse_dtype(dtype, dev)
    with torch.device(dev):
        net = Transformer(cfg).to(dt_)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
    net.eval()
    prof = FamilyProfile("random", mask_id=cfg.vocab_size - 1, filler_ids=(cfg.vocab_size - 2,),
                         shift_logits=True)
    return DiffusionModel(net, cfg, prof, None, dev, dt_, Path(f"random:{spec}"), 0.0,
                          threads=cpu_threads())


def window_ids(model, context: int) -> tuple[list[int], list[int]]:
    """Prefix and suffix ids around a gap in real code (the stdlib's json.decoder)."""
    import json.decoder as src
    if model.tokenizer is None:
        import random
        rng = random.Random(0)
        ids = [rng.randrange(0, model.config.vocab_size - 2) for _ in range(2 * context)]
    else:
        text = inspect.getsource(src) * 4
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    pre = int(context * 0.75)
    mid = len(ids) // 2
    return ids[max(0, mid - pre):mid], ids[mid:mid + context - pre]


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    import torch
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ar_twin(model, dtype=None):
    """transformers' causal decoder of the same shape holding the same weights (Qwen2 when the
    checkpoint has q/k/v biases only, LLaMA otherwise), for the autoregressive baseline, in
    ``dtype`` (the model's by default)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    c = model.config
    common = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                  intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
                  num_attention_heads=c.num_attention_heads,
                  num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
                  rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
                  max_position_embeddings=c.max_position_embeddings,
                  tie_word_embeddings=c.tie_word_embeddings)
    if c.qkv_bias and not c.o_bias:
        cls, cfg = Qwen2ForCausalLM, Qwen2Config(**common)
    else:
        cls, cfg = LlamaForCausalLM, LlamaConfig(attention_bias=c.qkv_bias, **common)
    dtype = dtype or model.dtype
    with torch.device(model.device):
        net = cls(cfg).to(dtype)
    weights = {k: v.to(dtype) for k, v in model.transformer.state_dict().items()}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise UsageError(f"the autoregressive twin does not match the checkpoint: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval()


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python " \
           f"{platform.python_version()}"


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from diffill.infill.sampler import SamplerSettings, infill
    from diffill.model import load_model
    if args.random_config:
        model = random_model(args.random_config, args.device, args.dtype)
    else:
        model = load_model(args.model, device=args.device, dtype=args.dtype, family=args.family)
    span = args.span
    if span < 4:
        raise UsageError("--span must be at least 4")
    prefix, suffix = window_ids(model, args.context)
    variants = [
        ("baseline: fixed, 1 token/pass",
         SamplerSettings(schedule="fixed", steps=span, filler_order="any",
                         cache="none"), [span]),
        (f"fixed, 1 token/pass, filler order {model.profile.filler_order} (checkpoint's)",
         SamplerSettings(schedule="fixed", steps=span, cache="none"), [span]),
        ("fixed, 2 tokens/pass",
         SamplerSettings(schedule="fixed", steps=span // 2, cache="none"), [span]),
        ("threshold 0.9", SamplerSettings(schedule="threshold", cache="none"), [span]),
        ("threshold 0.9 + dual cache", SamplerSettings(schedule="threshold", cache="dual",
                                                       block_size=span), [span]),
        ("threshold 0.9 + dual cache, open positions only",
         SamplerSettings(schedule="threshold", cache="dual", block_size=span,
                         pass_positions="open"), [span]),
        ("threshold 0.9 + dual cache, blocks of 8, one full pass per fill",
         SamplerSettings(schedule="threshold", cache="dual", block_size=8, refresh="fill"),
         [span]),
        ("blocks of 8, 2 tokens/pass, dual cache",
         SamplerSettings(schedule="blocks", steps=span // 2, block_size=8, cache="dual",
                         refresh="block"), [span]),
        ("length ensemble x2, threshold", SamplerSettings(schedule="threshold", cache="none"),
         [span // 2, span]),
    ]
    rows = []
    base_tokens = None
    base_time = None
    for name, settings, lengths in variants:
        out = []

        def fill(settings=settings, lengths=lengths):
            out[:] = [infill(model, prefix, suffix, lengths, settings=settings)]

        t = timed(fill, model.device, args.repeats)
        cands, passes = out[0]
        best = max(cands, key=lambda c: c.length)
        toks = best.tokens
        if base_tokens is None:
            base_tokens, base_time = toks, t
        same = sum(a == b for a, b in zip(toks, base_tokens))
        agree = same / max(len(base_tokens), len(toks), 1)
        rows.append((name, t * 1000, span / t, passes, base_time / t, agree))
    ar = None
    if not args.no_ar:
        ctx = torch.tensor([list(prefix) + list(suffix)], device=model.device)
        # The decoder gets its best CPU thread count (its steps are one position each, which
        # the diffusion passes' own rule would run on one thread, model.loader.PARALLEL_FLOPS)
        # and, on a CPU, its best of the model's dtype and fp32 (a matmul of one row can be
        # cheaper in fp32 than in bf16).
        cpu = model.device.type == "cpu"
        counts = sorted({1, model.threads}) if cpu else [0]
        dtypes = list(dict.fromkeys([model.dtype, torch.float32])) if cpu else [model.dtype]
        best = []
        for dtype in dtypes:
            twin = ar_twin(model, dtype)

            def decode(twin=twin):
                with torch.inference_mode():
                    twin.generate(ctx, max_new_tokens=span, min_new_tokens=span,
                                  do_sample=False, attention_mask=torch.ones_like(ctx),
                                  pad_token_id=0)

            for n in counts:
                if n:
                    torch.set_num_threads(n)
                best.append((timed(decode, model.device, args.repeats), n, dtype,
                             type(twin).__name__))
        ar, ar_threads, ar_dtype, kind = min(best, key=lambda b: b[0])
        on = f", {ar_threads} thread{'s' if ar_threads > 1 else ''}" if ar_threads else ""
        rows.append((f"autoregressive decoder, same weights ({kind}, KV cache, "
                     f"{str(ar_dtype).replace('torch.', '')}, {span} tokens after the same "
                     f"{len(ctx[0])}{on})", ar * 1000, span / ar, span, base_time / ar, None))
    header = ("| variant | ms / fill | masked tok/s | passes | speed-up | agrees with baseline |"
              + (" vs autoregressive |" if ar else "") + "\n"
              "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if ar else ""))
    lines = [f"| {n} | {ms:.1f} | {tps:.0f} | {p} | {r:.2f}x | "
             f"{'—' if a is None else format(a, '.0%')} |"
             + (f" {ar / (ms / 1000):.2f}x |" if ar else "")
             for n, ms, tps, p, r, a in rows]
    what = model.path.name if not args.random_config else f"random weights, {args.random_config}"
    publish(f"{what} ({model.config.n_params / 1e6:.1f}M parameters), {model.device} "
            f"{str(model.dtype).replace('torch.', '')}",
            [f"window: {len(prefix)} prefix + {span} masks + {len(suffix)} suffix tokens; "
             f"median of {args.repeats} runs after a warm-up"], header, lines, args.write)
    return 0


def publish(heading: str, facts: list[str], header: str, rows: list[str],
            write: str | None) -> None:
    """Print a table under a dated heading, the machine, the command and ``facts``, and
    append it to the markdown file ``write``."""
    command = " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "bench"
    lines = [f"### {dt.date.today().isoformat()}: {heading}", "", f"- machine: {machine()}",
             f"- command: `diffill {command}`", *[f"- {f}" for f in facts], "", header, *rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if write:
        with Path(write).open("a", encoding="utf-8") as f:
            f.write("\n" + table)
        print(f"appended to {write}", file=sys.stderr)
