"""Masked-diffusion training of the bundled model, ``diffill-small``.

Objective (MDLM / LLaDA): draw a mask ratio t in (0, 1], mask each token with probability t,
and minimise cross-entropy on the masked positions weighted by 1/t; this bounds the data
likelihood, so a model trained on it can denoise from any mask level.

Half of every batch is *infill-shaped*: a prefix, a middle span of 1-128 tokens padded with
``<|pad|>`` up to a length bucket, and a suffix, tokenised separately exactly as the sampler
will see them; only the middle region is masked. The pads teach the model to write filler into
surplus masks, which is how the sampler infills without knowing the true length.

Two other objectives can be chosen per run (``objective`` in the run's config):
- ``ar``: autoregressive next-token training with fill-in-the-middle rows (prefix, suffix,
  middle behind sentinel tokens) for the first ``ar_fraction`` of the schedule, then the
  *conversion*: full attention, logits shifted by one (position i is predicted from hidden state
  i-1, as in Dream and DiffuCoder, which were converted from autoregressive checkpoints) and the
  MDLM loss for the rest. Autoregressive training puts a loss on every token, so it learns more
  per FLOP while compute is the limit.
- ``infill_fraction = 1`` gives span-infill-only masking.
``pad_tokens > 1`` fills surplus masks with a cycle of distinct pad tokens (rainbow padding,
arXiv 2510.03680) instead of one repeated ``<|pad|>``.

Runs are short and resumable: ``diffill train --minutes 9`` trains, saves ``state.pt`` in the
run folder and stops; the same command continues from it. ``--export DIR`` writes a checkpoint
folder (config.json + model.safetensors + tokenizer.json + model card) that loads like any other.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import queue
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from diffill.infill.sampler import SamplerSettings, denoise
from diffill.model.config import ModelConfig
from diffill.model.loader import DiffusionModel, cpu_has_bf16, parse_device
from diffill.model.profile import check_blocks
from diffill.model.transformer import Transformer
from diffill.model.weights import save_state_dict, weight_files

from .corpus import Corpus, build_corpus, fingerprint, read_source

log = logging.getLogger("diffill.train")

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|mask|>", *FIM_TOKENS] + \
    [f"<|pad_{k}|>" for k in range(1, 8)]
OBJECTIVES = ("mdlm", "ar")
CERTAINTY_T = 0.5
"""Temperature of certainty forcing's entropy: below 1 it sharpens the distribution first, so
the term keeps pulling where the plain softmax is already fairly sure."""
BUCKETS = (8, 16, 32, 64, 128)
MAX_SPAN = 128


@dataclass
class TrainConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    seq_len: int = 256
    batch_size: int = 24
    infill_fraction: float = 0.5
    """Share of each batch made of infill-shaped examples."""
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    total_steps: int = 20000
    """Length of the cosine schedule; a run may stop earlier and resume later."""
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    max_bytes_per_package: int = 4_000_000
    tokenizer_sample_bytes: int = 30_000_000
    eval_every: int = 200
    rope_theta: float = 10000.0
    objective: str = "mdlm"
    """``mdlm`` from scratch, or ``ar``: autoregressive + FIM, then converted to MDLM."""
    ar_fraction: float = 0.75
    """``ar`` runs: share of ``total_steps`` trained autoregressively before the conversion."""
    fim_rate: float = 0.5
    """``ar`` runs: share of rows in prefix-suffix-middle order."""
    pad_tokens: int = 1
    """Distinct filler tokens cycled through surplus masks (1: one ``<|pad|>``; more: rainbow)."""
    certainty: float = 0.0
    """Certainty forcing (dParallel, arXiv 2509.26488), the weight of its term: the MDLM loss
    plus this times the entropy, at temperature ``CERTAINTY_T``, of each masked prediction the
    model already gets right, so a sure token becomes sure sooner and a pass commits several."""
    self_distill: float = 0.0
    """Share of infill rows whose middle is not the corpus's but ``teacher``'s own fill of
    the gap, decoded by the sampler with the checkpoint's settings (dParallel's teacher
    trajectories: a model's greedy answers are far more predictable than the corpus, so it
    can learn to be sure of several of them at once). Plain rows, and gaps longer than the
    teacher's ``max_fill``, keep the corpus."""
    teacher: str = ""
    """Checkpoint folder that writes the ``self_distill`` rows (``--init-from``'s by
    default): fixed for the whole run, so a resumed run distils from the same model."""
    budget_minutes: float = 0.0
    """When > 0: the run has this much training time in all (on a lent GPU, say). Its speed is
    measured over steps 10-30 of the first call, and ``total_steps`` set so that the schedule
    (warm-up, conversion, cosine decay) ends when the budget does; the calls that follow keep
    that schedule however the time is split between them."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if not 1 <= self.pad_tokens <= 8:
            raise ValueError("pad_tokens must be between 1 and 8")
        if not 0 <= self.self_distill <= 1:
            raise ValueError("self_distill must be between 0 and 1")
        if self.self_distill > 0 and not self.teacher:
            raise ValueError("self_distill needs a teacher checkpoint (or --init-from)")

    @property
    def shift_logits(self) -> bool:
        """Runs that start autoregressive keep its next-token alignment after conversion."""
        return self.objective == "ar"

    def phase(self, step: int) -> str:
        """``ar`` or ``mdlm``: which loss the step trains."""
        if self.objective == "ar" and step < self.ar_fraction * self.total_steps:
            return "ar"
        return "mdlm"

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.hidden_size // self.num_attention_heads, rms_norm_eps=1e-6,
            rope_theta=self.rope_theta, max_position_embeddings=4096, qkv_bias=True,
            tie_word_embeddings=True, layout="hf", model_type="qwen2")


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(texts: Iterator[str], vocab_size: int):
    """A byte-level BPE over code; lossless, so any text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# ---------------------------------------------------------------- objective

