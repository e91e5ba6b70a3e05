"""One request through context -> sampler -> post-processing.

The CLI calls it in-process, the daemon on behalf of every editor window; nothing else runs the
model. Requests and results are small typed objects with character offsets; line/column
conversion (and its encodings) happens at the edges.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from diffill.model import DiffusionModel

from . import drafts as drafting
from . import post, rank
from .context import ContextBudget, Window, build_window, encode
from .base import EngineBase
from .expand import infill_variable
from .api import (MAX_MASKS, Completion, DocumentKey, InfillRequest, InfillResult,
                  InfillSettings, Submission)
from .sampler import (Cancelled, Candidate, Draft, Gap, PrefixSlot, infill_many,
                      refine)
from .steps import LineEnds, TokenHealing, Vocab
from .text import InputError

STRONG_SUPPORT = 5
"""Drafts found after this many code tokens of the typed line are verified whole."""
WEAK_DRAFT_TOKENS = 2
"""Code tokens a draft found after a shorter match is cut to (``add_drafts``)."""
LINE_LADDER = (4, 8, 16, 32, 64)
BLOCK_DRAFT_LINES = 4
"""Lines a block gap's draft may run to, to finish the statement it begins (a block opener's
body, a bracket's lines): the held-out block spans are 1-4 lines."""
BLOCK_LADDER = (8, 16, 32, 64, 128, 256)
TRIM_LIMIT = 200_000
"""Documents above this many characters are not parsed whole to cut a block back to the lines
that parse (each shorter cut is a parse: bounded, unlike the one check per candidate)."""


@dataclass
class PreparedFill:
    """A request made ready for the sampler: its window and the mask counts to try."""

    request: InfillRequest
    mode: str
    lengths: list[int]
    window: Window
    line_before: str
    started: float
    settings: InfillSettings = InfillSettings()
    lead: TokenHealing | None = None
    """The partial word taken out of the context, which the fill writes again (healing)."""
    drafts: list[Draft] = field(default_factory=list)
    """The drafts to verify (their ids include the lead's text)."""
    draft_length: int = 16

    sample_under: float = 0.0
    """See :attr:`Gap.sample_under` (the floor, for an explicit ask)."""
    line_ends: LineEnds | None = None
    """See :attr:`Gap.line_ends` (a line completion's)."""

    @property
    def sampler_job(self) -> Gap:
        return Gap(self.window.context_ids, self.window.suffix_ids, self.lengths, self.lead,
                   self.drafts, self.draft_length, self.sample_under, self.line_ends,
                   veto=not self.settings.explicit)

    def raw_text(self, decoded: str) -> str | None:
        """A decoded fill without the lead it had to begin with (None: it did not)."""
        if self.lead is None:
            return decoded
        taken = len(self.lead.text) if self.lead.taken is None else self.lead.taken
        return decoded[taken:] if decoded.startswith(self.lead.text) else None


def ladder_lengths(ladder: Sequence[int], max_tokens: int, count: int) -> list[int]:
    """The ``count`` largest rungs that fit ``max_tokens`` (always including ``max_tokens`` when
    it is below the first rung)."""
    fits = [n for n in ladder if n <= max_tokens] or [max_tokens]
    return fits[-count:]


