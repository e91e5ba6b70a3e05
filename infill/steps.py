"""The parts of one denoising step, which ``sampler.denoise``'s loop puts together: the working
rows, which window positions a pass runs (:class:`Passes`, the owner of the dual cache), how
many masks a pass commits (:class:`Schedule`), and the rules a fill adds on top of the model's
choices (:class:`StepRule`: token healing's lead, no empty fill, the filler order)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch

from diffill.model import DiffusionModel, KVCache

from .api import SamplerSettings


@dataclass
class Rows:
    """The rows still being denoised: ids and commit probabilities (B, T), the original index
    of each row, and which positions each attends to."""
    ids: torch.Tensor
    conf: torch.Tensor
    alive: torch.Tensor
    key_mask: torch.Tensor | None

    def keep(self, keep: torch.Tensor) -> None:
        """Only the rows ``keep`` (B,) says, the others cancelled."""
        self.ids, self.conf, self.alive = self.ids[keep], self.conf[keep], self.alive[keep]
        self.key_mask = self.key_mask[keep] if self.key_mask is not None else None


@dataclass
class Step:
    """What the rules of one step see: the rows, the block ``b0..b1`` of window positions, its
    columns that still hold a mask in some row (M,), and the masks before this step (B, N)."""
    rows: Rows
    b0: int
    b1: int
    cols: torch.Tensor
    masked: torch.Tensor
    index: int
    """The step's number within its block, from 0."""


def open_positions(model: DiffusionModel, b0: int, cols: torch.Tensor,
                   changed: torch.Tensor) -> torch.Tensor:
    """Window positions a pass over block ``b0..`` runs under ``pass_positions="open"``: the
    masked columns ``cols`` (their keys and values follow the context), the positions their
    logits are read from, and the ``changed`` columns (N,), committed since the
    last pass, whose cached keys and values still show a mask. Ascending, no repeats."""
    need = torch.cat([cols + b0, model.logit_positions(b0, cols), changed.nonzero().view(-1) + b0])
    return torch.unique(need)


class Passes:
    """Which positions each forward pass runs, and the dual cache that lets it run fewer than
    the whole window. Without the cache every pass runs the window. With it, a block's first
    pass runs the window and keeps the context's keys and values (``refresh="block"``), or,
    after the first block under ``refresh="fill"``, runs only from the block on plus what the
    last block committed; later passes run the block (``pass_positions="block"``) or only its
    open positions and last commits (``"open"``). A warm start (an earlier request's keys and
    values for the window's first positions) spares the first pass those positions."""

    def __init__(self, model: DiffusionModel, settings: SamplerSettings, dual: bool,
                 refresh: str, warm, leading: bool) -> None:
        self.model = model
        self.dual = dual
        self.carry = dual and refresh == "fill"
        self.local = dual and settings.pass_positions == "open"
        self.leading = leading
        """Fast-dLLM's Dream block sampler: passes after a block's first run the block."""
        self.warm = warm
        self.cache: KVCache | None = None
        self.first: KVCache | None = None
        """The first block's cache after its last pass."""
        self._first_done = False
        self._stale: torch.Tensor | None = None  # window positions committed in the last block
        self._entry: torch.Tensor | None = None  # positions of a carried block's first pass
        self._run_from: int | None = None
        self._changed: torch.Tensor | None = None  # (N,) columns committed since the last pass

    def start_block(self, b0: int, b1: int) -> None:
        device = self.model.device
        self._entry, self._run_from, self._changed = None, None, None
        if self.carry and self.cache is not None and self._stale is not None:
            start = self.model.logit_positions(b0, torch.zeros(1, dtype=torch.long, device=device))
            self._entry = torch.unique(torch.cat([torch.arange(int(start), b1, device=device),
                                                  self._stale]))
        else:
            self.cache = KVCache([], []) if self.dual else None
        warm = self.warm
        if self.cache is not None and not self._first_done and warm is not None and \
                warm.upto < b0:
            self.cache, self._run_from = warm.cache, warm.upto

    def logits(self, step: Step) -> torch.Tensor:
        """The pass: logits (B, M, V) of the block's open columns."""
        run = self._entry
        if self.local and self._changed is not None and self._run_from is None:
            run = open_positions(self.model, step.b0, step.cols, self._changed)
        if self.leading and step.index > 0 and run is None and self._run_from is None and \
                int(step.cols[0]) > 0:
            run = torch.arange(step.b0, step.b1, device=step.rows.ids.device)
        if run is None and self.cache is not None and self.cache.length:
            run = self.model.span_run(step.b0, step.b1)
            if self._run_from is not None:  # the rest of a warm start's window
                run = range(min(self._run_from, run.start), step.rows.ids.shape[1])
        logits = self.model.span_logits(step.rows.ids, step.b0, step.b1,
                                        key_mask=step.rows.key_mask, cache=self.cache,
                                        columns=step.cols, run=run)
        self._run_from, self._entry = None, None
        return logits

    def committed(self, step: Step, mask_id: int) -> None:
        if self.local or self.carry:
            now = step.rows.ids[:, step.b0:step.b1] != mask_id
            self._changed = (step.masked & now).any(dim=0)

    def end_block(self, b0: int) -> None:
        if not self._first_done:
            self.first, self._first_done = self.cache, True
        if self.carry and self._changed is not None:
            self._stale = self._changed.nonzero().view(-1) + b0

    def keep(self, keep: torch.Tensor) -> None:
        if self.cache is not None and self.cache.length:
            self.cache = KVCache([k[keep] for k in self.cache.keys],
                                 [v[keep] for v in self.cache.values])


