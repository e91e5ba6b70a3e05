"""The fill-in-the-middle chat task of a chat model, wherever it runs.

A chat model (DiffusionGemma) has no mask token: the code around the cursor goes into a user
turn with an instruction (the cursor, or the selection, marked in the file), the model's turn is
opened with a code fence and the start of the cursor's line, and its answer is cut at the
closing fence. :class:`~infill.block.BlockEngine` runs that turn on a model in this process,
:class:`~infill.remote.OpenAIEngine` sends it to an OpenAI-compatible server (vLLM); both build
the turn and read the answer here, so a fill is the same text either way. Free of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from . import post
from .api import MAX_MASKS, Completion, InfillRequest, InfillSettings
from .context import encode, format_extra, prefix_window, suffix_window
from .text import InputError

CURSOR = "<CURSOR>"
SELECTION = ("<SELECTION>", "</SELECTION>")
FENCE = "```"
CHARS_PER_TOKEN = 3.0
"""Characters counted as one token where the model's tokenizer is not at hand (an engine on a
server), until the server's counts say better: code runs 3-4 characters a token in the Gemma
and Qwen tokenizers, so a budget in tokens is kept, or undershot."""


def _code_block(language: str | None, body: str) -> str:
    end = "" if body.endswith("\n") else "\n"
    return f"{FENCE}{language or ''}\n{body}{end}{FENCE}"


def completion_prompt(prefix: str, suffix: str, mode: str, language: str | None,
                      extra: str = "") -> str:
    """The user turn of a completion: what to write, then the file with the cursor marked."""
    name = f"{language} " if language else ""
    what = ("the rest of the cursor's line only" if mode == "line" else
            "the missing lines only (a complete statement or block, no more)")
    others = f"Other files, for reference:\n{extra}\n" if extra else ""
    return (f"{others}Fill in the {name}code at {CURSOR} in the file below. Answer with "
            f"{what}: just the code that goes at {CURSOR}, in one code block, without "
            f"repeating the code before or after it and without explanation.\n\n"
            f"{_code_block(language, prefix + CURSOR + suffix)}")


def rewrite_prompt(prefix: str, selected: str, suffix: str, language: str | None,
                   instruction: str | None, extra: str = "") -> str:
    """The user turn of a rewrite: the file with the selection marked, and what to do."""
    name = f"{language} " if language else ""
    task = instruction.strip() if instruction and instruction.strip() else \
        "Rewrite it: the same intent, clearer or more correct code"
    others = f"Other files, for reference:\n{extra}\n" if extra else ""
    return (f"{others}In the {name}file below, the code between {SELECTION[0]} and "
            f"{SELECTION[1]} is selected. {task}. Answer with only the new code that replaces "
            f"the selection, in one code block; the code around it stays as it is.\n\n"
            f"{_code_block(language, prefix + SELECTION[0] + selected + SELECTION[1] + suffix)}")


def answer_text(raw: str) -> tuple[str, bool]:
    """The code of an answer written inside an opened code fence: up to the closing fence,
    whose line's newline is not code. Returns (code, whether the fence closed it)."""
    end = raw.find(FENCE)
    if end < 0:
        return raw, False
    code = raw[:end]
    return (code[:-1] if code.endswith("\n") else code), True


# ---------------------------------------------------------------- measuring context

class Measure(Protocol):
    """How a task cuts the document to its token budgets and counts tokens."""

    def prefix(self, text: str, cursor: int, budget: int) -> str: ...

    def suffix(self, text: str, end: int, budget: int) -> str: ...

    def tail(self, text: str, budget: int) -> str: ...

    def count(self, text: str) -> int: ...


