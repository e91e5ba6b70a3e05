"""The engine: batching of different requests, per-request failures, context clipping."""

from __future__ import annotations

import helpers
import pytest
from diffill.infill import Engine, InfillRequest, InfillSettings, SamplerSettings
from diffill.infill.api import DocumentKey, Submission
from diffill.infill.rank import rank, unknown_names
from diffill.infill.text import PositionError
from diffill.model import load_model

LINES = ["c0 c1 c2 c3 c4  c8 c9 c10", "c3 c4 c5 c6 c7 c8  c11 c0 c1", "c9 c10 c11  c3 c4 c5"]
CURSORS = [15, 18, 11]
SETTINGS = InfillSettings(max_tokens=8, ensemble=1)


def test_a_batch_of_different_requests_answers_each_as_if_alone(pattern_model):
    engine = Engine(pattern_model)
    alone = [engine.run(InfillRequest(t, c), SETTINGS).best.text for t, c in zip(LINES, CURSORS)]
    assert alone[0] == "c5 c6 c7" and alone[1] == "c9 c10"
    batched = engine.run_batch([Submission(InfillRequest(t, c)) for t, c in zip(LINES, CURSORS)],
                               SETTINGS)
    assert [r.best.text for r in batched] == alone


def test_one_bad_or_cancelled_request_does_not_fail_the_batch(pattern_model):
    engine = Engine(pattern_model)
    items = [Submission(InfillRequest(LINES[0], CURSORS[0])),
             Submission(InfillRequest(LINES[1], 999)),          # position outside the document
             Submission(InfillRequest(LINES[2], CURSORS[2]), lambda: True)]  # cancelled at once
    out = engine.run_batch(items, SETTINGS)
    assert out[0].best.text == "c5 c6 c7"
    assert isinstance(out[1], PositionError)
    from diffill.infill import Cancelled
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


def test_min_confidence_withholds_what_the_model_is_unsure_of(pattern_model):
    engine = Engine(pattern_model)
    shown = engine.run(InfillRequest(LINES[0], CURSORS[0]), SETTINGS)
    score = shown.best.score
    assert shown.best.text == "c5 c6 c7" and 0 < score < 1 and shown.withheld == 0
    above = engine.run(InfillRequest(LINES[0], CURSORS[0]),
                       InfillSettings(max_tokens=8, ensemble=1, min_confidence=(score + 1) / 2))
    assert above.best is None and above.withheld == 1
    at = engine.run(InfillRequest(LINES[0], CURSORS[0]),
                    InfillSettings(max_tokens=8, ensemble=1, min_confidence=score))
    assert at.best is not None and at.best.text == "c5 c6 c7"


@pytest.mark.slow
def test_a_checkpoints_calibrated_min_confidence_is_the_default(tmp_path):
    import json
    folder = helpers.train_pattern_model(tmp_path / "p", steps=300)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["diffill"]["min_confidence"] = 0.999
    (folder / "config.json").write_text(json.dumps(cfg))
    engine = Engine(load_model(folder))
    assert engine.run(InfillRequest(LINES[0], CURSORS[0]), SETTINGS).best is None
    explicit = InfillSettings(max_tokens=8, ensemble=1, min_confidence=0.0)
    assert engine.run(InfillRequest(LINES[0], CURSORS[0]), explicit).best is not None


@pytest.mark.slow
def test_a_checkpoints_floor_can_differ_by_mode(tmp_path):
    import json

    import pytest

    from diffill.model import CheckpointError
    folder = helpers.train_pattern_model(tmp_path / "p", steps=300)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["diffill"]["min_confidence"] = {"line": 0.0, "block": 0.999}
    (folder / "config.json").write_text(json.dumps(cfg))
    engine = Engine(load_model(folder))
    req = InfillRequest(LINES[0], CURSORS[0])
    line = engine.run(req, InfillSettings(max_tokens=8, ensemble=1, mode="line"))
    block = engine.run(req, InfillSettings(max_tokens=8, ensemble=1, mode="block"))
    assert line.best is not None and line.withheld == 0
    assert block.best is None and block.withheld >= 1
    for bad in ({"line": 2.0}, {"rewrite": 0.5}, "high", True):
        cfg["diffill"]["min_confidence"] = bad
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="min_confidence"):
            load_model(folder)


