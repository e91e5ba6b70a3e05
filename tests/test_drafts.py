"""Drafts from the code at hand (infill.drafts) and their verification by the model
(sampler.verify_drafts): found without a model, checked in one pass with one."""

from __future__ import annotations

import pytest

from helpers import pattern_row
from diffill.infill import drafts as D

DOC = """\
def total(items, tax):
    result = compute_total(items, tax)
    return result


def other(items):
    res
"""


def at_end_of(doc: str, marker: str) -> int:
    """The offset after the last occurrence of ``marker``."""
    return doc.rindex(marker) + len(marker)


def test_lookup_finds_what_followed_the_typed_tail_elsewhere_in_the_document():
    doc = DOC.replace("    res\n", "    result = comp\n")
    cursor = at_end_of(doc, "    result = comp")
    assert D.lookup_drafts(doc, cursor)[0] == "ute_total(items, tax)"


def test_a_place_whose_next_line_is_the_cursors_next_line_comes_first():
    """Of two places the typed tail was found, the nearer comes first, unless the farther
    one's next line is the line after the cursor's: the code after the gap agrees with it."""
    doc = ("key = 'true'\nreturn key\n"
           "key = 'false'\nprint(key)\n"
           "key = \nreturn key\n")
    cursor = at_end_of(doc, "key = ")
    assert D.lookup_drafts(doc, cursor) == ["'true'", "'false'"]
    other = doc.replace("key = \nreturn key", "key = \nprint(key)")
    assert D.lookup_drafts(other, at_end_of(other, "key = ")) == ["'false'", "'true'"]
    # Blank lines between do not count; a line that is not the same does.
    spaced = other.replace("'false'\nprint", "'false'\n\n   \nprint")
    assert D.lookup_drafts(spaced, at_end_of(spaced, "key = "))[0] == "'false'"


def test_partial_word_drafts_nearest_earlier_word_first_then_later_then_other_documents():
    doc = "alpha = 1\nalphabet = 2\nal\nalpine = 3\n"
    cursor = at_end_of(doc, "\nal\n") - 1
    assert D.word_drafts("al", doc, cursor - 2, cursor, ["alchemy"]) == \
        ["phabet", "pha", "pine", "chemy"]


def test_drafts_come_from_other_open_documents():
    doc = "import helpers\nhelpers.make_re"
    other = "def make_request(url, timeout=3):\n    return make_request(url)\n"
    found = D.find_drafts(doc, len(doc), others=[other])
    assert "quest(url, timeout=3):" in found  # the lookup of "make_re" in the other text
    assert "quest" in found  # and the partial word's completion


def test_a_line_that_goes_on_after_the_cursor_gets_word_drafts_only():
    doc = "value = compute(a)\nvalue = com(b)\n"
    cursor = at_end_of(doc, "\nvalue = com")
    assert D.find_drafts(doc, cursor) == ["pute"]


def test_a_match_inside_a_longer_word_is_not_a_lookup():
    doc = "maxval = f(1)\nval"
    assert D.lookup_drafts(doc, len(doc)) == []
    assert D.lookup_drafts("val = f(1)\nval", 14) == [" = f(1)"]


def test_the_documents_lookups_come_before_drafts_found_elsewhere_and_repeats_are_dropped():
    doc = "name = value\nna"
    assert D.find_drafts(doc, len(doc), elsewhere=["me = other", "me = value", "me"]) == \
        ["me = value", "me = other", "me"]


def library(*texts: str) -> D.Library:
    return D.Library([(f"f{i}.py", t) for i, t in enumerate(texts)])


def test_a_library_continues_the_typed_line_from_its_rarest_word():
    lib = library("total += 1\n" * 40 + "total = compute_total(items, tax=rate)\n",
                  "y = compute_total(rows)\n")
    # "compute_total" is the anchor: the places kept of "total" end long before the match
    assert len(lib.places["total"]) < lib.counts["total"]
    assert lib.continuations("    total = compute_total(") == ["items, tax=rate)", "rows)"]
    assert lib.continuations("z = compute_total(") == ["items, tax=rate)", "rows)"]
    assert lib.continuations("z = compute_total(", skip="f0.py") == ["rows)"]
    assert lib.continuations("unknown_name(") == []


