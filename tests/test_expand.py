"""DreamOn-style variable-length infill: a tiny model trained here to need it, whose gaps must
grow (``<|expand|>``) or shrink (EOS as delete) to the run that fits."""

from __future__ import annotations

import pytest

import helpers
from diffill.infill import Cancelled, InfillRequest, InfillSettings, make_engine
from diffill.infill.api import SamplerSettings
from diffill.infill.expand import commit_count, infill_variable
from diffill.infill.sampler import infill
from diffill.model import load_model

ONE_PER_STEP = SamplerSettings(schedule="fixed")
"""DreamOn's own default: one mask committed per pass."""


@pytest.fixture(scope="module")
def dreamon(tmp_path_factory):
    return load_model(helpers.train_dreamon_model(tmp_path_factory.mktemp("dreamon")))


def row(start: int, gap: int):
    pre, mid, suf = helpers.pattern_row(start, 4, gap, 4, slots=0)
    return pre, [t for t in mid if t != 1], suf


@pytest.mark.slow
def test_the_checkpoint_is_a_dreamon_profile(dreamon):
    prof = dreamon.profile
    assert prof.name == "dreamon" and prof.expand_id == helpers.DREAMON_EXPAND
    assert prof.filler_ids == (helpers.DREAMON_DELETE,) and prof.filler_mode == "delete"
    assert prof.shift_logits


@pytest.mark.parametrize("settings", [SamplerSettings(), ONE_PER_STEP])
def test_a_gap_too_short_expands_to_the_answer(dreamon, settings):
    for start in range(0, 12, 3):
        pre, mid, suf = row(start, 6)
        cand, passes = infill_variable(dreamon, pre, suf, 2, max_length=16, settings=settings)
        assert cand.tokens == mid and cand.length == 6
        # Two masks cannot hold six tokens without growing: the fixed-length sampler cannot.
        fixed, _ = infill(dreamon, pre, suf, [2], settings=settings)
        assert len(fixed[0].tokens) <= 2
    if settings.schedule == "fixed":  # one commit per pass: 4 expansions + 6 tokens
        assert passes == 10


@pytest.mark.parametrize("settings", [SamplerSettings(), ONE_PER_STEP])
def test_a_gap_too_long_deletes_its_surplus_masks(dreamon, settings):
    for start in range(0, 12, 3):
        pre, mid, suf = row(start, 2)
        cand, passes = infill_variable(dreamon, pre, suf, 8, max_length=16, settings=settings)
        assert cand.tokens == mid and cand.length == 2 and cand.terminated
        assert 0 < cand.score <= 1
    if settings.schedule == "fixed":  # one commit per pass: 6 deletions + 2 tokens
        assert passes == 8


def test_growth_stops_at_the_maximum_length(dreamon):
    pre, mid, suf = row(0, 7)
    cand, _ = infill_variable(dreamon, pre, suf, 2, max_length=4)
    assert cand.length == 4 and len(cand.tokens) <= 4 and not cand.terminated
    with pytest.raises(ValueError):
        infill_variable(dreamon, pre, suf, 5, max_length=4)


def test_cancel_stops_between_steps(dreamon):
    pre, _, suf = row(0, 6)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        infill_variable(dreamon, pre, suf, 2, max_length=16, settings=ONE_PER_STEP,
                        cancel=cancel)
    assert len(asked) == 3


def test_commit_count_spreads_the_initial_gap_over_the_steps():
    assert commit_count(5, 8, 0) == 1 and commit_count(5, 8, 4) == 2
    assert commit_count(1, 8, 2) == 1


def test_the_engine_lets_a_dreamon_gap_find_its_length(dreamon):
    engine = make_engine(dreamon)
    text = "c0 c1 c2 c3  c10 c11 c0\n"
    req = InfillRequest(text, 12)
    # Default start (8 masks for a line): six tokens fit, two masks are deleted.
    result = engine.run(req, InfillSettings(min_confidence=0.0))
    assert result.best.text == "c4 c5 c6 c7 c8 c9" and len(result.items) == 1
    # A start of two masks grows to six.
    grown = engine.run(req, InfillSettings(min_confidence=0.0, lengths=(2,)))
    assert grown.best.text == "c4 c5 c6 c7 c8 c9"
    # A rewrite starts at the selection's length and finds the run that fits.
    sel = "c0 c1 c2 c3 c9 c10 c11 c0\n"
    rewrite = engine.run(InfillRequest(sel, 12, 14, action="rewrite"),
                         InfillSettings(min_confidence=0.0))
    assert rewrite.best.text.split() == ["c4", "c5", "c6", "c7", "c8", "c9"]