def test_candidates_that_use_names_defined_nowhere_rank_last():
    from diffill.infill import Completion
    doc = "import os\n\ndef size(path):\n    \n"
    good = Completion("return os.path.getsize(path)", 30, 30, score=0.4, parses=None)
    bad = Completion("return osutil.size(filename)", 30, 30, score=0.9, parses=None)
    items = [bad, good]
    rank(items, doc, "python")
    assert items[0] is good  # both parse; the surer one needs two names that exist nowhere
    assert unknown_names(bad.text, doc) == ["osutil", "filename"]
    assert unknown_names(good.text, doc) == []
    # A file broken elsewhere (mid-edit) still ranks by the syntax around the fill.
    broken = "def g(:\n\ndef size(path):\n    \n"
    at = broken.index("    \n") + 4
    closes = Completion("return len(path)", at, at, score=0.4, parses=None)
    opens = Completion("return len(path", at, at, score=0.9, parses=None)
    items = [opens, closes]
    rank(items, broken, "python")
    assert items[0] is closes and (closes.parses, opens.parses) == (True, False)
    # A fill that goes on with the word at the cursor is checked as the whole word.
    typed = "def f(sub: s"
    rest = Completion("tr) -> None:", len(typed), len(typed), score=0.5, parses=None)
    rank([rest], typed, "python")
    assert rest.unknown == ()  # str, a builtin
    odd = Completion("trx) -> None:", len(typed), len(typed), score=0.5, parses=None)
    rank([odd], typed, "python")
    assert odd.unknown == ("strx",)
    # A name defined in another open file's stretch (extra context) is not unknown there.
    items = [bad, good]
    rank(items, doc, "python",
                                extra=[("util.py", "osutil = None\nfilename = 'x'\n")])
    assert items[0] is bad and bad.unknown == ()
    # Names the fill binds itself, keywords, builtins and attributes are never unknown.
    assert unknown_names("for p in paths:\n    total += len(p.name)", "total = 0\npaths = []") == []


def test_a_completion_that_names_something_defined_nowhere_is_withheld(pattern_model):
    """hide_unknown_names (on by default): a Python completion using a name that is in
    neither the file, the extra context, the builtins nor the keywords is not shown, and is
    counted as withheld; off, it is shown (ranked last); other languages are not checked,
    and a name the file defines is fine."""
    from dataclasses import replace
    engine = Engine(pattern_model)
    doc = "c0 c1 c2 c3 c4  c8 c9 c10\n"
    at = doc.index("  c8") + 1
    s = InfillSettings(max_tokens=8, ensemble=1, mode="line", min_confidence=0.0)
    shown = engine.run(InfillRequest(doc, at, language="python"),
                       replace(s, hide_unknown_names=False))
    assert shown.best is not None and shown.best.text.strip() == "c5 c6 c7"
    assert shown.best.unknown == ("c5", "c6", "c7")
    hidden = engine.run(InfillRequest(doc, at, language="python"), s)
    assert hidden.items == [] and hidden.withheld == len(shown.items)
    plain = engine.run(InfillRequest(doc, at), s)  # no language: nothing to check against
    assert plain.best is not None and plain.best.text.strip() == "c5 c6 c7"
    # In a string or a comment a fill is prose or data: its words are no names.
    quoted = 'x = "c0 c1 c2 c3 c4  c8 c9 c10"\n'
    inside = engine.run(InfillRequest(quoted, quoted.index("  c8") + 1, language="python"), s)
    assert inside.best is not None and inside.best.unknown == ()
    defined = "c5 = c6 = c7 = 0\n" + doc
    known = engine.run(InfillRequest(defined, at + 16, language="python"), s)
    assert known.best is not None and known.best.unknown == ()


