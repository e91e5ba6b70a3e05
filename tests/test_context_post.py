"""Context windows, positions and post-processing."""

from __future__ import annotations

import pytest

from diffill.infill import post
from diffill.infill.context import ContextBudget, build_window, encode
from diffill.infill.text import (InputError, PositionError, decode_source, offset_at, parse_position,
                         position_of)


@pytest.fixture(scope="module")
def tok(bpe, tmp_path_factory):
    from transformers import PreTrainedTokenizerFast
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    bpe.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


DOC = "".join(f"line_{i} = compute({i}, value)\n" for i in range(200))


def test_window_respects_token_budgets_and_cuts_at_line_boundaries(tok):
    cursor = DOC.index("line_100")
    w = build_window(tok, DOC, cursor, budget=ContextBudget(prefix_tokens=60, suffix_tokens=40))
    assert 0 < len(w.prefix_ids) <= 60 and 0 < len(w.suffix_ids) <= 40
    assert w.prefix_start == 0 or DOC[w.prefix_start - 1] == "\n"
    assert DOC[w.suffix_end - 1] == "\n"
    assert tok.decode(w.prefix_ids) == DOC[w.prefix_start:cursor]
    assert tok.decode(w.suffix_ids) == DOC[cursor:w.suffix_end]
    # A bigger budget gives more lines, still whole ones.
    big = build_window(tok, DOC, cursor, budget=ContextBudget(200, 200))
    assert big.prefix_start < w.prefix_start and big.suffix_end > w.suffix_end


def test_cursor_line_is_kept_even_when_it_alone_is_over_budget(tok):
    text = "x = [" + ", ".join(str(i) for i in range(300)) + "]"
    cursor = len(text) - 1
    w = build_window(tok, text, cursor, budget=ContextBudget(30, 10))
    assert 0 < len(w.prefix_ids) <= 30
    assert text[:cursor].endswith(tok.decode(w.prefix_ids))


def test_window_of_the_start_and_end_of_a_document(tok):
    w = build_window(tok, DOC, 0)
    assert w.prefix_ids == [] and w.prefix_start == 0
    w = build_window(tok, DOC, len(DOC))
    assert w.suffix_ids == [] and w.suffix_end == len(DOC)


def test_extra_chunks_go_ahead_of_the_prefix_within_their_budget(tok):
    w = build_window(tok, DOC, 50, budget=ContextBudget(50, 50, extra_tokens=20),
                     extra=[("other.py", "def helper():\n    return 1\n" * 10)])
    assert 0 < len(w.extra_ids) <= 20
    assert w.context_ids[:len(w.extra_ids)] == w.extra_ids


def test_the_stretch_of_another_file_that_shares_the_most_names_is_chosen():
    from diffill.infill.context import related_snippet
    other = "".join(f"noise_{i} = {i}\n" for i in range(60)) + \
        "def parse_header(buf, limit):\n    return buf[:limit]\n" + \
        "".join(f"more_{i} = {i}\n" for i in range(60))
    got = related_snippet(other, "    head = parse_header(buf, limit)", lines=8)
    assert "def parse_header(buf, limit):" in got and len(got.splitlines()) <= 8
    # Cut at a line end within the character budget; a short file is taken whole.
    assert related_snippet(other, "parse_header", lines=8, max_chars=40).endswith("\n")
    assert len(related_snippet(other, "parse_header", lines=8, max_chars=40)) <= 40
    assert related_snippet("x = 1\n", "y") == "x = 1\n"
    assert related_snippet("", "y") == ""


def test_positions_round_trip_in_each_encoding():
    from lsprotocol.types import Position, PositionEncodingKind
    from pygls.workspace.position_codec import PositionCodec

    from diffill.server.lsp import client_offset, client_position
    text = "a = 'é𝄞x'\r\nsecond\n"
    off = text.index("x")
    for enc, col in ((PositionEncodingKind.Utf32, 7), (PositionEncodingKind.Utf16, 8),
                     (PositionEncodingKind.Utf8, 11)):
        codec = PositionCodec(enc)
        assert client_position(codec, text, off) == Position(0, col)
        assert client_offset(codec, text, Position(0, col)) == off
        end = Position(0, col + 2)  # the line's end, before its CRLF
        assert client_offset(codec, text, end) == text.index("\r")
        with pytest.raises(PositionError, match="past the end of line 1"):
            client_offset(codec, text, Position(0, col + 3))
        with pytest.raises(PositionError, match="line 4 is past the end"):
            client_offset(codec, text, Position(3, 0))
    assert offset_at(text, 1, 6) == len("a = 'é𝄞x'\r\nsecond")
    assert position_of(text, off) == (0, 7)


