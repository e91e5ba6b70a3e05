"""Post-processing of raw fills: what an editor should actually show.

- mode: code after the cursor on its line -> single-line fill; an empty line or the end of a
  line that opens a block -> multi-line block;
- single-line fills stop at the first newline; blocks stop where the code leaves the cursor's
  indentation scope;
- text that only repeats the start of the suffix (auto-closed brackets, the next line) is cut;
- among several candidates, ones that leave the document parseable are preferred.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass

MODES = ("auto", "line", "block")
BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", "do", "then")


def detect_mode(line_before: str, line_after: str) -> str:
    """``line`` or ``block`` from the cursor's line, split at the cursor."""
    if line_after.strip():
        return "line"
    if not line_before.strip():
        return "block"
    if line_before.rstrip().endswith(BLOCK_OPENERS):
        return "block"
    return "line"


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def limit_scope(fill: str, line_before: str) -> str:
    """Cut a block at the first line that dedents out of the cursor's scope.

    The scope is the indentation of the block's first non-blank line (its body, when the cursor
    line opens one); a later line indented less than that belongs to the code that follows.
    """
    lines = fill.split("\n")
    first_indent = None
    if line_before.strip():
        # The first fill line continues the cursor line; its scope is the cursor line's.
        first_indent = _indent(line_before)
        if line_before.rstrip().endswith(BLOCK_OPENERS):
            first_indent += 1
    out = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            out.append(line)
            continue
        ind = _indent(line)
        if first_indent is None:
            first_indent = ind
        elif ind < first_indent:
            break
        out.append(line)
    if first_indent is None and lines[0].strip():
        first_indent = _indent(line_before + lines[0])
    return "\n".join(out)


def strip_suffix_overlap(fill: str, suffix: str, mode: str) -> str:
    """Drop a tail of ``fill`` that the suffix already holds.

    Single line: the longest end of the fill that equals the start of the rest of the line
    (``foo(x)`` before an auto-closed ``)``). Block: trailing lines equal to the first
    non-blank lines after the cursor.
    """
    if not fill:
        return fill
    if mode == "line":
        rest = suffix.split("\n", 1)[0]
        for k in range(min(len(fill), len(rest)), 0, -1):
            if fill.endswith(rest[:k]):
                return fill[:-k]
        return fill
    after = [ln for ln in suffix.split("\n") if ln.strip()][:8]
    lines = fill.rstrip("\n").split("\n")
    # Find the first fill line from which the fill repeats the suffix's first lines.
    for i in range(len(lines)):
        tail = [ln for ln in lines[i:] if ln.strip()]
        if tail and len(tail) <= len(after) and [t.rstrip() for t in tail] == \
                [a.rstrip() for a in after[:len(tail)]]:
            if i == 0:
                return ""
            return "\n".join(lines[:i]).rstrip() + ("\n" if fill.endswith("\n") else "")
    return fill


def clean(fill: str, *, mode: str, line_before: str, suffix: str) -> str:
    """The text to show for one raw fill."""
    fill = fill.replace("\r\n", "\n")
    if mode == "line":
        fill = fill.split("\n", 1)[0] if not (not line_before.strip() and fill.startswith("\n")) \
            else fill.lstrip("\n").split("\n", 1)[0]
    else:
        if not line_before.strip() and line_before and fill.startswith(line_before):
            # The model re-typed the cursor line's indentation.
            fill = fill[len(line_before):]
        fill = limit_scope(fill, line_before)
        fill = re.sub(r"[ \t]+\n", "\n", fill).rstrip()
        if suffix.startswith("\n") or not suffix:
            fill = fill.rstrip("\n")
    fill = strip_suffix_overlap(fill, suffix, mode)
    return fill.rstrip() if mode == "line" and not suffix.split("\n", 1)[0].strip() else fill


# ---------------------------------------------------------------- syntax

LANGUAGE_ALIASES = {"py": "python", "python3": "python", "pyi": "python"}


def language_of(language_id: str | None, path: str | None = None) -> str | None:
    if language_id:
        return LANGUAGE_ALIASES.get(language_id.lower(), language_id.lower())
    if path and path.endswith((".py", ".pyi")):
        return "python"
    return None


@dataclass
class SyntaxVerdict:
    parses: bool | None
    """True / False; None when no checker exists for the language."""


def parses(language: str | None, document: str) -> bool | None:
    """Whether ``document`` parses in ``language``; None when diffill has no parser for it."""
    if language != "python":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(document)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
