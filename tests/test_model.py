"""The transformer and the loader against transformers' reference implementations."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import helpers
from diffill.model import CheckpointError, KVCache, load_model
from diffill.model.profile import ProfileError, build_profile, detect_family


def _ids(vocab: int, shape=(2, 19), seed=0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fixture", ["qwen2_ckpt", "llama_tied_ckpt"])
def test_causal_mode_matches_transformers_logits(fixture, request):
    folder, ref = request.getfixturevalue(fixture)
    model = load_model(folder, device="cpu")
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        expected = ref(ids).logits
        got = model.transformer(ids, causal=True)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_full_attention_differs_from_causal(qwen2_ckpt):
    folder, _ = qwen2_ckpt
    model = load_model(folder)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        causal = model.transformer(ids, causal=True)
        full = model.transformer(ids)
    # Position 0 sees only itself in causal mode and the whole row in full mode.
    assert (causal[:, 0] - full[:, 0]).abs().max().item() > 1e-3
    # Causal mode is what the reference computes; full mode is not a relabelled copy of it.
    assert not torch.allclose(causal, full, atol=1e-3)


def test_a_suffix_token_changes_the_prediction_at_an_earlier_mask(qwen2_ckpt):
    folder, _ = qwen2_ckpt
    model = load_model(folder)
    mask = model.profile.mask_id
    ids = _ids(model.config.vocab_size, (1, 12))
    ids[0, 4] = mask
    other = ids.clone()
    other[0, 9] = (ids[0, 9] + 1) % model.config.vocab_size  # change a token after the mask
    a = model.span_logits(ids, 4, 5)
    b = model.span_logits(other, 4, 5)
    assert (a - b).abs().max().item() > 1e-4


def test_tied_embeddings_share_one_tensor(llama_tied_ckpt):
    folder, _ = llama_tied_ckpt
    model = load_model(folder)
    assert model.config.tie_word_embeddings
    assert not hasattr(model.transformer, "lm_head")
    assert model.transformer.output_weight() is model.transformer.model.embed_tokens.weight


def test_sharded_checkpoint_loads_the_same_weights(tmp_path, bpe):
    single, ref = helpers.save_checkpoint(tmp_path / "single", "qwen2", tokenizer=bpe,
                                          config_updates=helpers.diffill_config())
    sharded, _ = helpers.save_checkpoint(tmp_path / "sharded", "qwen2", tokenizer=bpe,
                                         shard_size="60KB", config_updates=helpers.diffill_config())
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    a, b = load_model(single), load_model(sharded)
    ids = _ids(a.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(a.transformer(ids), b.transformer(ids))
        assert (b.transformer(ids, causal=True) - ref(ids).logits).abs().max() < 1e-4


def test_llada_names_and_config_load_and_match_llama(tmp_path, bpe):
    folder, ref = helpers.save_llada_checkpoint(tmp_path / "llada", bpe)
    model = load_model(folder)
    assert model.profile.name == "llada"
    assert model.profile.shift_logits is False
    assert model.profile.mask_id == bpe.token_to_id("<|mask|>")
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert (model.transformer(ids, causal=True) - ref(ids).logits).abs().max() < 1e-4


def test_logit_shift_reads_position_i_from_hidden_state_i_minus_1(qwen2_ckpt):
    folder, _ = qwen2_ckpt
    plain = load_model(folder)
    shifted = load_model(folder, profile_overrides={"shift_logits": True})
    ids = _ids(plain.config.vocab_size, (1, 10))
    full = plain.span_logits(ids, 0, 10)
    got = shifted.span_logits(ids, 3, 8)
    assert torch.allclose(got, full[:, 2:7], atol=1e-5)
    assert torch.allclose(shifted.span_logits(ids, 0, 2), full[:, [0, 0]], atol=1e-5)


@pytest.mark.parametrize("shift", [False, True])
def test_dual_cache_span_pass_equals_full_pass_when_context_is_unchanged(qwen2_ckpt, shift):
    folder, _ = qwen2_ckpt
    model = load_model(folder, profile_overrides={"shift_logits": shift})
    ids = _ids(model.config.vocab_size, (2, 16))
    key_mask = torch.ones(2, 16, dtype=torch.bool)
    key_mask[1, 13:] = False
    cache = KVCache([], [])
    first = model.span_logits(ids, 5, 9, key_mask=key_mask, cache=cache)
    assert cache.length == 16
    again = model.span_logits(ids, 5, 9, key_mask=key_mask, cache=cache,
                              run=model.span_run(5, 9))
    full = model.span_logits(ids, 5, 9, key_mask=key_mask)
    assert model.span_run(5, 9) == (range(4, 9) if shift else range(5, 9))
    assert torch.allclose(first, full, atol=1e-5)
    assert torch.allclose(again, full, atol=1e-4)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("warm", [False, True])
def test_rows_beside_a_window_equal_a_cache_pass_then_span_passes(qwen2_ckpt, shift, warm):
    """One pass carrying a window and variants of its span gives the numbers of two: the
    window filling the dual cache, then each variant's span against it."""
    folder, _ = qwen2_ckpt
    model = load_model(folder, profile_overrides={"shift_logits": shift})
    V = model.config.vocab_size
    ids = _ids(V, (1, 20))
    key_mask = torch.ones(1, 20, dtype=torch.bool)
    key_mask[0, 18:] = False  # padding at the end is never attended
    lo, hi = 8, 12
    rows = ids.repeat(3, 1)
    rows[:, lo:hi] = _ids(V, (3, 4), seed=5)

    def window_cache():
        if not warm:
            return KVCache([], []), None
        # An earlier request's cache of the first 6 positions, completed by this pass.
        old = KVCache([], [])
        model.span_logits(ids, lo, hi, key_mask=key_mask, cache=old)
        return old.reuse(6, 20, 1), range(6, 20)

    cache, run = window_cache()
    first = model.span_logits(ids, lo, hi, key_mask=key_mask, cache=cache, run=run)
    shared = KVCache([k.expand(3, -1, -1, -1).clone() for k in cache.keys],
                     [v.expand(3, -1, -1, -1).clone() for v in cache.values])
    more = model.span_logits(rows, lo, hi, key_mask=key_mask.expand(3, -1), cache=shared,
                             run=model.span_run(lo, hi))

    cache2, run = window_cache()
    before = model.tokens_run
    head, got = model.span_logits_with_rows(ids, lo, hi, rows, cache=cache2, key_mask=key_mask,
                                            run=run)
    assert torch.allclose(head, first, atol=1e-5) and torch.allclose(got, more, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(cache2.keys, cache.keys))  # the window's own
    span = len(model.span_run(lo, hi))
    assert model.tokens_run - before == (20 if run is None else len(run)) + 3 * span
    # And the rows' numbers are their own windows' (they differ from the window row's).
    assert not torch.allclose(got[0], head[0], atol=1e-3)
    with pytest.raises(ValueError, match="fills an empty cache"):
        model.span_logits_with_rows(ids, lo, hi, rows, cache=cache2)