@pytest.mark.parametrize("line,col", [(2, 1), (5, 0), (0, 99), (1, 7)])
def test_positions_past_the_end_are_errors_not_clamped(line, col):
    with pytest.raises(PositionError, match="past the end"):
        offset_at("a = 1\nsecond\n", line, col)


def test_cli_positions_are_one_based():
    assert parse_position("3:5") == (2, 4)
    with pytest.raises(PositionError):
        parse_position("0:1")
    with pytest.raises(InputError):
        parse_position("three")


def test_non_utf8_and_binary_input_are_refused_with_the_line():
    with pytest.raises(InputError, match="not UTF-8.*line 2"):
        decode_source(b"ok\n\xff\xfe bad", "f.py")
    with pytest.raises(InputError, match="binary"):
        decode_source(b"abc\x00def", "f.bin")
    assert decode_source("\ufeffx = 1".encode(), "bom.py") == "x = 1"


@pytest.mark.parametrize("before,after,mode", [
    ("    x = foo(", ")", "line"),
    ("    ", "", "block"),
    ("", "", "block"),
    ("def f(x):", "", "block"),
    ("    return x +", "", "line"),
])
def test_mode_follows_the_cursor_line(before, after, mode):
    assert post.detect_mode(before, after) == mode


def test_single_line_fill_stops_at_newline_and_drops_auto_closed_brackets():
    out = post.clean("a, b)\n    more()", mode="line", line_before="x = f(", suffix=")\nnext")
    assert out == "a, b"


def test_block_stops_when_it_leaves_the_cursor_scope():
    fill = "total += item.price\n        count += 1\n    return total\nprint('x')"
    out = post.clean(fill, mode="block", line_before="        ", suffix="\n")
    assert out == "total += item.price\n        count += 1"


def test_block_that_repeats_the_following_lines_is_cut():
    fill = "y = 2\nz = 3\nreturn y"
    out = post.clean(fill, mode="block", line_before="", suffix="\nz = 3\nreturn y\n")
    assert out == "y = 2"


UNITS = """import os

@decorate
@again(1)
def f(x):
    \"\"\"doc\"\"\"
    if x:
        return 1
    # a comment at any depth
    return 2


class C:
    a = 1

    def m(self):
        y = [1,
             2]
        return y

z = 3
"""


def unit_around(doc, needle):
    i = doc.index(needle)
    return post.python_unit(doc, i, i + len(needle))


def test_the_unit_checked_is_the_innermost_def_or_class_around_the_fill():
    assert unit_around(UNITS, "return 1").startswith("@decorate\n@again(1)\ndef f(x):\n")
    assert unit_around(UNITS, "return 1").rstrip().endswith("return 2")
    assert unit_around(UNITS, "y = [") == "def m(self):\n    y = [1,\n         2]\n    return y\n"
    assert unit_around(UNITS, "def m") == unit_around(UNITS, "y = [")  # on the header line
    assert unit_around(UNITS, "a = 1").startswith("class C:\n    a = 1\n")
    assert unit_around(UNITS, "z = 3") is None and unit_around(UNITS, "import os") is None  # module level
    # A line that leaves the header's indentation (a string's text) makes no unit.
    odd = "class K:\n    def g(self):\n        s = '''\nraw\n'''\n        return s\n"
    assert unit_around(odd, "return s") is None
    # A fill that ends with its newline: the unit still ends before the next def.
    doc = "def a():\n    x = 1\ndef b(:\n    pass\n"
    i = doc.index("x = 1")
    assert post.python_unit(doc, i, i + len("x = 1\n")) == "def a():\n    x = 1"


def test_the_syntax_check_answers_near_the_fill_when_the_file_is_broken_elsewhere():
    broken = "def f(x):\n    return x +\n\ndef g(y):\n    return y * 2\n"
    i = broken.index("y * 2")
    assert post.parses("python", broken) is False
    assert post.parses_near("python", broken, i, i + 5) is True  # g itself is fine
    bad = broken.replace("y * 2", "y * (2")
    assert post.parses_near("python", bad, i, i + 6) is False
    # A unit cut wrong (a def inside a string) does not count against a fill: the whole
    # document decides, unless it is over the limit.
    inside = 'X = """\n    def fake(:\n        pass\n"""\n'
    i = inside.index("pass")
    assert post.python_unit(inside, i, i + 4) == "def fake(:\n    pass"
    assert post.parses_near("python", inside, i, i + 4) is True
    assert post.parses_near("python", inside, i, i + 4, whole_limit=10) is None
    assert post.parses_near("rust", "fn main() {}", 0, 2) is None


