"""The denoising sampler on a model trained in-test with known answers (a counting task)."""

from __future__ import annotations

import pytest
import torch

from helpers import pattern_row
from diffill.infill.sampler import (Cancelled, SamplerSettings, denoise, infill, layout, refine,
                                   trim_filler)
from diffill.infill.steps import (choose_commits, close_after_filler, filler_allowed,
                                  fixed_commit_counts)

CASES = [(s, gap) for s in range(12) for gap in range(1, 7)]


def _fill(model, start, gap, **kw):
    pre, mid, suf = pattern_row(start, 5, gap, 4)
    settings = SamplerSettings(**kw)
    cands, passes = infill(model, pre, suf, [8], settings=settings)
    return cands[0], mid[:gap], passes


# Semi-AR blocks commit the left block before the right block's tokens exist, so where the
# filler starts (which depends on the suffix) is decided with less to go on: a real cost. A
# block size given to the threshold schedule decodes it in blocks too (Fast-dLLM's way).
@pytest.mark.parametrize("schedule,block,at_least", [
    ("threshold", 0, 0.9), ("fixed", 0, 0.9), ("blocks", 4, 0.75), ("threshold", 4, 0.75)])
def test_the_trained_gap_is_filled_exactly_and_surplus_masks_become_filler(
        pattern_model, schedule, block, at_least):
    exact = 0
    for start, gap in CASES:
        cand, answer, _ = _fill(pattern_model, start, gap, schedule=schedule, steps=8,
                                block_size=block)
        exact += cand.tokens == answer
    assert exact / len(CASES) >= at_least


def test_every_mask_is_filled(pattern_model):
    mask = pattern_model.profile.mask_id
    for schedule in ("threshold", "fixed", "blocks"):
        for cache in ("none", "dual"):
            ids, key_mask, lo = layout(pattern_model, [3, 4, 5], [9, 10], [6, 8])
            out = denoise(pattern_model, ids, lo, lo + 8, key_mask=key_mask,
                          settings=SamplerSettings(schedule=schedule, steps=3, cache=cache,
                                                   block_size=4))
            assert not (out.ids[:, lo:lo + 8] == mask).any()
            # Context and padding are never touched.
            assert torch.equal(out.ids[:, :lo], ids[:, :lo])
            assert torch.equal(out.ids[0, lo + 6:lo + 8], ids[0, lo + 6:lo + 8])


class Recorder:
    """Wraps span_logits to keep every window the model was asked about."""

    def __init__(self, model):
        self.model = model
        self.seen: list[torch.Tensor] = []
        self._orig = model.span_logits

    def __enter__(self):
        def spy(ids, lo, hi, **kw):
            self.seen.append(ids.clone())
            return self._orig(ids, lo, hi, **kw)
        self.model.span_logits = spy
        return self

    def __exit__(self, *exc):
        self.model.span_logits = self._orig


@pytest.mark.parametrize("schedule", ["threshold", "fixed"])
def test_committed_tokens_never_change(pattern_model, schedule):
    mask = pattern_model.profile.mask_id
    ids, key_mask, lo = layout(pattern_model, [3, 4, 5, 6], [11, 12, 13], [8])
    with Recorder(pattern_model) as rec:
        out = denoise(pattern_model, ids, lo, lo + 8, key_mask=key_mask,
                      settings=SamplerSettings(schedule=schedule, steps=8, temperature=1.0,
                                               seed=3))
    states = rec.seen + [out.ids]
    assert len(states) >= 2
    for before, after in zip(states, states[1:]):
        committed = before != mask
        assert torch.equal(before[committed], after[committed])
        # Each step commits at least one new position.
        assert (after != mask).sum() > committed.sum()


def test_filler_is_trimmed():
    toks, score = trim_filler([5, 6, 1, 7, 1], [0.9, 0.8, 0.7, 0.1, 0.9], (1, 0), "truncate")
    assert toks == [5, 6]
    assert score == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    toks, _ = trim_filler([1, 5, 1, 6], [0.5, 0.9, 0.5, 0.8], (1,), "delete")
    assert toks == [5, 6]


def test_threshold_decoding_needs_fewer_passes_than_fixed_steps_on_an_easy_span(pattern_model):
    thr = sum(_fill(pattern_model, s, g, schedule="threshold")[2] for s, g in CASES)
    fixed = sum(_fill(pattern_model, s, g, schedule="fixed", steps=8)[2] for s, g in CASES)
    assert fixed == 8 * len(CASES)  # fixed steps costs exactly its steps
    assert thr < fixed / 2