def test_a_whole_line_fill_in_front_of_code_keeps_its_newline():
    from diffill.infill import post
    # Cursor at column 0 (or after the indentation) of a line that goes on: the model wrote a
    # whole line, which must end before the code that follows.
    assert post.clean("x = 1\n\n", mode="line", line_before="", suffix="y = 2\n") == "x = 1\n"
    assert post.clean("x = 1\ny", mode="line", line_before="    ",
                      suffix="return y\n") == "x = 1\n    "
    doc = "def f():\n    return y\n"
    cursor = doc.index("return")
    fill = post.clean("y = 2\n", mode="line", line_before="    ", suffix=doc[cursor:])
    assert doc[:cursor] + fill + doc[cursor:] == "def f():\n    y = 2\n    return y\n"
    # Mid-line, the fill still stops at the newline.
    assert post.clean("(1)\nfoo", mode="line", line_before="x = f", suffix=" + 1\n") == "(1)"


def test_every_request_is_bounded_and_an_oversized_one_names_its_cap(pattern_model):
    import pytest

    from diffill.infill.api import MAX_MASKS
    from diffill.infill.text import InputError
    for bad in (dict(lengths=(100000,)), dict(max_tokens=10**6), dict(ensemble=50),
                dict(lengths=tuple(range(1, 20)))):
        with pytest.raises(ValueError, match="cap|at most|between"):
            InfillSettings(**bad)
    from diffill.infill.context import ContextBudget
    with pytest.raises(ValueError, match="context budgets"):
        InfillSettings(budget=ContextBudget(prefix_tokens=10**7))
    engine = Engine(pattern_model)
    big = " ".join(f"c{i % 12}" for i in range(MAX_MASKS + 50))
    for action in ("rewrite", "refine"):
        with pytest.raises(InputError, match=f"at most {MAX_MASKS}"):
            engine.run(InfillRequest(big, 0, len(big), action=action), SETTINGS)


def test_the_cache_default_is_the_checkpoints_recorded_choice(tmp_path, bpe):
    from diffill.infill.api import DEFAULT_BLOCK
    from diffill.infill.sampler import SamplerSettings, block_size, cache_mode, refresh_mode
    from diffill.model.errors import CheckpointError
    folder, _ = helpers.save_checkpoint(tmp_path / "c", "qwen2", tokenizer=bpe, tied=True,
                                        config_updates=helpers.diffill_config(cache="dual"))
    model = load_model(folder)
    assert model.profile.cache == "dual"
    assert cache_mode(SamplerSettings(), model) == "dual"
    assert cache_mode(SamplerSettings(cache="none"), model) == "none"
    plain, _ = helpers.save_checkpoint(tmp_path / "p", "qwen2", tokenizer=bpe, tied=True,
                                       config_updates=helpers.diffill_config())
    assert cache_mode(SamplerSettings(), load_model(plain)) == "none"
    assert (block_size(SamplerSettings(), model), refresh_mode(SamplerSettings(), model)) == \
        (DEFAULT_BLOCK, "block")
    blocks, _ = helpers.save_checkpoint(
        tmp_path / "b", "qwen2", tokenizer=bpe, tied=True,
        config_updates=helpers.diffill_config(cache="dual", block_size=8, refresh="fill"))
    recorded = load_model(blocks)
    assert (block_size(SamplerSettings(), recorded),
            refresh_mode(SamplerSettings(), recorded)) == (8, "fill")
    asked = SamplerSettings(block_size=16, refresh="block")
    assert (block_size(asked, recorded), refresh_mode(asked, recorded)) == (16, "block")
    for bad in ({"refresh": "never"}, {"block_size": 0}, {"block_size": "8"}):
        broken, _ = helpers.save_checkpoint(
            tmp_path / f"x{len(str(bad))}", "qwen2", tokenizer=bpe,
            tied=True, config_updates=helpers.diffill_config(**bad))
        with pytest.raises(CheckpointError, match=next(iter(bad))):
            load_model(broken)
    result = Engine(model).run(InfillRequest("def f(x):\n    return \n", 20),
                               InfillSettings(max_tokens=8, ensemble=1))
    assert result.forward_passes >= 1


