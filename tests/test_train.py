"""Training of the bundled model: tokenizer, objective, resumable runs, export, corpus split,
and the shipped checkpoint itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import helpers
from diffill.model import load_model
from diffill.workshop.train import (TrainConfig, init_weights, export, mdlm_loss, prepare_run,
                         shape_of_checkpoint, train, train_tokenizer)
from diffill.model.transformer import Transformer

ROUND_TRIP = [
    "def f(x):\n    return x + 1\n",
    "\tif a:\n\t\tb = 'ünïcödé ✓ 𝄞'\n",
    "x = 1   \r\n\r\ny = 2\n\n\n",
    "    # trailing spaces    \n" + " " * 17 + "deep = True\n",
    "s = \"\"\"\n  multi\n\tline\n\"\"\"\n",
    "emoji = '🐍🚀'  # 中文注释\n",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_tokenizer_round_trips_code_exactly(text):
    tok = train_tokenizer(iter(helpers.CODE_SNIPPETS * 3), 400)
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_has_the_special_tokens_and_keeps_them_whole():
    tok = train_tokenizer(iter(helpers.CODE_SNIPPETS), 300)
    for special in ("<|endoftext|>", "<|pad|>", "<|mask|>"):
        assert tok.token_to_id(special) is not None
        assert tok.encode(f"a{special}b").ids.count(tok.token_to_id(special)) == 1


TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, seq_len=64, batch_size=8,
            warmup_steps=5, total_steps=60, lr=3e-3, tokenizer_sample_bytes=10**6)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    texts = [s * 4 for s in helpers.CODE_SNIPPETS] * 4
    prepare_run(run, TrainConfig(**TINY), texts_override=texts)
    return run


def _fixed_loss(model: Transformer, run: Path) -> float:
    import numpy as np
    stream = torch.from_numpy(np.load(run / "tokens.npy").astype("int64"))
    ids = stream[:8 * 64].reshape(8, 64)
    region = torch.ones_like(ids, dtype=torch.bool)
    losses = []
    with torch.no_grad():
        for seed in range(4):
            losses.append(mdlm_loss(model, ids, region, region.clone(), 2,
                                    torch.Generator().manual_seed(seed)).item())
    return sum(losses) / len(losses)


def test_training_reduces_the_loss_and_resumes(run_dir):
    cfg = TrainConfig(**TINY)
    before = Transformer(cfg.model_config())
    init_weights(before, cfg.seed)
    first = train(run_dir, steps=30, threads=1)
    assert first.step == 30
    second = train(run_dir, steps=30, threads=1)  # resumes from state.pt
    assert second.step == 60 and second.tokens_seen > first.tokens_seen
    after = Transformer(cfg.model_config())
    after.load_state_dict(torch.load(run_dir / "state.pt", weights_only=True)["model"])
    assert _fixed_loss(after, run_dir) < _fixed_loss(before, run_dir) * 0.8


class _Payload:
    """What a hostile state.pt could carry: unpickling it would call os.system."""

    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_a_state_file_that_holds_more_than_weights_is_refused(run_dir, tmp_path, monkeypatch):
    import shutil
    run = tmp_path / "run"  # a copy: the module's run folder is shared by the other tests
    shutil.copytree(run_dir, run)
    train(run, steps=2, threads=1)
    saved = torch.load(run / "state.pt", weights_only=True)
    torch.save({**saved, "extra": _Payload()}, run / "state.pt")
    monkeypatch.chdir(run)
    with pytest.raises(ValueError, match="holds more than weights"):
        train(run, steps=4, threads=1)
    assert not (run / "PWNED").exists()


def test_a_device_that_is_not_here_is_a_clear_error(run_dir):
    from diffill.model import CheckpointError
    with pytest.raises(CheckpointError, match="unknown device"):
        train(run_dir, steps=1, threads=1, device="no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            train(run_dir, steps=1, threads=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_trains_on_cuda_in_bf16_and_resumes_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    texts = [s * 4 for s in helpers.CODE_SNIPPETS] * 4
    prepare_run(run, TrainConfig(**TINY), texts_override=texts)
    on_gpu = train(run, steps=20, threads=1, device="cuda")
    assert on_gpu.step == 20 and math.isfinite(on_gpu.history[-1]["loss"])
    on_cpu = train(run, steps=2, threads=1, device="cpu")
    assert on_cpu.step == 22


def test_export_loads_through_the_checkpoint_path(run_dir, tmp_path):
    if not (run_dir / "state.pt").is_file():
        train(run_dir, steps=2, threads=1)
    out = export(run_dir, tmp_path / "ckpt", card="# card\n")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors",
                                               "tokenizer.json", "README.md"}
    model = load_model(out)
    assert model.profile.name == "diffill" and model.profile.shift_logits is False
    from diffill.infill import Engine, InfillRequest
    result = Engine(model).run(InfillRequest("def f(x):\n    return \n", 20))
    assert result.forward_passes >= 1
    assert model.profile.max_fill is None
    capped = load_model(export(run_dir, tmp_path / "capped", max_fill=16))
    assert capped.profile.max_fill == 16
    from diffill.workshop.commands import confidence_floors
    floors = load_model(export(run_dir, tmp_path / "floors",
                               min_confidence=confidence_floors("line=0.6,block=0.8")))
    assert floors.profile.confidence_floor("line") == 0.6
    assert floors.profile.confidence_floor("block") == 0.8
    assert (model.profile.block_size, model.profile.refresh) == (None, "block")
    blocks = load_model(export(run_dir, tmp_path / "blocks", cache="dual", block_size=8,
                               refresh="fill"))
    assert (blocks.profile.block_size, blocks.profile.refresh) == (8, "fill")
    with pytest.raises(ValueError, match="block_size"):
        export(run_dir, tmp_path / "bad", block_size=0)


def test_export_floors_on_the_command_line_are_checked():
    import argparse
    from diffill.workshop.commands import confidence_floors
    assert confidence_floors("0.5") == 0.5
    assert confidence_floors("block=1") == {"block": 1.0}
    for bad in ("1.5", "line=0.6,rewrite=0.2", "line", "line=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            confidence_floors(bad)


def test_held_out_packages_are_whole_and_never_trained_on():
    from diffill.workshop.corpus import HELD_OUT, build_corpus
    corpus = build_corpus()
    train_names = {p.name for p in corpus.train}
    assert not train_names & set(HELD_OUT)
    assert {p.name for p in corpus.held_out} >= {"email", "json", "http"}  # the stdlib ones
    train_files = set(corpus.files("train"))
    for pkg in corpus.held_out:
        assert not train_files & set(pkg.files)
    assert all(p.license for p in corpus.train)


# ---------------------------------------------------------------- the shipped model

BUNDLED = Path(__file__).resolve().parents[1] / "model" / "checkpoints" / "diffill-small"


def test_the_shipped_checkpoint_is_complete_and_small():
    names = {p.name for p in BUNDLED.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    total = sum(p.stat().st_size for p in BUNDLED.iterdir())
    assert total <= 64 * 1024 * 1024
    card = (BUNDLED / "README.md").read_text()
    for needed in ("diffill eval", "held-out", "parameters", "license"):
        assert needed.lower() in card.lower()


def test_the_shipped_checkpoint_loads_by_name_and_runs_the_demo_request():
    """Loads through the bundled name and runs the demo end to end, with the decoding values
    its config.json records."""
    from diffill.infill import Engine, InfillSettings
    from diffill.infill.sampler import infill
    from diffill.server.options import build_request, read_input
    from diffill.server.cli import SAMPLES
    model = load_model("diffill-small")
    meta = json.loads((BUNDLED / "config.json").read_text())["diffill"]
    assert model.profile.name == "diffill" and model.profile.extra["window"] == meta["seq_len"]
    assert meta["seq_len"] >= 512  # identifiers defined 30 lines up are visible
    assert model.profile.shift_logits is meta["shift_logits"]
    text, name = read_input(str(SAMPLES / "demo.py"))
    req, _ = build_request(text, name, language="python")
    engine = Engine(model)
    result = engine.run(req, InfillSettings(min_confidence=0.0))  # what `make demo` shows
    assert result.mode == "block" and result.forward_passes >= 1
    assert result.best is not None and result.best.text.strip()
    assert result.best.parses in (True, False)  # checked; whether it parses is in the card
    # The checkpoint's recorded decoding values reach the profile.
    assert model.profile.max_fill == meta.get("max_fill")
    assert model.profile.filler_order == meta.get("filler_order", "left")
    assert model.profile.min_confidence == meta.get("min_confidence")
    job = engine.prepare(req, engine.settings)
    cands, _ = infill(model, job.window.context_ids, job.window.suffix_ids, job.lengths)
    assert all(c.tokens for c in cands)  # min_tokens: never an empty raw fill


def test_a_new_run_can_start_from_a_shipped_checkpoint(run_dir, tmp_path):
    """Training goes on across machines from the exported weights and the same tokenizer."""
    if not (run_dir / "state.pt").is_file():
        train(run_dir, steps=2, threads=1)
    ckpt = export(run_dir, tmp_path / "ckpt")
    steps_before = json.loads((ckpt / "config.json").read_text())["diffill"]["steps"]
    shape = shape_of_checkpoint(ckpt)  # what `diffill train --init-from` carries over
    assert shape["seq_len"] == TINY["seq_len"] and shape["hidden_size"] == TINY["hidden_size"]
    run2 = tmp_path / "run2"
    texts = [s * 4 for s in helpers.CODE_SNIPPETS] * 4
    prepare_run(run2, TrainConfig(**TINY), texts_override=texts, tokenizer_from=ckpt)
    assert (run2 / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    state = train(run2, steps=1, threads=1, init_from=ckpt)
    assert state.step == steps_before + 1


def test_a_deeper_run_grown_from_a_checkpoint_starts_with_its_function(run_dir, tmp_path):
    """--init-from a checkpoint with fewer layers: the copies add nothing until trained, so
    the deeper model computes the same logits, and training then moves every layer."""
    from safetensors.torch import load_file

    from diffill.workshop.train import grow_layers
    if not (run_dir / "state.pt").is_file():
        train(run_dir, steps=2, threads=1)
    ckpt = export(run_dir, tmp_path / "ckpt")
    small = load_model(ckpt, dtype="float32")
    grown = grow_layers(load_file(str(ckpt / "model.safetensors")), 2, 5)
    assert sorted({int(k.split(".")[2]) for k in grown if ".layers." in k}) == list(range(5))
    deep = Transformer(TrainConfig(**dict(TINY, num_hidden_layers=5)).model_config())
    deep.load_state_dict({k: v.float() for k, v in grown.items()}, strict=True)
    deep.eval()
    ids = torch.randint(0, 250, (2, 30))
    with torch.no_grad():
        want = small.transformer.logits(small.transformer.hidden(ids))
        got = deep.logits(deep.hidden(ids))
    assert torch.allclose(want, got, atol=1e-5)
    with pytest.raises(ValueError, match="shrink"):
        grow_layers(grown, 5, 2)
    run2 = tmp_path / "run2"
    prepare_run(run2, TrainConfig(**dict(TINY, num_hidden_layers=5)),
                texts_override=[s * 4 for s in helpers.CODE_SNIPPETS] * 4, tokenizer_from=ckpt)
    train(run2, steps=2, threads=1, init_from=ckpt)
    trained = torch.load(run2 / "state.pt", weights_only=False)["model"]
    assert trained["model.layers.1.self_attn.o_proj.weight"].abs().sum() > 0  # a zeroed copy


def test_a_budgeted_recipe_fits_its_schedule_to_the_measured_speed(tmp_path):
    """The GPU recipe's mechanics at the cpu-tiny size: the first call measures its speed and
    sets total_steps so the schedule ends with the budget; later calls (the 10-minute device
    commands) resume that schedule without measuring again."""
    from diffill.workshop.train import CALIBRATE, RECIPES, fit_schedule, load_train_config
    assert RECIPES["gpu-base"]["budget_minutes"] > 0
    base = TrainConfig(**RECIPES["gpu-base"])
    assert 20e6 < base.model_config().n_params < 60e6  # the size issue 10 asks for
    cfg = TrainConfig(**RECIPES["cpu-tiny"])
    # 2 steps/s with 10 of 30 seconds used: 40 more steps after step 30.
    assert fit_schedule(TrainConfig(**dict(RECIPES["cpu-tiny"], budget_minutes=0.5)),
                        30, 2.0, 10.0) == 70
    assert fit_schedule(cfg, 30, 2.0, 10_000.0) == 31  # over budget: one more step
    run = tmp_path / "run"
    prepare_run(run, cfg, texts_override=[s * 4 for s in helpers.CODE_SNIPPETS] * 4)
    first = train(run, steps=CALIBRATE[1] + 5, threads=1)
    assert first.calibrated
    fitted = load_train_config(run).total_steps
    assert fitted >= CALIBRATE[1] + 1 and fitted != TrainConfig().total_steps
    second = train(run, steps=3, threads=1)
    assert second.step == first.step + 3 and load_train_config(run).total_steps == fitted


# Packages of diffill's that the device machine's Python lacks (KINDS.md in the device tool's
# library lists what it has): `make gpu-train` runs there with that Python, so training and
# export must not import them.
NOT_ON_THE_DEVICE = ("pygls", "lsprotocol", "platformdirs", "cattrs")


@pytest.mark.slow
def test_the_gpu_recipes_commands_need_nothing_the_device_lacks(tmp_path):
    import os
    import subprocess
    import sys
    run = tmp_path / "run"
    prepare_run(run, TrainConfig(**TINY),
                texts_override=[s * 4 for s in helpers.CODE_SNIPPETS] * 4)
    blocker = (
        "import sys, importlib.abc, runpy\n"
        f"BLOCKED = {NOT_ON_THE_DEVICE!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not on the device machine')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['workshop/from_tree.py'] + sys.argv[1:]\n"
        "runpy.run_path('workshop/from_tree.py', run_name='__main__')\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for args in (["train", str(run), "--steps", "2", "--threads", "1"],
                 ["train", str(run), "--export", str(tmp_path / "out"), "--bf16-weights",
                  "--shard-mb", "15", "--max-fill", "16", "--cache", "dual", "--cpu-bf16"]):
        r = subprocess.run([sys.executable, "-c", blocker, *args], cwd=root, env=env,
                           capture_output=True, timeout=600)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert load_model(tmp_path / "out").profile.max_fill == 16