# ---------------------------------------------------------------- commits


DREAM_EPS = 1e-3
"""The end of Dream's time grid (``eps`` of its generation config)."""


def fixed_commit_counts(masked_now: torch.Tensor, masked_at_start: torch.Tensor, step: int,
                        steps: int, rule: str = "diffill") -> torch.Tensor:
    """How many masks each row commits at ``step`` (0-based) of ``steps``.

    - ``diffill``: after step s, ``floor(n0 * (1 - (s+1)/S))`` masks remain, at least one
      committed while any remain (the loop ends in ``S`` steps or fewer);
    - ``dream``: ``int(m * (1 - s/t))`` of the ``m`` masks left, ``t`` and ``s`` this and the
      next point of ``linspace(1, eps, S+1)`` in float32, and all that are left at the last
      step; zero is allowed (Dream's ``_sample``);
    - ``llada``: ``n0 // S`` per step, the remainder one each on the first steps (LLaDA's
      ``get_num_transfer_tokens``), counted from the block's masks at its start.
    Past the last step whatever is left is committed.
    """
    if step >= steps - 1 and rule != "diffill":
        return masked_now.clone()
    if rule == "dream":
        grid = torch.linspace(1, DREAM_EPS, steps + 1)  # float32, as Dream's timesteps
        share = 1 - grid[step + 1] / grid[step]
        return (masked_now.float().cpu() * share).long().to(masked_now.device)
    if rule == "llada":
        base, extra = masked_at_start // steps, masked_at_start % steps
        return torch.minimum(base + (step < extra).long(), masked_now)
    remain_after = (masked_at_start.float() * (1.0 - (step + 1) / steps)).floor().long()
    k = masked_now - remain_after
    return torch.where(masked_now > 0, k.clamp(min=1), torch.zeros_like(k))


