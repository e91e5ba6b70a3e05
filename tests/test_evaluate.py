"""The held-out eval: how spans are cut from code and how a fill is scored."""

from __future__ import annotations

import textwrap

from diffill.workshop.spans import cut_spans, score

SOURCE = textwrap.dedent('''\
    import os


    def walk(root, pattern):
        """Yield the paths under root whose names match pattern."""
        for folder, _, names in os.walk(root):
            for name in names:
                if name.endswith(pattern):
                    yield os.path.join(folder, name)


    class Counter:
        def __init__(self, start=0):
            self.value = start

        def bump(self, by=1):
            self.value = self.value + by
            return self.value
    ''')


def _files(tmp_path, n=3):
    out = []
    for i in range(n):
        f = tmp_path / f"m{i}.py"
        f.write_text(SOURCE.replace("walk", f"walk{i}"), encoding="utf-8")
        out.append(f)
    return out


def test_spans_put_back_give_the_original_file(tmp_path):
    files = _files(tmp_path)
    originals = {str(f): f.read_text() for f in files}
    for mode in ("line", "block"):
        spans = cut_spans(files, 20, mode, seed=1)
        assert len(spans) == 20
        for sp in spans:
            assert sp.mode == mode and sp.target.strip()
            assert sp.text[:sp.cursor] + sp.target + sp.text[sp.cursor:] == originals[sp.path]
            if mode == "line":
                assert "\n" not in sp.target and sp.text[sp.cursor] == "\n"
            else:
                # The cursor sits after the indentation of the first missing line.
                line_start = sp.text.rfind("\n", 0, sp.cursor) + 1
                assert sp.text[line_start:sp.cursor].strip() == ""


def test_spans_are_chosen_by_the_seed(tmp_path):
    files = _files(tmp_path)
    key = lambda spans: [(s.path, s.cursor, s.target) for s in spans]  # noqa: E731
    assert key(cut_spans(files, 10, "line", seed=3)) == key(cut_spans(files, 10, "line", seed=3))
    assert key(cut_spans(files, 10, "line", seed=3)) != key(cut_spans(files, 10, "line", seed=4))


def test_a_fill_is_scored_on_exactness_parsing_and_emptiness(tmp_path):
    (span,) = [s for s in cut_spans(_files(tmp_path, 1), 30, "line", seed=0)
               if s.target.endswith(")")][:1]
    assert score(span, span.target) == (True, True, False)
    assert score(span, span.target + "   ") == (True, True, False)  # trailing blanks
    assert score(span, span.target + " +") == (False, False, False)  # a broken file
    # Empty never parses, even where the file without the span would.
    assert score(span, "")[1:] == (False, True)
    assert score(span, "  \t")[1:] == (False, True)


def test_coverage_and_precision_follow_the_best_candidate_over_the_floor():
    from diffill.workshop.spans import ModeReport
    rep = ModeReport("line", n=4, min_confidence=0.5)
    rep.candidates = [
        [(0.9, True, False)],                       # sure and right: shown up to 0.9
        [(0.4, False, False), (0.6, True, False)],  # the first is unsure: 0.5 shows the second
        [(0.3, False, False)],                      # unsure and wrong: hidden from 0.4 up
        [],                                         # nothing proposed
    ]
    assert rep.shown_at(0.0) == (3, 1)  # the ranked first of each span
    assert rep.shown_at(0.5) == (2, 2)
    assert rep.shown_at(0.95) == (0, 0)
    d = rep.as_dict()
    assert d["coverage"] == 0.5 and d["precision"] == 1.0 and d["min_confidence"] == 0.5
    rows = {r["min_confidence"]: r for r in rep.calibration()}
    assert rows[0.0]["coverage"] == 0.75 and abs(rows[0.0]["precision"] - 1 / 3) < 1e-3
    assert rows[0.9]["precision"] == 1.0 and rows[0.9]["coverage"] == 0.25
    # A sure candidate that names something defined nowhere is withheld: the span shows the
    # next one over the floor, or nothing.
    rep.candidates[2] = [(0.8, False, True), (0.7, True, False)]
    assert rep.shown_at(0.5) == (3, 3)
    rep.candidates[2] = [(0.8, False, True)]
    assert rep.shown_at(0.5) == (2, 2)
    rep.hide_unknown = False
    assert rep.shown_at(0.5) == (3, 2)


def test_typing_asks_the_previous_keystroke_first():
    from diffill.workshop.spans import Span, previous_keystroke
    text = "x = 1\nvalue = compute(\n"
    sp = Span("a.py", text, text.index("(") + 1, "x)", "line")
    prev = previous_keystroke(sp)
    assert prev.start == sp.cursor - 1 and prev.text == "x = 1\nvalue = compute\n"
    start = Span("a.py", text, text.index("value"), "value", "line")  # nothing typed yet
    assert previous_keystroke(start).text == text
    assert previous_keystroke(start).start == start.cursor


def test_the_eval_names_the_versions_its_spans_were_cut_from():
    """The held-out spans are cut from the installed files: a figure holds for those versions."""
    import platform
    from importlib import metadata

    from diffill.workshop.evaluate import versions
    got = versions(["json", "pygls", "no_such_package_here"])
    assert got == {"json": f"Python {platform.python_version()}",
                   "pygls": metadata.version("pygls"), "no_such_package_here": "?"}