def test_padding_keys_are_not_attended(qwen2_ckpt):
    folder, _ = qwen2_ckpt
    model = load_model(folder)
    ids = _ids(model.config.vocab_size, (1, 10))
    padded = torch.cat([ids, _ids(model.config.vocab_size, (1, 5), seed=3)], dim=1)
    key_mask = torch.tensor([[True] * 10 + [False] * 5])
    a = model.span_logits(ids, 0, 10)
    b = model.span_logits(padded, 0, 10, key_mask=key_mask)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- family profiles

VOCAB = {"<|endoftext|>": 10, "<|mask|>": 11, "<|pad|>": 12}


@pytest.mark.parametrize("config,vocab,family,mask,filler,shift,mode", [
    ({"model_type": "Dream", "_name_or_path": "Dream-org/Dream-v0-Base-7B"},
     {"<|endoftext|>": 151643, "<|mask|>": 151666}, "dream", 151666, (151643,), True, "truncate"),
    ({"model_type": "Dream", "_name_or_path": "Dream-org/Dream-Coder-v0-Base-7B"},
     {"<|endoftext|>": 151643, "<|mask|>": 151666}, "dream-coder", 151666, (151643,), True,
     "truncate"),
    ({"model_type": "Dream", "_name_or_path": "apple/DiffuCoder-7B-Instruct"},
     {"<|endoftext|>": 151643, "<|mask|>": 151666, "<|dlm_pad|>": 151665}, "diffucoder",
     151666, (151665, 151643), True, "truncate"),
    ({"model_type": "Dream"},
     {"<|endoftext|>": 151643, "<|mask|>": 151666, "<|expand|>": 151667}, "dreamon", 151666,
     (151643,), True, "delete"),
    ({"model_type": "llada", "architectures": ["LLaDAModelLM"], "mask_token_id": 126336,
      "eos_token_id": 126081, "d_model": 4096}, {}, "llada", 126336, (126081,), False,
     "truncate"),
    ({"model_type": "qwen2", "pad_token_id": 151643},
     {"<M>": 151665, "<|endoftext|>": 151643}, "open-dcoder", 151665, (151643,), True,
     "truncate"),
    ({"model_type": "qwen2", "diffill": {"shift_logits": False}}, VOCAB, "diffill", 11,
     (12, 10), False, "truncate"),
])
def test_each_family_profile_is_detected(config, vocab, family, mask, filler, shift, mode):
    assert detect_family(config, vocab) == family
    prof = build_profile(config, vocab)
    assert (prof.name, prof.mask_id, prof.filler_ids, prof.shift_logits, prof.filler_mode) == \
        (family, mask, filler, shift, mode)
    if family == "dreamon":
        assert prof.expand_id == 151667


