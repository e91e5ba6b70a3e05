"""What the docs and the code's comments point at exists: every file of the tree a doc names,
every module, function or class it names in dotted form (``post.parsing_lines``), and every
section it cites by title (``docs/performance.md, "Threads per pass"``)."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "infill", "model", "workshop")
TOP = ("server", "infill", "model", "workshop", "tests", "editors", "docs", ".ci")
"""A path starting with one of these is one of ours and must exist."""


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else \
        [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()]


DOCS = sorted(f for f in tracked() if f.endswith(".md") and "node_modules" not in f)
CODE = sorted(f for f in tracked() if f.endswith(".py") and f.split("/")[0] in PACKAGES)
MODULES = {f.split("/")[-1][:-3]: f.split("/")[0] for f in CODE if not f.endswith("__init__.py")}
"""A module's bare name (``sampler``) to its package, for the short forms docs use."""


def headings(doc: str) -> list[str]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    return [m.group(1).strip().strip("`") for m in re.finditer(r"^#+ (.+)$", text, re.M)]


def resolve(dotted: str) -> bool:
    """Whether ``pkg.module.attr...`` (or ``module.attr``) names something in the code."""
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        if parts[0] not in MODULES:
            return True  # not one of ours (a file name, a third party's name)
        parts = [MODULES[parts[0]], *parts]
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("diffill." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def doc_references(doc: str):
    text = (ROOT / doc).read_text(encoding="utf-8")
    for m in re.finditer(r"`([^`\s]+)`", text):
        yield m.group(1)


def test_the_docs_name_only_files_that_exist():
    files = set(tracked())
    missing = [(doc, ref) for doc in DOCS for ref in doc_references(doc)
               if re.fullmatch(r"[\w.-]+(/[\w.*-]+)+/?", ref) and ref.split("/")[0] in TOP
               and "*" not in ref and ref.rstrip("/") not in files
               and not (ROOT / ref).exists()]
    assert not missing


def test_the_docs_name_only_code_that_exists():
    pattern = re.compile(rf"(?:{'|'.join(PACKAGES + tuple(MODULES))})(?:\.[A-Za-z_]\w*)+")
    wrong = [(doc, ref) for doc in DOCS for ref in doc_references(doc)
             if pattern.fullmatch(ref) and not ref.endswith((".py", ".md", ".json", ".log",
                                                               ".lock", ".sock"))
             and not resolve(ref)]
    assert not wrong


CITATION = re.compile(r"((?:docs/)?(?:design|performance|reliability|training)\.md)"
                      r"(?:,| \(|'s) ?\"([^\"]+)\"")
PLAIN_CITATION = re.compile(r"((?:docs/)?(?:design|performance|reliability|training)\.md), "
                            r"([^)\"]{3,60})\)")
"""Comments cite without quotes too: ``(docs/performance.md, session 12)``."""


@pytest.mark.parametrize("where", ["docs", "code"])
def test_sections_cited_by_title_exist(where):
    """``design.md, "Known gaps"`` in a doc or a comment names a heading of that doc."""
    sources, patterns = (DOCS, [CITATION]) if where == "docs" else \
        (CODE, [CITATION, PLAIN_CITATION])
    wrong = []
    for src in sources:
        text = (ROOT / src).read_text(encoding="utf-8")
        for m in (m for p in patterns for m in p.finditer(text)):
            doc = m.group(1) if m.group(1).startswith("docs/") else f"docs/{m.group(1)}"
            title = m.group(2).rstrip(".,").lower()
            if not any(title in h.lower() for h in headings(doc)):
                wrong.append((src, doc, title))
    assert not wrong


def test_files_the_code_points_at_exist():
    """A comment or docstring naming a file of the tree (``docs/training.md``,
    ``model/checkpoints/diffill-small/README.md``) names one that is there."""
    files = set(tracked())
    pattern = re.compile(r"(?<![\w/.])((?:%s)/[\w./-]+\.(?:md|py|txt|json|lua|ts))"
                         % "|".join(TOP))
    missing = [(src, m.group(1)) for src in CODE
               for m in pattern.finditer((ROOT / src).read_text(encoding="utf-8"))
               if m.group(1) not in files]
    assert not missing