def test_the_same_seed_gives_the_same_output(pattern_model):
    def sample(seed):
        ids, key_mask, lo = layout(pattern_model, [3, 4], [9], [8, 8, 8, 8])
        return denoise(pattern_model, ids, lo, lo + 8, key_mask=key_mask,
                       settings=SamplerSettings(temperature=1.5, top_p=0.95, seed=seed,
                                                schedule="fixed", steps=4)).ids
    a, b = sample(7), sample(7)
    assert torch.equal(a, b)
    assert any(not torch.equal(a, sample(s)) for s in range(8, 14))


def test_the_ensemble_returns_the_candidate_it_scored_best(pattern_model):
    pre, mid, suf = pattern_row(2, 5, 5, 4)
    cands, passes = infill(pattern_model, pre, suf, [2, 4, 8])
    assert len(cands) == 3
    keys = [c.rank_key for c in cands]
    assert keys == sorted(keys)
    # Only the 8-slot row has room for the 5 missing tokens: the shorter rows use every mask
    # (no filler), so however sure their tokens are, the 8-slot row wins.
    assert [c.terminated for c in cands] == [True, False, False]
    assert cands[0].length == 8 and cands[0].tokens == mid[:5]


def test_refine_repairs_a_wrong_token_and_keeps_the_rest(pattern_model):
    pre, mid, suf = pattern_row(0, 5, 6, 4)
    sel = mid[:6]
    broken = list(sel)
    broken[3] = 3 + (broken[3] - 3 + 5) % 12  # a plausible-looking but wrong token
    out = refine(pattern_model, pre, broken, suf, threshold=0.3)
    assert 3 in out.remasked
    assert out.tokens == sel
    # Confident tokens were not re-masked, so they are exactly as given.
    for i, (a, b) in enumerate(zip(broken, out.tokens)):
        if i not in out.remasked:
            assert a == b
    clean = refine(pattern_model, pre, sel, suf, threshold=0.3)
    assert clean.remasked == [] and clean.tokens == sel and clean.forward_passes == 1


def test_cancellation_stops_between_steps(pattern_model):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    ids, key_mask, lo = layout(pattern_model, [3, 4], [9], [8])
    with pytest.raises(Cancelled):
        denoise(pattern_model, ids, lo, lo + 8, key_mask=key_mask, cancel=cancel,
                settings=SamplerSettings(schedule="fixed", steps=8))
    assert len(calls) == 3


def test_fixed_schedule_commit_counts_follow_a_linear_grid():
    n0 = torch.tensor([8, 3, 0])
    remaining, counts = n0.clone(), []
    for s in range(4):
        k = fixed_commit_counts(remaining, n0, s, 4)
        counts.append(k.tolist())
        remaining = remaining - k
    assert remaining.tolist() == [0, 0, 0]
    assert [c[0] for c in counts] == [2, 2, 2, 2]
    assert sum(c[1] for c in counts) == 3


def test_choose_commits_takes_the_best_masked_positions():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.8]])
    masked = torch.tensor([[True, False, True, True]])
    assert choose_commits(scores, masked, torch.tensor([2])).tolist() == \
        [[False, False, True, True]]


def test_filler_is_allowed_only_where_no_mask_is_left_before_it():
    # Gap of 5: position 1 is written, the rest open. Drawn tokens: filler at 0, 2 and 4.
    gap_masked = torch.tensor([[True, False, True, True, True]])
    is_filler = torch.tensor([[True, False, True, False, True]])
    assert filler_allowed(gap_masked, is_filler, 0, 5).tolist() == \
        [[True, True, False, True, False]]
    # A block's slice of the gap still counts masks in the blocks before it.
    assert filler_allowed(gap_masked, is_filler[:, 2:], 2, 5).tolist() == [[False, True, False]]


def test_masks_behind_a_committed_filler_become_that_filler():
    M, P, E = 99, 1, 2
    gap = torch.tensor([[5, P, M, 7, M], [M, 6, M, M, M], [5, E, M, M, M]])
    conf = torch.tensor([[0.9, 0.8, 1.0, 0.5, 1.0], [1.0, 0.7, 1.0, 1.0, 1.0],
                         [0.9, 0.6, 1.0, 1.0, 1.0]])
    close_after_filler(gap, conf, M, torch.tensor([P, E]))
    assert gap.tolist() == [[5, P, P, 7, P], [M, 6, M, M, M], [5, E, E, E, E]]
    assert conf[0].tolist() == pytest.approx([0.9, 0.8, 0.8, 0.5, 0.8])
    assert conf[2, 2:].tolist() == pytest.approx([0.6, 0.6, 0.6])


