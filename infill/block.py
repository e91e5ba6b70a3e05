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

from .api import Cancelled, Completion, InfillRequest, InfillResult, InfillSettings, Submission
from .base import EngineBase
from .chat import ChatTask, TokenMeasure, answer_code, chat_task, completion
from .context import encode

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


@dataclass
class Prompt:
    ids: list[int]
    """The chat template's user turn, then the task's opening of the model's turn."""
    task: ChatTask
    max_new_tokens: int
    """The task's budget in whole canvases."""


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
        task = chat_task(req, self._validate(req), settings, TokenMeasure(self.tokenizer))
        head = self.tokenizer.apply_chat_template([{"role": "user", "content": task.user}],
                                                  add_generation_prompt=True, tokenize=False)
        canvas = self.model.canvas_length
        return Prompt(encode(self.tokenizer, head + task.opened), task,
                      canvas * max(1, math.ceil(task.budget / canvas)))

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
        for row in range(gen.sequences.shape[0]):
            new = gen.sequences[row, len(p.ids):].tolist()
            cut = next((i for i, t in enumerate(new) if t in stops), len(new))
            code, fenced = answer_code(p.task, req, self.decode(new[:cut]))
            if not code.strip() or code in seen:
                continue
            seen.add(code)
            conf = gen.confidence[row, :min(cut + 1, gen.confidence.shape[1])]
            score = float(conf.mean()) if conf.numel() else 0.0
            items.append(completion(req, code, score, len(encode(self.tokenizer, code)),
                                    fenced or cut < len(new)))
        return self.result(req, p.task.mode, items, settings, gen.forward_passes, t0)