def test_a_library_completes_a_partial_word_most_used_first():
    lib = library("alpha alphabet alphabet alps\n", "alphabet beta\n")
    assert lib.completions("alp") == ["habet", "ha", "s"]
    assert lib.completions("alphabet") == []
    assert lib.completions("") == []
    assert len(lib) == 2 and lib.chars > 0


def test_the_library_is_searched_after_the_document_and_skips_its_copy():
    lib = library("value = make_value(seed)\n", "value = make_value(other)\n")
    doc = "value = make_value(near)\nvalue = make_value("
    assert D.find_drafts(doc, len(doc), library=lib) == ["near)", "seed)", "other)"]
    assert D.find_drafts(doc, len(doc), library=lib, skip="f0.py") == ["near)", "other)"]
    assert D.find_drafts("v = ma", 6, library=lib) == ["ke_value"]


# ---------------------------------------------------------------- verification by the model


def c(*ks: int) -> list[int]:
    """Token ids of the counting model's words c_k."""
    return [3 + k % 12 for k in ks]


@pytest.fixture
def counting_gap():
    """c0..c4 [gap of 3] c8 c9 c10 c11: the answer is c5 c6 c7."""
    prefix, middle, suffix = pattern_row(0, 5, 3, 4)
    return prefix, suffix, middle[:3]


def test_a_right_draft_fills_the_gap_in_one_pass(pattern_model, counting_gap):
    from diffill.infill.sampler import Gap, infill_many, verify_drafts
    prefix, suffix, answer = counting_gap
    assert answer == c(5, 6, 7)
    # The counting model's answers need whole-window passes (its profile: no cache), so
    # every row of the pass runs a whole window.
    (v,), _, passes = verify_drafts(pattern_model, prefix, suffix, [answer], 8, cached=False)
    assert (v.tokens, v.complete, passes) == (answer, True, 1)
    before = pattern_model.tokens_run
    (cands,), passes = infill_many(pattern_model, [Gap(prefix, suffix, [8], drafts=[answer],
                                                       draft_length=8)])
    assert passes == 1 and cands[0].tokens == answer and cands[0].terminated
    # One pass: the all-mask window, and one row per draft token after the first.
    window = len(prefix) + 8 + len(suffix)
    assert pattern_model.tokens_run - before == window + 3 * window


def test_a_wrong_draft_is_cut_where_the_model_vetoes_it_and_scores_low(
        pattern_model, counting_gap):
    """Past its first word a draft is cut before the first token the model vetoes; a draft
    whose first word the model vetoes keeps it, scored low (the floor withholds it)."""
    from diffill.infill.sampler import Gap, draft_score, infill_many, verify_drafts
    prefix, suffix, answer = counting_gap
    (v,), _, _ = verify_drafts(pattern_model, prefix, suffix, [c(5, 9, 1)], 8, floor=0.3,
                               ratio=0.1, cached=False)
    assert v.tokens == c(5) and not v.complete and v.first == 1.0
    (v,), _, passes = verify_drafts(pattern_model, prefix, suffix, [c(9, 1)], 8, ratio=0.1,
                                    cached=False)
    assert v.tokens == c(9) and passes == 1 and v.first < 0.01
    assert v.score < 0.5 < draft_score(1, 1.0)
    (cands,), passes = infill_many(pattern_model, [Gap(prefix, suffix, [8], drafts=[c(9, 1)],
                                                       draft_length=8)])
    assert cands[0].tokens == c(9) and cands[0].score == v.score and passes == 1
    # An explicit ask keeps every draft whole: the verdicts only score it.
    (v,), _, _ = verify_drafts(pattern_model, prefix, suffix, [c(5, 9, 1)], 8, floor=0.3,
                               ratio=0.1, cached=False, veto=False)
    assert v.tokens == c(5, 9, 1) and not v.complete and v.first == 1.0
    (cands,), _ = infill_many(pattern_model, [Gap(prefix, suffix, [8], drafts=[c(5, 9, 1)],
                                                  draft_length=8, veto=False)])
    assert cands[0].tokens == c(5, 9, 1)