def test_a_checkpoint_may_run_in_bf16_on_cpus_with_native_bf16(tmp_path, bpe, monkeypatch):
    import torch

    import diffill.model.loader as L
    folder, _ = helpers.save_checkpoint(tmp_path / "b", "qwen2", tokenizer=bpe, tied=True,
                                        config_updates=helpers.diffill_config(cpu_bf16=True))
    plain, _ = helpers.save_checkpoint(tmp_path / "p", "qwen2", tokenizer=bpe, tied=True,
                                       config_updates=helpers.diffill_config())
    monkeypatch.setattr(L, "cpu_has_bf16", lambda: True)
    assert load_model(folder, device="cpu").dtype == torch.bfloat16
    assert load_model(plain, device="cpu").dtype == torch.float32
    assert load_model(folder, device="cpu", dtype="float32").dtype == torch.float32
    monkeypatch.setattr(L, "cpu_has_bf16", lambda: False)
    assert load_model(folder, device="cpu").dtype == torch.float32


def test_under_contention_a_completion_tries_one_mask_count(pattern_model):
    from dataclasses import replace
    engine = Engine(pattern_model)
    s = InfillSettings(max_tokens=16, ensemble=2)
    req = InfillRequest(LINES[0], CURSORS[0])
    assert engine.prepare(req, s).lengths == [8, 16]
    assert engine.prepare(req, s, contended=True).lengths == [8]  # a line: the shortest
    assert engine.prepare(req, replace(s, mode="block"), contended=True).lengths == [16]
    assert engine.prepare(req, replace(s, shed_load=False), contended=True).lengths == [8, 16]
    assert engine.prepare(req, replace(s, lengths=(8, 16)), contended=True).lengths == [8, 16]
    # Asked while typing: a line tries its shorter rung, a block keeps the ensemble.
    quick = replace(s, quick_lines=True)
    assert engine.prepare(req, quick).lengths == [8]
    assert engine.prepare(req, replace(quick, mode="block")).lengths == [8, 16]
    items = [Submission(InfillRequest(t, c)) for t, c in zip(LINES, CURSORS)]
    shed, before = engine.shed, pattern_model.tokens_run
    full = engine.run_batch(items, s)
    full_tokens, before = pattern_model.tokens_run - before, pattern_model.tokens_run
    lean = engine.run_batch(items, s, contended=True)
    assert engine.shed - shed == 3
    assert pattern_model.tokens_run - before < full_tokens  # less work: fewer rows
    assert all(r.best is not None for r in full + lean)


def test_a_stuttering_fill_is_cut_to_one_copy_unless_the_document_repeats_it(pattern_model):
    from diffill.infill.context import encode
    from diffill.infill.sampler import Candidate
    engine = Engine(pattern_model)
    job = engine.prepare(InfillRequest(LINES[0], CURSORS[0]), SETTINGS)
    stutter = encode(engine.tokenizer, "c5 c5 c5 c5")
    result = engine.finish(job, [Candidate(stutter, len(stutter), 0.9)], 1)
    assert result.best.text == "c5"
    # A document that holds the run itself: the fill is code like it, and stays whole.
    text = "c5 c5 c5 c5\n" + LINES[0]
    job = engine.prepare(InfillRequest(text, len("c5 c5 c5 c5\n") + CURSORS[0]), SETTINGS)
    result = engine.finish(job, [Candidate(stutter, len(stutter), 0.9)], 1)
    assert result.best.text == "c5 c5 c5 c5"