def test_the_filler_order_and_max_fill_come_from_the_checkpoint():
    # Released families keep the plain confidence order; diffill's recipe pads every gap with
    # one pad token, where filler goes left to right unless its checkpoint says otherwise.
    dream = build_profile({"model_type": "Dream"}, {"<|endoftext|>": 1, "<|mask|>": 2})
    assert (dream.filler_order, dream.max_fill) == ("any", None)
    ours = build_profile({"model_type": "qwen2", "diffill": {}}, VOCAB)
    assert (ours.filler_order, ours.max_fill) == ("left", None)
    recorded = build_profile({"model_type": "qwen2",
                              "diffill": {"filler_order": "any", "max_fill": 16}}, VOCAB)
    assert (recorded.filler_order, recorded.max_fill) == ("any", 16)


def test_released_families_take_their_authors_scoring_and_bos_from_the_checkpoint():
    vocab = {"<|endoftext|>": 1, "<|mask|>": 2}
    # Dream scores on the top 50 unless config.json says otherwise (0 or null: no cut).
    assert build_profile({"model_type": "Dream"}, vocab).score_top_k == 50
    assert build_profile({"model_type": "Dream", "top_k": 20}, vocab).score_top_k == 20
    assert build_profile({"model_type": "Dream", "top_k": None}, vocab).score_top_k is None
    with pytest.raises(ProfileError, match="top_k"):
        build_profile({"model_type": "Dream", "top_k": "many"}, vocab)
    # LLaDA's config has no bos_token_id; its tokenizer's BOS is <|startoftext|>.
    llada = {"model_type": "llada", "d_model": 64, "mask_token_id": 9, "eos_token_id": 1}
    assert build_profile(llada, {"<|startoftext|>": 7, "<|endoftext|>": 1}).bos_id == 7
    assert build_profile({**llada, "bos_token_id": 3}, {"<|startoftext|>": 7}).bos_id == 3
    assert build_profile(llada, {}).commit_rule == "llada"
    with pytest.raises(ProfileError, match="commit_rule"):
        build_profile(llada, {}, overrides={"commit_rule": "random"})


def test_profile_can_be_forced_and_overridden():
    cfg = {"model_type": "qwen2", "diffill": {}}
    prof = build_profile(cfg, VOCAB, overrides={"shift_logits": True, "filler_ids": [10]})
    assert prof.shift_logits and prof.filler_ids == (10,)
    with pytest.raises(ProfileError, match="unknown profile field"):
        build_profile(cfg, VOCAB, overrides={"nonsense": 1})
    with pytest.raises(ProfileError, match="cannot tell"):
        detect_family({"model_type": "qwen2"}, VOCAB)
    with pytest.raises(ProfileError, match="filler_order"):
        build_profile(cfg, VOCAB, overrides={"filler_order": "right"})
    forced = build_profile({"model_type": "qwen2"}, {"<|mask|>": 5, "<|endoftext|>": 6},
                           family="dream")
    assert forced.name == "dream" and forced.mask_id == 5 and forced.shift_logits


# ---------------------------------------------------------------- broken checkpoints

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="no-such-model"):
        load_model(tmp_path / "no-such-model")


def test_hub_id_while_offline_is_a_clear_error():
    with pytest.raises(CheckpointError, match="some-org/some-model.*hub"):
        load_model("some-org/some-model")