def test_a_drafts_score_grows_with_its_support_and_the_models_verdict():
    from diffill.infill.sampler import draft_score
    assert draft_score(0, 1.0) < draft_score(1, 1.0) < draft_score(8, 1.0)
    assert draft_score(1, 0.001) < draft_score(1, 0.1) < draft_score(1, 1.0)
    assert draft_score(1, 0.0) == draft_score(1, 0.001)  # a veto is bounded, not -inf
    assert draft_score(3, 1.0, rank=2) < draft_score(3, 1.0, rank=0)
    assert all(0 < draft_score(s, r) < 1 for s in (0, 3, 100) for r in (0.0, 0.5, 1.0))


def test_of_two_drafts_the_model_takes_alike_the_one_found_first_ranks_first(
        pattern_model, counting_gap):
    from diffill.infill.sampler import Gap, infill_many
    prefix, suffix, answer = counting_gap
    for drafts in ([c(5, 9, 1), answer], [answer, c(5, 9, 1)]):
        (cands,), _ = infill_many(pattern_model, [Gap(prefix, suffix, [8], drafts=drafts,
                                                      draft_length=8)])
        kept = {tuple(c(5, 9, 1)): c(5), tuple(answer): answer}
        assert [x.tokens for x in cands] == [kept[tuple(d)] for d in drafts]
        assert cands[0].score > cands[1].score


def test_a_draft_is_cut_to_its_first_code_tokens():
    assert D.first_tokens("o(x, y)", 2) == "o("
    assert D.first_tokens(" = compute(a)", 2) == " = compute"
    assert D.first_tokens("abc", 5) == "abc" and D.first_tokens("", 2) == ""


def test_drafts_carry_their_support():
    doc = "total = compute_total(items)\nx = 1\ntotal = compute_total("
    found = D.found_drafts(doc, len(doc), elsewhere=["rows)"])
    assert found[0] == ("items)", D.support_of("total = compute_total("))
    assert found[1] == ("rows)", 1)
    assert D.found_drafts("name = 1\nna", 11) == [("me = 1", 1), ("me", 0)]


# ---------------------------------------------------------------- the typing eval


def test_the_typing_eval_counts_keys_the_way_a_person_takes_a_ghost():
    from diffill.workshop import keystrokes as K
    doc = "def f():\n    \n    return total\n"
    line = K.TypedLine("x.py", doc, doc.index("    \n") + 4, "total = compute(1)")
    rep = K.TypingReport("oracle")
    K.type_line(line, lambda d, c: line.target[c - line.cursor:], rep)
    assert (rep.keys, rep.shown, rep.accepted, rep.whole) == (1, 1, 1, 1)
    rep = K.TypingReport("first word right")
    K.type_line(line, lambda d, c: "total = other(2)" if c == line.cursor else None, rep)
    # Accept-word takes "total", then the 13 other characters are typed.
    assert (rep.keys, rep.shown, rep.accepted, rep.whole) == (1 + 13, 1, 1, 0)
    assert rep.as_dict()["keys_saved"] == round(1 - 14 / 18, 4)
    rep = K.TypingReport("buffer words")
    K.type_line(line, K.buffer_word, rep)
    assert rep.whole == 1  # "t" -> "otal" (the word below), then the rest typed
    assert K.first_word(".groups()") == ".groups" and K.first_word("(a, b)") == "(a"


