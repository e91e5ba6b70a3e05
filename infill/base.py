"""What every engine shares, whatever runs its model: validation, the checks and ranking that
decide what is shown, the counters ``diffill status`` reports. Free of torch, so an engine whose
model runs elsewhere (``infill.remote``) does not load it."""

from __future__ import annotations

import time
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from . import post, rank
from .api import ACTIONS, Completion, InfillRequest, InfillResult, InfillSettings, Submission
from .text import InputError, PositionError, check_size

class _HasTokenizer(Protocol):
    tokenizer: Any


M = TypeVar("M", bound=_HasTokenizer)


class EngineBase(Generic[M]):
    """What every engine shares, whatever its model ``M``: validation, the checks and ranking
    that decide what is shown, the counters ``diffill status`` reports. Not thread-safe:
    callers serialise (the daemon does)."""

    serves_between_steps = True
    """Whether another batch may run on this model from inside a running request's cancel
    poll (the daemon serves completions between a rewrite's steps that way)."""

    def __init__(self, model: M, settings: InfillSettings = InfillSettings()) -> None:
        self.model = model
        self.settings = settings
        self.tokenizer = model.tokenizer
        self._known_names = post.python_names()
        self.prefix_reuses = 0
        """Requests whose first pass reused their document's last window (``diffill status``)."""
        self.shed = 0
        """Completions run with one mask count because others were waiting (``shed_load``)."""
        self.quick = 0
        """Line completions asked while typing, run with one mask count (``quick_lines``)."""

    def run_batch(self, submissions: Sequence[Submission], settings: InfillSettings,
                  contended: bool = False) -> list[InfillResult | BaseException]:
        raise NotImplementedError

    def min_confidence(self, settings: InfillSettings, mode: str) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the engine holds beyond its model (connections, threads)."""

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def run(self, req: InfillRequest, settings: InfillSettings | None = None,
            cancel: Callable[[], bool] | None = None) -> InfillResult:
        (result,) = self.run_batch([Submission(req, cancel)], settings or self.settings)
        if isinstance(result, BaseException):
            raise result
        return result

    def _validate(self, req: InfillRequest) -> str:
        check_size(req.text, req.path or "document")
        if len(req.draft_support) > len(req.drafts) or any(n < 0 for n in req.draft_support):
            raise InputError("draft_support gives one count of 0 or more per draft")
        if not 0 <= req.start <= len(req.text):
            raise PositionError(f"offset {req.start} is outside the document")
        if req.action == "complete":
            return req.action
        if req.action not in ACTIONS:
            raise InputError(f"unknown action {req.action!r}; one of {', '.join(ACTIONS)}")
        if req.end is None or not req.start <= req.end <= len(req.text):
            raise PositionError("a rewrite needs a selection inside the document")
        if req.end == req.start:
            raise InputError("the selection is empty")
        return req.action

    def result(self, req: InfillRequest, mode: str, items: list[Completion],
               settings: InfillSettings, passes: int, started: float) -> InfillResult:
        """The result of a request's completions: ranked, and withheld (each counted by its
        reason) when it would break code that parses, names something defined nowhere
        (``hide_unknown_names``) or scores under ``min_confidence``; an explicit ask is
        withheld only under a ``min_confidence`` it set, and a rewrite never (it was asked
        for)."""
        language = post.language_of(req.language, req.path)
        prose: dict[int, bool] = {}  # per start: in a string or comment (both checks ask)
        rank.rank(items, req.text, language, self._known_names, settings.check_names, req.extra,
                  prose)
        why: dict[str, int] = {}
        if mode != "rewrite":
            floor = self.min_confidence(settings, mode)
            # An explicit ask gets its best candidate even so (ranked: parsing ones first).
            breaks = self._breaks(req.text, language, prose) if not settings.explicit else \
                (lambda it: False)
            shown = []
            for it in items:
                reason = "syntax" if breaks(it) else \
                    "unknown name" if settings.withholds_unknown_names and it.unknown else \
                    "floor" if it.score < floor else None
                if reason is None:
                    shown.append(it)
                else:
                    why[reason] = why.get(reason, 0) + 1
            items = shown
        return InfillResult(items, mode, passes, time.perf_counter() - started,
                            withheld=sum(why.values()), withheld_by=why)

    def _breaks(self, text: str, language: str | None,
                prose: dict[int, bool]) -> Callable[[Completion], bool]:
        """Whether a completion would turn code that parses (or is only unfinished) into code
        that cannot: its line (``post.breaks_line``), or, for a fill of several lines, the
        def or class around it when that parsed without it. Python only; not in a string or
        comment (``prose``: per start, filled by whichever check asks first)."""
        if language != "python":
            return lambda it: False
        unit_parsed: dict[int, bool | None] = {}

        def breaks(it: Completion) -> bool:
            if rank.in_prose(text, it.start, prose):
                return False
            line_start = text.rfind("\n", 0, it.start) + 1
            line_end = text.find("\n", it.end)
            line_end = len(text) if line_end < 0 else line_end
            if post.breaks_line(text[line_start:it.start], it.text, text[it.end:line_end],
                                text[max(0, line_start - post.BRACKETS_BACK):line_start]):
                return True
            if it.parses is not False or "\n" not in it.text.strip("\n"):
                return False  # a line is judged by its line: unfinished is not broken
            if it.start not in unit_parsed:
                unit_parsed[it.start] = post.parses_near(language, text, it.start, it.end,
                                                         rank.SYNTAX_CHECK_LIMIT)
            return bool(unit_parsed[it.start])
        return breaks