def test_corrupt_safetensors_is_a_clear_error(tmp_path, qwen2_ckpt):
    folder = _copy(qwen2_ckpt[0], tmp_path / "bad")
    (folder / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(folder)


def test_missing_config_and_missing_weights_are_clear_errors(tmp_path, qwen2_ckpt):
    folder = _copy(qwen2_ckpt[0], tmp_path / "noconfig")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(folder)
    folder = _copy(qwen2_ckpt[0], tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(folder)


def test_weights_that_do_not_match_the_config_are_a_clear_error(tmp_path, qwen2_ckpt):
    folder = _copy(qwen2_ckpt[0], tmp_path / "mismatch")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(folder)


def test_missing_shard_is_named(tmp_path, bpe):
    folder, _ = helpers.save_checkpoint(tmp_path / "sh", "qwen2", tokenizer=bpe,
                                        shard_size="60KB", config_updates=helpers.diffill_config())
    victim = sorted(folder.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(folder)


def test_unsupported_architecture_is_a_clear_error(tmp_path, qwen2_ckpt):
    folder = _copy(qwen2_ckpt[0], tmp_path / "gpt2")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="gpt2"):
        load_model(folder)


def test_small_passes_run_on_one_thread_and_large_ones_on_all(qwen2_ckpt, monkeypatch):
    from diffill.model import loader
    folder, _ = qwen2_ckpt
    model = load_model(folder)
    model.threads = 2
    ids = _ids(model.config.vocab_size, (1, 40))
    full = loader.pass_flops(model.config, 40, 40)
    span = loader.pass_flops(model.config, 5, 40)
    assert span < full
    monkeypatch.setattr(loader, "PARALLEL_FLOPS", (span + full) / 2)
    try:
        cache = KVCache([], [])
        model.span_logits(ids, 10, 14, cache=cache)  # the whole window: all threads
        assert torch.get_num_threads() == 2
        model.span_logits(ids, 10, 14, cache=cache, run=model.span_run(10, 14))  # 5 or 4: one
        assert torch.get_num_threads() == 1
        model.threads = 1  # DIFFILL_THREADS=1: never more than one
        model.span_logits(ids, 10, 14)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_the_thread_count_can_be_set_and_a_bad_one_is_a_clear_error(qwen2_ckpt, monkeypatch):
    from diffill.model import loader
    folder, _ = qwen2_ckpt
    monkeypatch.setattr(loader, "_DEFAULT_THREADS", 4)  # torch's count when diffill started
    monkeypatch.delenv("DIFFILL_THREADS", raising=False)
    assert load_model(folder).threads == 4
    monkeypatch.setenv("DIFFILL_THREADS", "3")
    assert load_model(folder).threads == 3
    for bad in ("0", "many"):
        monkeypatch.setenv("DIFFILL_THREADS", bad)
        with pytest.raises(CheckpointError, match="DIFFILL_THREADS"):
            load_model(folder)


@pytest.mark.parametrize("shift", [False, True])
def test_a_pass_over_chosen_positions_equals_the_span_pass_while_nothing_has_changed(
        qwen2_ckpt, shift):
    folder, _ = qwen2_ckpt
    model = load_model(folder, profile_overrides={"shift_logits": shift})
    ids = _ids(model.config.vocab_size, (2, 24))
    cache = KVCache([], [])
    model.span_logits(ids, 8, 16, cache=cache)
    columns = torch.tensor([1, 4, 5, 7])
    span = model.span_logits(ids, 8, 16, cache=cache, columns=columns, run=model.span_run(8, 16))
    before = [k.clone() for k in cache.keys]
    run = torch.unique(torch.cat([columns + 8, model.logit_positions(8, columns)]))
    chosen = model.span_logits(ids, 8, 16, cache=cache, columns=columns, run=run)
    assert torch.allclose(chosen, span, atol=1e-4)
    # Only the chosen positions' keys were written: the rest are the span pass's, untouched.
    others = torch.ones(24, dtype=torch.bool)
    others[run] = False
    for k, k0 in zip(cache.keys, before):
        assert torch.equal(k[:, :, others], k0[:, :, others])
    # A chosen position whose token changed gets its new keys written: at the first layer they
    # depend on the token and its position alone, so they equal a fresh pass's.
    changed = ids.clone()
    p = int(run[0])
    changed[:, p] = (changed[:, p] + 1) % model.config.vocab_size
    model.span_logits(changed, 8, 16, cache=cache, columns=columns, run=run)
    fresh = KVCache([], [])
    model.span_logits(changed, 8, 16, cache=fresh)
    assert torch.allclose(cache.keys[0][:, :, p], fresh.keys[0][:, :, p], atol=1e-5)
    assert not torch.allclose(cache.keys[0][:, :, p], before[0][:, :, p], atol=1e-5)


def test_a_pass_over_chosen_positions_must_cover_the_logits_it_returns(qwen2_ckpt):
    folder, _ = qwen2_ckpt
    model = load_model(folder, profile_overrides={"shift_logits": True})
    ids = _ids(model.config.vocab_size, (1, 24))
    cache = KVCache([], [])
    model.span_logits(ids, 8, 16, cache=cache)
    with pytest.raises(ValueError, match="logit_positions"):
        model.span_logits(ids, 8, 16, cache=cache, columns=torch.tensor([3]),
                          run=torch.tensor([11]))  # column 3 reads position 10
    with pytest.raises(ValueError, match="filled cache"):
        model.span_logits(ids, 8, 16, columns=torch.tensor([3]), run=torch.tensor([10]))
    with pytest.raises(ValueError, match="names the positions"):
        model.span_logits(ids, 8, 16, cache=cache)  # a filled cache, and no run named


def test_few_query_attention_is_sdpa_with_grouped_heads_and_padding():
    import torch.nn.functional as F

    from diffill.model.transformer import few_query_attention
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 16, generator=gen)
    k, v = torch.randn(2, 2, 30, 16, generator=gen), torch.randn(2, 2, 30, 16, generator=gen)
    mask = torch.ones(2, 1, 1, 30, dtype=torch.bool)
    mask[1, ..., 25:] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(few_query_attention(q, k, v, mask, 2), want, atol=1e-5)
    assert torch.allclose(few_query_attention(q, k.repeat_interleave(2, 1),
                                              v.repeat_interleave(2, 1), None, 1),
                          F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1),
                                                         v.repeat_interleave(2, 1)), atol=1e-5)


