"""Completions and rewrites with a block-diffusion chat model (DiffusionGemma).

Such a model has no mask token and no ``[prefix][MASK x L][suffix]`` window: the code around the
cursor goes into a chat prompt with a fill-in-the-middle instruction (the cursor, or the
selection, marked in the file), the model's turn is opened with a code fence and the start of
the cursor's line, and the model's own ``generate`` denoises a canvas (256 tokens on
DiffusionGemma) with its entropy-bound sampler. The answer is cut at the closing fence or the
end of the turn, then post-processed like any other fill (line or block, suffix overlap).

diffill adds nothing to the sampling itself: a logits processor that changes no logit checks
the cancel flag between denoising steps and keeps the last step's per-position confidence,
which scores the answer against ``minConfidence``. So the tokens are exactly those of
``generate`` with the same seed; ``tests/test_block_diffusion.py`` checks that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from diffill.model.block_diffusion import BlockDiffusionModel

from . import post
from .api import (MAX_MASKS, Cancelled, Completion, InfillRequest, InfillResult,
                  InfillSettings, Submission)
from .context import encode, format_extra, prefix_window, suffix_window
from .engine import EngineBase
from .text import InputError

CURSOR = "<CURSOR>"
SELECTION = ("<SELECTION>", "</SELECTION>")
FENCE = "```"
DEFAULT_SEED = 0
"""The seed of a request that names none: the same document and cursor give the same ghost."""


@dataclass
class Generated:
    sequences: torch.Tensor
    """(rows, prompt + new) what ``generate`` returned."""
    confidence: torch.Tensor
    """(rows, new) probability of the final canvas' argmax token at each new position."""
    forward_passes: int


class StepHook:
    """A logits processor that leaves the logits as they are: it raises :class:`Cancelled`
    when the caller asks (between denoising steps, before the next canvas is drawn), counts the
    decoder passes and keeps each position's top probability of the latest step."""

    def __init__(self, cancel: Callable[[], bool] | None) -> None:
        self.cancel = cancel
        self.passes = 0
        self.canvases: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None
        self._prompt_len = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cancel is not None and self.cancel():
            raise Cancelled()
        self.passes += 1
        if self._last is not None and input_ids.shape[1] != self._prompt_len:
            self.canvases.append(self._last)  # the previous canvas was finished
        self._prompt_len = input_ids.shape[1]
        # (B, canvas): exp(max logit - logsumexp) is the top probability, without a
        # (B, canvas, vocab) softmax table.
        self._last = (scores.amax(-1) - scores.logsumexp(-1)).exp().float().cpu()
        return scores

    def confidence(self) -> torch.Tensor:
        """(B, canvases * canvas) the last step's top probabilities of every canvas."""
        parts = self.canvases + ([self._last] if self._last is not None else [])
        return torch.cat(parts, dim=1) if parts else torch.zeros(0, 0)


