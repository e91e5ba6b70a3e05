"""The bundled model's training choices: the autoregressive-then-converted objective, rainbow
padding, the wheel corpus, bf16 detection and runs that resume from an exported checkpoint."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import helpers
from diffill.model import load_model
from diffill.workshop.train import (TrainConfig, ar_loss, continued_config, export, mdlm_loss,
                         prepare_run, shape_of_checkpoint, train, use_bf16)
from diffill.model.transformer import Transformer

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, seq_len=64, batch_size=8,
            warmup_steps=5, total_steps=40, lr=3e-3, tokenizer_sample_bytes=10**6,
            eval_every=20)
TEXTS = [s * 4 for s in helpers.CODE_SNIPPETS] * 4


def new_run(path: Path, **cfg) -> Path:
    prepare_run(path, TrainConfig(**{**TINY, **cfg}), texts_override=TEXTS)
    return path


def test_an_ar_run_trains_causally_then_converts_to_shifted_diffusion(tmp_path):
    run = new_run(tmp_path / "ar", objective="ar", ar_fraction=0.5)
    state = train(run, steps=40, threads=1)
    phases = [h["phase"] for h in state.history]
    assert phases == ["ar", "mdlm"]  # logged every 20 steps: 20 causal, then 20 converted
    ckpt = export(run, tmp_path / "ckpt")
    meta = json.loads((ckpt / "config.json").read_text())["diffill"]
    assert meta["shift_logits"] is True and meta["train"]["objective"] == "ar"
    model = load_model(ckpt)
    assert model.profile.shift_logits is True
    from diffill.infill import Engine, InfillRequest, InfillSettings
    result = Engine(model).run(InfillRequest("def f(x):\n    return \n", 20),
                               InfillSettings(max_tokens=4, ensemble=1))
    assert result.forward_passes >= 1


def test_the_ar_loss_only_sees_the_past():
    """Changing a later token never changes the loss on earlier targets (causal attention)."""
    cfg = TrainConfig(**TINY)
    model = Transformer(cfg.model_config()).eval()
    ids = torch.randint(5, 300, (1, 16))
    weight = torch.zeros(1, 16, dtype=torch.bool)
    weight[0, 1:8] = True  # targets 1..7, predicted from positions 0..6
    other = ids.clone()
    other[0, 10:] = torch.randint(5, 300, (6,))
    with torch.no_grad():
        assert torch.allclose(ar_loss(model, ids, weight), ar_loss(model, other, weight))
        weight[0, 12] = True
        assert not torch.allclose(ar_loss(model, ids, weight), ar_loss(model, other, weight))


def test_the_shifted_mdlm_loss_predicts_each_token_from_the_position_before():
    cfg = TrainConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(cfg.model_config()).eval()
    ids = torch.randint(5, 300, (1, 12))
    region = torch.zeros(1, 12, dtype=torch.bool)
    region[0, 6] = True  # exactly one masked position
    keys = torch.ones(1, 12, dtype=torch.bool)
    with torch.no_grad():
        shifted = mdlm_loss(model, ids, region, keys, 2, torch.Generator().manual_seed(0),
                            shift=True)
        noisy = ids.clone()
        noisy[0, 6] = 2
        logits = model(noisy)[0, 5]  # hidden state of position 5 predicts token 6
        expected = torch.nn.functional.cross_entropy(logits[None], ids[0, 6:7])
    # weight 1/t over a region of one position, t drawn in (0, 1]: the loss is ce / t >= ce
    assert shifted.item() >= expected.item() - 1e-4
    t = expected.item() / shifted.item()
    assert 0 < t <= 1


def test_certainty_forcing_adds_the_entropy_of_right_predictions_only(tmp_path):
    """dParallel's term: the loss grows by ``certainty`` times the entropy (at temperature
    CERTAINTY_T) of a masked prediction that is already right, and not at all for a wrong
    one; a run with it trains and its held-out loss stays the plain MDLM loss."""
    from diffill.workshop.train import CERTAINTY_T, init_weights
    cfg = TrainConfig(**TINY)
    model = Transformer(cfg.model_config()).eval()
    init_weights(model, 0)  # a run's start: small weights, a spread-out prediction
    ids = torch.randint(5, 300, (1, 12))
    region = torch.zeros(1, 12, dtype=torch.bool)
    region[0, 6] = True
    keys = torch.ones(1, 12, dtype=torch.bool)
    noisy = ids.clone()
    noisy[0, 6] = 2
    with torch.no_grad():
        logits = model(noisy)[0, 5]  # shifted: position 5's state predicts token 6
        logp = torch.log_softmax(logits / CERTAINTY_T, dim=-1)
        entropy = -(logp.exp() * logp).sum().item()

        def loss(certainty: float) -> float:
            return mdlm_loss(model, ids, region, keys, 2, torch.Generator().manual_seed(0),
                             shift=True, certainty=certainty).item()

        ids[0, 6] = int(logits.argmax())  # the model's answer: right
        assert entropy > 0.1
        assert loss(0.5) - loss(0.0) == pytest.approx(0.5 * entropy, rel=1e-4)
        ids[0, 6] = int(logits.argsort()[-2])  # its second choice: wrong
        assert loss(0.5) == pytest.approx(loss(0.0), rel=1e-6)
    run = new_run(tmp_path / "cf", objective="ar", ar_fraction=0.25, certainty=0.5)
    state = train(run, steps=40, threads=1)
    assert [h["phase"] for h in state.history] == ["mdlm", "mdlm"]
    assert all(h["loss"] > 0 for h in state.history)
    assert TrainConfig(**json.loads((run / "train_config.json").read_text())).certainty == 0.5


def test_rainbow_padding_fills_surplus_with_distinct_pads_and_the_profile_knows_them(tmp_path):
    run = new_run(tmp_path / "rb", pad_tokens=4)
    from tokenizers import Tokenizer

    from diffill.workshop.train import Batcher
    import numpy as np
    tok = Tokenizer.from_file(str(run / "tokenizer.json"))
    cfg = TrainConfig(**{**TINY, "pad_tokens": 4, "infill_fraction": 1.0})
    b = Batcher(tok, np.load(run / "tokens.npy"), TEXTS, cfg, seed=0)
    pads = [tok.token_to_id(t) for t in ("<|pad|>", "<|pad_1|>", "<|pad_2|>", "<|pad_3|>")]
    ids, region, _ = b.batch()
    seen = set()
    for row, reg in zip(ids.tolist(), region.tolist()):
        gap = [t for t, r in zip(row, reg) if r]
        tail = [t for t in gap if t in pads]
        if len(tail) >= 4:
            assert tail[:4] == pads  # the cycle starts at <|pad|>
        seen.update(tail)
    assert len(seen) > 1
    train(run, steps=2, threads=1)
    model = load_model(export(run, tmp_path / "ckpt"))
    assert set(pads) <= set(model.profile.filler_ids)


def test_a_run_resumes_from_its_exported_checkpoint_when_its_folder_is_gone(tmp_path):
    run = new_run(tmp_path / "run", objective="ar", ar_fraction=0.5, total_steps=60)
    first = train(run, steps=25, threads=1)
    ckpt = export(run, tmp_path / "ckpt", dtype=torch.bfloat16)
    shutil.rmtree(run)
    cfg = shape_of_checkpoint(ckpt)  # what `diffill train --init-from` carries over
    assert cfg["objective"] == "ar" and cfg["total_steps"] == 60 and cfg["ar_fraction"] == 0.5
    run2 = tmp_path / "run2"
    prepare_run(run2, TrainConfig(**cfg), texts_override=TEXTS, tokenizer_from=ckpt)
    second = train(run2, steps=15, threads=1, init_from=ckpt)
    assert second.step == first.step + 15  # the schedule goes on where it stopped
    assert second.tokens_seen > first.tokens_seen
    assert second.history[-1]["phase"] == "mdlm"  # step 40 of 60 is past the conversion


def test_self_distilled_rows_hold_the_teachers_own_fill_of_the_gap(tmp_path):
    """self_distill: an infill row's middle is what the teacher checkpoint's sampler writes
    into that gap (content, then filler), not the corpus's; a run with it trains, and a run
    continued from its export does not inherit the teacher."""
    import numpy as np
    from tokenizers import Tokenizer

    from diffill.infill.sampler import infill
    from diffill.workshop.train import teacher as teacher_fill
    from diffill.workshop.train import Batcher
    run = new_run(tmp_path / "t", objective="ar", ar_fraction=0.25)
    train(run, steps=20, threads=1)
    teacher = export(run, tmp_path / "teacher", max_fill=8)
    model = load_model(teacher)
    fill = teacher_fill(model)
    tok = Tokenizer.from_file(str(run / "tokenizer.json"))
    pre, suf = tok.encode("def area(w, h):\n    return ").ids, tok.encode("\n\nx = 1\n").ids
    written = fill(pre, suf, 8)
    assert len(written) == 8 and model.profile.mask_id not in written
    cands, _ = infill(model, pre, suf, [8])
    assert cands[0].tokens == [t for t in written if t not in model.profile.filler_ids]
    assert fill(pre, suf, 16) is None  # longer than the checkpoint's max_fill: none given
    calls = []
    cfg = TrainConfig(**{**TINY, "infill_fraction": 1.0, "self_distill": 1.0,
                         "teacher": str(teacher)})
    b = Batcher(tok, np.load(run / "tokens.npy"), TEXTS, cfg, seed=0,
                fill=lambda p, s, n: calls.append((p, s, n)) or fill(p, s, n))
    ids, region, _ = b.batch()
    assert len(calls) == cfg.batch_size
    assert {n for _, _, n in calls} > {8}  # short gaps and long ones
    for row, reg, (p, s, n) in zip(ids.tolist(), region.tolist(), calls):
        lo = reg.index(True)
        assert row[:lo] == p and sum(reg) == n
        if n <= 8:
            assert row[lo:lo + n] == fill(p, s, n)  # the teacher's answer, deterministic
        else:  # the corpus's middle, then filler
            text = tok.decode([t for t in row[lo:lo + n] if t not in model.profile.filler_ids])
            assert any(text in t for t in TEXTS)
    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(**{**TINY, "self_distill": 0.5})
    student = tmp_path / "student"
    prepare_run(student, cfg, texts_override=TEXTS, tokenizer_from=teacher)
    with pytest.raises(ValueError, match="teacher"):
        train(student, steps=1, threads=1, init_from=teacher)
    state = train(student, steps=20, threads=1, init_from=teacher, fill=fill)
    assert state.history[-1]["phase"] == "mdlm" and state.history[-1]["loss"] > 0
    assert torch.get_num_threads() == 1  # the teacher's passes left the run's thread count
    out = export(student, tmp_path / "student-ckpt")
    assert "self_distill" not in continued_config(out)


def test_a_stretched_schedule_keeps_a_converted_run_converted(tmp_path):
    run = new_run(tmp_path / "run", objective="ar", ar_fraction=0.5, total_steps=40)
    train(run, steps=25, threads=1)  # past the conversion at step 20
    ckpt = export(run, tmp_path / "ckpt")
    cfg = TrainConfig(**continued_config(ckpt, {"total_steps": 400}))
    assert cfg.total_steps == 400
    assert cfg.phase(25) == "mdlm" and cfg.phase(19) == "ar"  # converts at step 20 still
    kept = TrainConfig(**continued_config(ckpt, {"total_steps": 400, "ar_fraction": 0.5}))
    assert kept.phase(25) == "ar"  # an explicit ar_fraction is the user's choice


@pytest.mark.slow
def test_the_cli_continues_an_exported_run_with_its_recorded_schedule(tmp_path):
    from diffill.server.cli import main
    run = new_run(tmp_path / "run", total_steps=77)
    train(run, steps=3, threads=1)
    ckpt = export(run, tmp_path / "ckpt")
    assert main(["train", str(tmp_path / "next"), "--init-from", str(ckpt), "--steps", "2",
                 "--threads", "1"]) == 0
    saved = json.loads((tmp_path / "next" / "train_config.json").read_text())
    assert saved["total_steps"] == 77 and saved["seq_len"] == TINY["seq_len"]


def test_bf16_autocast_is_chosen_by_device_and_cpu_features(monkeypatch):
    import diffill.workshop.train as T  # use_bf16 reads cpu_has_bf16 from there
    cpu = torch.device("cpu")
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)
    assert use_bf16(cpu) is False and use_bf16(cpu, "bf16") is True
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: True)
    assert use_bf16(cpu) is True and use_bf16(cpu, "fp32") is False
    assert use_bf16(torch.device("cuda")) is True
    with pytest.raises(ValueError):
        use_bf16(cpu, "fp8")


def _wheel(folder: Path, name: str, license_line: str, files: dict[str, str]) -> None:
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{name}-1.0.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{license_line}\n")
        for path, text in files.items():
            zf.writestr(path, text)


def test_the_corpus_takes_permissive_wheels_whole_and_counts_duplicates_once(tmp_path):
    from diffill.workshop.corpus import build_corpus, unpack_wheels
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shared = "def shared():\n    return 1\n"
    _wheel(wheels, "okpkg", "License-Expression: MIT",
           {"okpkg/__init__.py": "x = 1\n", "okpkg/util.py": shared,
            "okpkg/tests/test_x.py": "assert True\n"})
    _wheel(wheels, "twin", "Classifier: License :: OSI Approved :: BSD License",
           {"twin/copy.py": shared})
    _wheel(wheels, "gplpkg", "License: GPL-3.0-or-later", {"gplpkg/a.py": "y = 2\n"})
    taken = unpack_wheels(wheels, tmp_path / "corpus")
    by_name = {t["package"]: t for t in taken}
    assert by_name["gplpkg"].get("skipped") and not by_name["okpkg"].get("skipped")
    assert by_name["okpkg"]["version"] == "1.0" and "MIT" in by_name["okpkg"]["license"]
    assert not (tmp_path / "corpus" / "gplpkg-1.0").exists()
    corpus = build_corpus(extra=tmp_path / "corpus")
    names = {p.name for p in corpus.train}
    assert {"okpkg", "twin"} <= names and "gplpkg" not in names
    files = [f for f in corpus.files("train") if "okpkg" in str(f) or "twin" in str(f)]
    texts = [f.read_text() for f in files]
    assert texts.count(shared) == 1  # the duplicate file counts once
    assert not any("tests" in f.parts for f in files)


def test_a_sharded_export_loads_and_a_run_goes_on_from_it(tmp_path):
    run = new_run(tmp_path / "run")
    first = train(run, steps=3, threads=1)
    ckpt = export(run, tmp_path / "ckpt", max_shard_bytes=100 * 1024)
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))
    assert len(shards) > 1 and (ckpt / "model.safetensors.index.json").is_file()
    assert not (ckpt / "model.safetensors").exists()
    assert all((ckpt / s).stat().st_size <= 100 * 1024 + 4096 for s in shards)  # + header
    model = load_model(ckpt)
    assert model.profile.name == "diffill"
    run2 = tmp_path / "run2"
    prepare_run(run2, TrainConfig(**shape_of_checkpoint(ckpt)), texts_override=TEXTS,
                tokenizer_from=ckpt)
    assert train(run2, steps=1, threads=1, init_from=ckpt).step == first.step + 1


def test_prefetched_batches_are_the_batches_of_a_run_without_prefetch(tmp_path):
    # The background thread makes the same batches in the same order, across the conversion:
    # two runs, one with batches made 3 steps ahead, train identically.
    runs = [new_run(tmp_path / name, objective="ar", ar_fraction=0.5, total_steps=40)
            for name in ("plain", "ahead")]
    plain = train(runs[0], steps=40, threads=1, prefetch=0)
    ahead = train(runs[1], steps=40, threads=1, prefetch=3)
    assert [h["phase"] for h in ahead.history] == ["ar", "mdlm"]
    assert [h["loss"] for h in ahead.history] == [h["loss"] for h in plain.history]
    assert ahead.tokens_seen == plain.tokens_seen