def test_a_block_that_stops_parsing_keeps_its_first_lines_that_parse():
    doc = "def f(items):\n    total = 0\n    \n    return total\n"
    at = doc.index("    \n    return") + 4
    fill = "for x in items:\n        total += x\n    total = (total +"
    assert post.parsing_lines("python", doc, at, fill) == \
        "for x in items:\n        total += x"
    # Whole: it parses; nothing shorter parses (a header alone): unchanged, the guard decides.
    assert post.parsing_lines("python", doc, at, "total += 1\n    total -= 1") == \
        "total += 1\n    total -= 1"
    assert post.parsing_lines("python", doc, at, "for x in items:\n    ]") == \
        "for x in items:\n    ]"
    assert post.parsing_lines("rust", doc, at, fill) == fill


def test_python_syntax_check():
    assert post.parses("python", "def f():\n    return 1\n") is True
    assert post.parses("python", "def f(:\n") is False
    assert post.parses("rust", "fn main() {}") is None
    assert post.language_of(None, "x.py") == "python"
    assert post.language_of("Python", None) == "python"


def test_a_fill_ends_before_a_character_its_tokens_broke():
    assert post.whole_chars("recursive\ufffd\u2500\u2500", "tree = 1\n") == "recursive"
    assert post.whole_chars("plain", "x") == "plain"
    # A document that holds the replacement character may get it back.
    assert post.whole_chars("a\ufffdb", "s = 'a\ufffdb'") == "a\ufffdb"


@pytest.mark.parametrize("fill,kept", [
    ("name.name.name.name.name.name.name.name", "name"),
    ("return self.items.items.items()", "return self.items"),
    ("foo(foo(foo(foo(", "foo"),
    ("    pass\n    pass\n    pass\n", "    pass"),
    ("\n@dataclass\n\n@dataclass\n\n@dataclass", "\n@dataclass"),  # the masks ran out
    ("foo.foo.fo", "foo"),
    ("self.a, self.a", "self.a, self.a"),    # twice is not a stutter
    ("[0, 0, 0, 0]", "[0, 0, 0, 0]"),        # numbers repeat in real code
    ("x = f(a, b)", "x = f(a, b)"),
    ("a.b.c", "a.b.c"),
    ("1.0.0.0.0.0.0.0.", "1.0"),            # digits and punctuation stutter too
    ("f()))))))", "f()))))))"),             # one character repeated is code
    ("x, y)\n", "x, y)\n"),
])
def test_a_stutter_is_cut_to_one_copy(fill, kept):
    from diffill.infill.post import unstutter
    assert unstutter(fill, "class A:\n    pass\n") == kept


def test_a_run_the_document_holds_is_not_a_stutter():
    from diffill.infill.post import unstutter
    assert unstutter("ab.ab.ab.ab", "x = ab.ab.ab.ab\n") == "ab.ab.ab.ab"


