"""Documents as text: positions, offsets and decoding, with clear errors for bad input."""

from __future__ import annotations


MAX_DOCUMENT_CHARS = 8_000_000
"""Larger documents are refused: the window only ever reads a few thousand characters around
the cursor, but a multi-megabyte buffer usually means a generated or binary file."""


class InputError(ValueError):
    """Input that diffill cannot work on; the message says what and where."""


class PositionError(InputError):
    """A line/column outside the document."""


def decode_source(data: bytes, name: str = "input") -> str:
    """UTF-8 text of a file (a BOM is dropped); anything else is refused, never guessed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{name}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x} on line "
                         f"{line})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    check_size(text, name)
    return text


def check_size(text: str, name: str = "input") -> None:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise InputError(f"{name}: {len(text):,} characters is over the {MAX_DOCUMENT_CHARS:,} "
                         "character limit")
    if "\x00" in text[:8192]:
        raise InputError(f"{name}: looks like a binary file (NUL bytes)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud800" decodes to a lone surrogate
        line = text.count("\n", 0, exc.start) + 1
        raise InputError(f"{name}: a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) on "
                         f"line {line} is not text") from None


def line_starts(text: str) -> list[int]:
    starts = [0]
    pos = text.find("\n")
    while pos >= 0:
        starts.append(pos + 1)
        pos = text.find("\n", pos + 1)
    return starts


def _utf16_to_index(line: str, units: int) -> int:
    """Python index of a UTF-16 code-unit column in ``line`` (LSP's default encoding)."""
    count = 0
    for i, ch in enumerate(line):
        if count >= units:
            return i
        count += 2 if ord(ch) > 0xFFFF else 1
    if count >= units:
        return len(line)
    raise ValueError


def offset_at(text: str, line: int, column: int, *, encoding: str = "utf-32",
              starts: list[int] | None = None) -> int:
    """Character offset of a 0-based (line, column).

    ``encoding`` says what a column counts: ``utf-32`` code points (Python indices), ``utf-16``
    code units (LSP's default) or ``utf-8`` bytes. A column past the end of its line, or a line
    past the end of the document, is a :class:`PositionError`, never silently clamped.
    """
    starts = starts or line_starts(text)
    if line < 0 or column < 0:
        raise PositionError(f"position {line + 1}:{column + 1} is negative")
    if line >= len(starts):
        raise PositionError(f"line {line + 1} is past the end of the document "
                            f"({len(starts)} lines)")
    begin = starts[line]
    end = starts[line + 1] - 1 if line + 1 < len(starts) else len(text)
    content = text[begin:end]
    if content.endswith("\r"):
        content = content[:-1]
    try:
        if encoding == "utf-16":
            idx = _utf16_to_index(content, column)
        elif encoding == "utf-8":
            raw = content.encode("utf-8")
            if column > len(raw):
                raise ValueError
            idx = len(raw[:column].decode("utf-8", errors="strict"))
        else:
            if column > len(content):
                raise ValueError
            idx = column
    except (ValueError, UnicodeDecodeError):
        raise PositionError(f"column {column + 1} is past the end of line {line + 1} "
                            f"({len(content)} characters)") from None
    return begin + idx


def position_of(text: str, offset: int, *, encoding: str = "utf-32",
                starts: list[int] | None = None) -> tuple[int, int]:
    """0-based (line, column) of a character offset, column in ``encoding`` units."""
    import bisect
    starts = starts or line_starts(text)
    if not 0 <= offset <= len(text):
        raise PositionError(f"offset {offset} is outside the document")
    line = bisect.bisect_right(starts, offset) - 1
    part = text[starts[line]:offset]
    if encoding == "utf-16":
        return line, len(part.encode("utf-16-le")) // 2
    if encoding == "utf-8":
        return line, len(part.encode("utf-8"))
    return line, len(part)





def parse_position(spec: str) -> tuple[int, int]:
    """``LINE:COL`` (1-based, as editors show them) -> 0-based (line, column)."""
    try:
        line_s, col_s = spec.split(":")
        line, col = int(line_s), int(col_s)
    except ValueError:
        raise InputError(f"position {spec!r} is not LINE:COL") from None
    if line < 1 or col < 1:
        raise PositionError(f"position {spec!r}: lines and columns start at 1")
    return line - 1, col - 1


def parse_range(spec: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``L:C-L:C`` (1-based, end exclusive) -> two 0-based positions."""
    try:
        a, b = spec.split("-")
    except ValueError:
        raise InputError(f"selection {spec!r} is not L:C-L:C") from None
    return parse_position(a), parse_position(b)
