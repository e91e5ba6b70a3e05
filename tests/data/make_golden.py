"""Makes tests/data/golden_decoding.json: the authors' decoders run on diffill's tiny test
checkpoints. Not part of the suite; see tests/data/README.md for the two commands.

    python tests/data/make_golden.py checkpoints DIR          # diffill's venv: the checkpoints
    python tests/data/make_golden.py run DIR REFS OUT.json    # scratch venv: the references

REFS holds the reference code as importable packages (never in this repository):
``dreamref`` (Fast-dLLM's dream/model), ``lladaref`` (its llada/model) and
``llada_generate.py`` (LLaDA's generate.py).
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

MASK = 2  # <|mask|> of tests/helpers.bpe_tokenizer()


def checkpoints(out: Path) -> None:
    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).parents[1])]
    import helpers
    tok = helpers.bpe_tokenizer()
    assert tok.token_to_id("<|mask|>") == MASK
    for seed in (0, 1):
        helpers.save_checkpoint(out / f"dream-{seed}", "qwen2", tokenizer=tok, seed=seed,
                                config_updates=DREAM_CONFIG)
    helpers.save_llada_checkpoint(out / "llada-1", tok)
    dreamon(out / "dreamon-0")


def dreamon(folder: Path) -> None:
    """A DreamOn-shaped checkpoint: Dream's architecture, <|expand|> and <|beginoftext|> in
    its tokenizer, and lm_head rows for expand and EOS made louder copies of two tokens' rows,
    so a random model expands and deletes now and then."""
    from safetensors.torch import load_file, save_file
    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).parents[1])]
    import helpers
    tok = helpers.bpe_tokenizer(extra_special=["<|expand|>", "<|beginoftext|>"])
    helpers.save_checkpoint(folder, "qwen2", tokenizer=tok, seed=3, config_updates=DREAM_CONFIG)
    state = load_file(str(folder / "model.safetensors"))
    head = state["lm_head.weight"]
    head[tok.token_to_id("<|expand|>")] = 1.05 * head[70]
    head[tok.token_to_id("<|endoftext|>")] = 1.05 * head[14]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


DREAM_CONFIG = {"architectures": ["DreamModel"], "model_type": "Dream", "mask_token_id": MASK}


def digest(folder: Path) -> str:
    """A checkpoint's weights, hashed: the suite rebuilds the same ones from their seeds."""
    from safetensors.torch import load_file
    state = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].float().numpy().tobytes())
    return h.hexdigest()[:16]


