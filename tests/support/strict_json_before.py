"""reconciler/strict_json.py as it was before its checks were made cheaper (issue 12), kept as the oracle
tests/unit/test_strict_json.py compares the module with: the same inputs refused, with the same message.
Not to be changed: it is the behaviour, not an implementation to maintain."""

from __future__ import annotations

import json
import math
import operator
import re
from itertools import accumulate
from typing import Any, NoReturn

from reconciler.strict_json import UnreadableJson

MAX_JSON_DEPTH = 64
"""Nesting levels a provider answer may have (arrays and objects)."""
MAX_INT_DIGITS = 40
"""Digits a JSON integer may have; no amount, count or time a provider sends needs more."""
MAX_FLOAT_CHARS = 64
"""Characters a JSON number with a fraction or exponent may have."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_SQUARE_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _refuse_constant(name: str) -> NoReturn:
    raise UnreadableJson(f"the non-finite number {name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise UnreadableJson(f"an integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_FLOAT_CHARS:
        raise UnreadableJson(f"a number longer than {MAX_FLOAT_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise UnreadableJson("a number too large for a float")
    return value


_CAREFUL = json.JSONDecoder(
    parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_refuse_constant, strict=True
)
# Number hooks take the C scanner off its fast path, so they are only used when a number could need
# them: a run of more than MAX_INT_DIGITS digits, or an exponent of three digits or more (float overflow).
_FAST = json.JSONDecoder(parse_constant=_refuse_constant, strict=True)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * (MAX_INT_DIGITS + 1)
_LONG_EXPONENT = re.compile(rb"[eE][+-]?000")


def _needs_care(raw: bytes) -> bool:
    digits = raw.translate(_DIGITS_AS_ZERO)
    if _LONG_DIGITS in digits:
        return True
    return (b"e" in raw or b"E" in raw) and _LONG_EXPONENT.search(digits) is not None


def decode_json(raw: bytes) -> Any:
    """Decode a provider's JSON body strictly; :class:`UnreadableJson` (chained) when it cannot be.

    ``strict=True`` already refuses raw control characters inside strings; escaped ones (``\\u0000``)
    decode, and whether a field may hold them is for :func:`~reconciler.driver_api.check_snapshot`.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableJson("not valid UTF-8") from exc
    _check_depth(raw)
    try:
        value = (_CAREFUL if _needs_care(raw) else _FAST).decode(text)
    except UnreadableJson:
        raise
    except json.JSONDecodeError as exc:
        raise UnreadableJson(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:  # belt and braces: the depth check should have caught it
        raise UnreadableJson(f"not JSON ({type(exc).__name__})") from exc
    if b"\\ud" in raw.lower() and _holds_surrogate(value):  # only a JSON \u escape makes one
        raise UnreadableJson("a string holds a lone surrogate (\\ud800-\\udfff escape)")
    return value


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH` before the recursive decoder sees it.

    Linear and in C, on the UTF-8 bytes (brackets, quotes and backslashes are never part of a
    multi-byte character): drop escaped backslashes and quotes, keep what lies outside strings, keep
    only brackets as ``[`` / ``]``, and take the deepest prefix. Unbalanced brackets are the
    decoder's to refuse; it never gets deeper than the prefix measured here.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_SQUARE_BRACKETS, _NOT_BRACKETS)
    too_deep = b"[" * (MAX_JSON_DEPTH + 1) in brackets
    if not too_deep:
        closed = brackets.split(b"]")
        # the depth just before the i-th "]" is the "[" seen so far minus i
        too_deep = max(map(operator.sub, accumulate(map(len, closed)), range(len(closed)))) > MAX_JSON_DEPTH
    if too_deep:
        raise UnreadableJson(f"nested deeper than {MAX_JSON_DEPTH} levels")


def _holds_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
