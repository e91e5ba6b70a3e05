"""Family profiles: what differs between diffusion checkpoints that share one transformer.

A profile names the mask token, the filler tokens a model writes into surplus masks, whether the
logits are shifted (Dream-style models predict position i from hidden state i-1) and control
tokens such as DreamOn's ``<|expand|>``. It is detected from ``config.json`` and the tokenizer's
vocabulary, and any field can be overridden by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

FAMILIES = ("dream", "dream-coder", "diffucoder", "dreamon", "llada", "open-dcoder", "diffill")


class ProfileError(ValueError):
    """The checkpoint's family could not be told, or an override does not fit it."""


@dataclass(frozen=True)
class FamilyProfile:
    name: str
    mask_id: int
    filler_ids: tuple[int, ...]
    """Tokens that mean "nothing here": surplus masks are filled with them and cut."""
    shift_logits: bool
    filler_mode: str = "truncate"
    """``truncate``: the fill ends at the first filler; ``delete``: filler anywhere is dropped."""
    bos_id: int | None = None
    """Prepended to every window when the family was trained with it."""
    end_id: int | None = None
    """Appended after every window's suffix when the family was trained with it (DreamOn:
    ``[BOS] prefix masks suffix [EOS]``, as its quickstart and eval frame an infill)."""
    expand_id: int | None = None
    """DreamOn's ``<|expand|>``: one mask asks to become two."""
    filler_order: str = "any"
    """The sampler's ``filler_order`` when the settings leave it on ``auto``: ``left`` (filler
    only right behind the written part of the gap) or ``any`` (filler wherever it is surest)."""
    max_fill: int | None = None
    """Most masks worth giving this checkpoint's fills, when known (caps ``max_tokens``)."""
    min_confidence: float | Mapping[str, float] | None = None
    """Score under which a completion is not shown, calibrated on held-out code, when known:
    one for every mode, or one per mode (``{"line": 0.6, "block": 0.8}``)."""
    cache: str = "none"
    """The sampler's ``cache`` when the settings leave it on ``auto``: ``dual`` only where the
    held-out eval showed the cached context keeps the answers."""
    block_size: int | None = None
    """The sampler's ``block_size`` when the settings leave it at 0, when measured."""
    refresh: str = "block"
    """The sampler's ``refresh`` when the settings leave it on ``auto``: ``fill`` only where
    the held-out eval showed one full-window pass per fill keeps the answers."""
    commit_rule: str = "diffill"
    """How many masks a fixed or blocks schedule commits per step (``sampler.
    fixed_commit_counts``): ``dream`` and ``llada`` as their authors' decoders, ``diffill``
    (diffill's own checkpoints) at least one per step on a linear grid."""
    score_top_k: int | None = None
    """Dream's decoder scores positions on the softmax over the top k tokens only."""
    extra: dict[str, Any] = field(default_factory=dict)

    def confidence_floor(self, mode: str) -> float | None:
        """The calibrated ``min_confidence`` for completions of ``mode`` (line, block)."""
        if isinstance(self.min_confidence, Mapping):
            return self.min_confidence.get(mode)
        return self.min_confidence

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "FamilyProfile":
        if not overrides:
            return self
        known = {f for f in self.__dataclass_fields__}  # type: ignore[attr-defined]
        unknown = set(overrides) - known
        if unknown:
            raise ProfileError(f"unknown profile field(s): {', '.join(sorted(unknown))}")
        values = dict(overrides)
        if "filler_ids" in values:
            values["filler_ids"] = tuple(int(i) for i in values["filler_ids"])
        if values.get("filler_mode", self.filler_mode) not in ("truncate", "delete"):
            raise ProfileError("filler_mode must be 'truncate' or 'delete'")
        if values.get("filler_order", self.filler_order) not in ("left", "any"):
            raise ProfileError("filler_order must be 'left' or 'any'")
        if values.get("commit_rule", self.commit_rule) not in ("diffill", "dream", "llada"):
            raise ProfileError("commit_rule must be 'diffill', 'dream' or 'llada'")
        if values.get("cache", self.cache) not in ("none", "dual"):
            raise ProfileError("cache must be 'none' or 'dual'")
        check_blocks(values.get("block_size", self.block_size), values.get("refresh", self.refresh))
        return replace(self, **values)