def test_a_documents_window_keeps_its_start_while_the_user_types(tok):
    """Typing moves the cursor; the window's start stays where the last one began while the
    text from there still fits, so the two windows share their first positions."""
    from diffill.infill.context import STICKY_SLACK, prefix_window
    text = "".join(f"value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 60))
    # A document typed in whose last window no longer fits: the new start leaves room.
    kept, start = prefix_window(tok, text, len(text), 120, keep=(0, "no such line"))
    assert len(encode(tok, kept)) <= 120 - STICKY_SLACK
    mark = (start, text[start:].split("\n", 1)[0])
    typed = text + "result = compute(value_58, value_59)"
    again, start2 = prefix_window(tok, typed, len(typed), 120, keep=mark)
    assert start2 == start and again == typed[start:]
    _, start3 = prefix_window(tok, typed, len(typed), 120)
    assert start3 != start  # without the mark the window would begin elsewhere
    # The line the mark points at changed: not used, and the new start leaves room again.
    edited = typed[:start] + "changed" + typed[start:]
    moved, _ = prefix_window(tok, edited, len(edited), 120, keep=mark)
    assert len(encode(tok, moved)) <= 120 - STICKY_SLACK
    # Grown past the budget: the start moves on, leaving room.
    longer = typed + "".join(f"\nmore_{i} = {i}" for i in range(30))
    far, start5 = prefix_window(tok, longer, len(longer), 120, keep=mark)
    assert start5 > start and len(encode(tok, far)) <= 120 - STICKY_SLACK


def test_names_and_the_word_before_the_cursor_are_python_identifiers_in_any_script():
    """Python identifiers may be non-ASCII: a fill's free names and the partial word at the
    cursor see them whole (as token healing's ``\\w+`` does), not cut at the first accent."""
    assert post.word_before("x = naï", 7) == "naï"
    assert post.word_before("y = 1 + ", 8) == ""
    assert post.free_names("total = αβ + naïve(x1) + 2e5", frozenset()) == ["αβ", "naïve", "x1"]
    assert post.free_names("for ñ in range(3): print(ñ)", post.python_names()) == []
    assert post.identifiers("déf = 1; _x2 = 3") == {"déf", "_x2"}


@pytest.mark.parametrize("text, inside", [
    ('x = "json_objec', True), ("x = 1  # a comm", True), ('def f():\n    """Ret', True),
    ('def f():\n    """Doc."""\n    ret', False), ("x = 'a' + b", False), ('x = "a\\"b', True),
    ("s = '''ab'''\ny = z", False), ("x = y.cl", False), ("d = {'#': 1}; e", False)])
def test_a_cursor_in_a_string_or_comment_is_told_from_one_in_code(text, inside):
    assert post.in_string_or_comment(text, len(text)) is inside


def test_the_word_before_an_attribute_keeps_its_dot_so_it_is_no_free_name():
    assert post.word_before("x = y.cl", 8) == ".cl"
    assert post.free_names(post.word_before("x = y.cl", 8) + "ear()", frozenset()) == []
    assert post.free_names(post.word_before("x = y.", 6) + "append(z)", frozenset()) == ["z"]
    assert post.free_names(post.word_before("x = cl", 6) + "ear()", frozenset()) == ["clear"]


@pytest.mark.parametrize("before,fill,after,broken", [
    ("    acc += (v - ", "1.0.0.0.0.0.0.0.", ") ** 2", True),
    ("    acc += (v - ", "mean", ") ** 2", False),
    ("    end = chunk", ".groups() +", "", False),  # unfinished: more typing mends it
    ("    lines", " =", "", False),
    ("impor", "t", "", False),
    ("    end = chunk", ".groups() 2", "", True),
    ("    end = chunk.", "groups()", "", False),
    ("    x = foo(", "a, b", "", False),          # unfinished is not broken
    ("    else", ":", "", False),                 # a clause never parses alone: not judged
    ("        b=2", ")", "", False),              # an open bracket's next line: not judged
    ("import numpy as ", "np", "", False),
    ("    if x ", "== 1:", "", False),
    ("    return ", "value value", "", True),
    ("", "@dataclass_with_extra", "", False),   # a decorator waits for its def
    ("", "def _pgm", "", False),                 # a def waits for its parameters
    ("", "@dataclass with", "", True),
])
def test_a_fill_that_breaks_its_line_is_told_from_one_that_only_leaves_it_unfinished(
        before, fill, after, broken):
    from diffill.infill.post import breaks_line
    above = "    call(\n        a=1,\n" if before.startswith("        b") else "def f():\n"
    assert breaks_line(before, fill, after, above) is broken


def test_names_a_line_binds_are_defined_for_its_fill():
    from diffill.infill.post import bound_names
    assert {"np"} <= bound_names("import numpy as np")
    assert {"x", "i"} <= bound_names("for i, x in enumerate(items):")
    assert {"fh"} <= bound_names("with open(path) as fh:")
    assert {"err"} <= bound_names("except OSError as err:")
    assert {"f", "a", "b"} <= bound_names("def f(a, b=1):")
    assert "str" not in bound_names("def f(a: str, *args: strx):")  # annotations use names
    assert {"total"} <= bound_names("total = 0")


@pytest.mark.parametrize("doc, indent", [
    ("def f(x):\n    if x:\n|\n    return 1\n", "        "),   # after a block opener: deeper
    ("def f(x):\n    y = 1\n|\n", "    "),                      # else as deep as the line above
    ("def f(x):\n    if x:\n        y = 1\n|\n    return y\n", "        "),  # no blank above
    # set apart from the code above and on top of a line indented less: the code below's
    ("class A:\n    def f(self):\n        return 1\n\n\n|\nclass B:\n    pass\n", ""),
    ("def f(x):\n    if x:\n        y = 1\n\n|\n    return y\n", "    "),
    ("def f(x):\n    if x:\n        y = 1\n\n|\n\n    return y\n", "        "),
    # two blank lines above: a new top-level statement, as PEP 8 spaces them
    ("class A:\n    def f(self):\n        return 1\n\n\n|\n", ""),
    ("class A:\n    def f(self):\n        return 1\n\n# note\n|\n", "        "),
    # an expression's next line: the brackets, not the blocks, say how deep (nothing added)
    ("def f(\n    a: int,\n|\n    b: int,\n):\n    pass\n", ""),
])
def test_a_whole_line_gap_is_indented_by_the_code_around_it(doc, indent):
    """At column 0 of an empty line (``|``): one level deeper after a block opener, else the
    line above's depth, unless a blank line sets the gap apart from it and the line right
    below is indented less (a decorator over a class, a method's end), or two blank lines do
    (top level)."""
    at = doc.index("|")
    assert post.missing_indent(doc.replace("|", ""), at) == indent
