"""Load a checkpoint once, strictly: config -> transformer on the meta device -> weights assigned.

A checkpoint is a local folder, the name of the bundled model, or a Hugging Face hub id (resolved
with ``huggingface_hub.snapshot_download`` for users with a network; never in tests).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open

from . import block_diffusion
from .config import ConfigError, ModelConfig, from_hf_config
from .errors import CheckpointError
from .profile import FamilyProfile, ProfileError, build_profile
from .transformer import KVCache, Transformer
from .weights import WeightsError, read_state_dict, weight_files

log = logging.getLogger("diffill.model")

BUNDLED_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = "diffill-small"
PARALLEL_FLOPS = 2e9
"""A forward pass with fewer floating-point operations than this runs on one CPU thread: below
it, waking a second thread for every matrix product costs more than the product (the
measurements are in docs/performance.md, "Threads per pass")."""
THREADS_ENV = "DIFFILL_THREADS"
_DEFAULT_THREADS = torch.get_num_threads()  # before any pass has changed it

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "generation_config.json", "chat_template.jinja", "chat_template.json",
             "tokenizer.model"]


def resolve_checkpoint(name: str | os.PathLike[str] | None) -> Path:
    """A local folder for ``name``: a path, a bundled model's name, or a hub id."""
    name = str(name or DEFAULT_CHECKPOINT)
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    bundled = BUNDLED_DIR / name
    if bundled.is_dir():
        return bundled
    if path.exists():
        raise CheckpointError(f"checkpoint {name!r} is a file; expected a folder with config.json")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint {name!r} not found: no such folder, bundled model or "
                              "hub id (hub ids look like 'org/name')")
    try:
        from huggingface_hub import snapshot_download  # only for a Hub id
        return Path(snapshot_download(repo_id=name, allow_patterns=HUB_FILES))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "the hub is offline (HF_HUB_OFFLINE) and it is not cached" if offline else str(exc)
        raise CheckpointError(f"checkpoint {name!r} could not be fetched from the Hugging Face "
                              f"hub: {why.splitlines()[0] if why else type(exc).__name__}") from exc


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def load_tokenizer(folder: Path):
    """The checkpoint's tokenizer through transformers.

    A ``tokenizer.json`` is loaded with ``PreTrainedTokenizerFast`` directly: ``AutoTokenizer``
    would pick ``Qwen2Tokenizer`` for a qwen2 config and swap in Qwen's own pre-tokenizer, which
    changes the ids of a tokenizer trained elsewhere (docs/design.md, "model/").
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        if (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                           clean_up_tokenization_spaces=False)
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer of {folder}: {exc}") from exc


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_threads() -> int:
    """Most CPU threads a pass may use: ``$DIFFILL_THREADS``, else torch's count at start-up
    (``OMP_NUM_THREADS`` or the machine's cores)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return max(1, _DEFAULT_THREADS)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise CheckpointError(f"{THREADS_ENV}={raw!r}: a whole number of threads, at least 1")
    return n


def pass_flops(cfg: ModelConfig, positions: int, keys: int) -> float:
    """Floating-point operations of running ``positions`` tokens through every layer against
    ``keys`` keys: the weight products plus attention's scores and weighted sum."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    embeddings = cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)
    per_token = 2 * (cfg.n_params - embeddings) + 4 * L * keys * cfg.num_attention_heads \
        * cfg.head_dim
    return float(positions) * per_token


def default_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype:
    """bf16 on CUDA; on a CPU fp32, or bf16 where the chip has native bf16 and the checkpoint
    records that its answers hold in bf16 (``cpu_bf16``)."""
    if device.type == "cuda" or (cpu_bf16 and device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return torch.float32


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(value: str | torch.dtype | None, device: torch.device,
                cpu_bf16: bool = False) -> torch.dtype:
    if value is None or value == "auto":
        return default_dtype(device, cpu_bf16)
    if isinstance(value, torch.dtype):
        return value
    try:
        return DTYPES[value.lower()]
    except KeyError:
        raise CheckpointError(f"unknown dtype {value!r}; use one of {', '.join(DTYPES)}") from None


def parse_device(value: str | torch.device | None) -> torch.device:
    if value is None or value == "auto":
        return default_device()
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"unknown device {value!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {value!r} asked for, but CUDA is not available here")
    return device


@dataclass
class DiffusionModel:
    """A loaded checkpoint: transformer, tokenizer and family profile on one device."""

    transformer: Transformer
    config: ModelConfig
    profile: FamilyProfile
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    path: Path
    load_seconds: float
    tokens_run: int = 0
    """Token positions run through the transformer so far (rows x positions of every pass):
    the work a request costs, for ``diffill status`` and ``diffill bench --e2e``."""
    threads: int = 1
    """CPU threads a pass of at least :data:`PARALLEL_FLOPS` runs on; smaller passes run on one
    (:func:`cpu_threads` when loaded)."""

    def _set_threads(self, positions: int, keys: int) -> None:
        """One thread for a small pass, all of them for a large one (the calling thread's
        setting: the pass runs on it)."""
        if self.device.type != "cpu" or self.threads <= 1:
            return
        n = self.threads if pass_flops(self.config, positions, keys) >= PARALLEL_FLOPS else 1
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def span_run(self, lo: int, hi: int) -> range:
        """The fewest window positions whose hidden states give the logits of positions
        lo..hi: the span itself, or from the position before it in a shifted family (which
        reads position i from hidden state i-1, position 0 from itself)."""
        return range(max(lo - 1, 0) if self.profile.shift_logits else lo, hi)

    def _select(self, hidden: torch.Tensor, lo: int, hi: int, offset: int) -> torch.Tensor:
        if not self.profile.shift_logits:
            return hidden[:, lo - offset:hi - offset]
        idx = [max(i - 1, 0) - offset for i in range(lo, hi)]
        return hidden[:, idx]

    def logit_positions(self, lo: int, columns: torch.Tensor) -> torch.Tensor:
        """Window positions whose hidden states give the logits of span ``columns`` (span
        index + ``lo``): the column's own, or the one before it in a shifted family."""
        where = columns + lo
        return (where - 1).clamp_min(0) if self.profile.shift_logits else where

    @torch.inference_mode()
    def span_logits(self, ids: torch.Tensor, lo: int, hi: int, *,
                    key_mask: torch.Tensor | None = None,
                    cache: KVCache | None = None,
                    columns: torch.Tensor | None = None,
                    run: range | torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, hi-lo, V) for positions lo..hi of ``ids`` (B, T), already aligned; with
        ``columns`` (indices into the span) only those, (B, len(columns), V): the sampler asks
        only where a mask is left, and on a CPU the output layer over every span position is a
        third of a cached pass.

        ``run`` names the window positions the pass computes (gpt-fast's ``input_pos``):
        ``None`` all of them, filling ``cache`` when one is given (it must be empty); a
        ``range`` one run of positions against a filled cache, whose entries for them it
        overwrites (:meth:`span_run` is the least that gives the span; to the window's end,
        it completes a cache an earlier request filled up to its start); a tensor of
        ascending positions against a filled cache, which must include
        :meth:`logit_positions` of every column.
        """
        B, T = ids.shape
        filled = cache is not None and cache.length > 0
        if (run is None) == filled:
            raise ValueError("a pass over the whole window fills an empty cache or none; "
                             "a pass against a filled cache names the positions it runs")
        if isinstance(run, torch.Tensor):
            if columns is None:
                raise ValueError("a pass over chosen positions needs columns")
            self._set_threads(B * run.shape[0], T)
            hidden = self.transformer.hidden(ids[:, run], key_mask=key_mask, cache=cache,
                                             positions=run)
            self.tokens_run += B * run.shape[0]
            wanted = self.logit_positions(lo, columns)
            index = torch.searchsorted(run, wanted)
            if not bool((run[index.clamp_max(len(run) - 1)] == wanted).all()):
                raise ValueError("positions must include the logit_positions of every column")
            return self.transformer.logits(hidden[:, index])
        start, stop = (0, T) if run is None else (run.start, run.stop)
        self._set_threads(B * (stop - start), T)
        if run is None:
            hidden = self.transformer.hidden(ids, key_mask=key_mask, cache=cache)
        else:
            hidden = self.transformer.hidden(ids[:, start:stop], key_mask=key_mask, cache=cache,
                                             start=start)
        self.tokens_run += B * (stop - start)
        picked = self._select(hidden, lo, hi, start)
        if columns is not None:
            picked = picked[:, columns]
        return self.transformer.logits(picked)

    @torch.inference_mode()
    def span_logits_with_rows(self, ids: torch.Tensor, lo: int, hi: int, rows: torch.Tensor, *,
                              cache: KVCache, key_mask: torch.Tensor | None = None,
                              run: range | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass for a window and variants of its span: ``ids`` (1, T) run as
        :meth:`span_logits` runs them with ``cache`` (empty and ``run`` None: the whole
        window, filling it; filled: the positions of ``run``), and ``rows`` (R, T), windows
        that differ from ``ids`` only in lo..hi, each computing only :meth:`span_run` against
        this pass's keys and values elsewhere. The dual cache filled and used in one trip
        through the layers: on a GPU a pass costs reading the weights once, however many
        rows. Logits of lo..hi for ``ids`` (1, L, V) and for each row (R, L, V)."""
        T = ids.shape[1]
        if (run is None) == (cache.length > 0):
            raise ValueError("a pass over the whole window fills an empty cache; "
                             "a pass against a filled cache names the positions it runs")
        start, stop = (0, T) if run is None else (run.start, run.stop)
        span = self.span_run(lo, hi)
        if span.start < start:
            raise ValueError("the window row must run the rows' positions")
        R = rows.shape[0]
        if R == 0:
            head = self.span_logits(ids, lo, hi, cache=cache, key_mask=key_mask, run=run)
            return head, head.new_zeros((0,) + head.shape[1:])
        self._set_threads(stop - start + R * len(span), T)
        head, more = self.transformer.hidden_with_rows(
            ids[:, start:stop], rows[:, span.start:span.stop], span.start, cache=cache,
            key_mask=key_mask, start=start)
        self.tokens_run += stop - start + R * len(span)
        return (self.transformer.logits(self._select(head, lo, hi, start)),
                self.transformer.logits(self._select(more, lo, hi, span.start)))

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.transformer.parameters())

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.path), "family": self.profile.name,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "parameters": self.config.n_params, "load_seconds": round(self.load_seconds, 3),
                "threads": self.threads,
                "tokens_run": self.tokens_run}