def test_a_partial_word_is_healed_the_fill_writes_it_again_as_the_tokenizer_joins_it(
        diffill_ckpt):
    """Token healing: the partial word's tokens leave the context, and every fill begins with
    that word (the constraint holds even for a random model), which the answer then drops."""
    from dataclasses import replace
    from diffill.infill.context import encode
    engine = Engine(load_model(diffill_ckpt))
    text = "def total(items):\n    return sum(ite\n"
    cursor = text.index("ite\n") + 3
    s = InfillSettings(max_tokens=8, ensemble=2)
    job = engine.prepare(InfillRequest(text, cursor, language="python"), s)
    assert job.lead is not None and job.lead.text.endswith("ite")
    assert engine.decode(job.window.prefix_ids) + job.lead.text == text[:cursor]
    cold = engine.prepare(InfillRequest(text, cursor), replace(s, token_healing=False))
    assert cold.lead is None and cold.window.prefix_ids == encode(engine.tokenizer, text[:cursor])
    # The space after code is healed too (the tokenizer joins it to the next word); a line's
    # indentation alone is not.
    spaced = engine.prepare(InfillRequest("x = ", 4), s)
    assert spaced.lead is not None and spaced.lead.text.endswith(" ")
    assert engine.decode(spaced.window.prefix_ids) + spaced.lead.text == "x = "
    assert engine.prepare(InfillRequest("if x:\n    ", 10), s).lead is None
    from diffill.infill.sampler import infill_many
    (cands,), _ = infill_many(engine.model, [job.sampler_job], settings=s.sampler)
    assert cands and all(engine.decode(c.tokens).startswith(job.lead.text) for c in cands)
    # (A random model's names are defined nowhere: shown all the same, to see them.)
    result = engine.run(InfillRequest(text, cursor, language="python"),
                        replace(s, hide_unknown_names=False, min_confidence=0.0))
    assert result.items  # every candidate began with the lead, so none was dropped


@pytest.mark.slow
def test_a_documents_next_request_begins_its_window_where_the_last_one_did(diffill_ckpt):
    engine = Engine(load_model(diffill_ckpt))
    s = InfillSettings(max_tokens=8, ensemble=1)
    text = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 200))
    line = "result = compute(" + ", ".join(f"value_{k}" for k in range(198, 186, -1)) + ")"
    typed = [text + line[:k] for k in range(0, len(line) + 1, 5)]  # a keystroke burst
    starts, plain = [], []
    for doc in typed:
        key = DocumentKey("test", "doc")
        engine.run_batch([Submission(InfillRequest(doc, len(doc)), document=key)], s)
        starts.append(engine.prefixes[key].start[0])
        plain.append(engine.prepare(InfillRequest(doc, len(doc)), s).window.prefix_start)
    assert starts[0] > 0  # the document is longer than the window
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    # Each move leaves room for the next keystrokes, so the start moves seldom; windows
    # chosen afresh for each keystroke move whenever a line no longer fits.
    assert 1 <= moves < sum(a != b for a, b in zip(plain, plain[1:])), (starts, plain)
    # Without a document key nothing is remembered.
    other = Engine(engine.model)
    other.run_batch([Submission(InfillRequest(typed[-1], len(typed[-1])))], s)
    assert not other.prefixes


def test_a_line_fill_that_wrote_past_its_line_end_ended_by_itself(diffill_ckpt):
    """Ranking prefers fills the model ended itself; in line mode, writing the newline ends the
    line, even when the masks ran out behind it."""
    from diffill.infill.sampler import Candidate
    engine = Engine(load_model(diffill_ckpt))
    text = "def f(x):\n    if x\n    return x\n"
    cursor = text.index("if x") + 4
    job = engine.prepare(InfillRequest(text, cursor),
                         InfillSettings(mode="line", ensemble=1, token_healing=False))
    tok = engine.model.tokenizer

    def cand(fill: str) -> Candidate:
        return Candidate(tokens=tok(fill, add_special_tokens=False)["input_ids"], length=8,
                         score=0.5, terminated=False)

    result = engine.finish(job, [cand(" is None:\n        x = 1"), cand(" is not None and")], 1)
    by_text = {it.text: it.terminated for it in result.items}
    assert by_text == {" is None:": True, " is not None and": False}


def test_names_a_fill_defines_on_its_line_are_not_unknown():
    """``import numpy as <fill>``: the fill ``np`` is defined by its own line."""
    from diffill.infill import Completion
    for line, fill in (("import numpy as ", "np"), ("    for ", "row in rows_of(table):"),
                       ("    with open(p) as ", "fh:"), ("    except OSError as ", "err:")):
        doc = f"def f(p, rows_of, table):\n    rows = []\n{line}\n"
        at = doc.index(line) + len(line)
        item = Completion(fill, at, at, score=0.5)
        rank([item], doc, "python")
        assert item.unknown == (), (line, fill)
    doc = "y = \n"
    item = Completion("np.zeros(x)", 4, 4, score=0.5)
    rank([item], doc, "python")
    assert item.unknown == ("np", "x")  # used, not bound by this line


