"""Provider JSON decoded strictly: UTF-8 only, bounded depth and number sizes, no ``NaN`` / ``Infinity``,
no lone surrogates. What fails is :class:`UnreadableJson`, whose message says why, never what the body
held."""

from __future__ import annotations

import json
import math
import operator
import re
from itertools import accumulate
from typing import Any, NoReturn

import orjson

MAX_JSON_DEPTH = 64
"""Nesting levels a provider answer may have (arrays and objects)."""
MAX_INT_DIGITS = 40
"""Digits a JSON integer may have; no amount, count or time a provider sends needs more."""
MAX_FLOAT_CHARS = 64
"""Characters a JSON number with a fraction or exponent may have."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_SQUARE_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS_OR_QUOTES = bytes(c for c in range(256) if c not in b'[]{}"')
_BOUND_PASSES = 8  # a provider's answer nests a few levels; past 8 the exact measure is cheaper


class UnreadableJson(ValueError):
    """A body that is not JSON this reconciler accepts; the message says why, never what it held."""


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
# them: an exponent of three digits or more (float overflow), or a run of _CAREFUL_RUN digits. A number
# longer than MAX_FLOAT_CHARS with an exponent of at most two digits has at least MAX_FLOAT_CHARS - 5 digits
# in its whole and fractional parts (a sign, a point, `e`, the exponent's sign and two digits aside), so one
# of the two holds half of them; an integer past MAX_INT_DIGITS is one such run.
_FAST = json.JSONDecoder(parse_constant=_refuse_constant, strict=True)
# Digits as "0", "E" as "e" and "+" as "-", so one byte string answers both questions with plain substring
# searches (a regex over a whole page costs several times the decode).
_NUMBER_MARKS = bytes.maketrans(b"123456789E+", b"000000000e-")
_CAREFUL_RUN = min(MAX_INT_DIGITS + 1, (MAX_FLOAT_CHARS - 5 + 1) // 2)
_LONG_DIGITS = b"0" * _CAREFUL_RUN
# orjson reads an integer past 64 bits as a float; from 19 digits on an integer may not fit, so a body with
# such a run of digits (in a number or not) is read by the json module, which keeps it exact.
_WIDE_DIGITS = b"0" * 19


def _route(raw: bytes) -> tuple[bool, bool]:
    """(whether a number may need the hooks of `_CAREFUL`, whether orjson may read the body), from one
    translation of the body."""
    marks = raw.translate(_NUMBER_MARKS)
    overflows = b"e000" in marks or b"e-000" in marks
    if _WIDE_DIGITS not in marks:
        return overflows, not overflows
    return overflows or _LONG_DIGITS in marks, False


def decode_json(raw: bytes) -> Any:
    """Decode a provider's JSON body strictly; :class:`UnreadableJson` (chained) when it cannot be.

    ``strict=True`` already refuses raw control characters inside strings; escaped ones (``\\u0000``)
    decode, and whether a field may hold them is for :func:`~reconciler.driver_api.check_snapshot`.

    Most bodies are read by orjson, about twice as fast: it refuses everything refused here (invalid UTF-8,
    ``NaN``, lone surrogates, control characters, overflowing numbers) and reads the rest to the same
    values, except integers past 64 bits, so a body with 19 digits in a row goes to the json module. What
    orjson refuses is read again by the json module, so a refusal says the same as it always did.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableJson("not valid UTF-8") from exc
    _check_depth(raw)
    careful, fast = _route(raw)
    if fast:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # refused: the json module below says why (or reads what orjson alone refuses)
    try:
        value = (_CAREFUL if careful else _FAST).decode(text)
    except UnreadableJson:
        raise
    except json.JSONDecodeError as exc:
        raise UnreadableJson(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:  # belt and braces: the depth check should have caught it
        raise UnreadableJson(f"not JSON ({type(exc).__name__})") from exc
    # only a JSON \u escape makes one (UTF-8 cannot encode a surrogate), and JSON spells it with a small u;
    # most bodies have no backslash at all, and looking for one is the cheapest search
    if b"\\" in raw and (b"\\ud" in raw or b"\\uD" in raw) and _holds_surrogate(value):
        raise UnreadableJson("a string holds a lone surrogate (\\ud800-\\udfff escape)")
    return value


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH` before the recursive decoder sees it.

    Linear and in C, on the UTF-8 bytes (brackets, quotes and backslashes are never part of a
    multi-byte character): drop escaped backslashes and quotes, keep only brackets and quotes, drop
    each quote-delimited run, and take the deepest prefix of what is left, with ``[`` for ``{`` and
    ``]`` for ``}``. Unbalanced brackets are the decoder's to refuse; it never gets deeper than the
    prefix measured here.
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = raw.translate(None, _NOT_BRACKETS_OR_QUOTES)
    if kept.count(b"[") + kept.count(b"{") <= MAX_JSON_DEPTH:
        return
    # Strings without a bracket are left as '""'. When every quote is in such a pair, found from the left,
    # every string was one (the first quote has none before it, so it pairs with the next, and so on).
    if kept.count(b'""') * 2 == kept.count(b'"'):
        outside = kept.translate(None, b'"')
    else:
        outside = b"".join(kept.split(b'"')[::2])
    brackets = outside.translate(_SQUARE_BRACKETS)
    if b"[" * (MAX_JSON_DEPTH + 1) in brackets or _deeper_than_bound(brackets):
        raise UnreadableJson(f"nested deeper than {MAX_JSON_DEPTH} levels")


def _deeper_than_bound(brackets: bytes) -> bool:
    """Whether some prefix of ``brackets`` (only ``[`` and ``]``) opens more than it closes by more than
    :data:`MAX_JSON_DEPTH`.

    Removing every ``[]`` lowers that deepest prefix by at most one, and what is left is never deeper
    than its count of ``[``: a few passes prove a shallow page shallow. Otherwise, exactly: the depth
    just before the i-th ``]`` is the ``[`` seen so far minus i.
    """
    rest = brackets
    for removed in range(1, _BOUND_PASSES + 1):
        rest = rest.replace(b"[]", b"")
        if rest.count(b"[") + removed <= MAX_JSON_DEPTH:
            return False
    closed = brackets.split(b"]")
    deepest: int = max(map(operator.sub, accumulate(map(len, closed)), range(len(closed))))
    return deepest > MAX_JSON_DEPTH


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
