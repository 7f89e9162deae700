"""Checks of raw text input before parsing, and safe excerpts of raw data for messages.

``check_text_input`` refuses, naming the file, input that is not UTF-8 text: a UTF-16/UTF-32
byte-order mark, or NUL bytes in the first 64 KiB (UTF-16 without a mark, or binary data).
Compressed files (gzip, bzip2, xz, zstd magic) are left to the reader.
"""

from __future__ import annotations

from pathlib import Path

from recsys.data.errors import ConversionError

SNIFF_BYTES = 64 << 10
_BOMS = (  # longest first: UTF-32 LE starts like UTF-16 LE
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
    (b"\xff\xfe", "UTF-16 (little-endian)"),
    (b"\xfe\xff", "UTF-16 (big-endian)"),
)
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def check_text_input(path: Path) -> None:
    """Raise ``ConversionError`` naming ``path`` when its head is UTF-16/32 or binary."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise ConversionError(path, f"cannot read input: {exc.strerror or exc}") from exc
    if head.startswith(_COMPRESSED):
        return
    fix = f"convert it to UTF-8 first, e.g. `iconv -f {{enc}} -t UTF-8 {path} > {path}.utf8`"
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            enc = encoding.split(" ")[0]
            raise ConversionError(path, f"input is {encoding} text (byte-order mark {bom.hex(' ').upper()}), expected UTF-8; " + fix.format(enc=enc))
    nul = head.find(b"\x00")
    if nul < 0:
        return
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if min(even, odd) * 8 < max(even, odd) and max(even, odd) * 4 >= len(head) // 2:
        enc = "UTF-16BE" if even > odd else "UTF-16LE"
        raise ConversionError(
            path, f"input looks like {enc} text without a byte-order mark (every other byte is NUL), expected UTF-8; " + fix.format(enc=enc)
        )
    raise ConversionError(path, f"input looks binary (a NUL byte at offset {nul}), expected delimited UTF-8 text")