def test_a_line_fill_is_done_at_its_line_end_and_scored_as_its_line():
    """A row that has written a line break after some text, with no mask before it, has the
    rest of its gap closed with filler scored as the line's own tokens; a break with a mask
    before it, a break before any text, and a row that is no line fill are left alone."""
    from diffill.infill.steps import LineEnd, LineEnds, Rows, Step, Vocab
    strings = ["<pad>", "<mask>", "x", " =", "\n", "1)\n", "  ", "y"]
    P, M, X, EQ, NL, CLOSE, SP, Y = range(8)
    ends = LineEnds.of(Vocab(strings), torch.device("cpu"))
    assert ends.breaks.tolist() == [False, False, False, False, True, True, False, False]
    assert ends.closes.tolist() == [False, False, False, False, False, True, False, False]
    ids = torch.tensor([[X, EQ, NL, Y, M],     # a line, then its break: done
                        [X, M, NL, Y, M],      # a mask before the break: not yet
                        [NL, X, EQ, M, M],     # a break before any text (a blank line first)
                        [SP, CLOSE, Y, M, M],  # a token that ends the line itself
                        [X, EQ, NL, Y, M]])    # no line fill
    conf = torch.tensor([[0.9, 0.6, 0.3, 0.5, 1.0]] * 5)
    rows = Rows(ids.clone(), conf.clone(), torch.arange(5), None)
    rule = LineEnd(0, 5, M, P, ends, torch.tensor([True, True, True, True, False]))
    rule.after(Step(rows, 0, 5, torch.arange(5), rows.ids == M, 0))
    assert rows.ids.tolist() == [[X, EQ, NL, P, P], [X, M, NL, Y, M], [NL, X, EQ, M, M],
                                 [SP, CLOSE, P, P, P], [X, EQ, NL, Y, M]]
    assert rows.conf[0].tolist() == pytest.approx([0.9, 0.6, 0.3, 0.6, 0.6])
    assert rows.conf[3, 2:].tolist() == pytest.approx([0.75] * 3)
    assert torch.equal(rows.conf[1:3], conf[1:3]) and torch.equal(rows.conf[4], conf[4])
    kept, score = trim_filler(rows.ids[0].tolist(), rows.conf[0].tolist(), [P], "truncate")
    assert kept == [X, EQ, NL] and score == pytest.approx(0.6)  # the line's own mean


@pytest.mark.parametrize("schedule", ["threshold", "fixed", "blocks"])
def test_left_filler_order_never_commits_filler_ahead_of_an_open_mask(pattern_model,
                                                                      schedule):
    """The counting model is surest of the filler at the far end of a long gap; with the
    ``any`` order it commits that filler while masks are still open before it, with ``left``
    never. Its answers stay mostly right, though fewer than with ``any`` (about 80% against
    90-97%): this model reads each gap's length off the suffix, and the far-end filler is the
    clearest sign of it, which is why its checkpoint records ``any``."""
    mask, filler = pattern_model.profile.mask_id, set(pattern_model.profile.filler_ids)

    def ahead_of_open_mask(states, lo, hi):
        for st in states:
            for row in st[:, lo:hi].tolist():
                first_open = row.index(mask) if mask in row else len(row)
                if any(t in filler for t in row[first_open:]):
                    return True
        return False

    seen = {}
    for order in ("any", "left"):
        hits, exact = 0, 0
        for start, gap in CASES[::2]:
            pre, mid, suf = pattern_row(start, 5, gap, 4)
            ids, key_mask, lo = layout(pattern_model, pre, suf, [8])
            settings = SamplerSettings(schedule=schedule, steps=8, block_size=4,
                                       filler_order=order)
            with Recorder(pattern_model) as rec:
                out = denoise(pattern_model, ids, lo, lo + 8, key_mask=key_mask,
                              settings=settings)
            hits += ahead_of_open_mask(rec.seen + [out.ids], lo, lo + 8)
            tokens, _ = trim_filler(out.ids[0, lo:lo + 8].tolist(), [1.0] * 8,
                                    pattern_model.profile.filler_ids, "truncate")
            exact += tokens == mid[:gap]
        seen[order] = (hits, exact / len(CASES[::2]))
    assert seen["left"][0] == 0
    assert seen["any"][0] > 0
    assert seen["left"][1] >= 0.75