def test_typed_ahead_shows_the_rest_once_the_first_word_is_typed_through_not_inside_it():
    from diffill.workshop import keystrokes as K
    from diffill.server.lsp import LastGhost
    calls = []

    def complete(doc, cursor):
        calls.append(cursor)
        return "abc(de)"[cursor:]
    wrapped = K.typed_ahead(complete)
    assert wrapped("a\n", 1) == "bc(de)"
    # Inside the ghost's first word the person passed over it: asked again, and the same
    # rest is not offered again...
    assert wrapped("ab\n", 2) is None and calls == [1, 2]
    # ... through the word, the rest is shown again unasked.
    assert wrapped("abc\n", 3) == "(de)" and calls == [1, 2]
    # Another answer after a pass-over is shown.
    other = K.typed_ahead(lambda doc, cursor: "bc(de)" if cursor == 1 else "ed")
    assert other("a\n", 1) == "bc(de)" and other("ab\n", 2) == "ed"
    # The LSP server's own typed-ahead follows the same rules, per suggestion.
    shown = LastGhost("x = a", "\n", ["bc(de)", "b"])
    assert shown.forward("x = a\n", 5) == ["bc(de)", "b"]  # the same request again
    assert shown.forward("x = ab\n", 6) is None
    assert shown.passed("x = ab\n", 6) == {"c(de)"}
    assert shown.forward("x = abc(\n", 8) == ["de)"] and shown.passed("x = abc(\n", 8) == set()
    assert shown.forward("x = abd\n", 7) is None and shown.passed("x = abd\n", 7) == set()


def test_the_workspace_drafts_of_the_typing_eval_leave_out_the_lines_own_file(tmp_path):
    from diffill.workshop import keystrokes as K
    (tmp_path / "own.py").write_text("value = make_value(secret)\n")
    (tmp_path / "lender.py").write_text("value = make_value(lent)\n")
    ws = K.WorkspaceDrafts(lambda path: tmp_path,
                           lambda root: D.Library([(str(p), p.read_text())
                                                   for p in sorted(root.glob("*.py"))]))
    doc = "x = 1\n\n"
    ws.begin(K.TypedLine(str(tmp_path / "own.py"), doc, 6, "value = make_value(secret)"))
    typed = "x = 1\nvalue = make_value(\n"
    assert ws(typed, len(typed) - 1) == "lent)"
    assert [d for d, _ in ws.elsewhere(typed, len(typed) - 1)] == ["lent)"]


@pytest.mark.slow
def test_the_typing_eval_through_a_real_diffill_lsp_saves_keys(pattern_ckpt, tmp_path):
    """``diffill eval --keystrokes --lsp``'s completer: every key a didChange and an
    automatic inline completion to a real ``diffill lsp`` (and its daemon); the counting
    line's rest is shown and taken, and the daemon's counters come back."""
    import os

    from diffill.workshop import keystrokes as K
    from diffill.workshop.typing_lsp import LspTyping
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = tmp_path / "count.txt"
    doc = "c0 c1 c2 c3 \nc8 c9 c10\n"
    path.write_text(doc)
    line = K.TypedLine(str(path), doc, doc.index(" \n") + 1, "c4 c5 c6 c7")
    lsp = LspTyping(str(pattern_ckpt), {"maxTokens": 8, "ensemble": 1, "minConfidence": 0.0,
                                        "hideUnknownNames": False})
    try:
        (rep,) = K.run_typing([line], {"diffill": lsp})
    finally:
        counters = lsp.close()
    assert rep.shown >= 1 and rep.accepted >= 1 and rep.keys < rep.chars
    assert counters["forward_passes"] > 0 and counters["completed"] >= 1
    assert len(lsp.seconds) == rep.requests


def test_floors_are_replayed_on_recorded_offers_and_the_best_keeps_half_taken():
    """A floor only chooses among what the engine offers, so one recording replays every
    floor; the chosen floor saves the most keys with at least half of the ghosts taken."""
    from diffill.workshop import keystrokes as K
    doc = "x = 1\n\n"
    line = K.TypedLine("x.py", doc, 6, "abcd")
    # At every position a wrong sure offer and the right unsure one.
    offered = [[[("zz", 0.9, False), (line.target[k:], 0.5, False)]
                for k in range(len(line.target))]]
    low = K.replay([line], offered, 0.4)
    high = K.replay([line], offered, 0.95)
    assert (low.keys, low.whole) == (4, 0)  # "zz" shown every time, never taken
    assert (high.keys, high.shown) == (4, 0)
    offered = [[[(line.target[k:], 0.5, False), ("zz", 0.9, False)]
                for k in range(len(line.target))]]
    reports = {f: K.replay([line], offered, f) for f in (0.0, 0.6)}
    assert reports[0.0].keys == 1 and K.best_floor(reports) == 0.0
    hidden = [[[(line.target[k:], 0.5, True)] for k in range(len(line.target))]]
    assert K.replay([line], hidden, 0.0).shown == 0
    assert K.replay([line], hidden, 0.0, hide_unknown=False).keys == 1