def run(ckpt: Path, refs: Path, out_path: Path) -> None:
    from safetensors.torch import load_file
    sys.path.insert(0, str(refs))
    from dreamref import DreamConfig, DreamModel
    from lladaref import LLaDAConfig, LLaDAModelLM
    from llada_generate import generate as llada_generate


    def dream_model(folder):
        cfg = json.loads((folder / "config.json").read_text())
        conf = DreamConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                           intermediate_size=cfg["intermediate_size"],
                           num_hidden_layers=cfg["num_hidden_layers"],
                           num_attention_heads=cfg["num_attention_heads"],
                           num_key_value_heads=cfg["num_key_value_heads"],
                           max_position_embeddings=cfg["max_position_embeddings"],
                           rms_norm_eps=cfg["rms_norm_eps"], rope_theta=10000.0,
                           tie_word_embeddings=False, mask_token_id=MASK, pad_token_id=1,
                           attn_implementation="sdpa")
        m = DreamModel(conf)
        state = load_file(str(folder / "model.safetensors"))
        missing, unexpected = m.load_state_dict(state, strict=False)
        assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
        return m.eval()


    def llada_model(folder):
        cfg = json.loads((folder / "config.json").read_text())
        conf = LLaDAConfig(d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                           n_kv_heads=cfg["n_kv_heads"], mlp_hidden_size=cfg["mlp_hidden_size"],
                           vocab_size=cfg["vocab_size"], embedding_size=cfg["embedding_size"],
                           rope_theta=cfg["rope_theta"], rms_norm_eps=cfg["rms_norm_eps"],
                           layer_norm_type="rms", include_bias=False, include_qkv_bias=False,
                           weight_tying=False, max_sequence_length=512, mask_token_id=MASK,
                           activation_type="silu", block_type="llama", rope=True,
                           attention_layer_norm=False, block_group_size=1,
                           mlp_ratio=cfg["mlp_hidden_size"] / cfg["d_model"], init_device="cpu",
                           flash_attention=False, alibi=False, scale_logits=False,
                           input_emb_norm=False, pad_token_id=1, eos_token_id=0)
        m = LLaDAModelLM(conf, init_params=False)
        state = load_file(str(folder / "model.safetensors"))
        missing, unexpected = m.load_state_dict(state, strict=False)
        assert not unexpected and not missing, (missing, unexpected)
        return m.eval()


    def ids(gen, n, vocab):
        return torch.randint(10, vocab, (n,), generator=gen).tolist()


    class Watch:
        """Whether the reference ever chose the mask token as an answer (cases where it does are
        left out: diffill never commits a mask)."""
        def __init__(self, model, shift):
            self.model, self.shift, self.bad = model, shift, False
        def __call__(self, x, *a, **k):
            out = self.model(x, *a, **k)
            logits = out.logits
            if self.shift:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            if bool((logits.argmax(-1)[x == MASK] == MASK).any()):
                self.bad = True
            return out


    cases = []
    with torch.no_grad():
        for seed in (0, 1):
            m = dream_model(ckpt / f"dream-{seed}")
            vocab = m.config.vocab_size
            gen = torch.Generator().manual_seed(100 + seed)
            for alg, order in (("maskgit_plus", "confidence"), ("topk_margin", "margin"),
                               ("entropy", "entropy")):
                for pre, gap, suf, steps in ((6, 8, 4, 4), (5, 8, 0, 3), (9, 12, 5, 5), (4, 7, 6, 7),
                                             (7, 16, 3, 6), (3, 10, 8, 10)):
                    prefix, suffix = ids(gen, pre, vocab), ids(gen, suf, vocab)
                    x = torch.tensor([prefix + [MASK] * gap + suffix])
                    cfg = m._prepare_generation_config(None, steps=steps, alg=alg, temperature=0.0,
                                                       max_length=x.shape[1], mask_token_id=MASK)
                    m._prepare_special_tokens(cfg, device="cpu")
                    watch = Watch(m, shift=True)
                    bound = m._sample.__func__
                    class Proxy:  # _sample calls self(x, attention_mask, tok_idx) and self.device
                        device = torch.device("cpu")
                        def __call__(self, *a, **k):
                            return watch(*a, **k)
                    out = bound(Proxy(), x, attention_mask=None, generation_config=cfg,
                                generation_tokens_hook_func=lambda s, x, l: x,
                                generation_logits_hook_func=lambda s, x, l: l)
                    if watch.bad:
                        continue
                    cases.append({"family": "dream", "checkpoint_seed": seed, "alg": alg,
                                  "order": order, "schedule": "fixed", "steps": steps,
                                  "top_k": cfg.top_k, "prefix": prefix, "masks": gap,
                                  "suffix": suffix, "out": out[0, pre:pre + gap].tolist()})
            # Fast-dLLM's Dream threshold decoding (alg confidence_threshold): a quota of
            # masks/steps per pass plus the carry; the threshold set per case to the median
            # of the first pass's confidences (top-k renormalised), so passes hold some back.
            from dreamref.generation_utils import sample_tokens as dream_scores
            for pre, gap, suf, steps in ((6, 8, 4, 4), (5, 12, 3, 3), (9, 12, 5, 4),
                                         (4, 10, 6, 5), (7, 16, 2, 8), (3, 8, 8, 2)):
                prefix, suffix = ids(gen, pre, vocab), ids(gen, suf, vocab)
                x = torch.tensor([prefix + [MASK] * gap + suffix])
                logits = m(x, "full", None).logits
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[0, pre:pre + gap]
                conf, _ = dream_scores(logits, temperature=0.0, top_k=50)
                tau = round(float(conf.median()), 9)
                cfg = m._prepare_generation_config(None, steps=steps, alg="confidence_threshold",
                                                   temperature=0.0, max_length=x.shape[1],
                                                   mask_token_id=MASK)
                m._prepare_special_tokens(cfg, device="cpu")
                watch = Watch(m, shift=True)
                class Proxy:  # noqa: E306
                    device = torch.device("cpu")
                    def __call__(self, *a, **k):
                        return watch(*a, **k)
                out = m._sample.__func__(Proxy(), x, attention_mask=None, generation_config=cfg,
                                         generation_tokens_hook_func=lambda s, x, l: x,
                                         generation_logits_hook_func=lambda s, x, l: l,
                                         threshold=tau)
                if watch.bad:
                    continue
                cases.append({"family": "dream", "checkpoint_seed": seed,
                              "alg": "confidence_threshold", "order": "confidence",
                              "schedule": "threshold", "threshold": tau, "steps": steps,
                              "top_k": cfg.top_k, "prefix": prefix, "masks": gap,
                              "suffix": suffix, "out": out[0, pre:pre + gap].tolist()})
            # Fast-dLLM's Dream block sampler with its dual cache (generation_utils_block.py):
            # a prompt then masks, decoded block after block; fixed counts (its entropy order)
            # and its threshold (confidence).
            from dreamref import generation_utils_block as block_mod
            for pre, gen_len, block, steps, tau_on in (
                    (6, 8, 8, 4, False), (5, 12, 4, 6, False), (9, 12, 6, 4, False),
                    (4, 16, 8, 6, False), (7, 16, 4, 8, False), (3, 10, 5, 4, False),
                    (6, 8, 8, 4, True), (5, 12, 4, 3, True), (9, 12, 6, 2, True),
                    (4, 16, 8, 2, True), (7, 16, 4, 4, True), (3, 10, 5, 2, True)):
                prompt = ids(gen, pre, vocab)
                x = torch.tensor([prompt])
                tau = None
                if tau_on:
                    full = torch.tensor([prompt + [MASK] * gen_len])
                    logits = m(full, "full", None).logits
                    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[0, pre:pre + block]
                    conf, _ = dream_scores(logits, temperature=0.0, top_k=50)
                    tau = round(float(conf.median()), 9)
                cfg = m._prepare_generation_config(
                    None, steps=steps, temperature=0.0, max_length=pre + gen_len,
                    mask_token_id=MASK, alg="confidence_threshold" if tau_on else "entropy")
                m._prepare_special_tokens(cfg, device="cpu")
                watch = Watch(m, shift=True)
                class BlockProxy:  # noqa: E306  the model, seen through the watch
                    device = torch.device("cpu")
                    def __call__(self, *a, **k):
                        return watch(*a, **k)
                out = block_mod.DreamGenerationMixin._sample(
                    BlockProxy(), x, attention_mask=None, generation_config=cfg,
                    threshold=tau if tau_on else 0.9, block_length=block, dual_cache=True)
                if watch.bad:
                    continue
                cases.append({"family": "dream", "checkpoint_seed": seed,
                              "alg": "fast-dllm-dual-" + ("threshold" if tau_on else "entropy"),
                              "order": "confidence" if tau_on else "entropy",
                              "schedule": "threshold" if tau_on else "blocks", "cache": "dual",
                              "threshold": tau, "steps": steps, "block_size": block,
                              "top_k": cfg.top_k, "prefix": prompt, "masks": gen_len,
                              "suffix": [], "out": out[0, pre:].tolist()})
        m = llada_model(ckpt / "llada-1")
        vocab = m.config.vocab_size
        gen = torch.Generator().manual_seed(200)
        for pre, gen_len, block, steps in ((6, 8, 8, 4), (5, 8, 8, 3), (9, 12, 4, 6), (4, 16, 8, 4),
                                           (7, 16, 4, 8), (3, 12, 6, 4), (8, 10, 10, 3),
                                           (5, 16, 16, 5), (6, 12, 3, 8), (6, 10, 10, 4), (5, 6, 6, 4),
                                           (7, 16, 16, 6), (4, 12, 6, 8), (5, 18, 6, 12), (9, 14, 7, 10)):
            prompt = ids(gen, pre, vocab)
            watch = Watch(m, shift=False)
            watch.device = torch.device("cpu")
            out = llada_generate(watch, torch.tensor([prompt]), steps=steps, gen_length=gen_len,
                                 block_length=block, temperature=0., mask_id=MASK)
            if watch.bad:
                continue
            cases.append({"family": "llada", "checkpoint_seed": 1, "alg": "low_confidence",
                          "order": "confidence", "schedule": "blocks" if block < gen_len else "fixed",
                          "steps": steps, "block_size": block, "prefix": prompt, "masks": gen_len,
                          "suffix": [], "out": out[0, pre:].tolist()})
    # Fast-dLLM's LLaDA decoders: threshold decoding in blocks without a cache, and its
    # dual cache (fixed counts, and threshold). The threshold is set per case to the median of
    # the first block's first-pass confidences, so a pass commits several.
    from fast_llada_generate import generate as fast_generate, generate_with_dual_cache
    gen = torch.Generator().manual_seed(300)
    for pre, gen_len, block, steps, how in (
            (6, 8, 8, 4, "threshold"), (5, 12, 4, 3, "threshold"), (9, 12, 6, 2, "threshold"),
            (4, 16, 8, 2, "threshold"), (7, 16, 4, 4, "threshold"), (3, 10, 5, 2, "threshold"),
            (6, 8, 8, 4, "dual"), (5, 12, 4, 6, "dual"), (9, 12, 6, 4, "dual"),
            (4, 16, 8, 4, "dual"), (7, 16, 4, 8, "dual"), (3, 10, 5, 6, "dual"),
            (6, 12, 6, 2, "dual-threshold"), (5, 16, 8, 2, "dual-threshold"),
            (8, 12, 4, 3, "dual-threshold"), (4, 10, 10, 1, "dual-threshold")):
        prompt = ids(gen, pre, vocab)
        tau = None
        if how.endswith("threshold"):
            x = torch.tensor([prompt + [MASK] * gen_len])
            with torch.no_grad():
                p = torch.softmax(m(x).logits[0, pre:pre + block].double(), -1).max(-1).values
            tau = round(float(p.median()), 9)
        watch = Watch(m, shift=False)
        watch.device = torch.device("cpu")
        run_ = fast_generate if how == "threshold" else generate_with_dual_cache
        out, _ = run_(watch, torch.tensor([prompt]), steps=steps, gen_length=gen_len,
                      block_length=block, temperature=0., mask_id=MASK, threshold=tau)
        if watch.bad:
            continue
        cases.append({"family": "llada", "checkpoint_seed": 1, "alg": f"fast-dllm-{how}",
                      "order": "confidence",
                      "schedule": "threshold" if tau is not None else "blocks",
                      "cache": "dual" if how.startswith("dual") else "none",
                      "threshold": tau, "steps": steps, "block_size": block,
                      "prefix": prompt, "masks": gen_len, "suffix": [],
                      "out": out[0, pre:].tolist()})
    # DreamOn's released sampler (expand and delete), as its quickstart frames an infill:
    # [BOS] prefix masks suffix [EOS], max_new_tokens the most the gap may grow to.
    import dreamon_ref
    folder = ckpt / "dreamon-0"
    m = dream_model(folder)
    vocab_ids = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    special = {t["content"]: t["id"] for t in vocab_ids}
    bos, eos, expand = special["<|beginoftext|>"], special["<|endoftext|>"], special["<|expand|>"]
    gen = torch.Generator().manual_seed(400)
    for pre, start, suf, cap, alg, order in (
            (6, 4, 5, 12, "entropy", "entropy"), (5, 2, 4, 10, "entropy", "entropy"),
            (8, 6, 3, 16, "entropy", "entropy"), (4, 3, 6, 8, "entropy", "entropy"),
            (7, 5, 5, 12, "maskgit_plus", "confidence"), (5, 8, 4, 14, "maskgit_plus", "confidence"),
            (6, 3, 7, 9, "topk_margin", "margin"), (9, 4, 2, 12, "topk_margin", "margin"),
            (3, 4, 4, 4, "entropy", "entropy"), (6, 7, 5, 20, "entropy", "entropy")):
        prefix, suffix = ids(gen, pre, 320), ids(gen, suf, 320)
        x = torch.tensor([[bos] + prefix + [MASK] * start + suffix + [eos]])
        watch = Watch(m, shift=True)
        window = dreamon_ref.diffusion_generate(
            watch, x, max_new_tokens=cap, alg=alg, top_k=50, mask_token_id=MASK,
            expand_token_id=expand, eos_token_id=eos).tolist()
        if watch.bad:
            continue
        gap = window[1 + pre:len(window) - suf - 1]
        cases.append({"family": "dreamon", "checkpoint_seed": 0, "alg": alg, "order": order,
                      "schedule": "fixed", "steps": 0, "max_tokens": cap, "prefix": prefix,
                      "masks": start, "suffix": suffix, "out": gap})
    print(len(cases), {f: sum(c["family"] == f for c in cases)
                       for f in ("dream", "llada", "dreamon")})
    data = {
        "about": "Token ids the authors' decoders wrote on diffill's tiny test checkpoints "
                 "(greedy). Made by tests/data/README.md's commands; compared by "
                 "tests/test_golden.py.",
        "references": {
            "dream": "NVlabs/Fast-dLLM@24cc59e dream/model/generation_utils.py "
                     "DreamGenerationMixin._sample (Dream's diffusion_generate loop, and "
                     "Fast-dLLM's confidence_threshold alg in it), and "
                     "dream/model/generation_utils_block.py's block sampler with dual_cache, "
                     "model dream/model/modeling_dream.py, transformers 4.46.3",
            "llada": "ML-GSAI/LLaDA@b7e6c35 generate.py generate() (low_confidence), model "
                     "NVlabs/Fast-dLLM@24cc59e llada/model/modeling_llada.py",
            "fast-dllm-llada": "NVlabs/Fast-dLLM@24cc59e llada/generate.py generate() with a "
                               "threshold, generate_with_dual_cache()",
            "dreamon": "DreamOnGenerationMixin._sample and diffusion_generate's lengths, "
                       "transcribed outside this repository from a public copy of DreamOn's "
                       "released generation utilities; model Fast-dLLM's modeling_dream.py"},
        "checkpoints": {k: digest(ckpt / k)
                        for k in ("dream-0", "dream-1", "llada-1", "dreamon-0")},
        "cases": cases}
    out_path.write_text(json.dumps(data, separators=(",", ":")))


if __name__ == "__main__":
    if sys.argv[1] == "checkpoints":
        checkpoints(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