def test_closing_the_gap_after_filler_saves_passes(pattern_model):
    pre, mid, suf = pattern_row(4, 5, 2, 4)
    settings = SamplerSettings(schedule="fixed", steps=8, filler_order="left")
    _, left = infill(pattern_model, pre, suf, [8], settings=settings)
    _, any_ = infill(pattern_model, pre, suf, [8],
                     settings=SamplerSettings(schedule="fixed", steps=8, filler_order="any"))
    assert any_ == 8 and left < any_


@pytest.mark.parametrize("order", ["confidence", "margin", "entropy"])
def test_each_order_fills_the_gap(pattern_model, order):
    exact = sum(_fill(pattern_model, s, g, order=order, schedule="fixed", steps=8)[0].tokens ==
                pattern_row(s, 5, g, 4)[1][:g] for s, g in CASES[::3])
    assert exact >= 0.8 * len(CASES[::3])


def test_settings_are_validated():
    with pytest.raises(ValueError, match="schedule"):
        SamplerSettings(schedule="bogus")
    with pytest.raises(ValueError, match="threshold"):
        SamplerSettings(threshold=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplerSettings(top_p=0)
    with pytest.raises(ValueError, match="filler_order"):
        SamplerSettings(filler_order="right")


def test_a_preview_shows_the_committed_start_of_a_gap():
    from diffill.infill.sampler import committed_prefix
    mask, pad = 2, 1
    assert committed_prefix([5, 6, mask, 7], mask, (pad,), "truncate") == ([5, 6], 0.75)
    assert committed_prefix([5, pad, mask, mask], mask, (pad,), "truncate") == ([5], 0.5)
    assert committed_prefix([mask, 6, 7, 8], mask, (pad,), "truncate") == ([], 0.75)
    assert committed_prefix([5, pad, 6], mask, (pad,), "delete") == ([5, 6], 1.0)


def test_a_window_reused_from_the_last_request_runs_only_what_changed(pattern_model):
    """Prefix reuse: the same window again is token-identical to a cold run and runs only the
    positions after the shared ones; a change in the prefix limits the reuse to the positions
    before it; after MAX_REUSES requests in a row one runs cold."""
    from diffill.infill.api import SamplerSettings
    from diffill.infill.sampler import (MAX_REUSES, MIN_REUSE, PrefixSlot, PrefixState, warm_start,
                                common_prefix, infill_many)
    dual = SamplerSettings(cache="dual")
    run = [3 + i % 12 for i in range(48)]  # c0 c1 ... counting, 48 tokens
    prefix, suffix = run[:40], [3 + (40 + 3 + i) % 12 for i in range(6)]
    job = [(prefix, suffix, [3])]
    cold, _ = infill_many(pattern_model, job, settings=dual)
    slot = PrefixSlot()
    infill_many(pattern_model, job, settings=dual, slot=slot)
    assert slot.state is not None and slot.state.ids == prefix and slot.state.uses == 0
    before = pattern_model.tokens_run
    again, _ = infill_many(pattern_model, job, settings=dual, slot=slot)
    assert slot.state.uses == 1
    assert [c.tokens for c in again[0]] == [c.tokens for c in cold[0]]
    ran = pattern_model.tokens_run - before
    before = pattern_model.tokens_run
    infill_many(pattern_model, job, settings=dual)  # cold, no slot
    assert ran < pattern_model.tokens_run - before
    # An edit at position 35 of the prefix: only positions 0..34 are reused.
    edited = list(prefix)
    edited[35] = 3
    assert common_prefix(slot.state.ids, edited) == 35
    warm = warm_start(slot.state, edited, torch.Size([1, 49]))
    assert warm is not None and warm.upto == 35 and warm.cache.length == 49
    # Too little in common, or reused too often: no warm start.
    assert warm_start(slot.state, [9] + edited[1:], torch.Size([1, 49])) is None
    assert MIN_REUSE > 0
    tired = PrefixState(slot.state.ids, slot.state.cache, uses=MAX_REUSES)
    assert warm_start(tired, prefix, torch.Size([1, 49])) is None
    # Off by setting.
    off = PrefixSlot()
    infill_many(pattern_model, job, settings=SamplerSettings(cache="dual", reuse_prefix=False),
                slot=off)
    assert off.state is None


def test_a_lead_allows_tokens_consistent_with_what_is_left_of_it():
    from diffill.infill.steps import TokenHealing, Vocab
    vocab = Vocab(["", "data", "dataclass", "c", "class", "cl", "x", "datum"])
    keep = vocab.consistent("datac", 10, torch.device("cpu"))
    # "dataclass" begins with all of it; "data" is a shorter start of it; nothing else fits.
    assert keep.nonzero().flatten().tolist() == [1, 2]
    lead = TokenHealing("datac", vocab)
    assert lead.remaining([1, 99], mask_id=99) == "c"   # "data" written, "c" left
    assert lead.remaining([2, 99], mask_id=99) == ""    # "dataclass" wrote it all
    assert lead.remaining([99, 99], mask_id=99) == "datac"


def _watch_passes(model, ids, lo, hi, key_mask, settings):
    """Denoise ``lo..hi`` and record what each pass ran. Returns (result, token positions run,
    full-window passes, stale): ``stale`` lists the positions up to the end of a pass's block
    that the pass skipped although their token changed since their keys and values were last
    computed (a commit the cache never saw)."""
    orig = model.span_logits
    written: dict[int, int] = {}  # window position -> token its cached K/V were computed from
    stale: list[int] = []
    full_passes = 0

    def spy(ids_, lo_, hi_, **kw):
        nonlocal full_passes
        run = kw.get("run")  # every pass names what it runs: None is the whole window
        full = run is None
        full_passes += full
        where = range(ids_.shape[1]) if full else run if isinstance(run, range) else run.tolist()
        if not full:
            stale.extend(p for p in range(lo, hi_)
                         if p not in where and written.get(p) != int(ids_[0, p]))
        written.update({p: int(ids_[0, p]) for p in where})
        return orig(ids_, lo_, hi_, **kw)

    before = model.tokens_run
    model.span_logits = spy
    try:
        out = denoise(model, ids, lo, hi, key_mask=key_mask, settings=settings)
    finally:
        model.span_logits = orig
    return out, model.tokens_run - before, full_passes, stale


def test_open_passes_run_fewer_positions_and_never_leave_a_commit_unrefreshed(pattern_model):
    """pass_positions="open": every pass runs the masked positions and the ones committed since
    the last pass, so when a pass runs, each position it skips holds keys and values computed
    from the token it has now; and a fill costs fewer token positions than block passes."""
    mask = pattern_model.profile.mask_id
    ids, key_mask, lo = layout(pattern_model, [3, 4, 5, 6], [11, 12, 13], [8])
    costs = {}
    for positions in ("block", "open"):
        settings = SamplerSettings(cache="dual", threshold=1.0, pass_positions=positions)
        out, costs[positions], _, stale = _watch_passes(pattern_model, ids, lo, lo + 8,
                                                        key_mask, settings)
        assert out.forward_passes == 8  # one token a pass: threshold 1.0
        assert not (out.ids[:, lo:lo + 8] == mask).any()
        assert stale == []
    assert costs["open"] < costs["block"]


@pytest.mark.parametrize("positions", ["block", "open"])
def test_one_refresh_per_fill_runs_the_window_once_and_never_leaves_a_commit_unrefreshed(
        pattern_model, positions):
    """refresh="fill": only the first of two blocks starts with a full-window pass; the second
    starts with its own positions and the first block's last commit, so no pass attends to a
    mask where a token was committed, and the fill costs less than a refresh per block. (The
    answers may differ: the context's keys and values are older. On this counting task the
    second block writes one token too many; diffill-small's held-out figures are in
    docs/performance.md.)"""
    mask = pattern_model.profile.mask_id
    ids, key_mask, lo = layout(pattern_model, [3, 4, 5, 6], [11, 12, 13], [8])
    seen = {}
    for refresh in ("block", "fill"):
        settings = SamplerSettings(cache="dual", threshold=1.0, block_size=4, refresh=refresh,
                                   pass_positions=positions)
        out, cost, full, stale = _watch_passes(pattern_model, ids, lo, lo + 8, key_mask,
                                               settings)
        assert out.forward_passes == 8
        assert not (out.ids[:, lo:lo + 8] == mask).any()
        assert stale == []
        seen[refresh] = (cost, full)
    assert seen["block"][1] == 2 and seen["fill"][1] == 1
    assert seen["fill"][0] < seen["block"][0]


def test_pass_positions_and_refresh_are_checked():
    with pytest.raises(ValueError, match="pass_positions"):
        SamplerSettings(pass_positions="some")
    with pytest.raises(ValueError, match="refresh"):
        SamplerSettings(refresh="sometimes")
    with pytest.raises(ValueError, match="block_size"):
        SamplerSettings(block_size=-1)