@pytest.mark.slow
def test_the_floors_can_be_chosen_on_several_samples_pooled(diffill_ckpt, tmp_path, capsys):
    """``diffill eval --keystrokes --calibrate --seeds 0,1``: the lines of each seed typed as
    one sample (a floor chosen on one small sample is chosen for it); a bad list is a usage
    error."""
    import json

    from diffill.workshop.commands import main
    src = tmp_path / "m.py"
    src.write_text("".join(f"def f{i}(value, other):\n    total = value + other * {i}\n"
                           f"    return total\n\n\n" for i in range(12)))
    base = ["eval", "--keystrokes", "--calibrate", "--model", str(diffill_ckpt), "--files",
            str(src), "--n", "1", "--max-tokens", "4", "--json"]
    assert main(base + ["--seeds", "0,1"]) == 0
    pooled = json.loads(capsys.readouterr().out)
    assert pooled["lines"] == 2 and pooled["seeds"] == [0, 1]
    assert main(base) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["lines"] == 1 and single["seeds"] == [0]
    with pytest.raises(SystemExit) as err:
        main(base + ["--seeds", "a,b"])
    assert err.value.code == 2 and "seeds as whole numbers" in capsys.readouterr().err


@pytest.mark.slow
def test_no_ghost_of_the_typing_eval_breaks_a_line_that_parsed(diffill_ckpt):
    """The typing eval over a real file with a random model showing everything it may: every
    ghost shown leaves its line parsing, or unfinished, where it parsed or was unfinished
    without it (post.breaks_line is the engine's own guard; this runs it over the eval)."""
    from pathlib import Path

    from diffill.infill import Engine, InfillSettings
    from diffill.workshop import keystrokes as K
    from diffill.infill.post import breaks_line, in_string_or_comment
    from diffill.model import load_model
    engine = Engine(load_model(diffill_ckpt))
    sample = Path(__file__).resolve().parents[1] / "infill" / "drafts.py"
    # Two lines of code (prose is not judged): which lines the seed picks moves with the file.
    lines = [line for line in K.pick_lines([sample], 12, seed=0)
             if not in_string_or_comment(line.document, line.cursor)][:2]
    rep = K.TypingReport("random")
    complete = K.engine_completer(engine, InfillSettings(min_confidence=0.0,
                                                         hide_unknown_names=False,
                                                         max_tokens=8, ensemble=1), rep)
    shown = []

    def checked(doc: str, cursor: int) -> str | None:
        ghost = complete(doc, cursor)
        if ghost and not in_string_or_comment(doc, cursor):  # prose is not judged
            start = doc.rfind("\n", 0, cursor) + 1
            end = doc.find("\n", cursor)
            shown.append(breaks_line(doc[start:cursor], ghost, doc[cursor:end],
                                     doc[max(0, start - 2000):start]))
        return ghost
    for line in lines:
        K.type_line(line, checked, rep)
    assert rep.requests > 20 and len(shown) > 10 and not any(shown)