def check_blocks(block_size: Any, refresh: Any) -> None:
    """The dual cache's recorded ``block_size`` (None, or a whole number of at least 1) and
    ``refresh`` (``block`` or ``fill``), checked for config.json and for an export."""
    if refresh not in ("block", "fill"):
        raise ProfileError("refresh must be 'block' or 'fill'")
    if block_size is not None and (type(block_size) is not int or block_size < 1):
        raise ProfileError("block_size must be a whole number of at least 1")


# Ids of the released checkpoints, used only when neither config nor tokenizer names them.
DREAM_MASK, DREAM_EOS, DREAMON_EXPAND = 151666, 151643, 151667
LLADA_MASK, LLADA_EOS = 126336, 126081


def _id(vocab: Mapping[str, int], *tokens: str) -> int | None:
    for t in tokens:
        if t in vocab:
            return vocab[t]
    return None


def _ids(*values: int | None) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        if v is not None and v not in out:
            out.append(int(v))
    return tuple(out)


def detect_family(config: Mapping[str, Any], vocab: Mapping[str, int]) -> str:
    """Name the family from config.json and the tokenizer vocabulary."""
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures") or []).lower()
    name = str(config.get("_name_or_path", "")).lower()
    if "diffill" in config or model_type == "diffill":
        return "diffill"
    if model_type == "llada" or "llada" in archs or "d_model" in config:
        return "llada"
    if "<|expand|>" in vocab:
        return "dreamon"
    if model_type == "dream" or "dream" in archs:
        if "diffucoder" in name or "<|dlm_pad|>" in vocab:
            return "diffucoder"
        return "dream-coder" if "coder" in name else "dream"
    if "<M>" in vocab:
        return "open-dcoder"
    raise ProfileError(
        f"cannot tell the diffusion family of this checkpoint (model_type={model_type!r}); "
        f"pass a family explicitly, one of: {', '.join(FAMILIES)}"
    )


COMPLETION_MODES = ("line", "block")


def parse_floors(raw: Any) -> float | dict[str, float] | None:
    """config.json's ``min_confidence`` (and an export's ``--min-confidence``), checked: a
    score in 0..1 for every mode, or one per mode."""
    if raw is None:
        return None
    items = raw.items() if isinstance(raw, dict) else [("all", raw)]
    out: dict[str, float] = {}
    for mode, value in items:
        if mode not in (*COMPLETION_MODES, "all") or isinstance(value, bool) \
                or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ProfileError(f"min_confidence must be a score in 0..1 or one per mode "
                               f"({', '.join(COMPLETION_MODES)}); got {raw!r}")
        out[mode] = float(value)
    return out.pop("all") if "all" in out else out


DREAM_TOP_K = 50
"""The ``top_k`` Dream's decoder ends up with when neither the call nor the checkpoint sets
one: its generation config is built from the model config, whose transformers 4.x defaults
carry ``top_k=50`` (Dream's ``from_model_config``; the pinned transformers of its release)."""


def dream_top_k(config: Mapping[str, Any]) -> int | None:
    """The Dream family's scoring ``top_k``: config.json's (0 or null: none), else
    :data:`DREAM_TOP_K`."""
    if "top_k" not in config:
        return DREAM_TOP_K
    value = config["top_k"]
    if value is None or value == 0:
        return None
    if type(value) is not int or value < 0:
        raise ProfileError(f"top_k in config.json must be a whole number; got {value!r}")
    return value


def _dream_profile(family: str, config: Mapping[str, Any],
                   vocab: Mapping[str, int]) -> FamilyProfile:
    """Dream and the families that share its tokenizer: Dream-Coder, DiffuCoder, DreamOn."""
    mask = _id(vocab, "<|mask|>") or config.get("mask_token_id") or DREAM_MASK
    eos = _id(vocab, "<|endoftext|>")
    eos = eos if eos is not None else config.get("eos_token_id", DREAM_EOS)
    if family == "diffucoder":
        filler = _ids(_id(vocab, "<|dlm_pad|>"), eos)
    else:
        filler = _ids(eos)
    dreamon = family == "dreamon"
    return FamilyProfile(
        name=family, mask_id=int(mask), filler_ids=filler, shift_logits=True,
        filler_mode="delete" if dreamon else "truncate",
        expand_id=(_id(vocab, "<|expand|>") or DREAMON_EXPAND) if dreamon else None,
        commit_rule="dream", score_top_k=dream_top_k(config),
        # DreamOn frames an infill with Dream's BOS and EOS.
        bos_id=_id(vocab, "<|beginoftext|>") if dreamon else None,
        end_id=filler[0] if dreamon else None,
    )


