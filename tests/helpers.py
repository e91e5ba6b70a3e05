"""Builders of tiny checkpoints in the real on-disk format (config.json + safetensors +
tokenizer.json), loaded in tests through the same code path a user's checkpoint takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

CODE_SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nprint(os.getcwd(), sys.argv)\n",
    "if x > 0:\n    y = x * 2\nelse:\n    y = -x\n",
    "values = [v for v in items if v is not None]\n",
    "with open(path, encoding='utf-8') as f:\n    data = f.read()\n",
    "try:\n    result = compute()\nexcept ValueError as exc:\n    raise RuntimeError(exc)\n",
    "# héllo wörld — ünïcode ✓\nname = 'ελληνικά'\n",
    "\tindented = True\n\n\n  spaces  = 'x'\n",
]


def bpe_tokenizer(vocab_size: int = 320, extra_special: list[str] = ()):
    """A byte-level BPE trained on a few snippets, with diffill's special tokens."""
    from tokenizers import AddedToken

    from diffill.workshop.train import train_tokenizer
    tok = train_tokenizer(iter(CODE_SNIPPETS * 3), vocab_size)
    if extra_special:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in extra_special])
    return tok


def hf_model(kind: str, vocab: int, *, tied: bool = False, seed: int = 0, hidden: int = 64,
             layers: int = 2, heads: int = 4, kv_heads: int = 2):
    """A random transformers reference model: ``qwen2`` or ``llama``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=512,
                  tie_word_embeddings=tied)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(attention_bias=True, **common))
    else:
        raise ValueError(kind)
    # Non-zero biases so a wrongly loaded bias shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


def save_checkpoint(folder: Path, kind: str = "qwen2", *, tokenizer=None, tied: bool = False,
                    shard_size: str | None = None, config_updates: dict | None = None,
                    seed: int = 0, **model_kw):
    """Save a tiny checkpoint; returns (folder, reference transformers model)."""
    tokenizer = tokenizer or bpe_tokenizer()
    vocab = tokenizer.get_vocab_size() + 8
    model = hf_model(kind, vocab, tied=tied, seed=seed, **model_kw)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kwargs)
    tokenizer.save(str(folder / "tokenizer.json"))
    if config_updates:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(config_updates)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder, model


LLADA_RENAMES = [
    (r"^model\.embed_tokens\.weight$", "model.transformer.wte.weight"),
    (r"^model\.norm\.weight$", "model.transformer.ln_f.weight"),
    (r"^lm_head\.weight$", "model.transformer.ff_out.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)$",
     r"model.transformer.blocks.\1.\2.\3"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", r"model.transformer.blocks.\1.attn_out.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$", r"model.transformer.blocks.\1.ff_proj.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.weight$", r"model.transformer.blocks.\1.up_proj.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$", r"model.transformer.blocks.\1.ff_out.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"model.transformer.blocks.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$",
     r"model.transformer.blocks.\1.ff_norm.weight"),
]


def save_llada_checkpoint(folder: Path, tokenizer=None):
    """A LLaMA reference model written the way LLaDA ships: OLMo names, d_model config."""
    from safetensors.torch import save_file
    tokenizer = tokenizer or bpe_tokenizer()
    vocab = tokenizer.get_vocab_size() + 8
    ref = hf_model("llama", vocab, tied=False)
    # LLaDA has no q/k/v bias; drop them from the reference.
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    ref = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, max_position_embeddings=512,
                                       tie_word_embeddings=False, rope_theta=500000.0)).eval()
    state = {}
    for name, t in ref.state_dict().items():
        new = name
        for pat, rep in LLADA_RENAMES:
            if re.match(pat, name):
                new = re.sub(pat, rep, name)
                break
        state[new] = t.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 64,
              "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 128,
              "vocab_size": vocab, "embedding_size": vocab, "rope_theta": 500000.0,
              "rms_norm_eps": 1e-6, "layer_norm_type": "rms", "include_bias": False,
              "include_qkv_bias": False, "weight_tying": False, "max_sequence_length": 512,
              "mask_token_id": tokenizer.token_to_id("<|mask|>"),
              "eos_token_id": tokenizer.token_to_id("<|endoftext|>")}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, ref


def diffill_config(**extra) -> dict:
    return {"diffill": {"shift_logits": False, **extra}}


# ---------------------------------------------------------------- a model with known answers

PATTERN_K = 12
"""Vocabulary of the counting task: tokens c0..c11 repeat cyclically."""


def pattern_tokenizer(extra_special: tuple[str, ...] = ()):
    """Word-level tokenizer: c0..c11 plus diffill's specials (and ``extra_special`` after
    them), split on spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, "<|mask|>": 2}
    for i in range(PATTERN_K):
        vocab[f"c{i}"] = 3 + i
    for t in extra_special:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<|endoftext|>", "<|pad|>",
                                                                    "<|mask|>", *extra_special)])
    return tok


