"""The denoising sampler: ``[prefix][MASK x L][suffix]`` -> tokens, a few parallel steps at a time.

Each step is one forward pass. For every masked position it draws a token (greedy by default,
or temperature / top-p with a seeded ``torch.Generator``), scores the position, and commits some
positions by a schedule:

- ``fixed``: a linear time grid; after step s of S, ``n * (1 - s/S)`` masks remain (Dream/LLaDA);
- ``threshold``: every position whose token has probability >= tau, at least one (Fast-dLLM);
  easy spans finish in a handful of passes;
- ``blocks``: left-to-right blocks (32 by default) with fixed steps inside each (LLaDA semi-AR).

Committed tokens are never revisited, except by :func:`refine`, which re-masks the tokens the
model doubts and denoises only those. With ``cache="dual"`` each block starts with one full pass
that caches the context's keys and values; later steps run the block alone against that cache
(Fast-dLLM dual cache), refreshed at the next block.

Special token ids come from the family profile; cancellation is checked between steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from diffill.model import DiffusionModel, KVCache

from .api import DEFAULT_BLOCK, Cancelled, SamplerSettings
from .rank import candidate_key
from .steps import (FillerOrder, HealingRule, LineEnd, LineEnds, NoEmptyFill, Passes, Rows,
                    Schedule, Step, StepRule, TokenHealing)


@dataclass
class Denoised:
    ids: torch.Tensor
    """(B, T) the window with every mask filled."""
    confidence: torch.Tensor
    """(B, T) probability of each token when it was committed; 1 where nothing was masked."""
    forward_passes: int
    rows: list[int] = field(default_factory=list)
    """Rows that ran to the end; rows whose caller cancelled were dropped on the way."""
    cache: KVCache | None = None
    """The first block's dual cache after its last pass (the context positions as the first
    pass computed them), when every row ran to the end."""


@dataclass
class WarmStart:
    """An earlier request's keys and values for the first ``upto`` positions of this window:
    the first pass runs only the positions after them."""
    cache: KVCache
    upto: int


@dataclass
class PrefixState:
    """What a document's last request leaves for the next one: its window's ids before the
    masks and their keys/values (row 0), and how many requests in a row have reused them."""
    ids: list[int]
    cache: KVCache
    uses: int = 0


@dataclass
class PrefixSlot:
    """One document's place for its :class:`PrefixState` (kept by the engine, per document),
    and where its last window began (``Window.start_mark``), so the next one begins there."""
    state: PrefixState | None = None
    start: tuple[int, str] | None = None


MIN_REUSE = 32
"""Fewest positions worth reusing: below that the saving is not worth the staleness."""
MAX_REUSES = 8
"""Requests in a row that may reuse a prefix before one recomputes it from scratch: reused
keys and values were computed beside an older canvas and suffix, and this bounds their age."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Candidate:
    tokens: list[int]
    """The fill after filler trimming."""
    length: int
    """The number of masks this candidate was given."""
    score: float
    """Mean commit probability over its content tokens and the filler that ended it."""
    terminated: bool = True
    """The model wrote filler: the fill ended by itself instead of running out of masks."""

    @property
    def rank_key(self) -> tuple[bool, float]:
        """Sort key, best first (:func:`rank.candidate_key`)."""
        return candidate_key(self.terminated, self.score)


# ---------------------------------------------------------------- per-step pieces

def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a token per position from logits (B, N, V); return (tokens, probs) both (B, N, ...).

    Returns the tokens (B, N) and the full probability table (B, N, V) at temperature 1, the one
    confidence is measured in (a sampling temperature should not make the model look surer).
    """
    probs = torch.softmax(logits, dim=-1)
    if temperature == 0.0:
        return probs.argmax(dim=-1), probs
    scaled = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = scaled.sort(dim=-1, descending=True)
        # Keep the smallest set whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        scaled = torch.zeros_like(scaled).scatter(-1, order, sorted_p)
    flat = scaled.reshape(-1, scaled.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=gen).reshape(scaled.shape[:-1])
    return tokens, probs


def top_k_probs(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The softmax over each position's ``k`` likeliest tokens (the rest at the dtype's lowest
    value first, as Dream's ``top_k_logits`` does): the distribution Dream scores positions on."""
    k = min(k, logits.shape[-1])
    low = logits < logits.topk(k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(low, torch.finfo(logits.dtype).min), dim=-1)


def authors_probs(logits: torch.Tensor, profile) -> torch.Tensor:
    """The distribution a released family's own decoder scores positions on, from the raw
    logits (the mask token's share included): Dream's top-k (``score_top_k``), LLaDA's float64
    softmax, else the plain softmax."""
    if profile.score_top_k:
        return top_k_probs(logits, profile.score_top_k)
    return torch.softmax(logits.double() if profile.commit_rule == "llada" else logits, dim=-1)


def position_scores(probs: torch.Tensor, tokens: torch.Tensor, order: str) -> torch.Tensor:
    """How sure the model is at each position (B, N); higher is committed first.

    confidence: probability of the drawn token. margin: top-1 minus top-2 probability, which
    prefers positions with one clear winner over ones split between two. entropy: negative
    entropy of the whole distribution, the least arbitrary choice when many tokens are close.
    """
    if order == "confidence":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if order == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    return (probs * torch.log(probs.clamp_min(1e-12))).sum(-1)


