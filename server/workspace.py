"""The workspace's files as a source of drafts: the most recently touched files of a
document's kind, read once in the background into an ``infill.drafts.Library``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from diffill.infill.drafts import Library

MAX_BYTES = 50_000_000
"""Most text read per kind of file (issue 24's bound: 2,000 files, 50 MB)."""
MAX_FILE_BYTES = 1_000_000
"""Larger files are generated or data, not code a person types again."""
MAX_ENTRIES = 100_000
"""Directory entries looked at per root before the walk stops (a home folder opened as a
workspace)."""
SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "venv", "env", "site-packages",
                          "build", "dist", "target", "out"})
"""Besides hidden folders (``.git``, ``.venv``): vendored, generated or built code."""

SUFFIXES = {".pyi": ".py", ".jsx": ".js", ".mjs": ".js", ".cjs": ".js", ".tsx": ".ts",
            ".hpp": ".cpp", ".cc": ".cpp", ".hh": ".cpp", ".cxx": ".cpp", ".h": ".c"}
"""Suffixes read as one kind (a stub or header is read with its language's files)."""


def kind_of(path: str | None) -> str | None:
    """The kind of file a document is, by suffix (``.pyi`` counts as ``.py``); None without
    one."""
    suffix = Path(path).suffix.lower() if path else ""
    return SUFFIXES.get(suffix, suffix) or None


def _walk(root: Path, kind: str, budget: list[int]) -> Iterable[tuple[float, Path, int]]:
    """(mtime, path, size) of the files of ``kind`` under ``root``, hidden and vendored
    folders skipped; ``budget[0]``: entries still allowed to look at."""
    stack = [root]
    while stack and budget[0] > 0:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            budget[0] -= 1
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in SKIPPED_DIRS:
                        stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False) and kind_of(e.name) == kind:
                    st = e.stat(follow_symlinks=False)
                    if 0 < st.st_size <= MAX_FILE_BYTES:
                        yield st.st_mtime, Path(e.path), st.st_size
            except OSError:
                continue


def build_library(roots: Iterable[Path], kind: str, max_files: int = 2000,
                  max_bytes: int = MAX_BYTES) -> Library:
    """The ``max_files`` most recently modified files of ``kind`` under ``roots`` (at most
    ``max_bytes`` of text, UTF-8 only), most recent first, indexed."""
    found: dict[Path, tuple[float, int]] = {}
    for root in roots:
        budget = [MAX_ENTRIES]
        for mtime, path, size in _walk(Path(root), kind, budget):
            found[path] = (mtime, size)
    texts: list[tuple[str, str]] = []
    total = 0
    for path in sorted(found, key=lambda p: -found[p][0]):
        if len(texts) == max_files:
            break
        if total + found[path][1] > max_bytes:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append((str(path), text))
        total += len(text)
    return Library(texts)
