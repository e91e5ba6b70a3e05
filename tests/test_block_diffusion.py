"""DiffusionGemma (block diffusion) through diffill: a tiny random copy built from transformers'
own config classes, saved with ``save_pretrained`` and loaded through the user's code path."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

import helpers
from diffill.infill import Cancelled, InfillEngine, InfillRequest, InfillSettings, make_engine
from diffill.infill import block, chat
from diffill.infill.context import ContextBudget
from diffill.infill.text import InputError
from diffill.model import CheckpointError, load_model
from diffill.model import block_diffusion
from diffill.model.loader import check_checkpoint
from diffill.server.daemon_client import spawn_daemon
from test_cli import diffill
from test_daemon import wait_for
from test_lsp import stop_daemon

TEXT = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
CURSOR_AT = TEXT.index("a + b")


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    return helpers.save_diffusion_gemma(tmp_path_factory.mktemp("dgemma") / "tiny-dgemma")


@pytest.fixture(scope="module")
def gemma(gemma_dir):
    return load_model(gemma_dir)


@pytest.mark.slow
def test_loads_through_transformers_class_from_safetensors(gemma, gemma_dir):
    from transformers import DiffusionGemmaForBlockDiffusion
    assert isinstance(gemma.net, DiffusionGemmaForBlockDiffusion)
    info = gemma.describe()
    assert info["family"] == "diffusiongemma" and info["canvas_length"] == 16
    # Counted from the safetensors headers: the parameters and a few stored scalars.
    assert 0 <= info["parameters"] - sum(p.numel() for p in gemma.net.parameters()) < 100
    assert check_checkpoint(gemma_dir) == gemma_dir
    eot = gemma.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert eot in gemma.stop_ids()


def test_diffill_generate_is_transformers_generate_token_for_token(gemma):
    prompt = gemma.tokenizer("def add(a, b):\n", add_special_tokens=False)["input_ids"]
    got = block.generate(gemma, prompt, rows=2, max_new_tokens=32, seed=7)
    torch.manual_seed(7)
    ref = gemma.net.generate(torch.tensor([prompt] * 2), max_new_tokens=32)
    assert torch.equal(got.sequences, ref.sequences)
    assert got.sequences.shape[1] == len(prompt) + 32  # two canvases of 16
    assert got.confidence.shape == (2, 32)
    assert ((got.confidence > 0) & (got.confidence <= 1)).all()
    # Seeded and forked: the same call again gives the same tokens, whatever ran between.
    torch.rand(5)
    again = block.generate(gemma, prompt, rows=2, max_new_tokens=32, seed=7)
    assert torch.equal(again.sequences, got.sequences)
    other = block.generate(gemma, prompt, rows=2, max_new_tokens=32, seed=8)
    assert not torch.equal(other.sequences, got.sequences)


def test_the_engine_answers_with_generates_tokens(gemma):
    engine = make_engine(gemma)
    # Random weights write names defined nowhere and code that does not parse: asked for
    # explicitly, they are shown all the same, to compare them.
    settings = InfillSettings(min_confidence=0.0, ensemble=2, mode="block", explicit=True)
    req = InfillRequest(TEXT, CURSOR_AT, language="python")
    result = engine.run(req, settings)
    p = engine.prompt(req, settings)
    ref = block.generate(gemma, p.ids, rows=2, max_new_tokens=p.max_new_tokens,
                         seed=block.DEFAULT_SEED)
    raw = [engine.decode(row[len(p.ids):].tolist()) for row in ref.sequences]
    assert result.forward_passes == ref.forward_passes > 0 and result.items
    for item in result.items:  # post-processing only cuts: each answer lies in a raw row
        assert item.start == item.end == CURSOR_AT
        assert any(item.text.strip() in r for r in raw), (item.text, raw)
        assert 0 < item.score <= 1


def test_prompt_holds_prefix_suffix_cursor_and_opens_the_line(gemma):
    engine = make_engine(gemma)
    req = InfillRequest(TEXT, CURSOR_AT, language="python")
    p = engine.prompt(req, InfillSettings())
    text = engine.decode(p.ids)
    assert f"def add(a, b):\n    return {chat.CURSOR}a + b\n\n\nprint(add(1, 2))" in text
    assert "<start_of_turn>user\n" in text and "<start_of_turn>model\n" in text
    assert text.endswith("```python\n    return ")  # the model's turn continues the line
    assert p.task.mode == "line" and p.max_new_tokens % gemma.canvas_length == 0
    # A tight budget keeps the lines next to the cursor.
    tight = engine.decode(engine.prompt(req, InfillSettings(
        budget=ContextBudget(prefix_tokens=8, suffix_tokens=0))).ids)
    assert "print(add" not in tight and f"return {chat.CURSOR}" in tight


def test_rewrite_prompt_marks_the_selection_and_carries_the_instruction(gemma):
    engine = make_engine(gemma)
    start, end = TEXT.index("return"), TEXT.index("\n\n\n")
    req = InfillRequest(TEXT, start, end, action="rewrite", language="python",
                        instruction="use operator.add")
    p = engine.prompt(req, InfillSettings())
    text = engine.decode(p.ids)
    assert "<SELECTION>return a + b</SELECTION>" in text and "use operator.add" in text
    assert p.task.mode == "rewrite"
    result = engine.run(req, InfillSettings(ensemble=1))
    assert all((it.start, it.end) == (start, end) for it in result.items)


def test_cancel_stops_between_denoising_steps(gemma):
    forwards = []
    handle = gemma.net.model.decoder.register_forward_hook(lambda *a: forwards.append(1))
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 3

    try:
        with pytest.raises(Cancelled):
            block.generate(gemma, [5, 6, 7], max_new_tokens=64, cancel=cancel)
        # Three steps ran; the fourth pass's logits were never sampled: nowhere near the
        # 4 canvases x 6 steps the request asked for.
        assert len(forwards) == 4 and len(asked) == 4
        engine = make_engine(gemma)
        with pytest.raises(Cancelled):
            engine.run(InfillRequest(TEXT, CURSOR_AT), InfillSettings(), cancel=lambda: True)
    finally:
        handle.remove()


def test_refine_and_misplaced_instructions_are_clear_errors(gemma):
    engine = make_engine(gemma)
    with pytest.raises(InputError, match="use rewrite"):
        engine.run(InfillRequest(TEXT, 0, 10, action="refine"))
    with pytest.raises(InputError, match="goes with a rewrite"):
        engine.run(InfillRequest(TEXT, CURSOR_AT, instruction="be brief"))


def test_both_engines_offer_the_engine_interface(gemma, diffill_ckpt):
    mask, chat = make_engine(load_model(diffill_ckpt)), make_engine(gemma)
    assert type(mask).__name__ == "Engine" and type(chat).__name__ == "BlockEngine"
    for engine in (mask, chat):
        assert isinstance(engine, InfillEngine)
        assert engine.tokenizer is engine.model.tokenizer
        assert engine.shed == engine.quick == engine.prefix_reuses == 0


def test_an_instruction_to_a_mask_model_is_a_clear_error(diffill_ckpt):
    engine = make_engine(load_model(diffill_ckpt))
    with pytest.raises(InputError, match="cannot follow an instruction"):
        engine.run(InfillRequest(TEXT, 4, 10, action="rewrite", instruction="rename it"))


def test_memory_guard_names_the_memory_it_needs(gemma_dir, monkeypatch):
    # The released checkpoint's weights: 25.8B parameters in bf16 and working memory.
    assert 56e9 < block_diffusion.memory_needed(25_800_000_000, torch.bfloat16) < 58e9
    monkeypatch.setattr(block_diffusion, "free_memory", lambda device: 1_000_000)
    with pytest.raises(CheckpointError) as err:
        load_model(gemma_dir)
    msg = str(err.value)
    assert "needs about 1.1 GB" in msg and "(0.4M parameters in float32" in msg
    assert "0.0 GB" in msg and "\n" not in msg
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in msg


def test_broken_checkpoints_fail_with_one_line(gemma_dir, tmp_path):
    import shutil
    no_weights = tmp_path / "no-weights"
    shutil.copytree(gemma_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    no_template = helpers.save_diffusion_gemma(tmp_path / "no-template", chat_template=None)
    for folder, why in ((no_weights, "safetensors"), (no_template, "no chat template")):
        for call in (check_checkpoint, load_model):
            with pytest.raises(CheckpointError, match=why):
                call(folder)
    with pytest.raises(CheckpointError, match="model_type"):
        load_model(helpers.save_checkpoint(tmp_path / "mask", "qwen2",
                                           config_updates=helpers.diffill_config())[0],
                   family="diffusiongemma")


@pytest.mark.slow
def test_cli_completes_and_rewrites_with_an_instruction(gemma_dir, tmp_path):
    src = tmp_path / "a.py"
    src.write_text(TEXT)
    r = diffill("infill", str(src), "--at", "2:12", "--json", "--no-daemon", model=gemma_dir)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["mode"] == "line" and out["forward_passes"] > 0
    r = diffill("infill", str(src), "--select", "2:5-2:17", "--rewrite", "--instruction",
                "use operator.add", "--json", "--no-daemon", model=gemma_dir)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["mode"] == "rewrite"
    r = diffill("infill", str(src), "--at", "2:12", "--instruction", "x", "--no-daemon",
                model=gemma_dir)
    assert r.returncode != 0 and b"--instruction goes with --rewrite" in r.stderr


@pytest.mark.slow
def test_the_daemon_serves_diffusiongemma(gemma_dir):
    sock = Path(tempfile.mkdtemp(prefix="dfl-")) / "d.sock"
    spawn_daemon(sock, idle_timeout=60)
    try:
        client = wait_for(sock)
        model = {"checkpoint": str(gemma_dir)}
        params = {"document": "file:///a.py", "model": model,
                  "request": {"text": TEXT, "start": CURSOR_AT, "language": "python"},
                  "settings": {"min_confidence": 0.0}}
        result = client.call("infill", params)
        assert result["mode"] == "line" and result["forward_passes"] > 0
        st = client.call("status")
        assert st["models"][0]["family"] == "diffusiongemma"
        assert st["models"][0]["memory_bytes"] > 0
        rewrite = dict(params, request={"text": TEXT, "start": 0, "end": 14,
                                        "action": "rewrite", "instruction": "rename it"})
        assert client.call("infill", rewrite)["mode"] == "rewrite"
        client.close()
    finally:
        stop_daemon(sock)


@pytest.mark.slow
def test_bench_compares_the_diffusion_path_with_an_autoregressive_twin(gemma_dir, tmp_path):
    out = tmp_path / "perf.md"
    r = diffill("bench", "--context", "16", "--repeats", "1", "--steps", "2", "--canvases", "2",
                "--write", str(out), model=gemma_dir)
    assert r.returncode == 0, r.stderr.decode()
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()
            if line.startswith("| ")][2:]
    assert [c[0].strip().split(",")[0] for c in rows] == [
        "DiffusionGemma path", "autoregressive Gemma 4 decoder"]
    # Two canvases of 16 at two steps each against 32 one-token passes.
    assert [int(c[3]) for c in rows] == [4, 32]
    assert float(rows[1][4].strip().rstrip("x")) == 1.0
    r = diffill("bench", "--random-config", "diffusiongemma-tiny", "--context", "8",
                "--repeats", "1", "--steps", "1", "--no-ar")
    assert r.returncode == 0, r.stderr.decode()
    assert "random weights, diffusiongemma-tiny" in r.stdout.decode()
