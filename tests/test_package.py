"""What ``pip install diffill`` puts on a machine: one name, ``diffill``, with the bundled
model and the demo's sample inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_install_claims_one_name_and_carries_its_data(tmp_path):
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("server", "infill", "model", "workshop"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "wheels"), str(src)], check=True, cwd=tmp_path)
    wheel, = (tmp_path / "wheels").glob("diffill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"diffill", wheel.name.split("-py")[0] + ".dist-info"}
    for data in ("diffill/server/samples/demo.py", "diffill/server/samples/demo.py.expected",
                 "diffill/model/checkpoints/diffill-small/config.json",
                 "diffill/model/checkpoints/diffill-small/model.safetensors",
                 "diffill/workshop/corpus-packages.txt"):
        assert data in names

    # Installed alone (a module that needs no dependency): diffill.* imports, the generic
    # names the folders have in the tree do not.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, cwd=tmp_path)
    assert sorted(p.name for p in target.iterdir() if p.name != "bin") == \
        ["diffill", wheel.name.split("-py")[0] + ".dist-info"]
    probe = ("import diffill.infill.text as p, importlib.util as u; "
             "print(p.__file__.startswith(%r), [n for n in ('server', 'infill', 'model') "
             "if u.find_spec(n)])" % str(target))
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert out.stdout.split() == ["True", "[]"], out.stderr