def choose_commits(scores: torch.Tensor, masked: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The top-``k[b]`` masked positions of each row by score, as a boolean (B, N)."""
    s = scores.masked_fill(~masked, float("-inf"))
    ranks = s.argsort(dim=-1, descending=True).argsort(dim=-1)  # (B, N): 0 = best
    return (ranks < k[:, None]) & masked


def threshold_commits(probs_of_token: torch.Tensor, scores: torch.Tensor, masked: torch.Tensor,
                      tau: float, most: torch.Tensor | None = None) -> torch.Tensor:
    """Every masked position whose token has probability >= tau, plus each row's best one;
    with ``most`` (B,), only among each row's ``most`` best (Dream's ``confidence_threshold``,
    which commits at most its quota per pass)."""
    sure = (probs_of_token >= tau) & masked
    best = choose_commits(scores, masked, masked.any(dim=-1).long())
    if most is not None:
        sure &= choose_commits(scores, masked, most)
    return sure | best


class Schedule:
    """How many of a block's masks each pass commits, and which: the threshold schedule
    (every position at or above ``threshold``, at least the best one; with a Dream-family
    quota under ``capped``), or fixed counts per step by the checkpoint's ``rule``; under
    ``leading`` (Fast-dLLM's Dream block sampler) a block's first pass commits its first
    position only."""

    def __init__(self, settings: SamplerSettings, rule: str, budget: int, blocks: int,
                 total_masked: int, leading: bool, capped: bool) -> None:
        self.threshold = settings.threshold if settings.schedule == "threshold" else None
        self.rule, self.budget, self.blocks, self.total = rule, budget, blocks, total_masked
        self.leading, self.capped = leading, capped

    def start_block(self, masked0: torch.Tensor) -> None:
        """``masked0`` (B,): each row's masks in the block at its start."""
        self.masked0 = masked0
        # Steps for this block: its share of the budget, at least one (LLaDA: the budget
        # split evenly over the blocks, as its generate() does).
        self.steps = max(1, self.budget // self.blocks if self.rule == "llada" else
                         round(self.budget * int(masked0.max()) / max(1, self.total)))
        self.owed = torch.zeros_like(masked0)  # (B,) capped: the quota left over so far

    def keep(self, keep: torch.Tensor) -> None:
        self.masked0, self.owed = self.masked0[keep], self.owed[keep]

    def commits(self, step: Step, allowed: torch.Tensor, p_sure: torch.Tensor,
                scores: torch.Tensor) -> torch.Tensor:
        """(B, N) the positions this step commits."""
        if self.leading and step.index == 0:  # the block's full pass: its first position alone
            commit = torch.zeros_like(allowed)
            commit[:, 0] = allowed[:, 0]
            return commit
        if self.threshold is not None:
            most = None
            if self.capped:
                most = self.owed + (self.masked0 // self.steps if step.index < self.steps else 0)
            commit = threshold_commits(p_sure, scores, allowed, self.threshold, most)
            if most is not None:
                self.owed = most - commit.sum(dim=1)
            return commit
        k = fixed_commit_counts(step.masked.sum(dim=1), self.masked0,
                                min(step.index, self.steps - 1), self.steps, self.rule)
        return choose_commits(scores, allowed, k)


# ---------------------------------------------------------------- rules of a fill


class StepRule:
    """A rule a fill adds to the model's choices, called by the loop at three points of every
    step (each does nothing unless the rule needs it)."""

    def shape(self, step: Step, logits: torch.Tensor) -> None:
        """Before sampling: change the logits (B, M, V) of the open columns in place."""

    def allow(self, step: Step, allowed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """After sampling: where the drawn ``tokens`` (B, N) may be committed."""
        return allowed

    def after(self, step: Step) -> None:
        """After the commits are written."""


class Vocab:
    """Each token id's text, and which tokens are consistent with a piece of text, for
    :class:`TokenHealing` (built once per model: a few thousand to a few hundred thousand
    strings)."""

    def __init__(self, strings: Sequence[str]) -> None:
        self.strings = list(strings)
        order = sorted((t, i) for i, t in enumerate(self.strings) if t)
        self._keys = [t for t, _ in order]
        self._ids = [i for _, i in order]
        self._exact: dict[str, list[int]] = {}
        for t, i in order:
            self._exact.setdefault(t, []).append(i)

    def consistent(self, rest: str, size: int, device: torch.device) -> torch.Tensor:
        """(size,) True for the tokens a fill that must begin with ``rest`` may write next:
        those that begin with all of it, and those that are a shorter start of it."""
        keep = torch.zeros(size, dtype=torch.bool, device=device)
        a = bisect.bisect_left(self._keys, rest)
        b = bisect.bisect_left(self._keys, rest + "\U0010ffff")
        ids = [i for i in self._ids[a:b] if i < size]
        for k in range(1, len(rest)):
            ids.extend(i for i in self._exact.get(rest[:k], ()) if i < size)
        if ids:
            keep[torch.tensor(ids, dtype=torch.long, device=device)] = True
        return keep


@dataclass
class TokenHealing:
    """Token healing: text the fill must begin with. The engine takes the partial word before
    the cursor out of the context (``@datac`` is ``@ data c`` to the tokenizer, an ending no
    training text has, while ``dataclass`` is one token) and asks the fill to write it again,
    the way the tokenizer would: the first open position of the gap may only take a token
    consistent with what is left of it, and is the only one committed until it is written."""
    text: str
    vocab: Vocab
    taken: int | None = None
    """How much of ``text`` was taken out of the context (and is in the document already);
    None: all of it. The rest is new text the fill must begin with (a whole-line gap's
    indentation, which the syntax decides)."""

    def remaining(self, gap: Sequence[int], mask_id: int) -> str:
        """What the gap's committed start has not written of the text yet."""
        rest = self.text
        for t in gap:
            if t == mask_id or not rest:
                break
            piece = self.vocab.strings[t] if 0 <= t < len(self.vocab.strings) else ""
            rest = rest[len(piece):] if piece and rest.startswith(piece) else ""
        return rest


def _apply_leads(leads: Sequence["TokenHealing | None"], alive: torch.Tensor, ids: torch.Tensor,
                 lo: int, b0: int, cols: torch.Tensor, logits: torch.Tensor, mask_id: int
                 ) -> dict[int, int]:
    """Restrict the logits of each row whose lead is not written yet to the tokens consistent
    with it, at its first open position; returns {working row: block column} that alone may
    be committed this step."""
    only: dict[int, int] = {}
    where = {int(c): k for k, c in enumerate(cols.tolist())}
    for i, r in enumerate(alive.tolist()):
        lead = leads[r]
        if lead is None:
            continue
        gap = ids[i, lo:].tolist()
        rest = lead.remaining(gap, mask_id)
        if not rest or mask_id not in gap:
            continue
        column = lo + gap.index(mask_id) - b0
        if column not in where:
            continue
        keep = lead.vocab.consistent(rest, logits.shape[-1], logits.device)
        logits[i, where[column]].masked_fill_(~keep, float("-inf"))
        only[i] = column
    return only


class HealingRule(StepRule):
    """Token healing: at a row's first open position only tokens consistent with what is left
    of its :class:`TokenHealing`, and that position is the row's only commit until the lead is
    written."""

    def __init__(self, leads: Sequence[TokenHealing | None], lo: int, mask_id: int) -> None:
        self.leads, self.lo, self.mask_id = leads, lo, mask_id
        self.only: dict[int, int] = {}

    def shape(self, step: Step, logits: torch.Tensor) -> None:
        self.only = _apply_leads(self.leads, step.rows.alive, step.rows.ids, self.lo, step.b0,
                                 step.cols, logits, self.mask_id)

    def allow(self, step: Step, allowed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        for i, column in self.only.items():  # the lead's position first, alone
            allowed = allowed.clone() if allowed is step.masked else allowed
            allowed[i] = False
            allowed[i, column] = True
        return allowed


class NoEmptyFill(StepRule):
    """No filler in the first masks ``first..last`` (window positions) of a fresh gap: an empty
    fill is never what an editor asks for (``SamplerSettings.min_tokens``)."""

    def __init__(self, first: int, last: int, filler: torch.Tensor) -> None:
        self.first, self.last, self.filler = first, last, filler

    def shape(self, step: Step, logits: torch.Tensor) -> None:
        if step.b0 < self.last:
            first, last = self.first - step.b0, min(self.last, step.b1) - step.b0
            early = ((step.cols >= first) & (step.cols < last)).nonzero()  # (k, 1) of cols
            logits[:, early, self.filler[None, :]] = float("-inf")


def filler_allowed(gap_masked: torch.Tensor, tokens_are_filler: torch.Tensor, b0: int,
                   b1: int) -> torch.Tensor:
    """Positions ``b0..b1`` of the gap (B, N) where the drawn token may be committed, under the
    ``left`` filler order: content anywhere, filler only where no mask is left before it.

    Why: a model trained on pad-filled gaps is surest of the filler at the far end of the gap.
    Committed first, that filler tells the model the answer is short, the next-surest position
    is filler again, and the fill collapses to a token or two (LLaDA's failure on EOS-padded
    data). Deciding the end last, right behind what is written, keeps the answer's length the
    model's choice, not a side effect of the order. The first open position is always allowed,
    so every step still commits something.
    """
    open_before = (gap_masked.cumsum(dim=-1) - gap_masked.long())[:, b0:b1] > 0
    return ~(tokens_are_filler & open_before)


def close_after_filler(gap: torch.Tensor, gap_conf: torch.Tensor, mask_id: int,
                       filler: torch.Tensor) -> None:
    """In place: every mask behind a committed filler becomes that filler. In ``truncate`` mode
    the fill ends at its first filler, so what follows is decided; writing it out spares the
    passes and shows the model the padded layout it was trained on."""
    is_filler = torch.isin(gap, filler)
    after = (is_filler.cumsum(dim=-1) > 0) & (gap == mask_id)
    if not bool(after.any()):
        return
    first = is_filler.long().argmax(dim=-1, keepdim=True)  # (B, 1): first filler of each row
    gap[after] = gap.gather(-1, first).expand_as(gap)[after]
    gap_conf[after] = gap_conf.gather(-1, first).expand_as(gap_conf)[after]


class FillerOrder(StepRule):
    """The ``left`` filler order of a fresh gap ``lo..hi``: filler commits only right behind
    the written part of the gap, and then closes the rest of it (:func:`filler_allowed`)."""

    def __init__(self, lo: int, hi: int, mask_id: int, filler: torch.Tensor) -> None:
        self.lo, self.hi, self.mask_id, self.filler = lo, hi, mask_id, filler

    def allow(self, step: Step, allowed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        gap_masked = step.rows.ids[:, self.lo:self.hi] == self.mask_id
        return allowed & filler_allowed(gap_masked, torch.isin(tokens, self.filler),
                                        step.b0 - self.lo, step.b1 - self.lo)

    def after(self, step: Step) -> None:
        rows = step.rows
        close_after_filler(rows.ids[:, self.lo:self.hi], rows.conf[:, self.lo:self.hi],
                           self.mask_id, self.filler)


@dataclass(frozen=True)
class LineEnds:
    """Which tokens end a line fill, (V,) each: ``breaks`` hold a line break, ``closes`` hold
    one after text of their own (``)\\n``), ``blank`` are whitespace only (built once per
    model from its :class:`Vocab`)."""
    breaks: torch.Tensor
    closes: torch.Tensor
    blank: torch.Tensor

    @classmethod
    def of(cls, vocab: Vocab, device: torch.device) -> "LineEnds":
        def flags(test) -> torch.Tensor:
            return torch.tensor([test(t) for t in vocab.strings], dtype=torch.bool,
                                device=device)
        return cls(flags(lambda t: "\n" in t), flags(lambda t: bool(t.split("\n", 1)[0].strip())
                                                     and "\n" in t),
                   flags(lambda t: not t.strip()))


class LineEnd(StepRule):
    """A line fill is done at its line's end: once a row of a fresh gap ``lo..hi`` has
    committed a line break after some text, with no mask left before it, the rest of its gap
    becomes filler, scored as the line's own tokens (their mean commit probability, so the
    fill's score is the line's). A line completion shows only its line: the passes the masks
    after it would take are spent on text that is cut off (docs/performance.md, session 17).
    ``on`` (B,): the rows that are line fills."""

    def __init__(self, lo: int, hi: int, mask_id: int, filler: int, ends: LineEnds,
                 on: torch.Tensor) -> None:
        self.lo, self.hi, self.mask_id, self.filler, self.ends, self.on = \
            lo, hi, mask_id, filler, ends, on

    def after(self, step: Step) -> None:
        rows = step.rows
        gap, conf = rows.ids[:, self.lo:self.hi], rows.conf[:, self.lo:self.hi]
        masked = gap == self.mask_id
        tok = gap.clamp(0, self.ends.breaks.shape[0] - 1)
        written = ~masked & (gap != self.filler)
        text = written & ~self.ends.blank[tok]
        text_before = (text.long().cumsum(-1) - text.long()) > 0
        open_before = (masked.long().cumsum(-1) - masked.long()) > 0
        end = written & ~open_before & self.on[rows.alive][:, None] & \
            (self.ends.closes[tok] | (self.ends.breaks[tok] & text_before))
        after = (end.long().cumsum(-1) - end.long()) > 0
        after &= gap != self.filler
        if not bool(after.any()):
            return
        line = (~after).float()
        mean = (conf * line).sum(-1, keepdim=True) / line.sum(-1, keepdim=True).clamp_min(1)
        gap[after] = self.filler
        conf[after] = mean.expand_as(conf)[after]
