"""Variable-length infilling for checkpoints trained with DreamOn's length states.

A DreamOn model can answer a mask with two control tokens besides code: ``<|expand|>`` (this
mask stands for more than one token: it becomes two masks, and the window grows by one) and
its delete token (EOS: this mask stands for nothing: it leaves the window, which shrinks by
one). So the gap finds its own length from any initial number of masks, where a fixed-length
sampler must guess it (a wrong guess costs Dream-Coder about 38% of its HumanEval-infilling
pass@1; DreamOn reports 90.8 over initial lengths 4-64).

The rules follow DreamOn's paper and released sampler (read, not copied):

- each step runs the whole window, draws a token for every mask and commits some of them by
  the schedule (the threshold schedule by default; DreamOn's own default commits one per step);
- a committed delete token is removed at once; masks next to it stay where they are
  (DreamOn's ``pad_delete_to_right`` is off by default, and off here);
- a committed expand token is replaced by two masks in its place; committed tokens keep their
  order, only their positions shift;
- expansion stops when the gap reaches ``max_length`` masks or the expansion budget is spent:
  from then on the expand token is never drawn. The budget is DreamOn's default, twice the
  room after the prefix: ``2 * (max_length + the suffix's tokens + its EOS)``;
- the window is ``[BOS] prefix gap suffix [EOS]`` (the profile's framing), and positions are
  scored on the top-k distribution as Dream's decoder does (``score_top_k``);
- the loop ends when no mask is left.

Positions change between steps, so no K/V is kept across them: every step is one full pass.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from diffill.model import DiffusionModel

from .api import MAX_STEPS, Cancelled, SamplerSettings
from .sampler import Candidate, authors_probs, layout, position_scores, sample_tokens
from .steps import choose_commits, threshold_commits


def _resize(gap: torch.Tensor, conf: torch.Tensor, commit: torch.Tensor,
            delete: torch.Tensor, prof, max_length: int,
            stops: list[float]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The gap after one step's length changes: committed delete tokens leave it (their
    confidences go to ``stops``), each committed expand token becomes two masks. Returns the
    gap, its confidences and the expansions spent."""
    gone = commit & torch.isin(gap, delete)
    if bool(gone.any()):
        stops.extend(conf[gone].tolist())
        gap, conf, commit = gap[~gone], conf[~gone], commit[~gone]
    grow = commit & (gap == prof.expand_id)
    if not bool(grow.any()):
        return gap, conf, 0
    reps = torch.where(grow, 2, 1)
    conf = torch.repeat_interleave(torch.where(grow, torch.ones_like(conf), conf), reps)
    gap = torch.repeat_interleave(torch.where(grow, prof.mask_id, gap), reps)
    if len(gap) > max_length:  # DreamOn cuts the window back to its maximum
        gap, conf = gap[:max_length], conf[:max_length]
    return gap, conf, int(grow.sum())


def commit_count(masked: int, initial: int, steps: int) -> int:
    """Masks committed per step by the fixed and blocks schedules: the initial gap spread over
    ``steps`` passes (one per pass when ``steps`` is 0, as DreamOn does), at least one."""
    if steps <= 0:
        return 1
    return max(1, min(masked, -(-initial // steps)))


@torch.inference_mode()
def infill_variable(model: DiffusionModel, prefix: Sequence[int], suffix: Sequence[int],
                    length: int, *, max_length: int,
                    settings: SamplerSettings = SamplerSettings(),
                    cancel: Callable[[], bool] | None = None) -> tuple[Candidate, int]:
    """Fill a gap that starts with ``length`` masks and may grow to ``max_length`` or shrink.

    Returns the candidate (``length`` is the gap's final size) and the forward passes spent.
    """
    prof = model.profile
    if prof.expand_id is None:
        raise ValueError(f"family {prof.name} has no expand token: use the fixed-length sampler")
    if length < 1 or max_length < length:
        raise ValueError("need 1 <= length <= max_length")
    mask_id, expand_id = prof.mask_id, prof.expand_id
    delete = torch.tensor(prof.filler_ids, dtype=torch.long)
    gap = torch.full((length,), mask_id, dtype=torch.long)
    conf = torch.ones(length)
    gen = None
    if settings.seed is not None:
        gen = torch.Generator(device=model.device).manual_seed(settings.seed)
    budget = 2 * (max_length + len(suffix) + (prof.end_id is not None))
    stops: list[float] = []
    passes = 0
    while bool((gap == mask_id).any()):
        if passes >= MAX_STEPS:
            break
        if cancel is not None and cancel():
            raise Cancelled()
        ids, key_mask, lo = layout(model, prefix, suffix, [len(gap)])
        ids[0, lo:lo + len(gap)] = gap.to(ids.device)
        logits = model.span_logits(ids, lo, lo + len(gap), key_mask=key_mask)[0].float()
        passes += 1
        full = len(gap) >= max_length or budget <= 0
        if full:
            logits[:, expand_id] -= 1e9  # DreamOn's own way of blocking it, for its scores
        # Scored as the authors' decoder scores (taken before the mask is ruled out).
        judged = authors_probs(logits, prof).cpu()
        logits[:, mask_id] = float("-inf")
        if full:
            logits[:, expand_id] = float("-inf")
        written = bool(((gap != mask_id) & ~torch.isin(gap, delete)).any())
        if settings.min_tokens and not settings.faithful and not written:
            # Nothing written yet: the first open mask may not vanish (an empty fill is never
            # what an editor asks for).
            first = int((gap == mask_id).nonzero()[0])
            logits[first, list(prof.filler_ids)] = float("-inf")
        tokens, probs = sample_tokens(logits[None], settings.temperature, settings.top_p, gen)
        tokens, probs = tokens[0].cpu(), probs[0].float().cpu()
        p_tok = probs.gather(-1, tokens[:, None]).squeeze(-1)
        scores = position_scores(judged[None], tokens[None], settings.order)
        masked = (gap == mask_id)[None]
        if settings.schedule == "threshold":
            commit = threshold_commits(p_tok[None], scores, masked, settings.threshold)[0]
        else:
            k = commit_count(int(masked.sum()), length, settings.steps)
            commit = choose_commits(scores, masked, torch.tensor([k]))[0]
        gap = torch.where(commit, tokens, gap)
        conf = torch.where(commit, p_tok, conf)
        gap, conf, grown = _resize(gap, conf, commit, delete, prof, max_length, stops)
        budget -= grown
    kept = gap[gap != mask_id].tolist()
    scored = conf[gap != mask_id].tolist() + stops[:1]
    score = sum(scored) / len(scored) if scored else 0.0
    return Candidate(tokens=kept, length=len(gap), score=score,
                     terminated=len(gap) < max_length or bool(stops)), passes
