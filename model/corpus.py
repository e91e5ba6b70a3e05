"""The training corpus of the bundled model: Python source already on the machine.

The standard library (PSF licence) and installed packages whose metadata declares a permissive
licence. Whole packages are held out for evaluation, never single files of a trained-on package,
so held-out figures measure code the model has not seen.
"""

from __future__ import annotations

import hashlib
import random
import re
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# Held out for `diffill eval`: whole top-level packages.
HELD_OUT = ("email", "json", "http", "pygls", "huggingface_hub")

PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC|Unlicense|0BSD)\b",
                        re.IGNORECASE)
COPYLEFT = re.compile(r"\b(GPL|LGPL|AGPL|MPL|Mozilla|EUPL|copyleft)\b", re.IGNORECASE)
SKIP_DIRS = {"test", "tests", "testing", "idlelib", "turtledemo", "__pycache__", "site-packages",
             "lib2to3", "ensurepip", "encodings", "_vendor", "vendored", "third_party", "benchmarks"}
MAX_FILE_BYTES = 200_000


@dataclass
class Package:
    name: str
    root: Path
    license: str
    files: list[Path] = field(default_factory=list)

    @property
    def n_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def _python_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix == ".py" else []
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts[:-1]
        if any(p in SKIP_DIRS or p.startswith(".") for p in rel):
            continue
        try:
            if path.stat().st_size <= MAX_FILE_BYTES:
                out.append(path)
        except OSError:
            continue
    return out


def _license_of(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    text = " ".join(filter(None, [meta.get("License-Expression"), meta.get("License")]))
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    text = (text[:200] + " " + " ".join(classifiers)).strip()
    return text


def _is_permissive(license_text: str) -> bool:
    return bool(PERMISSIVE.search(license_text)) and not COPYLEFT.search(license_text)


def stdlib_packages() -> list[Package]:
    root = Path(sysconfig.get_paths()["stdlib"])
    pkgs: dict[str, Package] = {}
    for entry in sorted(root.iterdir()):
        if entry.name in SKIP_DIRS or entry.name.startswith((".", "_")) and entry.suffix != ".py":
            continue
        name = entry.stem if entry.is_file() else entry.name
        if entry.is_file() and entry.suffix != ".py":
            continue
        files = _python_files(entry)
        if files:
            # Top-level modules are grouped into one "stdlib" package; packages stay whole.
            key = name if entry.is_dir() else "stdlib-modules"
            pkg = pkgs.setdefault(key, Package(key, root, "PSF-2.0"))
            pkg.files.extend(files)
    return list(pkgs.values())


def site_packages() -> list[Package]:
    """Installed distributions with a permissive licence, one Package per top-level import."""
    pkgs: dict[str, Package] = {}
    for dist in metadata.distributions():
        lic = _license_of(dist)
        if not _is_permissive(lic):
            continue
        top = (dist.read_text("top_level.txt") or "").split()
        if not top:
            names = {Path(str(f)).parts[0] for f in dist.files or [] if str(f).endswith(".py")}
            top = sorted(n for n in names if not n.endswith((".dist-info", ".egg-info")))
        for name in top:
            root = Path(str(dist.locate_file(name)))
            if not root.exists():
                root = root.with_suffix(".py")
            if name in pkgs or not root.exists() or name.startswith("_"):
                continue
            files = _python_files(root)
            if files:
                pkgs[name] = Package(name, root, lic.split("License ::")[0].strip() or lic, files)
    return list(pkgs.values())


@dataclass
class Corpus:
    train: list[Package]
    held_out: list[Package]

    def files(self, split: str = "train", max_bytes_per_package: int = 6_000_000,
              seed: int = 0) -> list[Path]:
        """Files of a split, each package capped (sampled by seed) so none dominates."""
        rng = random.Random(seed)
        out: list[Path] = []
        for pkg in (self.train if split == "train" else self.held_out):
            files = list(pkg.files)
            rng.shuffle(files)
            total = 0
            for f in files:
                size = f.stat().st_size
                if total + size > max_bytes_per_package:
                    continue
                total += size
                out.append(f)
        return sorted(out)

    def summary(self) -> list[dict]:
        return [{"package": p.name, "license": p.license, "files": len(p.files),
                 "bytes": p.n_bytes, "split": split}
                for split, pkgs in (("train", self.train), ("held-out", self.held_out))
                for p in sorted(pkgs, key=lambda p: p.name)]


def build_corpus(held_out: tuple[str, ...] = HELD_OUT) -> Corpus:
    packages = stdlib_packages() + site_packages()
    seen: set[str] = set()
    unique = []
    for p in packages:
        if p.name not in seen:
            seen.add(p.name)
            unique.append(p)
    return Corpus(train=[p for p in unique if p.name not in held_out],
                  held_out=[p for p in unique if p.name in held_out])


def read_source(path: Path) -> str | None:
    """File text, or None for files that are not clean UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
    return h.hexdigest()[:16]