def test_a_ghost_that_breaks_a_line_is_withheld_and_the_reason_is_named(pattern_model):
    import time
    from diffill.infill import Completion
    engine = Engine(pattern_model)
    doc = "def f(v, mean):\n    acc = 0\n    acc += (v - ) ** 2\n"
    at = doc.index("(v - ") + 5
    req = InfillRequest(doc, at, language="python")
    s = InfillSettings(min_confidence=0.5)
    items = [Completion("1.0.0.0.0.", at, at, score=0.9), Completion("mean", at, at, score=0.8),
             Completion("zebra", at, at, score=0.7), Completion("v", at, at, score=0.1)]
    result = engine.result(req, "line", items, s, 1, time.perf_counter())
    assert [it.text for it in result.items] == ["mean"]
    assert result.withheld_by == {"syntax": 1, "unknown name": 1, "floor": 1}
    assert result.withheld == 3


@pytest.mark.slow
def test_an_explicit_ask_gets_the_best_candidate_under_the_calibrated_floor(tmp_path):
    """The checkpoint's floor is for ghosts that appear by themselves: the CLI and an invoked
    completion (explicit) get the best candidate with its score; a floor they set filters."""
    import json
    from dataclasses import replace
    folder = helpers.train_pattern_model(tmp_path / "p", steps=300)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["diffill"]["min_confidence"] = 0.999
    (folder / "config.json").write_text(json.dumps(cfg))
    engine = Engine(load_model(folder))
    quiet = engine.run(InfillRequest(LINES[0], CURSORS[0]), SETTINGS)
    assert quiet.best is None and quiet.withheld_by == {"floor": quiet.withheld}
    asked = engine.run(InfillRequest(LINES[0], CURSORS[0]), replace(SETTINGS, explicit=True))
    assert asked.best is not None and 0 < asked.best.score < 0.999
    floored = engine.run(InfillRequest(LINES[0], CURSORS[0]),
                         replace(SETTINGS, explicit=True, min_confidence=0.999))
    assert floored.best is None


def test_a_completion_verifies_drafts_from_the_document_first(pattern_model):
    """The counting line's own earlier run is a draft (found after 7 code tokens: verified
    whole): every token is the model's first choice, so it is kept whole, and the fill
    takes the verifier's one pass. Found after one token only, the draft is cut to its
    first two code tokens."""
    from dataclasses import replace
    engine = Engine(pattern_model)
    weak = "c4 c5 c6 c7 c8\nc0 c1 c2 c3 c4 \nc8 c9 c10"
    ghost = InfillSettings(max_tokens=8, ensemble=1, mode="line")
    job = engine.prepare(InfillRequest(weak, weak.index("c4 \n") + 3), ghost)
    assert engine.decode(job.drafts[0].ids).split() == ["c5", "c6"]
    # An explicit ask has no next keystroke to look again: it gets the whole draft.
    job = engine.prepare(InfillRequest(weak, weak.index("c4 \n") + 3),
                         replace(ghost, explicit=True))
    assert engine.decode(job.drafts[0].ids).split() == ["c5", "c6", "c7", "c8"]
    assert job.sampler_job.veto is False  # and kept whole, whatever the model says
    assert engine.prepare(InfillRequest(weak, weak.index("c4 \n") + 3),
                          ghost).sampler_job.veto is True
    doc = "c1 c2 c3 c4 c5 c6 c7 c8\nc0 c1 c2 c3 c4 \nc8 c9 c10"
    at = doc.index("c4 \n") + 3
    # Only the model's first choices pass here.
    s = InfillSettings(max_tokens=8, ensemble=1, mode="line", min_confidence=0.0,
                       sampler=SamplerSettings(draft_ratio=1.0, draft_floor=1.0))
    job = engine.prepare(InfillRequest(doc, at), s)
    assert engine.decode(job.drafts[0].ids).split() == ["c5", "c6", "c7", "c8"]
    drafted = engine.run(InfillRequest(doc, at), s)
    assert drafted.best.text.split() == ["c5", "c6", "c7", "c8"] and drafted.forward_passes == 1
    plain = engine.run(InfillRequest(doc, at), replace(s, drafts=False))
    assert plain.best.text.split()[:4] == ["c5", "c6", "c7", "c8"]


