"""diffill's decoding of released families against their authors' decoders: the token ids
Dream's ``_sample``, LLaDA's ``generate``, Fast-dLLM's LLaDA decoders and DreamOn's sampler
wrote on tiny checkpoints this suite rebuilds from their seeds
(tests/data/golden_decoding.json; how it was made: tests/data/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import make_golden  # noqa: E402  (the data's own checkpoint builder and hash)

from diffill.infill.api import SamplerSettings  # noqa: E402
from diffill.infill.expand import infill_variable  # noqa: E402
from diffill.infill.sampler import denoise, layout  # noqa: E402
from diffill.infill.steps import fixed_commit_counts  # noqa: E402
from diffill.model import load_model  # noqa: E402

GOLDEN = json.loads((DATA / "golden_decoding.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("golden")
    make_golden.checkpoints(folder)
    out = {}
    for name, digest in GOLDEN["checkpoints"].items():
        assert make_golden.digest(folder / name) == digest, \
            f"{name} rebuilt with other weights than the golden data was made on"
        out[name] = load_model(str(folder / name))
    return out


def _decode(model, case, **changes):
    fields = dict(schedule=case["schedule"], steps=case["steps"], order=case["order"],
                  temperature=0.0, faithful=True, cache=case.get("cache", "none"),
                  refresh="block", pass_positions="block", reuse_prefix=False,
                  threshold=case.get("threshold") or 0.9, block_size=case.get("block_size", 0))
    s = SamplerSettings(**{**fields, **changes})
    if case["family"] == "dreamon":  # a gap that finds its own length
        cand, _ = infill_variable(model, case["prefix"], case["suffix"], case["masks"],
                                  max_length=case["max_tokens"], settings=s)
        return cand.tokens
    ids, key_mask, lo = layout(model, case["prefix"], case["suffix"], [case["masks"]])
    out = denoise(model, ids, lo, lo + case["masks"], settings=s, key_mask=key_mask, fresh=True)
    return out.ids[0, lo:lo + case["masks"]].tolist()


KINDS = sorted({(c["family"], c["alg"], c["schedule"]) for c in GOLDEN["cases"]})


@pytest.mark.parametrize("kind", KINDS, ids=["-".join(k) for k in KINDS])
def test_decoding_writes_the_ids_the_authors_decoder_wrote(models, kind):
    cases = [c for c in GOLDEN["cases"] if (c["family"], c["alg"], c["schedule"]) == kind]
    assert len(cases) >= 2
    wrong = [(c["steps"], c["masks"]) for c in cases
             if not _reproduced(models[f"{c['family']}-{c['checkpoint_seed']}"], c)]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ (steps, masks): {wrong}"


KNIFE_EDGE = 1e-5
"""How far (relative) a case's threshold may be moved when it lies that close to a token's
probability: the generator set thresholds among the probabilities of random weights, and a
CPU with other vector units rounds a probability 2e-8 (4e-6 relative) to the other side of
one (llada fast-dllm-threshold, 2 steps, 10 masks, on an AVX-512 Xeon)."""


def _reproduced(model, case) -> bool:
    """Whether diffill writes the reference's ids: as they are, or, for a threshold that sits
    on a knife's edge, with the threshold moved by :data:`KNIFE_EDGE` either way."""
    if _decode(model, case) == case["out"]:
        return True
    if not case.get("threshold"):
        return False
    return any(_decode(model, case, threshold=case["threshold"] * (1 + d)) == case["out"]
               for d in (KNIFE_EDGE, -KNIFE_EDGE))


def test_the_golden_cases_tell_the_rules_apart(models):
    """The data can fail: with diffill's own commit counts and scores (its own checkpoints'
    rules), or DreamOn's window without its BOS and EOS, a share of the cases come out
    otherwise."""
    differ = 0
    for c in GOLDEN["cases"]:
        model = models[f"{c['family']}-{c['checkpoint_seed']}"]
        own = model.profile
        model.profile = own.with_overrides(
            {"commit_rule": "diffill", "score_top_k": None} if c["family"] != "dreamon"
            else {"bos_id": None, "end_id": None})  # DreamOn framed as other families
        try:
            differ += _decode(model, c) != c["out"]
        finally:
            model.profile = own
    assert differ >= 10


def test_the_released_families_commit_as_their_authors_count():
    n = torch.tensor([10, 7, 3])
    # LLaDA: n0 // S per step, the remainder one each on the first steps.
    llada = [fixed_commit_counts(n, n, s, 4, "llada").tolist() for s in range(3)]
    assert llada == [[3, 2, 1], [3, 2, 1], [2, 2, 1]]
    # Dream: int(m * (1 - s/t)) on linspace(1, 1e-3, S+1), zero allowed, the rest at the end.
    assert fixed_commit_counts(torch.tensor([10]), torch.tensor([10]), 0, 4, "dream").item() == 2
    assert fixed_commit_counts(torch.tensor([1]), torch.tensor([8]), 0, 4, "dream").item() == 0
    assert fixed_commit_counts(torch.tensor([5]), torch.tensor([8]), 3, 4, "dream").item() == 5
    # diffill's own: at least one per step.
    assert fixed_commit_counts(torch.tensor([1]), torch.tensor([8]), 0, 4).item() == 1


def test_the_profiles_of_released_families_name_their_rules(models):
    dream, llada = models["dream-0"].profile, models["llada-1"].profile
    assert (dream.commit_rule, dream.score_top_k) == ("dream", 50)
    assert (llada.commit_rule, llada.score_top_k) == ("llada", None)


def test_threshold_decoding_in_blocks_is_not_one_span(models):
    """``--schedule threshold --block-size N`` decodes block after block (it was silently one
    span without the dual cache): decoded as one span, the golden cases come out otherwise."""
    cases = [c for c in GOLDEN["cases"]
             if c["alg"] == "fast-dllm-threshold" and c["block_size"] < c["masks"]]
    assert len(cases) >= 4
    model = models["llada-1"]
    assert sum(_decode(model, dict(c, block_size=0)) != c["out"] for c in cases) >= 3