class TokenMeasure:
    """With the model's own tokenizer: budgets are exact (``infill.context``'s windows)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def prefix(self, text: str, cursor: int, budget: int) -> str:
        return prefix_window(self.tokenizer, text, cursor, budget)[0]

    def suffix(self, text: str, end: int, budget: int) -> str:
        return suffix_window(self.tokenizer, text, end, budget)[0]

    def tail(self, text: str, budget: int) -> str:
        return self.tokenizer.decode(encode(self.tokenizer, text)[-budget:])

    def count(self, text: str) -> int:
        return len(encode(self.tokenizer, text))


class CharMeasure:
    """Without a tokenizer (the model is on a server): ``chars_per_token`` characters a token
    (:data:`CHARS_PER_TOKEN` until :meth:`observe` learns the server's), windows cut at line
    boundaries as the token windows are."""

    def __init__(self, chars_per_token: float = CHARS_PER_TOKEN) -> None:
        self.chars_per_token = chars_per_token

    def observe(self, chars: int, tokens: int) -> None:
        """A text of ``chars`` characters that the server counted as ``tokens``: a lower ratio
        is taken at once (a budget must not overshoot the server's context), a higher one a
        fifth of the way."""
        if chars > 0 and tokens > 0:
            seen = chars / tokens
            self.chars_per_token = max(1.0, min(seen, 0.8 * self.chars_per_token + 0.2 * seen))

    def prefix(self, text: str, cursor: int, budget: int) -> str:
        lo = max(0, cursor - int(budget * self.chars_per_token))
        chunk = text[lo:cursor]
        nl = chunk.find("\n")
        return chunk[nl + 1:] if lo > 0 and nl >= 0 else chunk

    def suffix(self, text: str, end: int, budget: int) -> str:
        hi = min(len(text), end + int(budget * self.chars_per_token))
        chunk = text[end:hi]
        nl = chunk.rfind("\n")
        return chunk[:nl + 1] if hi < len(text) and nl >= 0 else chunk

    def tail(self, text: str, budget: int) -> str:
        return text[max(0, len(text) - int(budget * self.chars_per_token)):]

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)


# ---------------------------------------------------------------- the task

@dataclass
class ChatTask:
    """One request as a chat turn: the user's text, and the model turn's opening."""

    user: str
    opened: str
    """The text the model's turn is opened with (fence, then the start of the line)."""
    line_before: str
    mode: str
    budget: int
    """Tokens the answer may take: the settings' ``max_tokens`` for a completion, the
    selection's length and half again (at least 16 more) for a rewrite."""

    @property
    def text(self) -> str:
        """Both turns' text, as a server counts the prompt (less its template's markers)."""
        return self.user + self.opened


def chat_task(req: InfillRequest, action: str, settings: InfillSettings,
              measure: Measure) -> ChatTask:
    """The chat turn of a validated request, its context cut to the settings' budgets."""
    if action == "refine":
        raise InputError("refine re-masks the selection's doubtful tokens, which needs a "
                         "mask-diffusion model; this is a chat model (DiffusionGemma): use "
                         "rewrite, optionally with an instruction")
    if req.instruction and action != "rewrite":
        raise InputError("an instruction goes with a rewrite of a selection")
    text = req.text
    language = post.language_of(req.language, req.path)
    end = req.start if req.end is None else req.end
    prefix = measure.prefix(text, req.start, settings.budget.prefix_tokens)
    suffix = measure.suffix(text, end, settings.budget.suffix_tokens)
    extra = ""
    if req.extra and settings.budget.extra_tokens > 0:
        extra = measure.tail(format_extra(req.extra), settings.budget.extra_tokens)
    line_before = text[text.rfind("\n", 0, req.start) + 1:req.start]
    if action == "rewrite":
        selected = text[req.start:end]
        n = measure.count(selected)
        if n > MAX_MASKS:
            raise InputError(f"the selection is {n} tokens; a rewrite takes at most "
                             f"{MAX_MASKS} (select less)")
        user = rewrite_prompt(prefix, selected, suffix, language, req.instruction, extra)
        mode, budget = "rewrite", min(MAX_MASKS, n + max(16, n // 2))
    else:
        line_end = text.find("\n", req.start)
        after = text[req.start:len(text) if line_end < 0 else line_end]
        mode = settings.mode if settings.mode != "auto" else \
            post.detect_mode(line_before, after)
        user = completion_prompt(prefix, suffix, mode, language, extra)
        budget = settings.max_tokens
    return ChatTask(user, f"{FENCE}{language or ''}\n{line_before}", line_before, mode, budget)


def answer_code(task: ChatTask, req: InfillRequest, raw: str) -> tuple[str, bool]:
    """The code an answer puts in the document (cut at the closing fence, cleaned like any
    fill: a line's rest or a block, no overlap with the suffix), and whether the fence
    closed it."""
    code, fenced = answer_text(raw)
    if task.mode == "rewrite":
        end = req.start if req.end is None else req.end
        if req.text[req.start:end].endswith("\n") and not code.endswith("\n"):
            code += "\n"
        return code, fenced
    return post.clean(code, mode=task.mode, line_before=task.line_before,
                      suffix=req.text[req.start:req.start + 4096]), fenced


def completion(req: InfillRequest, code: str, score: float, tokens: int,
               terminated: bool) -> Completion:
    """An answer's code as a candidate for the request's cursor or selection."""
    end = req.start if req.end is None else req.end
    return Completion(code, req.start, end, score, tokens=tokens, terminated=terminated)