def train_pattern_model(folder: Path, steps: int = 600, seed: int = 0) -> Path:
    """Train, in seconds, a bidirectional model on a counting task with known answers.

    Rows are ``c_a c_a+1 ... [gap] ... c_b ...`` (mod 12); the gap holds the missing run then
    ``<|pad|>`` up to 8 slots. The trained model fills the run and pads the rest (about 98% of
    gaps exactly), so sampler tests can assert real answers. Saved as a diffill checkpoint.
    """
    from diffill.workshop.train import mdlm_loss

    def loss(model, gen):
        ids, region, key_mask = pattern_batch(128, gen)
        return mdlm_loss(model, ids, region, key_mask, 2, gen)

    # It reads each gap's length off the suffix and is surest of it with the plain confidence
    # order (see test_sampler), so its checkpoint records that order.
    return _save_counting(folder, _fit_counting(loss, steps, seed), pattern_tokenizer(),
                          architecture="DiffillModel", **diffill_config(filler_order="any"))


def _fit_counting(loss, steps: int, seed: int):
    """A 3-layer bidirectional model of the counting vocabulary, fitted in seconds by AdamW
    (short warm-up, linear decay) on batches whose ``loss(model, gen)`` it minimises."""
    from diffill.workshop.train import TrainConfig, init_weights
    from diffill.model.transformer import Transformer
    torch.manual_seed(seed)
    cfg = TrainConfig(vocab_size=16, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, seq_len=24)
    model = Transformer(cfg.model_config())
    init_weights(model, seed)
    lr = 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (1 - 0.9 * step / steps)
        value = loss(model, gen)
        opt.zero_grad()
        value.backward()
        opt.step()
    return model.eval()


def _save_counting(folder: Path, model, tokenizer, architecture: str, **extra) -> Path:
    """A counting model as a checkpoint folder: weights, config.json and tokenizer."""
    from diffill.model.weights import save_state_dict
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model, folder)
    config = {"architectures": [architecture], "model_type": "qwen2", "vocab_size": 16,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
              "tie_word_embeddings": True, **extra}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def pattern_row(start: int, n_prefix: int, gap: int, n_suffix: int, slots: int = 8
                ) -> tuple[list[int], list[int], list[int]]:
    """(prefix, middle incl. pads, suffix) token ids of one counting row."""
    seq = [3 + (start + i) % PATTERN_K for i in range(n_prefix + gap + n_suffix)]
    prefix, middle, suffix = seq[:n_prefix], seq[n_prefix:n_prefix + gap], seq[n_prefix + gap:]
    return prefix, middle + [1] * (slots - gap), suffix


def pattern_batch(batch: int, gen: torch.Generator):
    rows, regions = [], []
    for _ in range(batch):
        r = torch.randint(0, 1_000_000, (4,), generator=gen).tolist()
        gap = 1 + r[1] % 7
        pre, mid, suf = pattern_row(r[0] % PATTERN_K, 3 + r[2] % 6, gap, 3 + r[3] % 5)
        rows.append(pre + mid + suf)
        regions.append((len(pre), len(pre) + len(mid)))
    width = max(map(len, rows))
    ids = torch.ones(batch, width, dtype=torch.long)
    region = torch.zeros(batch, width, dtype=torch.bool)
    key_mask = torch.zeros(batch, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        key_mask[i, :len(row)] = True
        region[i, regions[i][0]:regions[i][1]] = True
    return ids, region, key_mask


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def save_diffusion_gemma(folder: Path, *, seed: int = 0, canvas: int = 16, steps: int = 6,
                         chat_template: str | None = GEMMA_CHAT_TEMPLATE) -> Path:
    """A tiny random DiffusionGemma (transformers' own config and model classes, a 2-layer MoE
    with a 1-layer vision tower) saved with ``save_pretrained``, a byte-level BPE tokenizer and
    a Gemma-style chat template beside it."""
    from transformers import (DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion,
                              DiffusionGemmaTextConfig, PreTrainedTokenizerFast)
    tok = bpe_tokenizer(extra_special=["<start_of_turn>", "<end_of_turn>"])
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in ("<|pad|>", "<|endoftext|>", "<end_of_turn>")}
    text = DiffusionGemmaTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=32,
        layer_types=["sliding_attention", "full_attention"], num_global_key_value_heads=1,
        global_head_dim=16, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
        pad_token_id=ids["<|pad|>"], eos_token_id=ids["<end_of_turn>"],
        bos_token_id=ids["<|endoftext|>"])
    vision = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "head_dim": 8}
    torch.manual_seed(seed)
    net = DiffusionGemmaForBlockDiffusion(
        DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas))
    net.generation_config.update(max_denoising_steps=steps,
                                 eos_token_id=[ids["<end_of_turn>"], ids["<|endoftext|>"]],
                                 pad_token_id=ids["<|pad|>"])
    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<end_of_turn>", pad_token="<|pad|>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- DreamOn-style length states

