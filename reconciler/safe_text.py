"""Provider text made safe to store, log and show: what no stored or logged string may hold, and how an
untrusted string is cut and escaped before it goes into a message."""

from __future__ import annotations

import re

UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Characters no stored or logged text may hold: C0 and C1 controls, DEL and lone surrogates."""

_DETAIL_LIMIT = 160


def printable(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with every control character or surrogate shown as ``?``."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return UNSAFE_TEXT.sub("?", text)


def short_repr(value: str, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (ids in messages stay readable)."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)