def test_a_draft_from_elsewhere_is_weighed_by_the_support_it_was_sent_with(pattern_model):
    """A draft the editor's side found (the workspace's, another document's) comes with the
    length of the match it was found after: a long one is verified whole and scores as
    such; one sent without (support 1) is a weak draft, cut to two code tokens for a ghost.
    A support for no draft, or a negative one, is a clear error."""
    from diffill.infill.text import InputError
    engine = Engine(pattern_model)
    doc = "c0 c1 c2 c3 c4 \nc8 c9 c10"
    at = doc.index("c4 \n") + 3
    s = InfillSettings(max_tokens=8, ensemble=1, mode="line", min_confidence=0.0)
    weak = engine.prepare(InfillRequest(doc, at, drafts=("c5 c6 c7 c8",)), s)
    strong = engine.prepare(InfillRequest(doc, at, drafts=("c5 c6 c7 c8",),
                                          draft_support=(8,)), s)
    assert engine.decode(weak.drafts[0].ids).split() == ["c5", "c6"]
    assert weak.drafts[0].support == 1 and strong.drafts[0].support == 8
    assert engine.decode(strong.drafts[0].ids).split() == ["c5", "c6", "c7", "c8"]
    for bad in ((8, 8), (-1,)):
        with pytest.raises(InputError, match="draft_support"):
            engine.run(InfillRequest(doc, at, drafts=("c5",), draft_support=bad), s)


def test_a_draft_the_tokenizer_spells_with_a_filler_or_unknown_id_is_not_verified(
        pattern_model):
    """The counting tokenizer knows no "5" alone: a draft "5 c6" would be read as its
    unknown token (EOS here) and come back as the text <|endoftext|>; it is left out."""
    engine = Engine(pattern_model)
    doc = "c0 c1 c2 c3 c4 \nc8 c9 c10"
    s = InfillSettings(max_tokens=8, ensemble=1, mode="line", min_confidence=0.0)
    job = engine.prepare(InfillRequest(doc, doc.index("c4 \n") + 3, drafts=("5 c6", "c5 c6")),
                         s)
    texts = [engine.decode(d.ids) for d in job.drafts]
    assert "c5 c6" in texts and not any("endoftext" in t for t in texts)


def test_a_whole_line_gap_takes_its_indentation_from_the_syntax(diffill_ckpt):
    """At column 0 of an empty line the fill begins with the indentation the code above says
    (one level deeper after a line ending in ':', else the same), whatever the model thinks."""
    from dataclasses import replace
    engine = Engine(load_model(diffill_ckpt))
    s = InfillSettings(max_tokens=8, ensemble=1, min_confidence=0.0, hide_unknown_names=False,
                       explicit=True)
    for doc, indent in (("def f(x):\n    if x:\n\n    return 1\n", "        "),
                        ("def f(x):\n    y = 1\n\n", "    ")):
        at = doc.index("\n\n") + 1
        job = engine.prepare(InfillRequest(doc, at, language="python"), s)
        assert job.lead is not None and job.lead.text == indent and job.lead.taken == 0
        result = engine.run(InfillRequest(doc, at, language="python"), s)
        for item in result.items:
            assert item.text.startswith(indent) and not item.text[len(indent):].startswith(" ")
    # The line that followed the same line elsewhere is a draft, with the lead's indentation.
    doc = "def g(x):\n    y = 1\n    return y\n\ndef f(x):\n    y = 1\n\n"
    job = engine.prepare(InfillRequest(doc, len(doc) - 1, language="python"), s)
    assert engine.decode(job.drafts[0].ids) == "    return y"
    # A line already indented as deep, or another language, gets nothing added.
    doc = "def f(x):\n    y = 1\n    \n"
    job = engine.prepare(InfillRequest(doc, doc.index("    \n") + 4, language="python"),
                         replace(s, token_healing=False))
    assert job.lead is None


