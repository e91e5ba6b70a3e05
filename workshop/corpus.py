"""The training corpus of the bundled model: Python source already on the machine.

The standard library (PSF licence) and installed packages whose metadata declares a permissive
licence. Whole packages are held out for evaluation, never single files of a trained-on package,
so held-out figures measure code the model has not seen.
"""

from __future__ import annotations

import hashlib
import json
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


def unpack_wheels(wheel_dir: Path, out_dir: Path) -> list[dict]:
    """Unpack the Python sources of every permissively licensed wheel in ``wheel_dir`` into
    ``out_dir/<name>-<version>/`` and return what was taken (package, version, licence).

    Wheels rather than installs: they carry their METADATA (licence, version) and need no
    build, so ``pip download --only-binary=:all:`` of a package list makes the corpus.
    """
    import zipfile
    from email.parser import HeaderParser
    taken: list[dict] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(Path(wheel_dir).glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            meta_name = next((n for n in zf.namelist()
                              if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if meta_name is None:
                continue
            meta = HeaderParser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
            classifiers = " ".join(c for c in meta.get_all("Classifier") or []
                                   if c.startswith("License ::"))
            lic = " ".join(filter(None, [meta.get("License-Expression"),
                                         (meta.get("License") or "")[:200], classifiers]))
            name, version = meta.get("Name", wheel.stem), meta.get("Version", "")
            if not _is_permissive(lic):
                taken.append({"package": name, "version": version, "license": lic.strip(),
                              "skipped": "licence not permissive"})
                continue
            dest = out_dir / f"{name}-{version}"
            for member in zf.namelist():
                if member.endswith(".py") and ".dist-info/" not in member and \
                        ".data/" not in member and not member.startswith("/") and \
                        ".." not in member.split("/"):
                    target = dest / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(member))
            short = meta.get("License-Expression") or classifiers.replace(
                "License :: OSI Approved :: ", "").replace("License :: ", "") or lic
            taken.append({"package": name, "version": version, "license": short.strip()[:80]})
    (out_dir / "packages.json").write_text(json.dumps(taken, indent=1))
    return taken


def unpacked_packages(corpus_dir: Path) -> list[Package]:
    """One Package per top-level import of each wheel unpacked by ``unpack_wheels``."""
    record = json.loads((Path(corpus_dir) / "packages.json").read_text())
    pkgs: list[Package] = []
    for entry in record:
        if entry.get("skipped"):
            continue
        dest = Path(corpus_dir) / f"{entry['package']}-{entry['version']}"
        if not dest.is_dir():
            continue
        for top in sorted(dest.iterdir()):
            if top.name.startswith((".", "_")) or (top.is_file() and top.suffix != ".py"):
                continue
            files = _python_files(top)
            if files:
                name = top.stem if top.is_file() else top.name
                pkgs.append(Package(name, top, f"{entry['license']} ({entry['package']} "
                                    f"{entry['version']})", files))
    return pkgs


@dataclass
class Corpus:
    train: list[Package]
    held_out: list[Package]

    def files(self, split: str = "train", max_bytes_per_package: int = 6_000_000,
              seed: int = 0) -> list[Path]:
        """Files of a split, each package capped (sampled by seed) so none dominates."""
        rng = random.Random(seed)
        out: list[Path] = []
        # Exact duplicates (vendored copies, one module shipped by two packages) count once,
        # and a training file identical to a held-out one is dropped.
        seen = set() if split == "held-out" else {_digest(f) for p in self.held_out
                                                   for f in p.files}
        for pkg in (self.train if split == "train" else self.held_out):
            files = sorted(pkg.files)
            rng.shuffle(files)
            total = 0
            for f in files:
                size = f.stat().st_size
                if total + size > max_bytes_per_package:
                    continue
                digest = _digest(f)
                if digest in seen:
                    continue
                seen.add(digest)
                total += size
                out.append(f)
        return sorted(out)

    def summary(self) -> list[dict]:
        return [{"package": p.name, "license": p.license, "files": len(p.files),
                 "bytes": p.n_bytes, "split": split}
                for split, pkgs in (("train", self.train), ("held-out", self.held_out))
                for p in sorted(pkgs, key=lambda p: p.name)]


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def build_corpus(held_out: tuple[str, ...] = HELD_OUT, extra: Path | None = None) -> Corpus:
    """Standard library, permissive site-packages and, given ``extra``, the wheels unpacked
    there by ``unpack_wheels``; a name already taken keeps its first source."""
    packages = stdlib_packages() + site_packages()
    if extra is not None:
        packages += unpacked_packages(extra)
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
