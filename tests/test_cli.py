"""``diffill`` as a subprocess: each mode, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


def diffill(*args, stdin: bytes | None = None, model: Path | None = None, timeout=180,
            env_extra: dict | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               DIFFILL_SOCKET="/nonexistent/diffill-test.sock")  # never a user's daemon
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "diffill.server.cli", *args]
    if model is not None:
        cmd += ["--model", str(model)]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.fixture()
def src(tmp_path) -> Path:
    p = tmp_path / "sample.py"
    p.write_text(SAMPLE)
    return p


COUNT = "c0 c1 c2 c3 c4  c8 c9 c10\n"
"""A counting row (the rows the counting model was trained on are one line each): it fills
column 16 with c5 c6 c7."""


@pytest.fixture()
def count_file(tmp_path) -> Path:
    p = tmp_path / "count.txt"
    p.write_text(COUNT)
    return p


@pytest.mark.slow
def test_infill_at_a_position_prints_text_and_json(count_file, pattern_ckpt):
    args = ("infill", str(count_file), "--at", "1:16", "--max-tokens", "8", "--ensemble", "1")
    r = diffill(*args, "--json", model=pattern_ckpt)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["mode"] == "line" and out["forward_passes"] >= 1
    assert out["text"] == "c5 c6 c7"
    assert out["range"] == {"start": {"line": 1, "column": 16}, "end": {"line": 1, "column": 16}}
    plain = diffill(*args, model=pattern_ckpt)
    assert plain.returncode == 0 and plain.stdout.decode() == "c5 c6 c7\n"


@pytest.mark.slow
def test_faithful_decodes_one_token_per_step_with_the_fixed_schedule(count_file, pattern_ckpt):
    args = ("infill", str(count_file), "--at", "1:16", "--lengths", "6", "--json")
    ours = json.loads(diffill(*args, model=pattern_ckpt).stdout)
    r = diffill(*args, "--faithful", model=pattern_ckpt)
    assert r.returncode == 0, r.stderr.decode()
    theirs = json.loads(r.stdout)
    assert theirs["text"] == ours["text"] == "c5 c6 c7"
    # Six masks, one committed per pass (diffill's threshold schedule took fewer).
    assert theirs["forward_passes"] == 6 > ours["forward_passes"]


@pytest.mark.slow
def test_marker_on_stdin_and_full_output(pattern_ckpt):
    doc = "c9 c10 c11 <|fill|> c3 c4 c5\nc1 c2\n"
    args = ("infill", "-", "--max-tokens", "8", "--ensemble", "1")
    r = diffill(*args, "--full", stdin=doc.encode(), model=pattern_ckpt)
    assert r.returncode == 0, r.stderr.decode()
    fill = json.loads(diffill(*args, "--json", stdin=doc.encode(), model=pattern_ckpt).stdout)
    # The whole document with the marker's fill in place. (The fill itself is the model's: the
    # counting run, or most of it, as this CPU's training of the model goes.)
    assert r.stdout.decode() == doc.replace("<|fill|>", fill["text"])
    assert fill["text"].split() and "c0 c1 c2".startswith(fill["text"].strip())


@pytest.mark.slow
def test_rewrite_and_refine_a_selection(tmp_path, pattern_ckpt):
    src = tmp_path / "wrong.txt"
    src.write_text("c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10\n")  # c9 at the 7th slot is wrong
    for flag in ("--rewrite", "--refine"):
        # Eight masks: the counting model was trained on gaps of eight slots.
        r = diffill("infill", str(src), "--select", "1:16-1:24", flag, "--json",
                    "--lengths", "8", model=pattern_ckpt)
        assert r.returncode == 0, r.stderr.decode()
        out = json.loads(r.stdout)
        assert out["range"] == {"start": {"line": 1, "column": 16},
                                "end": {"line": 1, "column": 24}}
        if flag == "--rewrite":  # regenerated: counting tokens
            assert out["mode"] == "rewrite" and re.fullmatch(r"c\d+( c\d+)*", out["text"])
        else:  # refine re-masks the wrong token and puts the right one back
            assert out["mode"] == "refine" and out["remasked"]
            assert out["text"] == "c5 c6 c7"


@pytest.mark.slow
def test_jsonl_batch_keeps_order_and_reports_bad_lines(tmp_path, src, diffill_ckpt):
    reqs = tmp_path / "reqs.jsonl"
    reqs.write_text("\n".join([
        json.dumps({"id": "a", "file": str(src), "at": "2:12"}),
        json.dumps({"id": "b", "text": "y = <|fill|>\n"}),
        "not json",
        json.dumps({"id": "c", "file": str(src), "at": "99:1"}),
        json.dumps({"id": "d", "text": "a\n", "select": "1:1-1:2", "action": "refine"}),
    ]) + "\n")
    r = diffill("infill", "--jsonl", str(reqs), "--max-tokens", "4", model=diffill_ckpt)
    assert r.returncode == 1  # some requests failed
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b", 3, "c", "d"]
    assert "error" not in lines[0] and "error" not in lines[1] and "error" not in lines[4]
    assert lines[2]["error"]["kind"] == "BadInput"
    assert lines[3]["error"]["kind"] == "BadInput" and "past the end" in \
        lines[3]["error"]["message"]
    assert b"infill" in r.stderr  # the progress bar is on stderr


@pytest.mark.parametrize("args,setup,message,code", [
    (["infill", "{missing}", "--at", "1:1"], None, "no such file", 3),
    (["infill", "{src}", "--at", "40:1"], None, "past the end", 3),
    (["infill", "{src}", "--at", "1:200"], None, "past the end of line 1", 3),
    (["infill", "{bin}", "--at", "1:1"], "bin", "not UTF-8", 3),
    (["infill", "{src}"], None, "marker", 3),
    (["infill", "{src}", "--at", "1:1", "--model", "{tmp}/nope"], None, "nope", 4),
    (["infill", "{src}", "--at", "1:1", "--model", "{corrupt}"], "corrupt", "cannot read", 4),
    (["infill", "{src}", "--refine"], None, "--select", 2),
])
@pytest.mark.slow
def test_bad_input_gets_one_clear_line_and_no_traceback(tmp_path, src, diffill_ckpt, args, setup,
                                                        message, code):
    import shutil
    paths = {"missing": str(tmp_path / "missing.py"), "src": str(src), "tmp": str(tmp_path),
             "bin": str(tmp_path / "latin1.py"), "corrupt": str(tmp_path / "corrupt")}
    if setup == "bin":
        Path(paths["bin"]).write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    if setup == "corrupt":
        shutil.copytree(diffill_ckpt, paths["corrupt"])
        (Path(paths["corrupt"]) / "model.safetensors").write_bytes(b"broken")
    argv = [a.format(**paths) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(diffill_ckpt)]
    r = diffill(*argv)
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert r.stdout == b""


@pytest.mark.slow
def test_bench_writes_a_table_of_ratios_against_the_plain_sampler(tmp_path, diffill_ckpt):
    out = tmp_path / "perf.md"
    out.write_text("# Performance\n")
    r = diffill("bench", "--context", "40", "--span", "8", "--repeats", "1", "--write", str(out),
                model=diffill_ckpt)
    assert r.returncode == 0, r.stderr.decode()
    text = out.read_text()
    assert text.startswith("# Performance\n") and "- command: `diffill bench" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    names = [c[0].strip() for c in rows[2:]]
    assert names[0] == "baseline: fixed, 1 token/pass"
    assert "filler order left (checkpoint's)" in names[1]
    base = rows[2]
    # The baseline runs one token per pass, and agrees with itself.
    assert base[3].strip() == "8" and base[4].strip() == "1.00x" and base[5].strip() == "100%"
    assert all(float(c[4].strip().rstrip("x")) > 0 for c in rows[2:])
    # The last row: transformers' causal decoder with the same weights, and every variant's
    # tokens/s as a ratio of its tokens/s.
    ar = rows[-1]
    assert ar[0].strip().startswith("autoregressive decoder, same weights (Qwen2ForCausalLM")
    assert "float32" in ar[0]  # the dtype it ran in (its best of the model's and fp32)
    assert ar[3].strip() == "8" and ar[5].strip() == "—" and ar[6].strip() == "1.00x"
    assert all(float(c[6].strip().rstrip("x")) > 0 for c in rows[2:])


@pytest.mark.slow
def test_min_confidence_hides_a_completion_the_model_is_unsure_of(pattern_ckpt):
    doc = b"c0 c1 c2 c3 c4 <|fill|> c8 c9 c10\n"
    args = ("infill", "-", "--max-tokens", "8", "--ensemble", "1", "--json")
    shown = diffill(*args, "--min-confidence", "0", stdin=doc, model=pattern_ckpt)
    assert shown.returncode == 0, shown.stderr.decode()
    out = json.loads(shown.stdout)
    assert out["text"] == "c5 c6 c7" and out["withheld"] == 0
    score = out["candidates"][0]["score"]
    floor = str(round((score + 1) / 2, 4))
    hidden = diffill(*args, "--min-confidence", floor, stdin=doc, model=pattern_ckpt)
    out = json.loads(hidden.stdout)
    assert out["text"] is None and out["withheld"] == 1
    plain = diffill("infill", "-", "--max-tokens", "8", "--ensemble", "1", "--min-confidence",
                    floor, stdin=doc, model=pattern_ckpt)
    assert plain.returncode == 1 and b"min-confidence" in plain.stderr
    bad = diffill("infill", "-", "--min-confidence", "1.5", stdin=doc, model=pattern_ckpt)
    assert bad.returncode == 2 and b"--min-confidence must be" in bad.stderr


@pytest.mark.slow
def test_bench_e2e_times_the_editor_path_with_a_fresh_daemon(pattern_ckpt, tmp_path):
    table = tmp_path / "perf.md"
    r = diffill("bench", "--e2e", "--places", "3", "--lines", "1", "--keystroke-ms", "1",
                "--write", str(table), model=pattern_ckpt, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(r.stdout.decode().split("\n### End to end")[0])
    assert report["invoked"]["n"] == 3 and report["invoked"]["p50_ms"] > 0
    assert report["typing"]["lines"] == 1 and report["typing"]["keystrokes"] >= 12
    assert report["cold_start"]["first_completion_ms"] >= report["cold_start"]["initialize_ms"]
    assert report["daemon"]["model"] == str(pattern_ckpt)
    assert report["daemon"]["counters"]["completed"] >= 4  # the first, 3 invoked, the typing
    # The typing line's last request ran the model: some work per keystroke, at most one call.
    assert 0 < report["typing"]["model_calls_per_key"] <= 1
    assert report["typing"]["tokens_per_key"] > 0
    assert "| typing: token positions the model ran, per keystroke |" in table.read_text()
    assert report["typing"]["mid_line_pause_p50_ms"] > 0  # the half-way pause got its ghost
    assert "| invoked completion p50 / p95 (3 places) |" in table.read_text()