def test_the_workspace_is_read_by_kind_newest_first_within_its_bounds(tmp_path):
    import os

    from diffill.server.workspace import build_library, kind_of
    assert kind_of("a/b.pyi") == kind_of("x.py") == ".py" and kind_of("Makefile") is None
    for i, name in enumerate(("old.py", "mid.pyi", "new.py", "notes.md", "bad.py")):
        path = tmp_path / "pkg" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\xff\xfe" if name == "bad.py" else f"x{i} = {i}\n".encode())
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    for skipped in (".git/h.py", "node_modules/v.py", "build/b.py", "pkg/empty.py"):
        (tmp_path / skipped).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped).write_text("" if "empty" in skipped else "y = 1\n")
    lib = build_library([tmp_path], ".py")
    assert [os.path.basename(n) for n in lib.names] == ["new.py", "mid.pyi", "old.py"]
    assert [os.path.basename(n) for n in build_library([tmp_path], ".py", max_files=2).names] \
        == ["new.py", "mid.pyi"]
    assert [os.path.basename(n) for n in build_library([tmp_path], ".py", max_bytes=14).names] \
        == ["new.py", "mid.pyi"]
    assert len(build_library([tmp_path / "missing"], ".py")) == 0


def test_with_only_indentation_typed_the_line_after_the_same_previous_line_is_a_draft():
    doc = "def f(x):\n    y = g(x)\n    return y\n\ndef h(x):\n    y = g(x)\n    "
    assert D.found_drafts(doc, len(doc)) == [("return y", D.support_of("y = g(x)"))]
    # the previous line's own next line is not a match of itself (column 0, no indentation)
    assert D.find_drafts("import os\nimport sys\n\nimport os\n", 32) == ["import sys"]
    assert D.find_drafts("a = 1\n", 6) == [] and D.find_drafts("\n\nx", 1) == []
    # a blank previous line looks nothing up
    assert D.find_drafts("y = 1\nz = 2\n\n", 13) == []
    # a deeper line after the same previous line brings more indentation than typed: not
    # this line's, left out
    deep = "def f(s):\n    if s:\n        y = 1\n        end = g(s)\n    y = 1\n    "
    assert D.find_drafts(deep, len(deep)) == ["end = g(s)"]


def test_a_draft_found_from_both_sides_of_the_gap_comes_first_with_both_supports():
    """The line after the same previous line (nearest: ``x = 9``) and the line before the
    same next line's start (``b = 2``): the one both lookups find comes first."""
    doc = "a = 1\nb = 2\nc = 3\n\na = 1\nx = 9\nz = 0\n\na = 1\n\nc = 3 + d\n"
    cursor = doc.index("\n\nc = 3 + d") + 1
    found = D.found_drafts(doc, cursor)
    assert found[0] == ("b = 2", D.support_of("a = 1") + D.support_of("c = 3"))
    assert found[1][0] == "x = 9"


def test_the_span_eval_sends_each_request_its_packages_drafts(pattern_model, tmp_path):
    """``diffill eval --workspace``: a held-out span's request carries the drafts its
    package's other files give (its own file left out), as the LSP server sends them."""
    from diffill.infill.api import InfillSettings
    from diffill.infill.engine import Engine
    from diffill.workshop import keystrokes as K
    from diffill.workshop.spans import Span, evaluate
    (tmp_path / "own.txt").write_text("c2 c3 c4 c9 c10\n")
    (tmp_path / "lender.txt").write_text("c2 c3 c4 c5 c6 c7\n")
    ws = K.WorkspaceDrafts(lambda path: tmp_path,
                           lambda root: D.Library([(str(p), p.read_text())
                                                   for p in sorted(root.glob("*.txt"))]))
    engine = Engine(pattern_model)
    sent = []
    run_batch = engine.run_batch

    def spy(subs, settings, *a, **kw):
        sent.extend(s.request.drafts for s in subs)
        return run_batch(subs, settings, *a, **kw)
    engine.run_batch = spy
    doc = "c0 c1 c2 c3 c4 \nc8 c9 c10"
    span = Span(str(tmp_path / "own.txt"), doc, doc.index("c4 ") + 3, "c5 c6 c7", "line")
    settings = InfillSettings(max_tokens=8, ensemble=1, mode="line")
    report = evaluate(engine, [span], settings, workspace=ws, typing=True)
    assert report.n == 1 and len(sent) == 2  # the previous keystroke's request, then the span's
    assert any("c5 c6 c7" in d for d in sent[1]) and not any("c9" in d for d in sent[1])
    sent.clear()
    evaluate(engine, [span], settings)
    assert sent == [()]