def generate(model: BlockDiffusionModel, prompt_ids: Sequence[int], *, rows: int = 1,
             max_new_tokens: int | None = None, seed: int = DEFAULT_SEED, steps: int = 0,
             cancel: Callable[[], bool] | None = None) -> Generated:
    """``rows`` answers to one prompt through the model's own ``generate``, seeded.

    The global RNG is forked, so a request leaves no trace on other users of torch's RNG.
    ``steps`` > 0 caps the denoising steps per canvas (the checkpoint's setting otherwise).
    """
    from transformers import LogitsProcessorList
    ids = torch.tensor([list(prompt_ids)] * rows, dtype=torch.long, device=model.device)
    hook = StepHook(cancel)
    kwargs = {"max_new_tokens": max_new_tokens or model.canvas_length,
              "logits_processor": LogitsProcessorList([hook])}
    if steps:
        kwargs["max_denoising_steps"] = steps
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.net.generate(ids, **kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    return Generated(sequences.cpu(), hook.confidence(), hook.passes)


# ---------------------------------------------------------------- prompts

def _fence_language(language: str | None) -> str:
    return language or ""


def _code_block(language: str | None, body: str) -> str:
    end = "" if body.endswith("\n") else "\n"
    return f"{FENCE}{_fence_language(language)}\n{body}{end}{FENCE}"


def completion_prompt(prefix: str, suffix: str, mode: str, language: str | None,
                      extra: str = "") -> str:
    """The user turn of a completion: what to write, then the file with the cursor marked."""
    name = f"{language} " if language else ""
    what = ("the rest of the cursor's line only" if mode == "line" else
            "the missing lines only (a complete statement or block, no more)")
    others = f"Other files, for reference:\n{extra}\n" if extra else ""
    return (f"{others}Fill in the {name}code at {CURSOR} in the file below. Answer with "
            f"{what}: just the code that goes at {CURSOR}, in one code block, without "
            f"repeating the code before or after it and without explanation.\n\n"
            f"{_code_block(language, prefix + CURSOR + suffix)}")


def rewrite_prompt(prefix: str, selected: str, suffix: str, language: str | None,
                   instruction: str | None, extra: str = "") -> str:
    """The user turn of a rewrite: the file with the selection marked, and what to do."""
    name = f"{language} " if language else ""
    task = instruction.strip() if instruction and instruction.strip() else \
        "Rewrite it: the same intent, clearer or more correct code"
    others = f"Other files, for reference:\n{extra}\n" if extra else ""
    return (f"{others}In the {name}file below, the code between {SELECTION[0]} and "
            f"{SELECTION[1]} is selected. {task}. Answer with only the new code that replaces "
            f"the selection, in one code block; the code around it stays as it is.\n\n"
            f"{_code_block(language, prefix + SELECTION[0] + selected + SELECTION[1] + suffix)}")


def answer_text(raw: str) -> tuple[str, bool]:
    """The code of an answer written inside an opened code fence: up to the closing fence,
    whose line's newline is not code. Returns (code, whether the fence closed it)."""
    end = raw.find(FENCE)
    if end < 0:
        return raw, False
    code = raw[:end]
    return (code[:-1] if code.endswith("\n") else code), True


@dataclass
class Prompt:
    ids: list[int]
    opened: str
    """The text the model's turn was opened with (fence, then the start of the line)."""
    line_before: str
    mode: str
    max_new_tokens: int


class BlockEngine(EngineBase[BlockDiffusionModel]):
    """Completions and rewrites (with or without an instruction) on a block-diffusion chat
    model; refine needs a mask model."""

    serves_between_steps = False
    """``generate`` may keep a static cache on the model itself (``cache_implementation:
    static`` in a generation config): a second ``generate`` run from inside the first one's
    step would overwrite it. Completions wait for a running rewrite instead."""

    def run_batch(self, submissions: Sequence[Submission], settings: InfillSettings,
                  contended: bool = False) -> list[InfillResult | BaseException]:
        """Each request in turn (prompts of different lengths are not batched; each request's
        ensemble is one batch of rows; one row when ``contended`` and ``shed_load``). No
        previews: a canvas of random tokens has nothing worth showing before it settles."""
        if contended and settings.shed_load and settings.ensemble > 1:
            settings = replace(settings, ensemble=1)
            self.shed += len(submissions)
        out: list[InfillResult | BaseException] = []
        for sub in submissions:
            try:
                out.append(self._run_one(sub.request, settings, sub.cancel))
            except Exception as exc:  # reported to that request alone
                out.append(exc)
        return out

    def min_confidence(self, settings: InfillSettings, mode: str) -> float:
        return settings.min_confidence if settings.min_confidence is not None else 0.0

    def prompt(self, req: InfillRequest, settings: InfillSettings) -> Prompt:
        """The chat prompt of a request, its context cut to the settings' token budgets."""
        action = self._validate(req)
        if action == "refine":
            raise InputError("refine re-masks the selection's doubtful tokens, which needs a "
                             "mask-diffusion model; this is a block-diffusion chat model "
                             "(DiffusionGemma): use rewrite, optionally with an instruction")
        if req.instruction and action != "rewrite":
            raise InputError("an instruction goes with a rewrite of a selection")
        text, tok = req.text, self.tokenizer
        language = post.language_of(req.language, req.path)
        end = req.start if req.end is None else req.end
        prefix, _ = prefix_window(tok, text, req.start, settings.budget.prefix_tokens)
        suffix, _ = suffix_window(tok, text, end, settings.budget.suffix_tokens)
        extra = ""
        if req.extra and settings.budget.extra_tokens > 0:
            extra = tok.decode(encode(tok, format_extra(req.extra))[-settings.budget.extra_tokens:])
        line_start = text.rfind("\n", 0, req.start) + 1
        line_before = text[line_start:req.start]
        canvas = self.model.canvas_length
        if action == "rewrite":
            selected = text[req.start:end]
            n = len(encode(tok, selected))
            if n > MAX_MASKS:
                raise InputError(f"the selection is {n} tokens; a rewrite takes at most "
                                 f"{MAX_MASKS} (select less)")
            user = rewrite_prompt(prefix, selected, suffix, language, req.instruction, extra)
            mode, budget = "rewrite", min(MAX_MASKS, n + max(16, n // 2))
        else:
            line_end = text.find("\n", req.start)
            after = text[req.start:len(text) if line_end < 0 else line_end]
            mode = settings.mode if settings.mode != "auto" else \
                post.detect_mode(line_before, after)
            user = completion_prompt(prefix, suffix, mode, language, extra)
            budget = settings.max_tokens
        opened = f"{FENCE}{_fence_language(language)}\n{line_before}"
        head = tok.apply_chat_template([{"role": "user", "content": user}],
                                       add_generation_prompt=True, tokenize=False)
        ids = encode(tok, head + opened)
        return Prompt(ids, opened, line_before, mode, canvas * max(1, math.ceil(budget / canvas)))

    def _run_one(self, req: InfillRequest, settings: InfillSettings,
                 cancel: Callable[[], bool] | None) -> InfillResult:
        t0 = time.perf_counter()
        p = self.prompt(req, settings)
        seed = DEFAULT_SEED if settings.sampler.seed is None else settings.sampler.seed
        gen = generate(self.model, p.ids, rows=settings.ensemble, max_new_tokens=p.max_new_tokens,
                       seed=seed, steps=settings.sampler.steps, cancel=cancel)
        stops = self.model.stop_ids()
        items: list[Completion] = []
        seen: set[str] = set()
        end = req.start if req.end is None else req.end
        for row in range(gen.sequences.shape[0]):
            new = gen.sequences[row, len(p.ids):].tolist()
            cut = next((i for i, t in enumerate(new) if t in stops), len(new))
            code, fenced = answer_text(self.decode(new[:cut]))
            if p.mode == "rewrite":
                selected = req.text[req.start:end]
                if selected.endswith("\n") and not code.endswith("\n"):
                    code += "\n"
            else:
                code = post.clean(code, mode=p.mode, line_before=p.line_before,
                                  suffix=req.text[req.start:req.start + 4096])
            if not code.strip() or code in seen:
                continue
            seen.add(code)
            n = len(encode(self.tokenizer, code))
            conf = gen.confidence[row, :min(cut + 1, gen.confidence.shape[1])]
            score = float(conf.mean()) if conf.numel() else 0.0
            items.append(Completion(code, req.start, end, score, tokens=n,
                                    terminated=fenced or cut < len(new)))
        return self.result(req, p.mode, items, settings, gen.forward_passes, t0)