def _llada_profile(family: str, config: Mapping[str, Any],
                   vocab: Mapping[str, int]) -> FamilyProfile:
    cfg_mask = config.get("mask_token_id")
    mask = cfg_mask if cfg_mask is not None else (_id(vocab, "<|mdm_mask|>") or LLADA_MASK)
    eos_id = config.get("eos_token_id", LLADA_EOS)
    return FamilyProfile(name="llada", mask_id=int(mask),
                         filler_ids=_ids(eos_id, _id(vocab, "<|eot_id|>")),
                         shift_logits=False, commit_rule="llada",
                         bos_id=config.get("bos_token_id", _id(vocab, "<|startoftext|>")))


def _open_dcoder_profile(family: str, config: Mapping[str, Any],
                         vocab: Mapping[str, int]) -> FamilyProfile:
    mask = _id(vocab, "<M>")
    if mask is None:
        raise ProfileError("open-dcoder checkpoints need the <M> mask token in the tokenizer")
    return FamilyProfile(name="open-dcoder", mask_id=mask,
                         filler_ids=_ids(config.get("pad_token_id"),
                                         _id(vocab, "<|endoftext|>")),
                         shift_logits=True)


def _diffill_profile(family: str, config: Mapping[str, Any],
                     vocab: Mapping[str, int]) -> FamilyProfile:
    meta = dict(config.get("diffill") or {})
    mask, pad = _id(vocab, "<|mask|>"), _id(vocab, "<|pad|>")
    if mask is None or pad is None:
        raise ProfileError("a diffill checkpoint needs <|mask|> and <|pad|> in its tokenizer")
    extra = {"window": int(meta["seq_len"])} if meta.get("seq_len") else {}
    # Trained with every surplus mask of a gap set to one pad token: the setting where
    # confidence order commits the far-end pad first and shortens fills (measured on
    # diffill-small, see its card), so filler goes left to right.
    rainbow = [_id(vocab, f"<|pad_{k}|>") for k in range(1, int(meta.get("pad_tokens", 1)))]
    if None in rainbow:
        raise ProfileError("config.json names more pad tokens than the tokenizer has")
    profile = FamilyProfile(name="diffill", mask_id=mask,
                            filler_ids=_ids(pad, *rainbow, _id(vocab, "<|endoftext|>")),
                            shift_logits=bool(meta.get("shift_logits", False)),
                            bos_id=_id(vocab, "<|endoftext|>") if meta.get("bos") else None,
                            filler_order=str(meta.get("filler_order", "left")),
                            max_fill=int(meta["max_fill"]) if meta.get("max_fill") else None,
                            min_confidence=parse_floors(meta.get("min_confidence")),
                            cache=str(meta.get("cache", "none")),
                            extra=extra)
    return profile.with_overrides({k: meta[k] for k in ("block_size", "refresh") if k in meta})


_BUILDERS = {"dream": _dream_profile, "dream-coder": _dream_profile,
             "diffucoder": _dream_profile, "dreamon": _dream_profile,
             "llada": _llada_profile, "open-dcoder": _open_dcoder_profile,
             "diffill": _diffill_profile}


def build_profile(config: Mapping[str, Any], vocab: Mapping[str, int],
                  family: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> FamilyProfile:
    """The profile of a checkpoint; ``family`` forces one, ``overrides`` replace fields."""
    family = family or detect_family(config, vocab)
    if family not in _BUILDERS:
        raise ProfileError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    profile = _BUILDERS[family](family, config, vocab).with_overrides(overrides)
    vocab_size = config.get("vocab_size") or config.get("embedding_size")
    if vocab_size is not None and profile.mask_id >= int(vocab_size):
        raise ProfileError(f"mask id {profile.mask_id} is outside the vocabulary ({vocab_size})")
    return profile