def test_an_explicit_ask_whose_drafts_all_score_low_also_gets_the_models_fill(pattern_model):
    """Another line's wrong continuation is the only draft: a ghost shows that draft or
    nothing (the model writes no fill of its own beside drafts), while an explicit ask,
    whose drafts all score under the ghosts' floor, gets the model's fill too, ranked with
    them."""
    from dataclasses import replace
    doc = "c0 c1 c2 c3 c4 c9 c6\nc0 c1 c2 c3 c4 \nc8 c9 c10"
    at = doc.index("c4 \n") + 3
    engine = Engine(pattern_model)
    profile = pattern_model.profile
    pattern_model.profile = replace(profile, min_confidence={"line": 0.95})
    try:
        s = InfillSettings(max_tokens=8, ensemble=1, mode="line")
        ghost = engine.run(InfillRequest(doc, at), replace(s, min_confidence=0.0))
        assert [it.text.split()[0] for it in ghost.items] == ["c9"]
        assert ghost.forward_passes == 1
        job = engine.prepare(InfillRequest(doc, at), replace(s, explicit=True))
        assert job.sample_under == 0.95
        asked = engine.run(InfillRequest(doc, at), replace(s, explicit=True))
        assert asked.items[0].text.split()[:3] == ["c5", "c6", "c7"]
        assert "c9" in [it.text.split()[0] for it in asked.items] and asked.forward_passes > 1
    finally:
        pattern_model.profile = profile


def test_only_a_line_completion_is_done_at_its_line_end(pattern_model):
    """A line fill's sampler rows stop at their line's end (``steps.LineEnd``); a block, and
    a decode as its authors would run it, go on to their masks' end."""
    from dataclasses import replace
    engine = Engine(pattern_model)
    doc = "c0 c1 c2 c3 c4 \nc8 c9 c10"
    at = doc.index("c4 \n") + 3
    line = InfillSettings(max_tokens=8, ensemble=1, mode="line")
    ends = engine.prepare(InfillRequest(doc, at), line).sampler_job.line_ends
    assert ends is not None and ends is engine.line_ends()
    assert engine.prepare(InfillRequest(doc, at), replace(line, mode="block")).line_ends is None
    faithful = replace(line, sampler=SamplerSettings(faithful=True))
    assert engine.prepare(InfillRequest(doc, at), faithful).line_ends is None


def test_a_fill_adds_no_indentation_to_a_typed_one_and_a_block_draft_finishes_its_statement(
        diffill_ckpt):
    """On a line whose indentation is typed as deep as the syntax asks, a fill that starts
    with more (an unexpected indent) loses it; a block gap's draft runs on to the end of the
    statement its line begins (an ``if``'s body), its lines as deep under the cursor's line
    as they were where it was found."""
    engine = Engine(load_model(diffill_ckpt))
    s = InfillSettings(max_tokens=32, ensemble=1, min_confidence=0.0, hide_unknown_names=False,
                       explicit=True)
    doc = "def f(x):\n    if x:\n        y = 1\n        "
    result = engine.run(InfillRequest(doc, len(doc), language="python",
                                      drafts=("    z = g(x)",)), s)
    texts = [it.text for it in result.items]
    assert "z = g(x)" in texts and not any(t.startswith((" ", "\t")) for t in texts)
    doc = ("class A:\n    def g(self, x):\n        y = 1\n        if x:\n            y = 2\n"
           "            z = 3\n        return y\n\n\ndef f(x):\n    y = 1\n    ")
    job = engine.prepare(InfillRequest(doc, len(doc), language="python"), s)
    assert engine.decode(job.drafts[0].ids) == "if x:\n        y = 2\n        z = 3"
    # a line gap's draft stops at its line's end
    doc = doc[:-4] + "    if \n    return 0\n"
    job = engine.prepare(InfillRequest(doc, doc.index("if \n") + 3, language="python"), s)
    assert job.mode == "line" and all("\n" not in engine.decode(d.ids) for d in job.drafts)