def mdlm_loss(model: Transformer, ids: torch.Tensor, region: torch.Tensor, key_mask: torch.Tensor,
              mask_id: int, gen: torch.Generator, shift: bool = False,
              certainty: float = 0.0) -> torch.Tensor:
    """MDLM loss on ``ids`` (B, T): mask a ratio t of each row's ``region`` and weight by 1/t.

    ``region`` (B, T) marks the positions that may be masked (all real tokens for plain
    windows, the middle for infill examples). The loss is normalised by the region size, so
    rows of different kinds weigh the same. ``shift``: a masked token at position i is
    predicted from hidden state i-1 (position 0 from itself), the sampler's ``shift_logits``.
    ``certainty`` > 0 adds certainty forcing (see ``TrainConfig.certainty``): the mean
    entropy of the masked predictions whose argmax is already the target.
    """
    B, T = ids.shape
    # Stratified t: one uniform draw spread over the batch (same expectation, much less
    # variance from the 1/t weight than B independent draws), shuffled across rows.
    u = torch.rand(1, generator=gen, device=ids.device)
    strata = (u + torch.arange(B, device=ids.device) / B) % 1.0
    order = torch.randperm(B, generator=gen, device=ids.device)
    t = (strata[order] * (1 - 1e-3) + 1e-3)[:, None]  # (B, 1)
    masked = (torch.rand(B, T, generator=gen, device=ids.device) < t) & region
    # Every row needs at least one masked position to contribute.
    empty = ~masked.any(dim=1)
    if empty.any():
        first = region.float().argmax(dim=1)
        masked[empty, first[empty]] = True
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    hidden = model.hidden(noisy, key_mask=key_mask)  # (B, T, d)
    rows, cols = masked.nonzero(as_tuple=True)
    src = (cols - 1).clamp(min=0) if shift else cols
    logits = model.logits(hidden[rows, src])  # (N, V)
    target = ids[rows, cols]
    ce = F.cross_entropy(logits, target, reduction="none")  # (N,)
    weight = 1.0 / t[rows, 0]
    per_row = torch.zeros(B, device=ids.device).index_add_(0, rows, ce * weight)
    loss = (per_row / region.sum(dim=1).clamp(min=1)).mean()
    if certainty > 0:
        right = logits.detach().argmax(dim=-1) == target
        if right.any():
            logp = F.log_softmax(logits[right].float() / CERTAINTY_T, dim=-1)
            loss = loss + certainty * -(logp.exp() * logp).sum(dim=-1).mean()
    return loss