def test_a_pass_of_few_queries_gives_the_logits_of_the_flash_kernel(qwen2_ckpt, monkeypatch):
    """A span pass of the dual cache (few queries, many cached keys) through
    few_query_attention gives what SDPA gives."""
    import diffill.model.transformer as transformer
    folder, _ = qwen2_ckpt
    model = load_model(folder)
    ids = _ids(model.config.vocab_size, (2, 200))
    key_mask = torch.ones(2, 200, dtype=torch.bool)
    key_mask[1, 180:] = False
    used = []
    real = transformer.few_query_attention
    monkeypatch.setattr(transformer, "few_query_attention",
                        lambda *a: used.append(1) or real(*a))
    logits = []
    for few in (transformer.FEW_QUERIES, 0):  # 0: every pass through SDPA
        monkeypatch.setattr(transformer, "FEW_QUERIES", few)
        cache = KVCache([], [])
        model.span_logits(ids, 100, 106, key_mask=key_mask, cache=cache)
        logits.append(model.span_logits(ids, 100, 106, key_mask=key_mask, cache=cache,
                                        run=model.span_run(100, 106)))
        if few:
            assert len(used) == model.config.num_hidden_layers  # the span pass, every layer
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


@pytest.mark.parametrize("fixture", ["qwen2_ckpt", "llama_tied_ckpt"])
def test_fused_projections_compute_what_separate_ones_do(fixture, request):
    """The loader fuses q/k/v and gate/up for inference: its passes (full and cached) give the
    logits of a transformer of the same weights that runs them one by one, a pass with
    gradients trains the separate parameters, and a model moved afterwards still computes
    the same (the fused weights are no longer its own, so they are not used)."""
    from diffill.model.transformer import Transformer, fused_for
    folder, _ = request.getfixturevalue(fixture)
    model = load_model(folder)
    layer = model.transformer.model.layers[0]
    assert fused_for(layer.self_attn.qkv, layer.self_attn.q_proj) is None  # grad enabled here
    plain = Transformer(model.config)
    plain.load_state_dict(model.transformer.state_dict())
    plain.eval()
    assert plain.model.layers[0].self_attn.qkv is None
    ids = _ids(model.config.vocab_size, (2, 40))
    with torch.inference_mode():
        assert fused_for(layer.self_attn.qkv, layer.self_attn.q_proj) is not None
        assert fused_for(layer.mlp.gate_up, layer.mlp.gate_proj) is not None
        want = plain(ids)
        assert torch.allclose(model.transformer(ids), want, atol=1e-5)
        caches = [KVCache([], []), KVCache([], [])]
        for net, cache in zip((model.transformer, plain), caches):
            net.hidden(ids, cache=cache)
        spans = [net.logits(net.hidden(ids[:, 20:30], cache=cache, start=20))
                 for net, cache in zip((model.transformer, plain), caches)]
        assert torch.allclose(spans[0], spans[1], atol=1e-5)
        for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
            assert torch.allclose(a, b, atol=1e-5)
    model.transformer.train()
    model.transformer(ids).sum().backward()
    assert layer.self_attn.k_proj.weight.grad is not None
    assert layer.mlp.up_proj.weight.grad is not None
    model.transformer.eval()
    moved = model.transformer.to(torch.float64)
    with torch.inference_mode():
        assert fused_for(layer.self_attn.qkv, layer.self_attn.q_proj) is None
        assert torch.allclose(moved(ids).float(), want, atol=1e-4)