def spread(cols: torch.Tensor, shape: torch.Size, mask_id: int, tokens: torch.Tensor,
           p_tok: torch.Tensor, scores: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-column results (B, M) put back at their columns of the block (B, N): elsewhere the
    token is the mask, its probability 0 and its score -inf, so nothing commits there."""
    full_tokens = torch.full(shape, mask_id, dtype=tokens.dtype, device=tokens.device)
    full_p = torch.zeros(shape, dtype=p_tok.dtype, device=p_tok.device)
    full_scores = torch.full(shape, float("-inf"), dtype=scores.dtype, device=scores.device)
    full_tokens[:, cols], full_p[:, cols], full_scores[:, cols] = tokens, p_tok, scores
    return full_tokens, full_p, full_scores


# ---------------------------------------------------------------- the loop


def cache_mode(settings: SamplerSettings, model: DiffusionModel) -> str:
    """``none`` or ``dual``: the setting, or the checkpoint's when the setting is ``auto``."""
    return model.profile.cache if settings.cache == "auto" else settings.cache


def refresh_mode(settings: SamplerSettings, model: DiffusionModel) -> str:
    """``block`` or ``fill``: the setting, or the checkpoint's when the setting is ``auto``."""
    return model.profile.refresh if settings.refresh == "auto" else settings.refresh


def block_size(settings: SamplerSettings, model: DiffusionModel) -> int:
    """The setting, else the checkpoint's, else :data:`DEFAULT_BLOCK`."""
    return settings.block_size or model.profile.block_size or DEFAULT_BLOCK


def _blocks(lo: int, hi: int, settings: SamplerSettings, cache: str,
            size: int) -> list[tuple[int, int]]:
    """The blocks a span is decoded in, left to right: the blocks schedule's, the dual
    cache's, or the threshold schedule's when a block size is asked for (Fast-dLLM's
    semi-autoregressive threshold decoding); else one."""
    blocked = settings.schedule == "blocks" or cache != "none" or \
        (settings.schedule == "threshold" and settings.block_size > 0)
    if not blocked:
        return [(lo, hi)]
    return [(b, min(b + size, hi)) for b in range(lo, hi, size)]


RowCancel = Callable[[], "bool | Sequence[bool]"]


@torch.inference_mode()
def denoise(model: DiffusionModel, ids: torch.Tensor, lo: int, hi: int, *,
            settings: SamplerSettings = SamplerSettings(),
            key_mask: torch.Tensor | None = None,
            cancel: RowCancel | None = None,
            on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
            warm: WarmStart | None = None,
            leads: Sequence[TokenHealing | None] | None = None,
            fresh: bool | None = None,
            line_ends: Sequence[LineEnds | None] | None = None) -> Denoised:
    """Fill every mask of ``ids`` (B, T) inside positions ``lo..hi``; masks elsewhere stay.

    Positions of the span that are not masks (context, tokens kept by refine) are never changed.
    ``cancel`` is polled before every forward pass: ``True`` stops the whole batch with
    :class:`Cancelled`; a per-row sequence drops the cancelled rows and goes on with the rest
    (they come back unfilled, and are left out of ``Denoised.rows``). ``on_step(ids, rows)``
    is called after every step with the working batch and the original index of each of its
    rows (a preview of what is committed so far). ``warm`` (with the dual cache) gives the
    first block's first pass the keys and values of the window's first positions, computed
    by an earlier request: only the positions after them are run. ``leads`` (one per row, or
    None) is text a row's fill must begin with (:class:`TokenHealing`, token healing). ``fresh``:
    the gap is a new fill (masks, or a verified start then masks); None: judged from its
    first ``min_tokens`` positions being masks. ``line_ends`` (one per row, or None): the
    rows that are line fills, done at their line's end (:class:`LineEnd`).
    """
    mask_id, prof = model.profile.mask_id, model.profile
    rows = Rows(ids.clone(), torch.ones(ids.shape, dtype=torch.float32, device=ids.device),
                torch.arange(ids.shape[0], device=ids.device), key_mask)
    gen = None
    if settings.seed is not None:
        gen = torch.Generator(device=ids.device).manual_seed(settings.seed)
    plan = _plan(model, ids, lo, hi, settings, fresh)
    passes = Passes(model, settings, plan.dual, refresh_mode(settings, model), warm, plan.leading)
    schedule = Schedule(settings, prof.commit_rule, plan.budget, len(plan.blocks),
                        plan.total_masked, plan.leading, plan.capped)
    rules = _rules(model, settings, plan, lo, hi, leads, line_ends)
    count = 0
    for b0, b1 in plan.blocks:
        masked0 = (rows.ids[:, b0:b1] == mask_id).sum(dim=1)  # (B,)
        if int(masked0.max()) == 0:
            continue
        passes.start_block(b0, b1)
        schedule.start_block(masked0)
        index = 0
        while bool((masked := rows.ids[:, b0:b1] == mask_id).any()):  # (B, N)
            if cancel is not None and (keep := _still_wanted(cancel(), rows.alive)) is not None:
                for part in (rows, passes, schedule):  # some rows cancelled: go on without them
                    part.keep(keep)
                masked = masked[keep]
            # Logits only where some row still has a mask: committed positions are final.
            step = Step(rows, b0, b1, masked.any(dim=0).nonzero().squeeze(-1), masked, index)
            logits = passes.logits(step)  # (B, M, V)
            count += 1
            tokens, p_tok, p_sure, scores = _draw(logits, step, prof, settings, plan.order, gen,
                                                  rules)
            allowed = masked
            for rule in rules:
                allowed = rule.allow(step, allowed, tokens)
            commit = schedule.commits(step, allowed, p_sure, scores)
            rows.ids[:, b0:b1][commit] = tokens[commit]
            rows.conf[:, b0:b1][commit] = p_tok[commit].float()
            for rule in rules:
                rule.after(step)
            passes.committed(step, mask_id)
            index += 1
            if on_step is not None:
                on_step(rows.ids, rows.alive)
        passes.end_block(b0)
    full_ids, full_conf = ids.clone(), torch.ones(ids.shape, dtype=torch.float32,
                                                  device=ids.device)
    full_ids[rows.alive], full_conf[rows.alive] = rows.ids, rows.conf
    whole = len(rows.alive) == ids.shape[0] and passes.first is not None and passes.first.length
    return Denoised(ids=full_ids, confidence=full_conf, forward_passes=count,
                    rows=rows.alive.tolist(), cache=passes.first if whole else None)


@dataclass
class _Plan:
    """How ``denoise`` goes about a span: its blocks, its pass budget, and the decoder's
    variant (see :func:`_plan`)."""
    blocks: list[tuple[int, int]]
    budget: int
    total_masked: int
    dual: bool
    fresh: bool
    order: str
    leading: bool
    capped: bool


def _plan(model: DiffusionModel, ids: torch.Tensor, lo: int, hi: int,
          settings: SamplerSettings, fresh: bool | None) -> _Plan:
    prof = model.profile
    total_masked = int((ids[:, lo:hi] == prof.mask_id).sum(dim=1).max()) if hi > lo else 0
    # Papers decode one token per step unless they say otherwise; diffill, one per two.
    budget = settings.steps or (max(1, total_masked) if settings.faithful
                                else max(1, (total_masked + 1) // 2))
    # Only a fresh gap (all masks, or a verified draft's start then masks: the caller says
    # so) gets the no-empty-fill rule and the filler order; refine keeps its own tokens.
    if fresh is None:
        fresh = bool((ids[:, lo:lo + settings.min_tokens] == prof.mask_id).all())
    use_cache = cache_mode(settings, model)
    rule = prof.commit_rule
    # Fast-dLLM's Dream block sampler, what a Dream-family model with the dual cache is measured
    # with: each block's full pass commits only the block's first position; the passes after
    # it run the block alone (position b0-1 keeps its keys and values from the full pass), and
    # rank positions by entropy (fixed counts) or confidence (threshold), whatever the order.
    leading = rule == "dream" and use_cache == "dual" and prof.shift_logits
    return _Plan(
        blocks=_blocks(lo, hi, settings, use_cache, block_size(settings, model)),
        budget=budget, total_masked=total_masked, dual=use_cache == "dual", fresh=fresh,
        order=settings.order if not leading else
        "confidence" if settings.schedule == "threshold" else "entropy",
        leading=leading,
        # Dream's threshold decoding with a step count: a quota of masks/steps per pass, and
        # what a pass left under the threshold carried to the next.
        capped=settings.schedule == "threshold" and settings.steps > 0 and rule == "dream"
        and use_cache == "none")


def _rules(model: DiffusionModel, settings: SamplerSettings, plan: _Plan, lo: int, hi: int,
           leads: Sequence[TokenHealing | None] | None,
           line_ends: Sequence[LineEnds | None] | None = None) -> list[StepRule]:
    """diffill's own rules for a fill, in the order they apply (none when ``faithful``, the
    authors' decoder, but the lead of token healing)."""
    prof = model.profile
    filler = torch.tensor(prof.filler_ids, dtype=torch.long, device=model.device)
    own = plan.fresh and not settings.faithful
    # Filler order applies to a fresh gap of a truncating family; refine and DreamOn's
    # delete-filler mean "no token here", which may sit anywhere.
    order = prof.filler_order if settings.filler_order == "auto" else settings.filler_order
    rules: list[StepRule] = []
    if own and order == "left" and prof.filler_mode == "truncate":
        rules.append(FillerOrder(lo, hi, prof.mask_id, filler))
    if leads is not None and any(leads):
        rules.append(HealingRule(leads, lo, prof.mask_id))
    if own and settings.min_tokens:
        rules.append(NoEmptyFill(lo, lo + settings.min_tokens, filler))
    ends = next((e for e in line_ends or () if e is not None), None)
    if own and ends is not None and prof.filler_mode == "truncate":
        on = torch.tensor([e is not None for e in line_ends], device=model.device)
        rules.append(LineEnd(lo, hi, prof.mask_id, prof.filler_ids[0], ends, on))
    return rules


def _draw(logits: torch.Tensor, step: Step, prof, settings: SamplerSettings, order: str,
          gen: torch.Generator | None, rules: Sequence[StepRule]
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's draw over the block (B, N): tokens, their probabilities, the probability the
    threshold compares, and the scores that order the commits (masks: -inf)."""
    # A released family's positions are scored as its authors' decoder scores them (taken
    # before the mask is ruled out: its share counts there).
    judged = authors_probs(logits, prof) if prof.commit_rule != "diffill" else None
    logits[..., prof.mask_id] = float("-inf")  # a mask is never an answer
    for rule in rules:
        rule.shape(step, logits)
    sub_tokens, probs = sample_tokens(logits, settings.temperature, settings.top_p, gen)
    tokens, p_tok, scores = spread(step.cols, step.masked.shape, prof.mask_id, sub_tokens,
                                   probs.gather(-1, sub_tokens.unsqueeze(-1)).squeeze(-1),
                                   position_scores(probs if judged is None else judged,
                                                   sub_tokens, order))
    p_sure = p_tok  # what the threshold compares: the authors' probability, for theirs
    if judged is not None:
        p_sure = torch.zeros_like(p_tok, dtype=judged.dtype)
        p_sure[:, step.cols] = judged.gather(-1, sub_tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, p_tok, p_sure, scores


def _still_wanted(verdict: "bool | Sequence[bool]", alive: torch.Tensor) -> torch.Tensor | None:
    """Rows of the working batch to keep, or None to keep all; raises when none is wanted."""
    if isinstance(verdict, bool):
        if verdict:
            raise Cancelled()
        return None
    gone = torch.as_tensor(list(verdict), dtype=torch.bool, device=alive.device)[alive]
    if bool(gone.all()):
        raise Cancelled()
    return ~gone if bool(gone.any()) else None


# ---------------------------------------------------------------- layouts

def layout(model: DiffusionModel, prefix: Sequence[int], suffix: Sequence[int],
           lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One row per length: ``[bos] prefix [MASK x L] suffix [end]``, right-padded to one width.

    Returns ids (B, T), key_mask (B, T) (False on padding, never attended) and the position
    where the masks start.
    """
    return layout_rows(model, [(prefix, suffix, n) for n in lengths])


def layout_rows(model: DiffusionModel, rows: Sequence[tuple[Sequence[int], Sequence[int], int]]
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of possibly different requests, ``(prefix, suffix, masks)`` each, in one batch.

    Rows are left-padded so every row's masks start at the same column. RoPE only sees relative
    positions and padding is never attended, so a padded row computes what it would alone.
    """
    prof = model.profile
    bos = [prof.bos_id] if prof.bos_id is not None else []
    end = [prof.end_id] if prof.end_id is not None else []
    heads = [bos + list(p) for p, _, _ in rows]
    lo = max(map(len, heads))
    built = [[None] * (lo - len(h)) + h + [prof.mask_id] * n + list(s) + end
             for h, (_, s, n) in zip(heads, rows)]
    width = max(map(len, built))
    pad = prof.filler_ids[0]
    ids = torch.full((len(built), width), pad, dtype=torch.long)
    key_mask = torch.zeros((len(built), width), dtype=torch.bool)
    for i, row in enumerate(built):
        first = lo - len(heads[i])
        ids[i, first:len(row)] = torch.tensor(row[first:], dtype=torch.long)
        key_mask[i, first:len(row)] = True
    return ids.to(model.device), key_mask.to(model.device), lo


def trim_filler(tokens: Sequence[int], confidences: Sequence[float], filler: Sequence[int],
                mode: str) -> tuple[list[int], float]:
    """Cut filler from a fill; return the content tokens and the candidate's score.

    ``truncate``: the fill ends at the first filler. ``delete``: filler anywhere means "no
    token here" (DreamOn). The score averages the commit probability of the content tokens and
    of the filler that ended the fill, so a confident stop counts but a long tail of easy
    filler does not drown a doubtful answer.
    """
    filler = set(filler)
    kept: list[int] = []
    scored: list[float] = []
    for tok, c in zip(tokens, confidences):
        if tok in filler:
            if mode == "truncate":
                scored.append(c)
                break
            continue
        kept.append(tok)
        scored.append(c)
    if mode == "delete":
        stops = [c for t, c in zip(tokens, confidences) if t in filler]
        scored.extend(stops[:1])
    score = sum(scored) / len(scored) if scored else 0.0
    return kept, score


def infill(model: DiffusionModel, prefix: Sequence[int], suffix: Sequence[int],
           lengths: Sequence[int], *, settings: SamplerSettings = SamplerSettings(),
           cancel: Callable[[], bool] | None = None) -> tuple[list[Candidate], int]:
    """Fill a gap with every length of ``lengths`` in one batch (the length ensemble).

    Returns the candidates, best first (see :attr:`Candidate.rank_key`), and the number of
    forward passes.
    """
    results, passes = infill_many(model, [(prefix, suffix, lengths)], settings=settings,
                                  cancel=[cancel] if cancel else None)
    if results[0] is None:
        raise Cancelled()
    return results[0], passes


Preview = Callable[[list[int], float], None]
"""Called with a job's tokens committed so far (from the start of its longest gap up to the
first mask left, filler trimmed) and the share of that gap decided."""


def committed_prefix(gap: Sequence[int], mask_id: int, filler: Sequence[int],
                     mode: str) -> tuple[list[int], float]:
    """What a half-denoised gap can already show: its tokens up to the first mask (a ghost
    cannot show holes), cut at filler like a finished fill; and the share of it decided."""
    gap = list(gap)
    head = gap[:gap.index(mask_id)] if mask_id in gap else gap
    kept, _ = trim_filler(head, [1.0] * len(head), filler, mode)
    done = sum(t != mask_id for t in gap) / max(1, len(gap))
    return kept, done


def warm_start(state: PrefixState, head: list[int], shape: torch.Size) -> WarmStart | None:
    """The warm start a document's last request offers this window, if it is worth it: the
    positions both windows share from the start (at most up to the one before the masks),
    unless the kept ones have been reused too many times."""
    upto = min(common_prefix(state.ids, head), len(head) - 1, state.cache.length)
    if upto < MIN_REUSE or state.uses >= MAX_REUSES:
        return None
    return WarmStart(state.cache.reuse(upto, shape[1], shape[0]), upto)


def _preview_steps(model: DiffusionModel, previews: Sequence[Preview | None],
                   lengths: Sequence[int], owner: Sequence[int], lo: int
                   ) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``denoise``'s step callback feeding each job's preview from its longest row (the one
    whose committed start is least likely to be cut short)."""
    prof = model.profile
    longest = {j: max((r for r, o in enumerate(owner) if o == j), key=lambda r: lengths[r])
               for j, f in enumerate(previews) if f is not None}

    def on_step(working: torch.Tensor, alive: torch.Tensor) -> None:
        where = {int(r): i for i, r in enumerate(alive.tolist())}
        for j, r in longest.items():
            if r in where:
                gap = working[where[r], lo:lo + lengths[r]].tolist()
                previews[j](*committed_prefix(gap, prof.mask_id, prof.filler_ids,
                                              prof.filler_mode))
    return on_step


# ---------------------------------------------------------------- drafts


@dataclass
class Draft:
    """A draft as the verifier takes it."""
    ids: Sequence[int]
    """Its token ids, the lead's text (healing) first."""
    support: int = 1
    """Code tokens of the typed line found before it where it was found (0: it completes the
    partial word only): the evidence the code at hand gives it."""
    lead_tokens: int = 0
    """Its first tokens that only write the lead's text."""
    word_tokens: int = 1
    """Its first tokens up to the end of the draft's first word: kept whatever the model
    says (the score says whether to show it)."""


DRAFT_WEIGHTS = (1.06, 0.449, 0.964, -0.234)
"""``draft_score``'s logistic weights: intercept, log2(support + 1), log10(first ratio), and
the draft's rank among the request's drafts (0: found first, nearest), fitted on the typing
eval's recorded drafts (docs/performance.md, session 12)."""


def draft_score(support: int, first_ratio: float, rank: int = 0) -> float:
    """How likely a draft's first word is what the person types next: its support (a longer
    matched tail is a stronger lead), the model's verdict on its first token past the lead
    (its probability over that of the model's own first choice) and its rank (the drafts
    found nearer come first). A calibrated probability, so ``minConfidence`` compares it as it
    compares a denoised fill's score."""
    w0, w1, w2, w3 = DRAFT_WEIGHTS
    z = w0 + w1 * math.log2(max(0, support) + 1) + \
        w2 * math.log10(max(first_ratio, 1e-3)) + w3 * rank
    return 1.0 / (1.0 + math.exp(-z))


@dataclass
class Verified:
    """A draft after the model has checked it: the start of it kept (cut before the first
    token the model vetoes after the draft's first word), the model's verdict on its first
    token, and whether the fill ends right after the whole draft."""
    tokens: list[int] = field(default_factory=list)
    first: float = 0.0
    """The model's verdict on the draft's first token past the lead: its probability over
    that of the model's first choice there."""
    support: int = 1
    rank: int = 0
    """Its place among the request's drafts (0: found first)."""
    end: float | None = None
    """Whole draft kept and the model's likeliest next token is filler: that filler's
    probability (the fill is the draft, finished). None otherwise."""

    @property
    def complete(self) -> bool:
        return self.end is not None

    @property
    def score(self) -> float:
        return draft_score(self.support, self.first, self.rank)

    def candidate(self, length: int) -> Candidate:
        """The kept start as a candidate, scored by :func:`draft_score`. It counts as ended:
        a draft ends where the code at hand (or the model's veto) ends it, and ranks among
        the others by its score alone."""
        return Candidate(list(self.tokens), length, self.score, terminated=True)


def accepts(p_token: float, p_top: float, floor: float, ratio: float) -> bool:
    """The veto rule: a draft token passes when the model gives it at least ``floor`` of its
    probability, or at least ``ratio`` times what it gives its own first choice (so its first
    choice always passes). The ratio makes the model a veto rather than a gate: a draft is
    what the code at hand says, and a small model that is unsure of every token should not
    reject it; one that is sure of something else should."""
    return p_token >= floor or p_token >= ratio * p_top


@torch.inference_mode()
def verify_drafts(model: DiffusionModel, prefix: Sequence[int], suffix: Sequence[int],
                  drafts: Sequence["Draft | Sequence[int]"], length: int, *, floor: float = 0.3,
                  ratio: float = 1.0, lead: TokenHealing | None = None,
                  warm: WarmStart | None = None, cached: bool = True,
                  veto: bool = True) -> tuple[list[Verified], KVCache | None, int]:
    """Check drafts the diffusion way: one pass, however many drafts.

    The pass carries the window with the gap all masks (its keys and values kept: the dual
    cache), which judges every draft's first token, and beside it one row per further token
    of every draft: the gap holding the draft's first ``i`` tokens and masks after them,
    attending to the window row's keys and values outside the gap, layer by layer
    (:meth:`DiffusionModel.span_logits_with_rows`; the numbers of a cache pass and then a
    span pass per row, in one trip through the weights). Token ``i`` is scored from row
    ``i`` (row 0 is the window's own), so each is judged as a left-to-right reading of the
    gap would meet it, with the code after the gap in view. A draft keeps its first word
    (:attr:`Draft.word_tokens`) and every token after it up to the first that fails
    :func:`accepts`; the row after a wholly kept draft says whether the fill ends there (its
    likeliest token is filler). Plain id lists are drafts of support 1 whose first token is
    their first word. ``veto`` False (an explicit ask): every draft is kept whole, the
    model's verdicts only score and rank it.

    Returns the verdicts (one per draft), the window row's cache (for the sampler's warm
    start) and the passes run (1). ``lead``: text the fill must begin with (healing); its
    positions are scored among the tokens consistent with it, as the sampler draws them.
    ``cached`` False (a checkpoint whose answers need ``cache="none"``): every row runs its
    whole window, since context keys and values computed beside an all-mask gap would tell
    it the wrong length; no cache is returned then.
    """
    prof = model.profile
    mask_id = prof.mask_id
    given = [d if isinstance(d, Draft) else Draft(list(d)) for d in drafts]
    cut = [list(d.ids)[:length - 1] for d in given]
    where, cache = _draft_pass(model, prefix, suffix, cut, length, warm, cached)
    filler = set(prof.filler_ids)
    out = []
    for j, d in enumerate(cut):
        v = Verified(support=given[j].support, rank=j)
        for i in range(len(d) + 1):
            p, top = _judged(where[(j, i)][i], d[:i], lead, mask_id)
            if i == len(d):
                if top in filler:
                    v.end = float(p[top])
                break
            p_tok, p_top = float(p[d[i]]), float(p[top])
            if i == min(given[j].lead_tokens, len(d) - 1):
                v.first = p_tok / p_top if p_top > 0 else 0.0
            if veto and i >= given[j].word_tokens and not accepts(p_tok, p_top, floor, ratio):
                break
            v.tokens.append(d[i])
        out.append(v)
    return out, cache, 1


def _draft_pass(model: DiffusionModel, prefix: Sequence[int], suffix: Sequence[int],
                cut: list[list[int]], length: int, warm: WarmStart | None,
                cached: bool) -> tuple[dict[tuple[int, int], torch.Tensor], KVCache | None]:
    """The verifier's pass: the logits (L, V) of the gap for every ``(draft j, token i)``, the
    gap holding draft ``j``'s first ``i`` tokens and masks after them (``i`` 0: the window
    row, all masks), and the window row's cache (None unless ``cached``)."""
    ids, key_mask, lo = layout(model, prefix, suffix, [length])
    rows = [(j, i) for j, d in enumerate(cut) for i in range(1, len(d) + 1)]
    batch = ids.repeat(len(rows), 1)
    for r, (j, i) in enumerate(rows):
        batch[r, lo:lo + i] = torch.tensor(cut[j][:i], device=ids.device)
    cache = None
    if not cached:  # every row its whole window
        both = model.span_logits(torch.cat([ids, batch]), lo, lo + length,
                                 key_mask=key_mask.expand(len(rows) + 1, -1))
        first, more = both[:1], both[1:]
    else:
        cache = warm.cache if warm is not None else KVCache([], [])
        run = None  # the whole window, filling the cache; after a warm start, the rest of it
        if warm is not None:
            run = range(min(warm.upto, model.span_run(lo, lo + length).start), ids.shape[1])
        first, more = model.span_logits_with_rows(ids, lo, lo + length, batch, cache=cache,
                                                  key_mask=key_mask, run=run)
    where = {(j, 0): first[0] for j in range(len(cut))}
    where.update({row: more[r] for r, row in enumerate(rows)})
    return where, cache


def _judged(logits: torch.Tensor, written: list[int], lead: TokenHealing | None,
            mask_id: int) -> tuple[torch.Tensor, int]:
    """The distribution (V,) at a column after the draft's ``written`` tokens (the lead's
    constraint applied, masks never an answer), and its likeliest token."""
    logits = logits.float()  # (V,)
    logits[mask_id] = float("-inf")
    rest = lead.remaining(written + [mask_id], mask_id) if lead is not None else ""
    if rest:
        keep = lead.vocab.consistent(rest, logits.shape[-1], logits.device)
        logits = logits.masked_fill(~keep, float("-inf"))
    p = torch.softmax(logits, dim=-1)
    return p, int(p.argmax())


@dataclass
class Gap:
    """One request's gap for :func:`infill_many`: its context, the mask counts to try, the
    text it must begin with (healing) and drafts to verify first (token ids, ``lead`` text
    included)."""
    prefix: Sequence[int]
    suffix: Sequence[int]
    lengths: Sequence[int]
    lead: TokenHealing | None = None
    drafts: Sequence["Draft | Sequence[int]"] = ()
    draft_length: int = 16
    """The gap's mask count while drafts are verified (a draft is cut to one less, so the
    row after it can say whether the fill ends)."""
    sample_under: float = 0.0
    """When no draft scores at least this, the sampler writes its own fill too and both are
    ranked together (an explicit ask: the floor would withhold every draft)."""
    line_ends: LineEnds | None = None
    """A line fill: its rows are done at their line's end (:class:`LineEnd`)."""
    veto: bool = True
    """Drafts are cut where the model vetoes them (:func:`verify_drafts`); False for an
    explicit ask, which gets them whole: on held-out lines asked explicitly the cut lost a
    quarter of the exact answers (docs/performance.md, session 17)."""

    def mask_counts(self) -> list[int]:
        """Its rows' mask counts, ascending, once each."""
        lens = sorted({int(n) for n in self.lengths if n > 0})
        if not lens:
            raise ValueError("at least one positive length is needed")
        return lens


def _keep_prefix(slot: PrefixSlot, head: list[int], cache: KVCache, warmed: bool) -> None:
    """Leave in ``slot`` what the document's next request may reuse: the keys and values of
    the window's positions before the gap (``head``, row 0 of ``cache``), counted as one more
    reuse when this request itself started warm."""
    n = len(head)
    kept = KVCache([k[:1, :, :n].clone() for k in cache.keys],
                   [v[:1, :, :n].clone() for v in cache.values])
    uses = slot.state.uses + 1 if warmed and slot.state else 0
    slot.state = PrefixState(head, kept, uses)


def _writes_past(lead: TokenHealing | None, tokens: Sequence[int], mask_id: int) -> bool:
    """Whether ``tokens`` write more than the lead's text (an accepted draft that stops inside
    the healed word would show nothing)."""
    if lead is None:
        return True
    if lead.remaining(list(tokens) + [mask_id], mask_id):
        return False
    written = sum(len(lead.vocab.strings[t]) for t in tokens if 0 <= t < len(lead.vocab.strings))
    return written > len(lead.text)


def _verify_gap(model: DiffusionModel, gap: Gap, settings: SamplerSettings,
                slot: PrefixSlot | None) -> tuple[list[Candidate], KVCache | None, int]:
    """A gap's drafts verified (:func:`verify_drafts`): the candidates they give, the cache
    of their pass and the passes spent. ``slot`` (prefix reuse): the verification starts
    warm from the document's last request, and when the drafts answer, the slot keeps this
    window's positions for the next."""
    prof = model.profile
    head = ([prof.bos_id] if prof.bos_id is not None else []) + list(gap.prefix)
    warm = warm_start(slot.state, head, torch.Size([1, len(head) + gap.draft_length +
                                                   len(gap.suffix)])) \
        if slot is not None and slot.state else None
    verified, cache, n = verify_drafts(
        model, gap.prefix, gap.suffix, gap.drafts, gap.draft_length,
        floor=settings.draft_floor, ratio=settings.draft_ratio, lead=gap.lead,
        warm=warm, cached=cache_mode(settings, model) == "dual", veto=gap.veto)
    done = [v.candidate(gap.draft_length) for v in verified
            if v.tokens and _writes_past(gap.lead, v.tokens, prof.mask_id)]
    if done and max(c.score for c in done) >= gap.sample_under and slot is not None and \
            cache is not None:
        _keep_prefix(slot, head, cache, warm is not None)
    return done, cache, n


def _stopped(cancel: Sequence[Callable[[], bool] | None] | None, j: int) -> bool:
    """Whether job ``j``'s caller has asked to stop."""
    return bool(cancel and cancel[j] and cancel[j]())


def infill_many(model: DiffusionModel,
                jobs: Sequence["Gap | tuple"], *,
                settings: SamplerSettings = SamplerSettings(),
                cancel: Sequence[Callable[[], bool]] | None = None,
                previews: Sequence[Preview | None] | None = None,
                slot: PrefixSlot | None = None
                ) -> tuple[list[list[Candidate] | None], int]:
    """Several gaps (:class:`Gap`, or ``(prefix, suffix, lengths[, lead])``) denoised
    together in one batch.

    A gap with drafts has them verified (:func:`verify_drafts`, one pass) instead: each
    draft, cut where the model vetoes it, is a candidate scored by :func:`draft_score`, and
    that gap runs no more passes. Measured on the typing eval, a draft's kept start beat the
    model's own fill from there (docs/performance.md, session 12).

    A job whose ``cancel`` turns true is dropped at the next step and comes back as None; the
    others go on. A job's ``previews`` entry, when set, is called after every step with what its
    longest gap has committed so far. ``slot`` (one job, dual cache, ``reuse_prefix``) is
    the document's :class:`PrefixSlot`: the window positions it shares with the document's
    last request are not run again, and this request's are kept for the next. Returns each
    job's candidates (best first) and the forward passes spent.
    """
    gaps = [j if isinstance(j, Gap) else Gap(*j) for j in jobs]
    # Prefix reuse: one gap, the dual cache, and the settings allow it.
    reusing = slot if len(gaps) == 1 and settings.reuse_prefix and \
        cache_mode(settings, model) == "dual" else None
    results: list[list[Candidate] | None] = [[] for _ in gaps]
    verify_passes = 0
    verified_cache: KVCache | None = None
    rows, owner, leads, ends = [], [], [], []
    for j, gap in enumerate(gaps):
        if gap.drafts:
            if _stopped(cancel, j):
                results[j] = None
                continue
            done, verified_cache, n = _verify_gap(model, gap, settings, reusing)
            verify_passes = max(verify_passes, n)
            if done:
                results[j] = done
                if max(c.score for c in done) >= gap.sample_under:
                    continue  # the drafts answer: no rows for this gap
        for n in gap.mask_counts():
            rows.append((gap.prefix, gap.suffix, n))
            owner.append(j)
            leads.append(gap.lead)
            ends.append(gap.line_ends)
    passes = _denoise_rows(model, rows, owner, leads, results, settings=settings, ends=ends,
                           cancel=cancel, previews=previews, slot=reusing,
                           verified=verified_cache if len(gaps) == 1 else None) if rows else 0
    for cands in results:
        if cands is not None:
            cands.sort(key=lambda c: c.rank_key)
    return results, verify_passes + passes


def _denoise_rows(model: DiffusionModel, rows: list[tuple[Sequence[int], Sequence[int], int]],
                  owner: list[int], leads: list[TokenHealing | None],
                  results: list[list[Candidate] | None], *, settings: SamplerSettings,
                  ends: list[LineEnds | None] | None = None,
                  cancel: Sequence[Callable[[], bool]] | None,
                  previews: Sequence[Preview | None] | None, slot: PrefixSlot | None,
                  verified: KVCache | None) -> int:
    """Run ``rows`` (``(prefix, suffix, masks)``, each owned by a job) in one batch and add
    each finished row's candidate to its job's ``results`` (None for a job cancelled on the
    way). ``slot``: the one job's document
    (prefix reuse); ``verified``: the cache its drafts' verification just computed, whose
    context positions the first pass then reuses. Returns the passes run."""
    ids, key_mask, lo = layout_rows(model, rows)
    row_cancel: RowCancel | None = None
    if cancel:
        def cancelled_rows() -> list[bool]:
            flags = [bool(c()) if c else False for c in cancel]
            return [flags[j] for j in owner]
        row_cancel = cancelled_rows
    prof = model.profile
    on_step = _preview_steps(model, previews, [n for _, _, n in rows], owner, lo) \
        if previews and any(previews) else None
    head = ids[0, :lo].tolist()
    warm = None
    if verified is not None and len(set(owner)) == 1:
        warm = WarmStart(verified.reuse(lo, ids.shape[1], ids.shape[0]), lo)
    elif slot is not None and slot.state:
        warm = warm_start(slot.state, head, ids.shape)
    out = denoise(model, ids, lo, lo + max(n for _, _, n in rows), settings=settings,
                  key_mask=key_mask, cancel=row_cancel, on_step=on_step, warm=warm,
                  leads=leads if any(leads) else None, fresh=True,
                  line_ends=ends)
    if slot is not None and out.cache is not None:
        _keep_prefix(slot, head, out.cache, warm is not None)
    done = set(out.rows)
    for r, ((_, _, n), j) in enumerate(zip(rows, owner)):
        if r not in done:
            results[j] = None
            continue
        if results[j] is None:
            continue
        toks = out.ids[r, lo:lo + n].tolist()
        confs = out.confidence[r, lo:lo + n].tolist()
        kept, score = trim_filler(toks, confs, prof.filler_ids, prof.filler_mode)
        ended = any(t in prof.filler_ids for t in toks)
        results[j].append(Candidate(tokens=kept, length=n, score=score, terminated=ended))
    return out.forward_passes


@dataclass
class Refined:
    tokens: list[int]
    remasked: list[int]
    """Indices (into the selection) that were re-masked and denoised again."""
    original_confidence: list[float]
    forward_passes: int


@torch.inference_mode()
def refine(model: DiffusionModel, prefix: Sequence[int], selection: Sequence[int],
           suffix: Sequence[int], *, threshold: float = 0.3, max_fraction: float = 0.5,
           settings: SamplerSettings = SamplerSettings(),
           cancel: Callable[[], bool] | None = None) -> Refined:
    """Self-correction of a selection: re-mask only the tokens the model doubts.

    One pass with the whole selection masked gives each original token's probability in its
    context. Tokens under ``threshold`` (at most ``max_fraction`` of them, lowest first) are
    masked again and denoised with every other token kept as it is.
    """
    sel = list(selection)
    if not sel:
        return Refined([], [], [], 0)
    ids, key_mask, lo = layout(model, prefix, suffix, [len(sel)])
    hi = lo + len(sel)
    logits = model.span_logits(ids, lo, hi, key_mask=key_mask)[0]  # (N, V)
    probs = torch.softmax(logits, dim=-1)
    orig = torch.tensor(sel, device=probs.device)
    p_orig = probs.gather(-1, orig[:, None]).squeeze(-1)  # (N,)
    limit = max(1, int(len(sel) * max_fraction))
    doubtful = [int(i) for i in p_orig.argsort().tolist() if p_orig[i] < threshold][:limit]
    if not doubtful:
        return Refined(sel, [], p_orig.tolist(), 1)
    ids[0, lo:hi] = orig
    ids[0, [lo + i for i in doubtful]] = model.profile.mask_id
    out = denoise(model, ids, lo, hi, settings=settings, key_mask=key_mask, cancel=cancel)
    new = out.ids[0, lo:hi].tolist()
    # Filler in a re-masked slot means "drop this token".
    filler = set(model.profile.filler_ids)
    tokens = [t for i, t in enumerate(new) if not (i in doubtful and t in filler)]
    return Refined(tokens, sorted(doubtful), p_orig.tolist(), out.forward_passes + 1)

