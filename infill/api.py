"""The engine's vocabulary, free of torch: settings, requests, results and the caps on a
request's work.

The CLI talking to a daemon, the daemon's wire format and the error mapping need these names
but not a model; importing them from here costs milliseconds, where ``infill.engine`` and
``infill.sampler`` bring torch (about a second).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from . import post
from .context import ContextBudget

SCHEDULES = ("fixed", "threshold", "blocks")
ORDERS = ("confidence", "margin", "entropy")
CACHES = ("auto", "none", "dual")
FILLER_ORDERS = ("auto", "left", "any")
PASS_POSITIONS = ("open", "block")
REFRESHES = ("auto", "block", "fill")
DEFAULT_BLOCK = 32
"""Block length where neither the settings nor the checkpoint name one (Fast-dLLM's)."""


class Cancelled(Exception):
    """The caller asked to stop (a newer request, ``$/cancelRequest``, a closed client)."""


@dataclass(frozen=True)
class SamplerSettings:
    schedule: str = "threshold"
    """``fixed`` | ``threshold`` | ``blocks``."""
    steps: int = 0
    """Forward passes for ``fixed``/``blocks`` over the whole span; 0 means one per 2 tokens.
    Given for ``threshold`` on a Dream-family checkpoint, a pass commits at most masks/steps
    plus what earlier passes held back, as Fast-dLLM's Dream decoder does."""
    threshold: float = 0.9
    """Probability at or above which ``threshold`` commits a position."""
    order: str = "confidence"
    """Which masked positions go first: ``confidence`` | ``margin`` | ``entropy``."""
    block_size: int = 0
    """Block length of the ``blocks`` schedule and of the dual cache's blocks; 0: the
    checkpoint's (its profile), else :data:`DEFAULT_BLOCK`. Set, it also makes ``threshold``
    decode block after block without the cache."""
    temperature: float = 0.0
    """0 is greedy, as editors want; above 0 samples."""
    top_p: float = 1.0
    seed: int | None = None
    cache: str = "auto"
    """``none`` recomputes the window each step; ``dual`` caches context K/V per block;
    ``auto`` asks the checkpoint's profile (``dual`` where it was measured to keep the
    answers, ``none`` otherwise)."""
    min_tokens: int = 1
    """Filler is not allowed in the first ``min_tokens`` masks of a gap: an empty fill is
    never what an editor asks for."""
    reuse_prefix: bool = True
    """With the dual cache: a document's next request reuses the keys and values of the window
    positions it shares with the last one (from the start of the window up to the first
    change) instead of running them again. An approximation (they were computed beside the
    older canvas and suffix), measured in docs/performance.md; at most 8 requests in a row."""
    filler_order: str = "auto"
    """Where a fill may end. ``left``: filler commits only right behind the written part of the
    gap, and then closes the rest of it; ``any``: filler commits wherever it is surest, as any
    other token (plain confidence order); ``auto``: what the checkpoint's profile says."""

    faithful: bool = False
    """Decode as the checkpoint's authors do: no ``min_tokens`` rule, no ``left`` filler order,
    one token per step when ``steps`` is 0, and the engine shows the decode unprocessed (the
    commit counts and scores of a released family are its authors' either way)."""

    pass_positions: str = "block"
    """With the dual cache, what each pass after a block's first runs: ``block`` every position
    of the block (Fast-dLLM's dual cache); ``open`` only the positions still masked, the ones
    their logits are read from, and the ones committed by the last pass, whose keys and values
    still show a mask; a committed token's are then kept. ``open`` costs a quarter less on a
    64-token span and two points of exact lines (docs/performance.md)."""
    refresh: str = "auto"
    """With the dual cache, when the whole window is run again: ``block`` at the start of
    every block (Fast-dLLM's dual cache); ``fill`` once per fill: a later block's first pass
    runs only its own positions and the previous block's last commits, against context keys
    and values computed beside the older canvas (as dKV-Cache keeps them). Matters only when a
    fill spans several blocks: ``fill`` saves a full-window pass for each block after the
    first. ``auto``: the checkpoint's (its profile), else ``block``."""

    draft_floor: float = 0.3
    """A draft token after the draft's first word is kept at this probability or more
    (``sampler.accepts``)..."""
    draft_ratio: float = 0.1
    """... or at this share of the probability of the model's own first choice or more (1:
    only its first choices). Chosen on the typing eval's recorded drafts (session 12)."""

    def __post_init__(self) -> None:
        if not (0.0 < self.draft_floor <= 1.0 and 0.0 < self.draft_ratio <= 1.0):
            raise ValueError("draft_floor and draft_ratio must be in (0, 1]")
        if self.refresh not in REFRESHES:
            raise ValueError(f"refresh must be one of {', '.join(REFRESHES)}")
        if self.pass_positions not in PASS_POSITIONS:
            raise ValueError(f"pass_positions must be one of {', '.join(PASS_POSITIONS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}")
        if self.filler_order not in FILLER_ORDERS:
            raise ValueError(f"filler_order must be one of {', '.join(FILLER_ORDERS)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.steps < 0 or self.block_size < 0:
            raise ValueError("steps and block_size must be >= 0")
        if self.steps > MAX_STEPS:
            raise ValueError(f"steps {self.steps} is over the cap of {MAX_STEPS} forward passes")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


MAX_STEPS = 1024
"""Forward passes one request may ask for (caps the fixed/blocks schedules)."""
ACTIONS = ("complete", "rewrite", "refine")
MAX_MASKS = 512
"""Most masks one fill may have (``max_tokens``, each of ``lengths``, a rewrite's span): the
work of a request grows with them, and one huge request must not hold the worker for minutes."""
MAX_LENGTHS = 8
"""Most fills of one request (``ensemble``, ``lengths``): each is a row of every pass."""
MAX_CONTEXT = 16384
"""Most context tokens a request may ask for on each side."""


@dataclass(frozen=True)
class InfillSettings:
    sampler: SamplerSettings = SamplerSettings()
    budget: ContextBudget = ContextBudget()
    max_tokens: int = 64
    """Most tokens a completion may take (the largest mask count tried); capped by the
    checkpoint's ``max_fill`` when its profile has one."""
    mode: str = "auto"
    """``auto`` | ``line`` | ``block`` for completions."""
    ensemble: int = 2
    """How many mask counts are tried in one batch (the length ensemble)."""
    lengths: tuple[int, ...] = ()
    """Explicit mask counts; overrides ``ensemble``."""
    refine_threshold: float = 0.3
    """Refine re-masks tokens whose probability in context is under this."""
    min_confidence: float | None = None
    """Completions scored below this are not shown (say nothing rather than something wrong);
    None: the checkpoint's calibrated value, or 0 when it records none."""
    check_names: bool = True
    """Rank candidates that use names defined nowhere (document, builtins, keywords) last."""
    hide_unknown_names: bool = True
    """Do not show a completion that uses a name defined nowhere (with ``check_names``): such
    ghosts are almost never right (docs/performance.md, session 10). Rewrites are always
    shown."""
    quick_lines: bool = False
    """Asked for while the user types: a line completion tries one mask count (the shorter
    rung of its ensemble) to answer sooner; a block keeps its ensemble (``fastTyping``)."""
    token_healing: bool = True
    """A completion whose cursor ends a partial word takes that word's tokens out of the
    context and writes the word again, as the tokenizer joins it (``sampler.TokenHealing``)."""
    explicit: bool = False
    """Asked for by a person (the CLI, an invoked completion) rather than shown by itself:
    the checkpoint's calibrated floor, the unknown-names hiding and the syntax guard do not
    apply, so the best candidate (ranked, those that parse first) comes back with its score;
    an explicit ``min_confidence`` still filters."""
    drafts: bool = True
    """Completions first verify drafts taken from the code at hand (``infill.drafts``: the
    typed line's tail found elsewhere and what followed it, the partial word's completions,
    the request's own ``drafts``): a draft the model accepts whole is the answer in two
    passes."""
    shed_load: bool = True
    """Under contention (completions of several editors run as one batch, or one is served
    between a rewrite's steps) a completion tries one mask count instead of the ensemble: the
    shortest rung for a line, the longest for a block; everyone is answered near idle speed."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.max_tokens > MAX_MASKS:
            raise ValueError(f"max_tokens {self.max_tokens} is over the cap of {MAX_MASKS}")
        if any(n < 1 or n > MAX_MASKS for n in self.lengths):
            raise ValueError(f"lengths must be between 1 and {MAX_MASKS} masks")
        if len(self.lengths) > MAX_LENGTHS or self.ensemble > MAX_LENGTHS:
            raise ValueError(f"at most {MAX_LENGTHS} lengths (ensemble) per request")
        b = self.budget
        if max(b.prefix_tokens, b.suffix_tokens, b.extra_tokens) > MAX_CONTEXT or \
                min(b.prefix_tokens, b.suffix_tokens, b.extra_tokens) < 0:
            raise ValueError(f"context budgets must be between 0 and {MAX_CONTEXT} tokens")
        if self.mode not in post.MODES:
            raise ValueError(f"mode must be one of {', '.join(post.MODES)}")
        if self.ensemble < 1:
            raise ValueError("ensemble must be at least 1")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ValueError("min_confidence must be between 0 and 1")
        if not all(isinstance(v, bool) for v in (self.shed_load, self.quick_lines,
                                                  self.token_healing, self.hide_unknown_names,
                                                  self.drafts, self.explicit)):
            raise ValueError("shed_load, quick_lines, token_healing, hide_unknown_names, "
                             "drafts and explicit must be true or false")

    @property
    def withholds_unknown_names(self) -> bool:
        """Whether a completion naming something defined nowhere is withheld: the names check
        on, ``hide_unknown_names``, and not an explicit ask."""
        return self.hide_unknown_names and self.check_names and not self.explicit


@dataclass(frozen=True)
class InfillRequest:
    text: str
    start: int
    """Character offset of the cursor, or of the selection's start."""
    end: int | None = None
    """Selection end (exclusive) for ``rewrite`` and ``refine``."""
    action: str = "complete"
    language: str | None = None
    path: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    """Extra context chunks, (name, text), placed ahead of the prefix."""
    instruction: str | None = None
    """What a rewrite should do ("add type hints"); followed by chat models only."""
    drafts: tuple[str, ...] = ()
    """Continuations of the cursor's line from elsewhere (other open documents, a previous
    ghost's rest), verified beside the document's own (``InfillSettings.drafts``)."""
    draft_support: tuple[int, ...] = ()
    """The support of each of ``drafts`` in order (the code tokens of the match it was found
    after, ``infill.drafts.Found``), which its score weighs; those past the end count 1."""


@dataclass(frozen=True)
class DocumentKey:
    """Which document of which client a request came from (an engine keeps per document what
    its last request computed)."""
    client: int | str
    uri: str


@dataclass
class Submission:
    """One request as an engine takes it, with what travels beside it."""
    request: InfillRequest
    cancel: Callable[[], bool] | None = None
    """Polled before every forward pass: True stops the request (:class:`Cancelled`)."""
    preview: Callable[[str, float], None] | None = None
    """Called after each denoising step of a completion with its text committed so far and
    the share of the gap decided."""
    document: DocumentKey | None = None
    """Its document: a lone completion reuses what that document's last request computed
    (``reuse_prefix``)."""


@dataclass
class Completion:
    text: str
    start: int
    end: int
    """The character range of the document this text replaces."""
    score: float
    parses: bool | None = None
    tokens: int = 0
    terminated: bool = True
    """The model ended the fill itself (wrote filler) rather than running out of masks."""
    unknown: tuple[str, ...] = ()
    """Names the text uses that are defined nowhere in the document (see ``post``)."""


@dataclass
class InfillResult:
    items: list[Completion]
    """Best first; may be empty when the model proposes nothing useful."""
    mode: str
    forward_passes: int
    seconds: float
    remasked: list[int] = field(default_factory=list)
    """Refine only: indices of the selection's tokens that were re-masked."""
    withheld: int = 0
    """Completions not shown (any reason of ``withheld_by``)."""
    withheld_by: dict[str, int] = field(default_factory=dict)
    """Why completions were not shown, how many each: ``syntax`` (it would break code that
    parsed), ``unknown name`` (it names something defined nowhere), ``floor`` (scored under
    ``min_confidence``)."""
    cached: bool = False
    """Answered from the daemon's cache of recent results, without a forward pass."""

    @property
    def best(self) -> Completion | None:
        return self.items[0] if self.items else None


def with_overrides(settings: InfillSettings, **changes) -> InfillSettings:
    """Settings with top-level or sampler fields replaced (unknown names are an error)."""
    sampler_fields = set(SamplerSettings.__dataclass_fields__)  # type: ignore[attr-defined]
    top = {k: v for k, v in changes.items() if k not in sampler_fields and v is not None}
    samp = {k: v for k, v in changes.items() if k in sampler_fields and v is not None}
    if samp:
        top["sampler"] = replace(settings.sampler, **samp)
    return replace(settings, **top)
