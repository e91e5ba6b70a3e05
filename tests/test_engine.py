"""The engine: batching of different requests, per-request failures, context clipping."""

from __future__ import annotations

import helpers
from infill import Engine, InfillRequest, InfillSettings
from infill.text import PositionError
from model import load_model

LINES = ["c0 c1 c2 c3 c4  c8 c9 c10", "c3 c4 c5 c6 c7 c8  c11 c0 c1", "c9 c10 c11  c3 c4 c5"]
CURSORS = [15, 18, 11]
SETTINGS = InfillSettings(max_tokens=8, ensemble=1)


def test_a_batch_of_different_requests_answers_each_as_if_alone(pattern_model):
    engine = Engine(pattern_model)
    alone = [engine.run(InfillRequest(t, c), SETTINGS).best.text for t, c in zip(LINES, CURSORS)]
    assert alone[0] == "c5 c6 c7" and alone[1] == "c9 c10"
    batched = engine.run_batch([(InfillRequest(t, c), None) for t, c in zip(LINES, CURSORS)],
                               SETTINGS)
    assert [r.best.text for r in batched] == alone


def test_one_bad_or_cancelled_request_does_not_fail_the_batch(pattern_model):
    engine = Engine(pattern_model)
    items = [(InfillRequest(LINES[0], CURSORS[0]), None),
             (InfillRequest(LINES[1], 999), None),          # position outside the document
             (InfillRequest(LINES[2], CURSORS[2]), lambda: True)]  # cancelled at once
    out = engine.run_batch(items, SETTINGS)
    assert out[0].best.text == "c5 c6 c7"
    assert isinstance(out[1], PositionError)
    from infill import Cancelled
    assert isinstance(out[2], Cancelled)


def test_context_is_clipped_to_the_window_a_checkpoint_was_trained_on(tmp_path, bpe):
    folder, _ = helpers.save_checkpoint(tmp_path / "w", "qwen2", tokenizer=bpe, tied=True,
                                        config_updates=helpers.diffill_config(seq_len=96))
    engine = Engine(load_model(folder))
    b = engine.budget(InfillSettings(), [32])
    assert b.prefix_tokens + b.suffix_tokens <= 96 - 32 and b.prefix_tokens > b.suffix_tokens
    text = "x = compute(value)\n" * 200
    job = engine.prepare(InfillRequest(text, len(text) // 2), InfillSettings(lengths=(32,)))
    assert len(job.window.prefix_ids) + len(job.window.suffix_ids) <= 64
    # A checkpoint without a recorded window keeps the configured budget.
    plain, _ = helpers.save_checkpoint(tmp_path / "p", "qwen2", tokenizer=bpe, tied=True,
                                       config_updates=helpers.diffill_config())
    assert Engine(load_model(plain)).budget(InfillSettings(), [32]) == InfillSettings().budget


def test_fills_are_capped_at_the_checkpoints_max_fill_unless_lengths_are_explicit(tmp_path, bpe):
    folder, _ = helpers.save_checkpoint(tmp_path / "m", "qwen2", tokenizer=bpe, tied=True,
                                        config_updates=helpers.diffill_config(max_fill=16))
    engine = Engine(load_model(folder))
    text = "def f(x):\n    \n    return x\n"
    block = engine.prepare(InfillRequest(text, 14), InfillSettings(max_tokens=64, ensemble=2))
    line = engine.prepare(InfillRequest("y = f(1) + g(2)\n", 6),
                          InfillSettings(max_tokens=64, ensemble=3))
    assert (block.mode, block.lengths) == ("block", [8, 16])
    assert (line.mode, line.lengths) == ("line", [4, 8, 16])
    assert engine.prepare(InfillRequest(text, 14), InfillSettings(max_tokens=8)).lengths == [8]
    assert engine.prepare(InfillRequest(text, 14),
                          InfillSettings(lengths=(48,))).lengths == [48]
    # Without a recorded max_fill the largest rungs under max_tokens are tried.
    plain, _ = helpers.save_checkpoint(tmp_path / "p", "qwen2", tokenizer=bpe, tied=True,
                                       config_updates=helpers.diffill_config())
    assert Engine(load_model(plain)).prepare(
        InfillRequest(text, 14), InfillSettings(max_tokens=64, ensemble=2)).lengths == [32, 64]