class Engine(EngineBase[DiffusionModel]):
    """Runs requests on one loaded mask-diffusion model."""

    PREFIX_DOCUMENTS = 8
    """Documents whose last window's keys and values are kept for the next request."""

    def __init__(self, model: DiffusionModel, settings: InfillSettings = InfillSettings()) -> None:
        super().__init__(model, settings)
        self.prefixes: OrderedDict[DocumentKey, PrefixSlot] = OrderedDict()
        self._vocab: Vocab | None = None
        self._line_ends: LineEnds | None = None

    def prefix_slot(self, document: DocumentKey) -> PrefixSlot:
        """The document's slot for reusing its last window's keys and values (the least
        recently used documents beyond ``PREFIX_DOCUMENTS`` are forgotten)."""
        slot = self.prefixes.pop(document, None) or PrefixSlot()
        self.prefixes[document] = slot
        while len(self.prefixes) > self.PREFIX_DOCUMENTS:
            self.prefixes.popitem(last=False)
        return slot

    def run_batch(self, submissions: Sequence[Submission], settings: InfillSettings,
                  contended: bool = False) -> list[InfillResult | BaseException]:
        """Several requests with the same settings in one batch of forward passes.

        Each submission gets its result or its own exception (a bad request, a
        cancellation); one's failure never fails the others. Refine requests run one by one.
        ``contended`` (the daemon's word: others are waiting) runs each completion with one
        mask count when ``shed_load`` allows it.
        """
        out: dict[int, InfillResult | BaseException] = {}
        jobs: list[tuple[int, PreparedFill]] = []
        for i, sub in enumerate(submissions):
            try:
                if sub.request.instruction:
                    raise InputError(
                        f"this model ({self.model.profile.name}) fills masks and is not "
                        "prompted, so it cannot follow an instruction: rewrite without one, or "
                        "load a chat model (DiffusionGemma)")
                if self._validate(sub.request) == "refine":
                    out[i] = self._refine(sub.request, settings, sub.cancel)
                else:
                    alone = len(submissions) == 1  # only a lone completion keeps its window
                    jobs.append((i, self._prepare(sub, settings, contended, alone)))
            except Exception as exc:  # reported to that request alone
                out[i] = exc
        if jobs and self.model.profile.expand_id is not None:
            for i, job in jobs:  # variable length: one window per request, growing or shrinking
                try:
                    out[i] = self._run_variable(job, submissions[i].cancel)
                except Exception as exc:  # reported to that request alone
                    out[i] = exc
        elif jobs:
            out.update(self._denoise_together(jobs, submissions, settings))
        return [out[i] for i in range(len(submissions))]

    def _prepare(self, sub: Submission, settings: InfillSettings, contended: bool,
                 alone: bool) -> PreparedFill:
        """:meth:`prepare`, keeping the window's start where the document's last request had
        it when ``alone`` (a lone completion of a known document)."""
        doc = sub.document if alone else None
        slot = self.prefixes.get(doc) if doc else None
        job = self.prepare(sub.request, settings, contended, keep=slot.start if slot else None)
        if doc and job.mode != "rewrite":
            (slot or self.prefix_slot(doc)).start = job.window.start_mark(sub.request.text)
        return job

    def _denoise_together(self, jobs: list[tuple[int, PreparedFill]],
                          submissions: Sequence[Submission], settings: InfillSettings
                          ) -> dict[int, InfillResult | BaseException]:
        """The prepared completions and rewrites as one batch of rows, each finished."""
        cancels = [submissions[i].cancel for i, _ in jobs]
        shows = [self._preview(job, submissions[i].preview) if submissions[i].preview
                 else None for i, job in jobs]
        doc = submissions[jobs[0][0]].document if len(jobs) == 1 else None
        slot = self.prefix_slot(doc) if doc else None
        results, passes = infill_many(self.model, [j.sampler_job for _, j in jobs],
                                      settings=settings.sampler,
                                      cancel=cancels if any(cancels) else None,
                                      previews=shows if any(shows) else None, slot=slot)
        self.prefix_reuses += bool(slot and slot.state and slot.state.uses)
        return {i: Cancelled() if cands is None else self.finish(job, cands, passes)
                for (i, job), cands in zip(jobs, results)}

    def _preview(self, job: PreparedFill, send: Callable[[str, float], None]
                 ) -> Callable[[list[int], float], None] | None:
        """A sampler preview callback that sends a completion's committed text, cleaned like
        a finished fill, whenever it changes."""
        if job.mode == "rewrite":
            return None
        last: list[str] = []
        suffix = job.request.text[job.request.start:job.request.start + 4096]

        def show(tokens: list[int], done: float) -> None:
            raw = job.raw_text(self.decode(tokens)) or ""
            text = post.clean(raw, mode=job.mode, line_before=job.line_before,
                              suffix=suffix) if raw else ""
            if last != [text]:
                last[:] = [text]
                send(text, done)
        return show

    def _run_variable(self, job: PreparedFill, cancel: Callable[[], bool] | None) -> InfillResult:
        """A DreamOn-style fill: one gap that expands or deletes masks until it fits, started
        at the job's (single) length and allowed to grow to ``variable_cap``."""
        start = job.lengths[0]
        cand, passes = infill_variable(self.model, job.window.context_ids,
                                       job.window.suffix_ids, start,
                                       max_length=self.variable_cap(job, start),
                                       settings=job.settings.sampler, cancel=cancel)
        return self.finish(job, [cand], passes)

    def variable_cap(self, job: PreparedFill, start: int) -> int:
        """How far a variable-length gap may grow: the completion's ``max_tokens`` (capped by
        the checkpoint's ``max_fill``), or for a rewrite twice the selection and 16 more."""
        if job.mode == "rewrite":
            return max(start, min(MAX_MASKS, 2 * start + 16))
        return max(start, self.max_fill(job.settings))

    # ------------------------------------------------------------ actions

    def prepare(self, req: InfillRequest, settings: InfillSettings, contended: bool = False,
                keep: tuple[int, str] | None = None) -> PreparedFill:
        """Window and mask counts of a completion or a rewrite (regenerate); ``keep``: where
        the document's last window began (``context.prefix_window``)."""
        t0 = time.perf_counter()
        if req.action == "rewrite":
            return self._prepare_rewrite(req, settings, t0)
        text, cur = req.text, req.start
        line_start = text.rfind("\n", 0, cur) + 1
        line_end = text.find("\n", cur)
        before = text[line_start:cur]
        after = text[cur:len(text) if line_end < 0 else line_end]
        mode = settings.mode if settings.mode != "auto" else post.detect_mode(before, after)
        lengths = self._lengths(settings, mode, contended)
        window = build_window(self.tokenizer, text, cur, None, self.budget(settings, lengths),
                              req.extra, keep=keep if settings.sampler.reuse_prefix else None)
        # A faithful decode (the authors' own) has none of diffill's additions to a fill.
        additions = self.model.profile.expand_id is None and not settings.sampler.faithful
        lead = self._lead(req, window, before, settings.token_healing and additions)
        job = PreparedFill(req, mode, lengths, window, before, t0, settings, lead)
        if mode == "line" and additions:
            job.line_ends = self.line_ends()
        if settings.drafts and additions:
            self.add_drafts(job)
            if settings.explicit:  # asked for: drafts a ghost's floor would withhold get company
                job.sample_under = self.min_confidence(replace(settings, explicit=False), mode)
        return job

    def _prepare_rewrite(self, req: InfillRequest, settings: InfillSettings,
                         t0: float) -> PreparedFill:
        """A rewrite's window and mask counts: the selection's length, a little more and a
        little less (DreamOn: its length, grown or shrunk as it goes)."""
        assert req.end is not None
        n = max(1, len(encode(self.tokenizer, req.text[req.start:req.end])))
        if n > MAX_MASKS:
            raise InputError(f"the selection is {n} tokens; a rewrite takes at most "
                             f"{MAX_MASKS} (select less)")
        cap = max(settings.max_tokens, n)
        lengths = list(settings.lengths) or sorted(
            {n, min(cap, n + max(2, n // 4)), max(1, n - max(1, n // 5))})[-settings.ensemble:]
        if self.model.profile.expand_id is not None:
            lengths = [n]  # starts at the selection's length, then grows or shrinks
        window = build_window(self.tokenizer, req.text, req.start, req.end,
                              self.budget(settings, lengths), req.extra)
        return PreparedFill(req, "rewrite", lengths, window, "", t0, settings)

    def _lengths(self, settings: InfillSettings, mode: str, contended: bool) -> list[int]:
        """A completion's mask counts: the settings', else the mode's ladder; one row when
        the daemon is contended (``shed_load``) or the user is typing (``quick_lines``)."""
        ladder = LINE_LADDER if mode == "line" else BLOCK_LADDER
        lengths = list(settings.lengths) or ladder_lengths(ladder, self.max_fill(settings),
                                                           settings.ensemble)
        shed = contended and settings.shed_load
        quick = settings.quick_lines and mode == "line"
        if (shed or quick) and not settings.lengths and len(lengths) > 1:
            # One row instead of the ensemble: held-out evals lose least with the shortest
            # rung for a line, the longest for a block
            # (docs/performance.md, "End to end, a fixed sample").
            lengths = [min(lengths) if mode == "line" else max(lengths)]
            self.shed += shed
            self.quick += quick and not shed
        if self.model.profile.expand_id is not None:
            # The gap finds its own length: one start (an explicit length, else the ladder's
            # second rung, short enough that most answers grow into it) and no ensemble.
            lengths = [min(lengths) if settings.lengths
                       else min(ladder[1], self.max_fill(settings))]
        return lengths

    def _lead(self, req: InfillRequest, window: Window, before: str,
              heal: bool) -> TokenHealing | None:
        """Text the fill must begin with: the partial word at the cursor (token healing, when
        ``heal``), else a whole-line gap's missing indentation (Python, mask models)."""
        lead = self.heal(window, before) if heal else None
        if lead is None and self.model.profile.expand_id is None and \
                post.language_of(req.language, req.path) == "python":
            indent = post.missing_indent(req.text, req.start)
            if indent:
                lead = TokenHealing(indent, self.vocab(), taken=0)
        return lead

    def add_drafts(self, job: PreparedFill) -> None:
        """The drafts of a completion (``infill.drafts``) as the verifier takes them
        (:class:`Draft`): the healed word's text, then the draft, in token ids. For a ghost
        that appears by itself, a draft found after fewer than :data:`STRONG_SUPPORT` code
        tokens is cut to its first :data:`WEAK_DRAFT_TOKENS`: measured on the typing eval,
        what follows a short match is rarely what is typed, and a short ghost taken lets the
        next keystroke look again with a longer tail (docs/performance.md, session 12). An
        explicit ask has no next keystroke: it gets the whole draft."""
        req = job.request
        given = [(d, req.draft_support[k] if k < len(req.draft_support) else 1)
                 for k, d in enumerate(req.drafts)]
        found = drafting.found_drafts(req.text, req.start, [t for _, t in req.extra], given,
                                      lines=BLOCK_DRAFT_LINES if job.mode == "block" else 1)
        head = job.lead.text if job.lead is not None else ""
        # The model writes no draft, it only reads one: an explicit ask's may be as long as
        # the person allows, past what the checkpoint fills well.
        cap = job.settings.max_tokens if job.settings.explicit else self.max_fill(job.settings)
        seen: set[tuple[int, ...]] = set()
        longest = 0
        indent_lead = job.lead is not None and job.lead.taken == 0
        # Ids that are no code: a draft the tokenizer can only spell with one of them (an
        # unknown piece, in a tokenizer with an unk token) cannot be read as code by the model.
        not_code = {*self.model.profile.filler_ids, self.model.profile.mask_id}
        for text, support in found:
            if indent_lead:  # the indentation is the lead's: a whole line found elsewhere
                # brings its own (a block's further lines go as deep under the lead)
                text = drafting.reindent(text, job.lead.text)[len(job.lead.text):]
            ids = encode(self.tokenizer, head + text)
            if len(ids) > cap:
                text, ids = self._whole_lines(head, text, ids, cap)
            # The gap is as long as the whole drafts would need, cut or not: the model's
            # verdicts (and the score fitted on them) depend on the mask count.
            longest = max(longest, len(ids))
            if support < STRONG_SUPPORT and not job.settings.explicit:
                cut = drafting.first_tokens(text, WEAK_DRAFT_TOKENS)
                if cut != text:
                    text, ids = cut, encode(self.tokenizer, head + cut)[:cap]
            if not ids or tuple(ids) in seen or not_code.intersection(ids):
                continue
            seen.add(tuple(ids))
            word = len(head + drafting.first_tokens(text, 1))
            upto = self._tokens_within(ids, word)
            if len(self.decode(ids[:upto])) < word:
                upto += 1  # the token that finishes the word writes past it too
            job.drafts.append(Draft(ids, support, self._tokens_within(ids, len(head)),
                                    max(1, upto)))
        if job.drafts:
            job.draft_length = max(max(job.lengths), min(cap, longest) + 1)

    def _whole_lines(self, head: str, text: str, ids: list[int], cap: int
                     ) -> tuple[str, list[int]]:
        """A draft of more than ``cap`` tokens cut to its whole first lines that fit (a
        block's statement cut inside a line would not parse), else to ``cap`` tokens."""
        lines = text.split("\n")
        for keep in range(len(lines) - 1, 0, -1):
            piece = "\n".join(lines[:keep])
            cut = encode(self.tokenizer, head + piece)
            if len(cut) <= cap:
                return piece, cut
        return text, ids[:cap]

    def _tokens_within(self, ids: Sequence[int], chars: int) -> int:
        """How many of ``ids``' first tokens write no more than ``chars`` characters."""
        n = 0
        while n < len(ids) and len(self.decode(ids[:n + 1])) <= chars:
            n += 1
        return n

    HEAL_TOKENS = 4
    """Most tokens taken back from the end of the context to heal a partial word."""

    def heal(self, window: Window, before: str) -> TokenHealing | None:
        """Take the tokens of the partial word before the cursor out of ``window``'s prefix
        and return them as the fill's :class:`TokenHealing` (None when the cursor ends no word)."""
        # A partial word; or the spaces after code (``x = ``: the tokenizer joins a space
        # to the word after it). Not a line's indentation alone: measured worse on blocks.
        word = re.search(r"\w+$", before) or \
            (re.search(r"[ \t]+$", before) if before.strip() else None)
        ids = window.prefix_ids
        if word is None or not ids:
            return None
        for k in range(1, min(self.HEAL_TOKENS, len(ids)) + 1):
            text = self.decode(ids[-k:])
            if "\ufffd" in text:  # a character split across tokens: leave it alone
                return None
            if len(text) >= len(word.group()) and text.endswith(word.group()):
                window.prefix_ids = ids[:-k]
                return TokenHealing(text, self.vocab())
        return None

    def line_ends(self) -> LineEnds:
        """Which tokens end a line fill (built on first use)."""
        if self._line_ends is None:
            self._line_ends = LineEnds.of(self.vocab(), self.model.device)
        return self._line_ends

    def vocab(self) -> Vocab:
        """Every token id's text (built on first use)."""
        if self._vocab is None:
            size = len(self.tokenizer)
            self._vocab = Vocab([self.decode([i]) for i in range(size)])
        return self._vocab

    def max_fill(self, settings: InfillSettings) -> int:
        """``max_tokens``, capped by the longest fill the checkpoint is recorded to do well
        (``max_fill`` in its profile; explicit ``lengths`` are never capped)."""
        cap = self.model.profile.max_fill
        return min(settings.max_tokens, cap) if cap else settings.max_tokens

    def budget(self, settings: InfillSettings, lengths: Sequence[int] = ()) -> ContextBudget:
        """The context budget, clipped to the window the model was trained on (when its
        checkpoint records one): a model trained on 192-token windows gains nothing from 2k
        tokens of context and may be confused by positions it never saw."""
        window = self.model.profile.extra.get("window")
        if not window:
            return settings.budget
        room = max(16, int(window) - max(lengths or [0]) - 1)
        prefix = min(settings.budget.prefix_tokens, room * 3 // 4)
        suffix = min(settings.budget.suffix_tokens, room - prefix)
        extra = min(settings.budget.extra_tokens, max(0, room - prefix - suffix))
        return ContextBudget(prefix, suffix, extra)

    def finish(self, job: PreparedFill, cands: list[Candidate], passes: int) -> InfillResult:
        """Post-process and rank the candidates of a prepared job."""
        req = job.request
        items: list[Completion] = []
        seen: set[str] = set()
        if job.mode == "rewrite":
            assert req.end is not None
            original = req.text[req.start:req.end]
            for c in cands:
                fill = self.decode(c.tokens)
                if original.endswith("\n") and not fill.endswith("\n"):
                    fill += "\n"
                if fill in seen:
                    continue
                seen.add(fill)
                items.append(Completion(fill, req.start, req.end, c.score, tokens=len(c.tokens),
                                        terminated=c.terminated))
        else:
            suffix = req.text[req.start:req.start + 4096]
            # A whole-line gap's indentation, which the fill had to begin with: the fill is
            # cleaned as if it were typed, then shown with it.
            indent = job.lead.text if job.lead is not None and job.lead.taken == 0 else ""
            language = post.language_of(req.language, req.path)
            for c in cands:
                raw = job.raw_text(self.decode(c.tokens))
                if raw is None:  # it never wrote the partial word it had to begin with
                    continue
                if job.settings.sampler.faithful:  # the decode as its authors would read it
                    fill = raw
                else:
                    fill = self._post_process(job, raw, indent, suffix, language)
                if not fill.strip() or fill in seen:
                    continue
                seen.add(fill)
                # A line fill that went on past its line end ended the line itself, whether or
                # not the masks ran out after it.
                ended = c.terminated or (job.mode == "line" and "\n" in raw.lstrip("\n"))
                items.append(Completion(fill, req.start, req.start, c.score,
                                        tokens=len(c.tokens), terminated=ended))
        return self.result(req, job.mode, items, job.settings, passes, job.started)

    def _post_process(self, job: PreparedFill, raw: str, indent: str, suffix: str,
                      language: str | None) -> str:
        """What an editor should show of a decoded fill (``infill.post``): whole characters,
        cut to its line or block, stutters and the suffix's start dropped, a block cut back
        to the lines that still parse; a whole-line gap's ``indent`` put back in front."""
        req = job.request
        raw = post.whole_chars(raw, req.text)
        if raw[:1] in (" ", "\t") and language == "python" and self._indented(job):
            raw = drafting.reindent(raw, "")  # the line's indentation is typed, deep enough
        body = raw[len(indent):].lstrip(" \t") if indent else raw
        fill = indent + post.unstutter(
            post.clean(body, mode=job.mode, line_before=job.line_before + indent,
                       suffix=suffix), req.text)
        if job.mode == "block":  # a block keeps the whole lines that still parse
            fill = post.parsing_lines(language, req.text, req.start, fill, TRIM_LIMIT)
        return fill

    @staticmethod
    def _indented(job: PreparedFill) -> bool:
        """Whether the cursor's line holds only indentation, as deep as the syntax asks or
        deeper: a fill that starts with more would be an unexpected indent."""
        typed = job.line_before
        if not typed or typed.strip():
            return False
        want = post.line_indent(job.request.text, job.request.start - len(typed))
        return want is not None and len(typed.expandtabs(4)) >= len(want.expandtabs(4))

    def min_confidence(self, settings: InfillSettings, mode: str) -> float:
        """The score a completion of ``mode`` needs to be shown: the setting, else (unless
        asked for explicitly) the checkpoint's calibrated value for the mode
        (``min_confidence`` in its profile), else 0."""
        if settings.min_confidence is not None:
            return settings.min_confidence
        if settings.explicit:
            return 0.0
        return self.model.profile.confidence_floor(mode) or 0.0

    def _refine(self, req: InfillRequest, settings: InfillSettings,
                cancel: Callable[[], bool] | None) -> InfillResult:
        """Refine: keep the selection, re-mask and redo only its low-confidence tokens."""
        t0 = time.perf_counter()
        assert req.end is not None
        original = req.text[req.start:req.end]
        sel = encode(self.tokenizer, original)
        if len(sel) > MAX_MASKS:
            raise InputError(f"the selection is {len(sel)} tokens; refine takes at most "
                             f"{MAX_MASKS} (select less)")
        window = build_window(self.tokenizer, req.text, req.start, req.end,
                              self.budget(settings, [len(sel)]), req.extra)
        out = refine(self.model, window.context_ids, sel, window.suffix_ids,
                     threshold=settings.refine_threshold, settings=settings.sampler, cancel=cancel)
        text = self.decode(out.tokens) if out.remasked else original
        conf = out.original_confidence
        score = sum(conf) / len(conf) if conf else 0.0
        item = Completion(text, req.start, req.end, score, tokens=len(out.tokens))
        rank.rank([item], req.text, post.language_of(req.language, req.path),
                  self._known_names)
        return InfillResult([item], "refine", out.forward_passes, time.perf_counter() - t0,
                            remasked=out.remasked)
