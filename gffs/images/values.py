"""Fact values as they may reach an xattr: one line, no control characters, bounded."""

from __future__ import annotations

import re

MAX_VALUE_BYTES = 1024
"""Longest fact value, in UTF-8 bytes (EXIF strings of hostile files can be huge)."""

# Characters that must not reach a one-line xattr value: C0/C1 controls (NUL, CR,
# LF, ESC...), DEL, line/paragraph separators, zero-width and bidi controls (which
# can make a value display as something else).
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]+")


def _clean(value: str) -> str:
    """One line, no control/bidi characters, at most MAX_VALUE_BYTES of UTF-8."""
    value = " ".join(_UNSAFE_CHARS.sub(" ", value).split())
    raw = value.encode("utf-8", "replace")  # a lone surrogate becomes "?"
    if len(raw) > MAX_VALUE_BYTES:
        raw = raw[:MAX_VALUE_BYTES]
    return raw.decode("utf-8", "ignore").rstrip()  # "ignore" drops a cut multi-byte tail
