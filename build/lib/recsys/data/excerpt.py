"""Raw input quoted safely in messages: control and non-UTF-8 bytes escaped, long values cut,
so that no error echoes binary data or terminal escape sequences to a terminal."""

from __future__ import annotations

EXCERPT_CHARS = 120


def printable(text: str) -> str:
    """``text`` with control, format and undecodable characters (surrogate escapes) escaped."""
    out = []
    for c in text:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (``surrogateescape``)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif c.isprintable() and c != "\ufffd":
            out.append(c)
        else:
            out.append(c.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def excerpt(value: str | bytes | None, limit: int = EXCERPT_CHARS) -> str:
    """``value`` quoted for a message: invalid UTF-8 and control characters escaped, at most
    ``limit`` characters (then ``...`` and the full length)."""
    if value is None:
        return "None"
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    quoted = f"'{printable(text[:limit])}'"
    return quoted if len(text) <= limit else f"{quoted}... ({len(text):,} characters)"


def safe_message(text: str, limit: int = 300) -> str:
    """A parser's message with raw data in it, made printable and cut to ``limit`` characters."""
    clean = printable(text)
    return clean if len(clean) <= limit else clean[:limit] + f"... ({len(clean):,} characters)"