def check_checkpoint(checkpoint: str | os.PathLike[str] | None) -> Path:
    """Everything about a checkpoint that can be checked without loading its weights: the
    folder, config.json, the tokenizer and every weight file's header (a deleted, truncated
    or half-written checkpoint fails here). The daemon calls it before it unloads the model
    that is serving, so a bad request never leaves it with none."""
    folder = resolve_checkpoint(checkpoint)
    raw = read_config(folder)
    if block_diffusion.is_block_diffusion(raw):
        block_diffusion.check(folder)
        return folder
    try:
        from_hf_config(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from exc
    load_tokenizer(folder)
    try:
        for f in weight_files(folder):
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from exc
    except Exception as exc:  # safetensors' own errors: truncated or not safetensors at all
        raise CheckpointError(f"{folder}: unreadable weights ({exc})") from exc
    return folder


def load_model(checkpoint: str | os.PathLike[str] | None = None, *,
               device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               family: str | None = None,
               profile_overrides: Mapping[str, Any] | None = None
               ) -> "DiffusionModel | block_diffusion.BlockDiffusionModel":
    """Load ``checkpoint`` for inference. Every failure is a :class:`CheckpointError`.

    Mask-diffusion checkpoints load into diffill's transformer (:class:`DiffusionModel`);
    block-diffusion chat models (DiffusionGemma) into transformers' own class
    (:class:`~model.block_diffusion.BlockDiffusionModel`)."""
    t0 = time.perf_counter()
    folder = resolve_checkpoint(checkpoint)
    raw = read_config(folder)
    if block_diffusion.is_block_diffusion(raw) or family == block_diffusion.FAMILY:
        if not block_diffusion.is_block_diffusion(raw):
            raise CheckpointError(f"{folder}: family {family!r} asked for, but config.json says "
                                  f"model_type {raw.get('model_type')!r}")
        if family not in (None, block_diffusion.FAMILY):
            raise CheckpointError(f"{folder} is a DiffusionGemma checkpoint, not family "
                                  f"{family!r}")
        if profile_overrides:
            raise CheckpointError("profile overrides apply to mask-diffusion families only")
        dev = parse_device(device)
        return block_diffusion.load(folder, dev, parse_dtype(dtype, dev))
    try:
        cfg = from_hf_config(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from exc
    tokenizer = load_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    if len(tokenizer) > cfg.vocab_size:
        raise CheckpointError(f"{folder}: tokenizer has {len(tokenizer)} tokens but the model's "
                              f"vocabulary is {cfg.vocab_size}")
    try:
        profile = build_profile(raw, vocab, family=family, overrides=profile_overrides)
    except ProfileError as exc:
        raise CheckpointError(f"{folder}: {exc}") from exc
    dev = parse_device(device)
    threads = cpu_threads()
    dt = parse_dtype(dtype, dev, cpu_bf16=bool((raw.get("diffill") or {}).get("cpu_bf16")))
    with torch.device("meta"):
        transformer = Transformer(cfg)
    try:
        state = read_state_dict(folder, cfg, dev, dt)
        transformer.load_state_dict(state, strict=True, assign=True)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from exc
    except RuntimeError as exc:  # missing / unexpected keys, shape mismatches
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{folder}: weights do not match config.json: "
                              f"{' '.join(first[:3])[:400]}") from exc
    except torch.cuda.OutOfMemoryError as exc:
        raise CheckpointError(f"{folder}: out of GPU memory while loading ({exc})") from exc
    transformer.eval()
    transformer.fuse_projections()
    seconds = time.perf_counter() - t0
    model = DiffusionModel(transformer, cfg, profile, tokenizer, dev, dt, folder, seconds,
                           threads=threads)
    log.info("loaded %s (%s, %.1fM parameters) on %s as %s in %.2fs", folder.name, profile.name,
             cfg.n_params / 1e6, dev, model.describe()["dtype"], seconds)
    return model