def ar_loss(model: Transformer, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy with causal attention: hidden state i predicts token i+1.

    ``weight`` (B, T) is 1 where token i is a target worth learning (0 for the first token of
    a row and for padding), so packed rows need no attention mask.
    """
    hidden = model.hidden(ids, causal=True)  # (B, T, d)
    logits = model.logits(hidden[:, :-1])  # (B, T-1, V)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                         reduction="none")  # (B*(T-1),)
    w = weight[:, 1:].reshape(-1).float()
    return (ce * w).sum() / w.sum().clamp(min=1)


# ---------------------------------------------------------------- data

def filler_tokens(tokenizer, n: int) -> list[int]:
    """Ids of the ``n`` filler tokens: ``<|pad|>``, then ``<|pad_1|>`` ... (rainbow padding)."""
    names = ["<|pad|>"] + [f"<|pad_{k}|>" for k in range(1, n)]
    ids = [tokenizer.token_to_id(t) for t in names]
    if None in ids:
        raise ValueError(f"the tokenizer has no {names[ids.index(None)]} (pad_tokens={n}); "
                         "train a new tokenizer for this run")
    return ids


class Batcher:
    """Plain windows from a token stream plus infill-shaped examples cut from raw text."""

    def __init__(self, tokenizer, stream: np.ndarray, texts: list[str], cfg: TrainConfig,
                 seed: int,
                 fill: Callable[[list[int], list[int], int], list[int] | None] | None = None
                 ) -> None:
        self.tok = tokenizer
        self.fill = fill
        """``fill(prefix, suffix, n)``: a teacher's ``n`` tokens for the gap (self_distill),
        or None where it has none to give (the row keeps the corpus's middle)."""
        self.stream = stream
        self.texts = texts
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.pad = tokenizer.token_to_id("<|pad|>")
        self.fillers = filler_tokens(tokenizer, cfg.pad_tokens)
        self.eot = tokenizer.token_to_id("<|endoftext|>")
        self.fim = [tokenizer.token_to_id(t) for t in FIM_TOKENS]

    def plain(self) -> tuple[list[int], int, int]:
        L = self.cfg.seq_len
        start = self.rng.randrange(0, len(self.stream) - L)
        return self.stream[start:start + L].tolist(), 0, L

    def _split(self, text: str) -> tuple[str, str, str]:
        """Cut a prefix / middle / suffix the way an editor would: rest of a line, whole lines
        from the start of a line or after its indentation, or a random character span."""
        rng = self.rng
        anchor = rng.randrange(0, max(1, len(text) - 1))
        line_start = text.rfind("\n", 0, anchor) + 1
        line_end = text.find("\n", anchor)
        line_end = len(text) if line_end < 0 else line_end
        kind = rng.random()
        if kind < 0.35:  # single line: cursor inside a line, fill the rest of it
            cut = rng.randint(line_start, line_end)
            return text[:cut], text[cut:line_end], text[line_end:]
        if kind < 0.75:  # block: 1-8 whole lines, cursor at column 0 or after the indent
            begin = line_start
            if rng.random() < 0.6:
                line = text[line_start:line_end]
                begin += len(line) - len(line.lstrip(" \t"))
            end = line_start
            for _ in range(rng.randint(1, 8)):
                nxt = text.find("\n", end)
                if nxt < 0:
                    end = len(text)
                    break
                end = nxt + 1
            end = max(end, begin)
            # The newline closing the block stays in the suffix half the time.
            if end > begin and text[end - 1:end] == "\n" and rng.random() < 0.5:
                end -= 1
            return text[:begin], text[begin:end], text[end:]
        length = rng.randint(1, 300)
        return text[:anchor], text[anchor:anchor + length], text[anchor + length:]

    def _editor_gap(self) -> tuple[str, str, str] | None:
        """(prefix, middle, suffix) of a random file, cut around a random place by
        ``_split``; None for a file too short to cut."""
        text = self.rng.choice(self.texts)
        if len(text) < 40:
            return None
        at = self.rng.randrange(0, len(text))
        return self._split(text[max(0, at - 3000):at + 3000])

    def _context(self, prefix: str, suffix: str, room: int) -> tuple[list[int], list[int]]:
        """Token ids of the end of ``prefix`` and the start of ``suffix`` that share ``room``
        tokens: the suffix gets a random quarter to half, the prefix the rest, and either
        side takes what the other leaves unused."""
        pre = self.tok.encode(prefix[-4 * room:]).ids
        suf = self.tok.encode(suffix[:4 * room]).ids
        n_suf = min(len(suf), max(room - len(pre), self.rng.randint(room // 4, room // 2)))
        n_pre = min(len(pre), room - n_suf)
        n_suf = min(len(suf), room - n_pre)
        return pre[len(pre) - n_pre:], suf[:n_suf]

    def infill(self) -> tuple[list[int], int, int] | None:
        cfg, rng = self.cfg, self.rng
        gap = self._editor_gap()
        if gap is None:
            return None
        prefix, middle, suffix = gap
        mid = self.tok.encode(middle).ids
        # Buckets leave at least half the window to context.
        usable = [b for b in BUCKETS if b <= cfg.seq_len // 2] or [cfg.seq_len // 2]
        if len(mid) > min(MAX_SPAN, usable[-1]):
            return None
        fits = [b for b in usable if b >= max(len(mid), 1)]
        bucket = fits[0] if rng.random() < 0.6 else rng.choice(fits)
        pre, suf = self._context(prefix, suffix, cfg.seq_len - bucket)
        if self.fill is not None and rng.random() < cfg.self_distill:
            written = self.fill(pre, suf, bucket)
            if written is not None:
                return pre + written + suf, len(pre), len(pre) + bucket
        filler = [self.fillers[k % len(self.fillers)] for k in range(bucket - len(mid))]
        return pre + mid + filler + suf, len(pre), len(pre) + bucket

    def ar_row(self) -> tuple[list[int], list[int]]:
        """One causal-LM row of ``seq_len`` tokens and its target weights.

        With probability ``fim_rate`` the row starts with a fill-in-the-middle example in
        prefix-suffix-middle order (the middle cut the way an editor meets it), the rest of the
        row packed from the token stream behind an end-of-text; otherwise a plain window.
        """
        cfg, rng, T = self.cfg, self.rng, self.cfg.seq_len
        ids, weight = [], []
        gap = self._editor_gap() if rng.random() < cfg.fim_rate else None
        if gap is not None:
            prefix, middle, suffix = gap
            mid = self.tok.encode(middle).ids[:T // 2]
            pre, suf = self._context(prefix, suffix, T - len(mid) - 4)
            p_, s_, m_ = self.fim
            ids = [p_] + pre + [s_] + suf + [m_] + mid + [self.eot]
            weight = [1] * len(ids)
        need = T - len(ids)
        if need > 0:
            start = rng.randrange(0, len(self.stream) - need)
            ids += self.stream[start:start + need].tolist()
            weight += [0] + [1] * (need - 1)  # no target across the packing seam
        weight[0] = 0
        return ids[:T], weight[:T]

    def ar_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.ar_row() for _ in range(self.cfg.batch_size)]
        return (torch.tensor([r[0] for r in rows], dtype=torch.long),
                torch.tensor([r[1] for r in rows], dtype=torch.bool))

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        n_infill = round(cfg.batch_size * cfg.infill_fraction)
        rows: list[tuple[list[int], int, int]] = []
        while len(rows) < n_infill:
            ex = self.infill()
            if ex is not None:
                rows.append(ex)
        while len(rows) < cfg.batch_size:
            rows.append(self.plain())
        T = cfg.seq_len
        ids = torch.full((len(rows), T), self.pad, dtype=torch.long)
        region = torch.zeros(len(rows), T, dtype=torch.bool)
        key_mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, (row, lo, hi) in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            key_mask[i, :len(row)] = True
            region[i, lo:hi] = True
        return ids, region, key_mask


class Prefetch:
    """Batches for the coming steps, made ``depth`` steps ahead by a background thread. The
    tokenizer releases the GIL, so on a GPU the CPU's cutting and encoding of rows (about 1M
    tokens/s per core for infill rows) overlaps the device's work instead of adding to every
    step. Batches come in step order from one producer, so a run makes the same batches with
    or without it; each is made for its own step's phase, never across the conversion."""

    def __init__(self, make: Callable[[int], tuple], first_step: int, depth: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make, first_step),
                                       name="diffill-batches", daemon=True)
        self.thread.start()

    def _run(self, make: Callable[[int], tuple], step: int) -> None:
        while not self.stop.is_set():
            try:
                item: object = make(step)
            except Exception as exc:  # noqa: BLE001 - raised in the training loop
                item = exc
            while not self.stop.is_set():
                try:
                    self.queue.put((step, item), timeout=0.5)
                    break
                except queue.Full:
                    continue
            step += 1

    def get(self, step: int) -> tuple:
        got, item = self.queue.get()
        if got != step:
            raise RuntimeError(f"prefetched batch of step {got} where step {step} was due")
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self.stop.set()


# ---------------------------------------------------------------- run folder

def load_state(path: Path) -> dict:
    """A run's ``state.pt`` (weights, optimizer state, numbers), read with torch's
    weights-only unpickler: a run folder from elsewhere must not be able to run code here."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines()
        why = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0] if lines
                   else "")
        raise ValueError(f"{path} holds more than weights and numbers; not loaded, since "
                         f"unpickling it could run code ({why})") from None


@dataclass
class RunState:
    step: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    calibrated: bool = False
    """``total_steps`` was set from the measured speed (``budget_minutes`` runs)."""


CALIBRATE = (10, 30)
"""Steps of a budgeted run's first call between which its speed is measured (after the
compile and the allocator's warm-up)."""


def fit_schedule(cfg: TrainConfig, step: int, steps_per_second: float,
                 seconds_used: float) -> int:
    """``total_steps`` of a budgeted run: the steps done plus what the rest of the budget
    holds at the measured speed (at least one more)."""
    left = max(0.0, cfg.budget_minutes * 60 - seconds_used)
    return step + max(1, int(steps_per_second * left))


RECIPES: dict[str, dict] = {
    # The bundled model's GPU recipe: about 29M parameters (h512 x 8 layers, FFN 1536), the
    # bundled tokenizer, 512-token windows, autoregressive + FIM for 70% of the steps, then
    # converted (the objective that learned most per FLOP here, docs/training.md), fitted to
    # a 24-minute budget: three 9-minute device commands with time left to export.
    "gpu-base": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=4, seq_len=512, batch_size=64,
                     lr=1e-3, warmup_steps=300, objective="ar", ar_fraction=0.7,
                     eval_every=500, budget_minutes=24.0),
    # The same recipe at a size a CPU test runs in seconds.
    "cpu-tiny": dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, seq_len=64, batch_size=8,
                     lr=3e-3, warmup_steps=5, objective="ar", ar_fraction=0.7, eval_every=0,
                     tokenizer_sample_bytes=10**6, budget_minutes=0.5),
}
"""Named training recipes (``diffill train RUN --recipe NAME``)."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def prepare_run(run_dir: Path, cfg: TrainConfig, corpus: Corpus | None = None,
                texts_override: list[str] | None = None,
                tokenizer_from: Path | None = None) -> None:
    """Tokenizer, token stream and corpus record for a new run (skipped when present).

    ``tokenizer_from`` reuses a checkpoint's ``tokenizer.json`` (to go on training a shipped
    model) instead of training a new one.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "tokens.npy").is_file():
        return
    from tokenizers import Tokenizer
    if texts_override is not None:
        texts, record = texts_override, {"source": "given texts", "files": len(texts_override)}
        held: list[str] = []
    else:
        corpus = corpus or build_corpus()
        files = corpus.files("train", cfg.max_bytes_per_package, cfg.seed)
        held_files = corpus.files("held-out", cfg.max_bytes_per_package, cfg.seed)
        texts = [t for t in map(read_source, files) if t]
        held = [t for t in map(read_source, held_files) if t]
        record = {"packages": corpus.summary(), "train_files": len(files),
                  "train_bytes": sum(len(t.encode()) for t in texts),
                  "held_out_files": len(held_files), "fingerprint": fingerprint(files)}
    log.info("corpus: %d texts, %.1f MB", len(texts), sum(map(len, texts)) / 1e6)
    if tokenizer_from is not None:
        tok = Tokenizer.from_file(str(Path(tokenizer_from) / "tokenizer.json"))
    else:
        rng = random.Random(cfg.seed)
        sample, size = [], 0
        for t in rng.sample(texts, len(texts)):
            if size > cfg.tokenizer_sample_bytes:
                break
            sample.append(t)
            size += len(t)
        tok = train_tokenizer(iter(sample), cfg.vocab_size)
    tok.save(str(run_dir / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    stream: list[int] = []
    for enc in tok.encode_batch(texts):
        stream.extend(enc.ids)
        stream.append(eot)
    np.save(run_dir / "tokens.npy", np.asarray(stream, dtype=np.uint16))
    record["train_tokens"] = len(stream)
    (run_dir / "corpus.json").write_text(json.dumps(record, indent=1))
    (run_dir / "texts.json").write_text(json.dumps({"train": texts, "held_out": held}))
    (run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))


def shape_of_checkpoint(folder: Path) -> dict:
    """TrainConfig fields of an exported checkpoint: sizes and the window it was trained on
    (its RoPE positions), and its whole training config when recorded, so a run continued
    from it keeps them."""
    raw = json.loads((Path(folder) / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads")
    # Exports since the objective comparison record their whole training config: a run
    # continued from one keeps its objective and schedule position too.
    known = set(TrainConfig.__dataclass_fields__)  # type: ignore[attr-defined]
    shape = {k: v for k, v in raw.get("diffill", {}).get("train", {}).items() if k in known}
    shape.update({k: raw[k] for k in keys})
    if "seq_len" in raw.get("diffill", {}):
        shape["seq_len"] = raw["diffill"]["seq_len"]
    return shape


def continued_config(folder: Path, overrides: dict | None = None) -> dict:
    """TrainConfig fields for a run continued from the checkpoint ``folder``: its shape and
    schedule, then ``overrides``. A stretched schedule (a new ``total_steps`` without a new
    ``ar_fraction``) keeps the step at which the run converted from autoregressive to
    diffusion, so a converted model is never sent back to causal training."""
    base = shape_of_checkpoint(folder)
    for own in ("self_distill", "teacher"):  # a run's own choice, never inherited
        base.pop(own, None)
    overrides = dict(overrides or {})
    if base.get("objective") == "ar" and "total_steps" in overrides \
            and "ar_fraction" not in overrides:
        old = TrainConfig(**base)  # its recorded schedule, defaults where it records none
        convert_at = old.ar_fraction * old.total_steps
        overrides["ar_fraction"] = min(1.0, convert_at / max(1, int(overrides["total_steps"])))
    return {**base, **overrides}


LAYER_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def grow_layers(weights: dict[str, torch.Tensor], old: int, new: int) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint with ``old`` layers made into ``new`` layers that compute the
    same function: layer j copies old layer ``j * old // new``; every copy after the first has
    its attention and MLP output projections zeroed, so it adds nothing to the residual stream
    until training moves them (function-preserving depth growth, as in Net2Net). A deeper model
    then starts from the smaller one's loss instead of from the loss of a re-stacked one."""
    if new == old:
        return weights
    if new < old:
        raise ValueError(f"cannot shrink a checkpoint from {old} to {new} layers")
    out = {k: v for k, v in weights.items() if ".layers." not in k}
    seen: set[int] = set()
    for j in range(new):
        src = j * old // new
        prefix = f"model.layers.{src}."
        for k, v in weights.items():
            if k.startswith(prefix):
                name = k[len(prefix):]
                zero = src in seen and name in LAYER_OUTPUTS
                out[f"model.layers.{j}.{name}"] = torch.zeros_like(v) if zero else v.clone()
        seen.add(src)
    return out


def load_train_config(run_dir: Path, overrides: dict | None = None) -> TrainConfig:
    path = run_dir / "train_config.json"
    values = json.loads(path.read_text()) if path.is_file() else {}
    values.update(overrides or {})
    return TrainConfig(**values)


def use_bf16(dev: torch.device, precision: str = "auto") -> bool:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError("precision must be auto, bf16 or fp32")
    if precision != "auto":
        return precision == "bf16"
    return dev.type == "cuda" or (dev.type == "cpu" and cpu_has_bf16())


def heldout_batches(tok, texts: list[str], cfg: TrainConfig, n: int = 2):
    """Fixed held-out batches (same seed every time): infill rows for the MDLM loss and
    causal rows for the autoregressive one."""
    if not texts:
        return None
    stream = []
    for enc in tok.encode_batch(texts[:400]):
        stream.extend(enc.ids)
    if len(stream) <= cfg.seq_len + 1:
        return None
    # Infill rows only, whatever the run's mix: the loss that decides fills, comparable
    # between objectives.
    fixed = TrainConfig(**{**asdict(cfg), "infill_fraction": 1.0})
    b = Batcher(tok, np.asarray(stream, dtype=np.uint16), texts, fixed, seed=12345)
    return [b.batch() for _ in range(n)], [b.ar_batch() for _ in range(n)]


@torch.no_grad()
def heldout_loss(model: Transformer, batches, phase: str, mask_id: int, shift: bool,
                 autocast) -> float:
    """Mean held-out loss of the phase's objective (seeded masking, so runs compare)."""
    model.eval()
    dev = model.output_weight().device
    gen = torch.Generator(device=dev).manual_seed(0)
    total = []
    with autocast:
        if phase == "ar":
            for ids, w in batches[1]:
                total.append(ar_loss(model, ids.to(dev), w.to(dev)).item())
        else:
            for ids, region, key_mask in batches[0]:
                total.append(mdlm_loss(model, ids.to(dev), region.to(dev), key_mask.to(dev),
                                       mask_id, gen, shift=shift).item())
    model.train()
    return sum(total) / len(total)


def train(run_dir: Path, *, minutes: float | None = None, steps: int | None = None,
          threads: int | None = None, init_from: Path | None = None,
          device: str | None = None, compile_model: bool = False,
          precision: str = "auto", save_every_minutes: float | None = None,
          prefetch: int | None = None,
          fill: Callable[[list[int], list[int], int], list[int] | None] | None = None
          ) -> RunState:
    """Train from the run folder's state for ``minutes`` or ``steps`` more, then save.

    A run without ``state.pt`` starts from random weights, or from the weights of the
    checkpoint folder ``init_from`` (a fresh optimizer; the step count goes on from the
    checkpoint's recorded steps). ``device`` defaults to CUDA when present. The forward pass
    runs in bf16 autocast where that pays (CUDA, and CPUs with native bf16; ``precision``
    forces it); weights and optimizer stay fp32, and ``state.pt`` resumes on either kind of
    device. ``compile_model`` runs the transformer through ``torch.compile`` (a minute of
    compiling, then about 1.3x on a CPU). ``save_every_minutes`` writes ``state.pt`` during the
    run too, so a run cut off loses at most that much. ``prefetch`` batches are made ahead
    by a background thread (default: 4 on CUDA, none on a CPU, where the thread would only
    take a core from the model). ``fill(prefix, suffix, n)`` writes the middles of
    ``self_distill`` rows (the teacher's answers; ``teacher`` below makes one).
    """
    from tokenizers import Tokenizer
    dev = parse_device(device)  # before any work: a device that is not here is a clear error
    cfg = load_train_config(run_dir)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    tok = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    if cfg.objective == "ar" and any(tok.token_to_id(t) is None for t in FIM_TOKENS):
        raise ValueError("objective 'ar' needs the FIM tokens in the tokenizer; this run's "
                         "tokenizer predates them (start a run with a new tokenizer)")
    stream = np.load(run_dir / "tokens.npy")
    corpus_texts = json.loads((run_dir / "texts.json").read_text())
    texts, held = corpus_texts["train"], corpus_texts.get("held_out") or []
    model = Transformer(cfg.model_config())
    init_weights(model, cfg.seed)
    state = RunState()
    ckpt = run_dir / "state.pt"
    saved = None
    if ckpt.is_file():
        saved = load_state(ckpt)
        model.load_state_dict(saved["model"])
        state = RunState(**saved["run"])
        log.info("resumed at step %d on %s", state.step, dev)
    elif init_from is not None:
        from safetensors.torch import load_file
        weights = {}
        for f in weight_files(Path(init_from)):  # one file or the shards of an index
            weights.update(load_file(str(f)))
        raw = json.loads((Path(init_from) / "config.json").read_text())
        weights = grow_layers(weights, int(raw["num_hidden_layers"]), cfg.num_hidden_layers)
        model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
        meta = raw.get("diffill", {})
        state = RunState(step=int(meta.get("steps", 0)),
                         tokens_seen=int(meta.get("tokens_seen", 0)))
        log.info("initialised from %s (step %d) on %s", init_from, state.step, dev)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                            weight_decay=cfg.weight_decay, foreach=True)
    if saved is not None:
        opt.load_state_dict(saved["optimizer"])  # moves its state to the parameters' device
        del saved
    if cfg.self_distill > 0 and fill is None:
        raise ValueError("self_distill needs the teacher's fill (diffill train makes it from "
                         "the run's teacher checkpoint: workshop.train.teacher)")
    batcher = Batcher(tok, stream, texts, cfg, seed=cfg.seed + state.step,
                      fill=fill if cfg.self_distill > 0 else None)
    pin = dev.type == "cuda"

    def make_batch(step: int) -> tuple[str, tuple[torch.Tensor, ...]]:
        phase = cfg.phase(step)
        tensors = batcher.ar_batch() if phase == "ar" else batcher.batch()
        return phase, tuple(t.pin_memory() for t in tensors) if pin else tensors

    depth = (4 if dev.type == "cuda" else 0) if prefetch is None else prefetch
    batches = Prefetch(make_batch, state.step, depth) if depth > 0 else None
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7919 + state.step)
    bf16 = use_bf16(dev, precision)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    if compile_model:
        # The bound method is compiled, not the module: state_dict keeps its names.
        model.hidden = torch.compile(model.hidden)
    mask_id = tok.token_to_id("<|mask|>")
    held_batches = heldout_batches(tok, held, cfg)
    log.info("%s, %.2fM parameters, objective %s, %s, %d threads%s", dev,
             sum(p.numel() for p in model.parameters()) / 1e6, cfg.objective,
             "bf16 autocast" if bf16 else "fp32", torch.get_num_threads(),
             ", compiled" if compile_model else "")
    model.train()
    t_start = time.perf_counter()
    target = state.step + steps if steps is not None else None
    start_step = state.step
    losses: list[float] = []
    t_window, tokens_window, t_saved = t_start, 0, t_start
    seconds_before = state.seconds  # of earlier calls; this call's time is added on save

    def save() -> None:
        state.seconds = seconds_before + time.perf_counter() - t_start
        tmp = run_dir / "state.pt.tmp"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "run": asdict(state)}, tmp)
        os.replace(tmp, ckpt)

    calibrate_from = None  # (step, time) where this call's speed measurement began
    while True:
        elapsed = time.perf_counter() - t_start
        if cfg.budget_minutes > 0 and not state.calibrated:
            if state.step == start_step + CALIBRATE[0]:
                calibrate_from = (state.step, time.perf_counter())
            elif calibrate_from is not None and state.step == start_step + CALIBRATE[1]:
                rate = (state.step - calibrate_from[0]) / (time.perf_counter() - calibrate_from[1])
                cfg.total_steps = fit_schedule(cfg, state.step, rate, seconds_before + elapsed)
                (run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
                state.calibrated = True
                log.info("%.2f steps/s: %d steps fit the %.1f-minute budget", rate,
                         cfg.total_steps, cfg.budget_minutes)
        if target is not None and state.step >= target:
            break
        if minutes is not None and elapsed > minutes * 60:
            break
        phase, tensors = batches.get(state.step) if batches else make_batch(state.step)
        for group in opt.param_groups:
            group["lr"] = lr_at(state.step, cfg)
        with autocast:
            if phase == "ar":
                ids, weight = (x.to(dev, non_blocking=True) for x in tensors)
                loss = ar_loss(model, ids, weight)
                n_tokens = ids.numel()
            else:
                ids, region, key_mask = (x.to(dev, non_blocking=True) for x in tensors)
                loss = mdlm_loss(model, ids, region, key_mask, mask_id, gen,
                                 shift=cfg.shift_logits, certainty=cfg.certainty)
                n_tokens = int(key_mask.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        state.step += 1
        state.tokens_seen += n_tokens
        tokens_window += n_tokens
        if state.step % 20 == 0:
            mean = sum(losses) / len(losses)
            now = time.perf_counter()
            entry = {"step": state.step, "loss": round(mean, 4), "phase": phase,
                     "lr": lr_at(state.step, cfg),
                     "seconds": round(seconds_before + now - t_start, 1),
                     "tokens_per_s": round(tokens_window / (now - t_window))}
            if held_batches is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
                entry["heldout_loss"] = round(heldout_loss(model, held_batches, phase, mask_id,
                                                           cfg.shift_logits, autocast), 4)
            state.history.append(entry)
            log.info("step %d %s loss %.4f%s lr %.2e %.0f tok/s", state.step, phase, mean,
                     f" held-out {entry['heldout_loss']:.4f}" if "heldout_loss" in entry else "",
                     entry["lr"], entry["tokens_per_s"])
            losses, tokens_window = [], 0
            t_window = time.perf_counter()
        if save_every_minutes and time.perf_counter() - t_saved > save_every_minutes * 60:
            save()
            t_saved = time.perf_counter()
    if batches is not None:
        batches.close()
    save()
    return state


def init_weights(model: Transformer, seed: int) -> None:
    """Small normal init (std 0.02), residual outputs scaled by depth, norms at one."""
    gen = torch.Generator().manual_seed(seed)
    depth = model.config.num_hidden_layers
    for name, p in model.named_parameters():
        if p.dim() == 1:
            torch.nn.init.ones_(p) if name.endswith("norm.weight") else torch.nn.init.zeros_(p)
            continue
        std = 0.02 / math.sqrt(2 * depth) if name.endswith(("o_proj.weight", "down_proj.weight")) \
            else 0.02
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def export(run_dir: Path, out_dir: Path, card: str | None = None,
           max_fill: int | None = None, filler_order: str | None = None,
           min_confidence: float | Mapping[str, float] | None = None,
           max_shard_bytes: int | None = None,
           cache: str | None = None, cpu_bf16: bool = False,
           dtype: torch.dtype = torch.float32, block_size: int | None = None,
           refresh: str | None = None) -> Path:
    """Write the run's model as a checkpoint folder loadable by ``model.load_model``.

    ``max_fill`` records the most masks the model's fills do well with (the profile caps the
    sampler's ``max_tokens`` there); it is measured on held-out code, so the caller gives it.
    """
    cfg = load_train_config(run_dir)
    mc = cfg.model_config()
    saved = load_state(run_dir / "state.pt")
    model = Transformer(mc)
    model.load_state_dict(saved["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob("*.index.json")):
        old.unlink()  # a re-export may change between one file and shards
    save_state_dict(model.to(dtype), out_dir, max_shard_bytes)
    config = {
        "architectures": ["DiffillModel"], "model_type": "qwen2",
        "vocab_size": mc.vocab_size, "hidden_size": mc.hidden_size,
        "intermediate_size": mc.intermediate_size, "num_hidden_layers": mc.num_hidden_layers,
        "num_attention_heads": mc.num_attention_heads,
        "num_key_value_heads": mc.num_key_value_heads, "head_dim": mc.head_dim,
        "hidden_act": "silu", "rms_norm_eps": mc.rms_norm_eps, "rope_theta": mc.rope_theta,
        "max_position_embeddings": mc.max_position_embeddings,
        "tie_word_embeddings": mc.tie_word_embeddings,
        "diffill": {"shift_logits": cfg.shift_logits, "seq_len": cfg.seq_len,
                    "steps": saved["run"]["step"], "tokens_seen": saved["run"]["tokens_seen"],
                    "buckets": list(BUCKETS), "pad_tokens": cfg.pad_tokens,
                    "train": asdict(cfg)},
    }
    if max_fill:
        config["diffill"]["max_fill"] = int(max_fill)
    if filler_order:
        config["diffill"]["filler_order"] = filler_order
    if min_confidence is not None:
        config["diffill"]["min_confidence"] = dict(min_confidence) \
            if isinstance(min_confidence, Mapping) else float(min_confidence)
    if cache:
        config["diffill"]["cache"] = cache
    check_blocks(block_size, refresh or "block")  # as the profile will check them on load
    if block_size is not None:
        config["diffill"]["block_size"] = block_size
    if refresh:
        config["diffill"]["refresh"] = refresh
    if cpu_bf16:
        config["diffill"]["cpu_bf16"] = True
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "tokenizer.json").write_bytes((run_dir / "tokenizer.json").read_bytes())
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>", "mask_token": "<|mask|>", "model_max_length": 4096,
        "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    if card is not None:
        (out_dir / "README.md").write_text(card)
    return out_dir


def teacher(model: DiffusionModel) -> Callable[[list[int], list[int], int], list[int] | None]:
    """``fill(prefix, suffix, n)``: ``model``'s own ``n`` tokens for a gap between those ids,
    filler included, as the editor would get them (the checkpoint's recorded settings). The
    middles of self-distilled training rows (``TrainConfig.self_distill``). None for a gap
    longer than the checkpoint's ``max_fill``: the editor never asks the model for one, and
    its answers there run on instead of stopping, which a student would learn. Its passes
    leave the calling thread's thread count as they found it."""
    mask = model.profile.mask_id
    longest = model.profile.max_fill

    def fill(prefix: list[int], suffix: list[int], n: int) -> list[int] | None:
        if longest and n > longest:
            return None
        threads = torch.get_num_threads()
        model.threads = threads  # the training run's count, not the machine's
        ids = torch.tensor([prefix + [mask] * n + suffix], device=model.device)
        try:
            out = denoise(model, ids, len(prefix), len(prefix) + n, settings=SamplerSettings())
        finally:
            torch.set_num_threads(threads)
        return out.ids[0, len(prefix):len(prefix) + n].tolist()

    return fill