def test_a_place_that_agrees_on_both_lines_around_comes_before_one_that_agrees_on_one():
    """The lines before and after the cursor's both count: a place preceded by the cursor's
    previous line and followed by its next line comes before the nearer places that agree on
    one of them, and those before the places that agree on neither."""
    doc = ("a = 1\nkey = 'both'\nreturn key\n"
           "b = 2\nkey = 'after'\nreturn key\n"
           "a = 1\nkey = 'before'\nprint(key)\n"
           "c = 3\nkey = 'neither'\nprint(key)\n"
           "a = 1\nkey = \nreturn key\n")
    assert D.lookup_drafts(doc, at_end_of(doc, "key = ")) == \
        ["'both'", "'before'", "'after'", "'neither'"]


def test_the_workspace_prefers_places_followed_by_the_cursors_next_line():
    """The library's lookups (the workspace, as the LSP server sends them for a line) put
    first the place whose next line is the one after the cursor's line."""
    lib = D.Library([("a.py", "key = 'true'\nreturn key\n"),
                     ("b.py", "key = 'false'\nprint(key)\n")])
    doc = "x = 1\nkey = \nprint(key)\n"
    cursor = at_end_of(doc, "key = ")
    assert [d for d, _ in D.line_drafts(doc, cursor, library=lib)] == ["'false'", "'true'"]
    doc = "x = 1\nkey = \nreturn key\n"
    assert [d for d, _ in D.line_drafts(doc, at_end_of(doc, "key = "), library=lib)] == \
        ["'true'", "'false'"]


def test_the_line_before_the_cursors_next_line_elsewhere_is_a_draft():
    """Read the other way, from the code after the gap: where the line after the cursor's
    begins as it does elsewhere, the line just before it there is a draft (a decorator over a
    class, the field before a field), when it begins with what is typed on the cursor's line
    and sits at its indentation."""
    doc = ("@register\nclass First(Base):\n    pass\n\n\n"
           "\nclass Second(Base):\n    pass\n")
    cursor = doc.index("\nclass Second")
    assert ("@register", D.support_of("class")) in D.found_drafts(doc, cursor)
    fields = ("class A:\n    name: str\n    size: int\n    kind: str\n\n"
              "class B:\n    n\n    size: int\n")
    cursor = at_end_of(fields, "    n")
    assert D.found_drafts(fields, cursor)[0] == \
        ("ame: str", D.support_of("size: int") + D.support_of("n"))
    # a typed start it does not begin with, or another indentation: no draft from it
    assert "name: str" not in "".join(D.find_drafts(fields.replace("    n\n", "    k\n"),
                                                    cursor))
    def backwards(doc: str, cursor: int) -> list[tuple[str, int]]:
        line = doc[doc.rfind("\n", 0, cursor) + 1:cursor]
        return D._backwards(D.line_below(doc, cursor), line, D._in_document(doc, cursor), 4)
    assert backwards(fields, cursor) == [("ame: str", D.support_of("size: int") + 1)]
    deeper = fields.replace("    n\n", "        \n")
    assert not backwards(deeper, at_end_of(deeper, "B:\n        "))
    # only a line right after the cursor's counts (a blank one between: nothing)
    spaced = fields.replace("    n\n", "    n\n\n")
    assert not backwards(spaced, cursor)
    # the match must not end inside a longer word there
    assert not backwards("x = 1\nsizes = 2\ny\nsize = 3\n", 13)
    # other open documents and the workspace's library are read backwards too
    other = "class A:\n    name: str\n    size: int\n"
    alone = "class B:\n    n\n    size: int\n"
    at = at_end_of(alone, "    n")
    assert D.found_drafts(alone, at, others=[other])[0] == \
        ("ame: str", D.support_of("size: int") + 1)
    lib = D.Library([("a.py", other)])
    assert D.line_drafts(alone, at, library=lib)[0] == ("ame: str", D.support_of("size: int") + 1)