DREAMON_DELETE, DREAMON_MASK, DREAMON_EXPAND = 0, 2, 15
"""Ids in ``pattern_tokenizer(("<|expand|>",))``: EOS deletes, as in DreamOn."""


def dreamon_gap(middle: list[int], slots: int, gen: torch.Generator) -> list[int]:
    """DreamOn's augmented target for ``middle`` written in ``slots`` masks: too long, random
    adjacent pairs merge into ``<|expand|>`` (which may merge again) until it fits; too short,
    ``<|delete|>`` (EOS) tokens go in at random places."""
    z = list(middle)
    while len(z) > slots:
        i = int(torch.randint(0, len(z) - 1, (1,), generator=gen))
        z[i:i + 2] = [DREAMON_EXPAND]
    while len(z) < slots:
        i = int(torch.randint(0, len(z) + 1, (1,), generator=gen))
        z.insert(i, DREAMON_DELETE)
    return z


def dreamon_batch(batch: int, gen: torch.Generator):
    """Counting rows whose gap of 1..8 masks holds a true middle of 1..7 tokens (so it must
    grow or shrink), as augmented targets (ids) and the masked positions of each row."""
    rows, masks = [], []
    for _ in range(batch):
        r = torch.randint(0, 1_000_000, (5,), generator=gen).tolist()
        pre, mid, suf = pattern_row(r[0] % PATTERN_K, 3 + r[2] % 6, 1 + r[1] % 7, 3 + r[3] % 5,
                                    slots=0)
        mid = [t for t in mid if t != 1]
        z = dreamon_gap(mid, 1 + r[4] % 8, gen)
        t = float(torch.rand((), generator=gen))
        hide = [bool(torch.rand((), generator=gen) < t) or tok in (DREAMON_DELETE,
                                                                   DREAMON_EXPAND) for tok in z]
        if not any(hide):
            hide[int(torch.randint(0, len(z), (1,), generator=gen))] = True
        rows.append(pre + z + suf)
        masks.append([False] * len(pre) + hide + [False] * len(suf))
    width = max(map(len, rows))
    ids = torch.ones(batch, width, dtype=torch.long)
    masked = torch.zeros(batch, width, dtype=torch.bool)
    key_mask = torch.zeros(batch, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        masked[i, :len(row)] = torch.tensor(masks[i])
        key_mask[i, :len(row)] = True
    return ids, masked, key_mask


def train_dreamon_model(folder: Path, steps: int = 400, seed: int = 0) -> Path:
    """Train, in seconds, a DreamOn-style counting model: shifted logits (Dream's layout), a
    vocabulary with ``<|expand|>`` (so diffill detects the ``dreamon`` family) and EOS as
    delete. Its gaps must grow (``<|expand|>``) or shrink (EOS) to the run that fits."""
    import torch.nn.functional as F

    def loss(model, gen):
        ids, masked, key_mask = dreamon_batch(128, gen)
        logits = model.logits(model.hidden(ids.masked_fill(masked, DREAMON_MASK),
                                           key_mask=key_mask))
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # Dream's shift
        return F.cross_entropy(logits[masked], ids[masked])

    return _save_counting(folder, _fit_counting(loss, steps, seed),
                          pattern_tokenizer(("<|expand|>",)), architecture="DreamModel")
