"""Which answer comes first, in one place. A sampler's candidate (before post-processing) is
ranked by whether the model ended it itself, then by its score; a completion, checked against
the document, first by whether the document still parses with it and whether it names
something defined nowhere, then as a candidate. Free of torch."""

from __future__ import annotations

from typing import AbstractSet, Sequence

from . import post
from .api import Completion

SYNTAX_CHECK_LIMIT = 1_000_000
"""Documents above this many characters are not parsed whole per candidate (the def or class
around the fill still is)."""


def candidate_key(terminated: bool, score: float) -> tuple[bool, float]:
    """Best first: fills the model ended itself (one that used every mask may have been cut
    short, however sure each of its tokens was), then by score."""
    return (not terminated, -score)


def completion_key(item: Completion) -> tuple[bool, bool, bool, float]:
    """Best first: completions that leave the document parsing, then ones that name nothing
    defined nowhere, then as :func:`candidate_key`."""
    return (item.parses is not True, bool(item.unknown),
            *candidate_key(item.terminated, item.score))


def unknown_names(fill: str, defined: str | AbstractSet[str],
                  known: AbstractSet[str] | None = None, line_before: str = "") -> list[str]:
    """Names ``fill`` uses that are defined nowhere: not in ``defined`` (the document's text,
    or its :func:`post.identifiers`), not ``known`` (builtins, keywords), not bound by the
    fill or its line. The fill is read with its line's text before it: ``tr`` after ``s`` is
    ``str``, and ``np`` after ``import numpy as `` is defined there. A small model's commonest
    wrong guess is a plausible name from its training data."""
    free = post.free_names(post.word_before(line_before, len(line_before)) + fill, known)
    if not free:
        return []
    bound = post.bound_names(line_before + fill)
    free = [n for n in free if n not in bound]
    if free and isinstance(defined, str):
        defined = post.identifiers(defined)
    return [n for n in free if n not in defined]


def in_prose(text: str, start: int, memo: dict[int, bool]) -> bool:
    """Whether ``start`` is in a string or comment, asked once per start (a request's items
    share one; the check reads the document up to it)."""
    if start not in memo:
        memo[start] = post.in_string_or_comment(text, start)
    return memo[start]


def rank(items: list[Completion], text: str, language: str | None,
         known: AbstractSet[str] | None = None, check_names: bool = True,
         extra: Sequence[tuple[str, str]] = (), prose: dict[int, bool] | None = None) -> None:
    """Sort ``items`` in place by :func:`completion_key`, after setting each one's ``unknown``
    (Python, with ``check_names``; names in the ``extra`` chunks of other files count as
    defined; in a string or comment nothing is a name) and ``parses``. ``prose``: the
    :func:`in_prose` memo, shared with the syntax guard."""
    if language == "python" and check_names:
        defined: set[str] | None = None  # the document's names, read once if needed
        prose = {} if prose is None else prose
        for it in items:
            if in_prose(text, it.start, prose):
                it.unknown = ()  # prose or data: its words are not names
                continue
            line_before = text[text.rfind("\n", 0, it.start) + 1:it.start]
            free = unknown_names(it.text, set(), known, line_before)  # defined by no one yet
            if free and defined is None:
                defined = post.identifiers(text)
                for _, chunk in extra:
                    defined |= post.identifiers(chunk)
            it.unknown = tuple(n for n in free if n not in defined) if free else ()
    if language is not None:
        for it in items:
            it.parses = post.parses_near(language, text[:it.start] + it.text + text[it.end:],
                                         it.start, it.start + len(it.text),
                                         SYNTAX_CHECK_LIMIT)
    items.sort(key=completion_key)
