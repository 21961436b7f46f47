"""The depth check of reconciler/strict_json.py against a plain walk over the same bytes, and the whole
decoder against the one it replaced (tests/support/strict_json_before.py) over generated JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciler import strict_json
from reconciler.strict_json import MAX_JSON_DEPTH, UnreadableJson, _check_depth
from tests.support import strict_json_before


def _deepest(raw: bytes) -> int:
    """The most brackets open at once outside strings, as the check reads strings (escaped backslashes and
    quotes dropped first, then every other quote-delimited run skipped), walking the bytes one by one."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    depth = deepest = 0
    for byte in outside:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


_PIECES = st.sampled_from(["[", "]", "{", "}", '"', '\\"', "\\\\", "x", ",", ":", '"[["', '"]"', "1"])


def _nested(depth: int) -> st.SearchStrategy[str]:
    return st.lists(_PIECES, max_size=40).map("".join).map(lambda noise: "[" * depth + noise + "]" * depth)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(-(10**40) + 1, 10**40 - 1) | st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers_decode_to_exactly_what_was_written_whichever_decoder_reads_them(
    numbers: list[int | float],
) -> None:
    """Integers of any width up to MAX_INT_DIGITS stay exact ints (orjson alone would make a float of one past
    64 bits), floats the same doubles."""
    decoded = strict_json.decode_json(json.dumps({"numbers": numbers, "id": "Bench0000001"}).encode())
    assert [(type(n), n) for n in decoded["numbers"]] == [(type(n), n) for n in numbers]


@pytest.mark.parametrize(
    "number",
    [
        "1" * 20
        + "."
        + "2" * 40
        + "e-10",  # 65 characters, no digit run past MAX_INT_DIGITS, a 2-digit exponent
        "-" + "3" * 31 + "." + "4" * 32,  # 65, no exponent at all
        "5" * 30 + "." + "6" * 30 + "E+12",  # runs of 30 digits, the fewest a number this long can have
    ],
)
def test_a_number_longer_than_the_bound_is_refused_however_its_digits_are_split(number: str) -> None:
    assert len(number) > strict_json.MAX_FLOAT_CHARS
    with pytest.raises(UnreadableJson, match=f"longer than {strict_json.MAX_FLOAT_CHARS} characters"):
        strict_json.decode_json(b'{"amount": ' + number.encode() + b"}")


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(0, 40),
    st.sampled_from(["", "e1", "e-12", "E+99", "e05"]),
)
def test_a_number_is_read_when_it_is_within_the_bound_and_refused_when_it_is_not(
    whole: int, fraction: int, exponent: str
) -> None:
    number = "9" * whole + ("." + "8" * fraction if fraction else "") + exponent
    raw = b"[" + number.encode() + b"]"
    is_float = bool(fraction or exponent)
    too_long = len(number) > strict_json.MAX_FLOAT_CHARS if is_float else whole > strict_json.MAX_INT_DIGITS
    if too_long:
        with pytest.raises(UnreadableJson, match="longer than"):
            strict_json.decode_json(raw)
    else:
        assert strict_json.decode_json(raw) == [float(number) if is_float else int(number)]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(_PIECES, max_size=300).map("".join), st.integers(55, 75).flatmap(_nested)))
def test_the_depth_check_refuses_exactly_what_nests_deeper_than_the_bound(text: str) -> None:
    raw = text.encode()
    if _deepest(raw) > MAX_JSON_DEPTH:
        with pytest.raises(UnreadableJson, match="nested deeper"):
            _check_depth(raw)
    else:
        _check_depth(raw)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
def test_a_page_of_many_shallow_items_and_one_deep_one(depth: int) -> None:
    items = b",".join([b'{"a":[1,{"b":[]}],"s":"[[[["}'] * 2000 + [b"[" * depth + b"]" * depth])
    raw = b"[" + items + b"]"
    if depth + 1 > MAX_JSON_DEPTH:
        with pytest.raises(UnreadableJson):
            _check_depth(raw)
    else:
        _check_depth(raw)


# --- the decoder against the one before it ---------------------------------------------------------

_DIGITS = st.text("0123456789", min_size=1, max_size=50)
_NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(-(10**45), 10**45).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.builds(
        lambda sign, whole, fraction, e, e_sign, exponent: f"{sign}{whole}{fraction}{e}{e_sign}{exponent}",
        st.sampled_from(["", "-"]),
        _DIGITS,
        st.one_of(st.just(""), _DIGITS.map(".".__add__)),
        st.sampled_from(["", "e", "E"]),
        st.sampled_from(["", "+", "-"]),
        st.one_of(st.just(""), _DIGITS.map(lambda d: d[:6])),
    ),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1E+0400", "1e-400", "0e000", "1.5e308"]),
)
_STRING_PIECES = st.sampled_from(
    [
        '\\"',
        "\\\\",
        "\\/",
        "\\n",
        "\\u00e9",
        "\\u0000",
        "\\ud800",
        "\\uD800",
        "\\udc00",
        "\\uDBFF\\uDFFF",
        "\\ud83d\\ude00",
        "\\\\ud800",
        "[",
        "]",
        "{",
        "}",
        "[[[[",
        "e000",
        "E+000",
        "0" * 41,
        "é",
        "😀",
    ]
)
_PLAIN = st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cs", "Cc")), max_size=6)
_STRINGS = st.lists(st.one_of(_STRING_PIECES, _PLAIN), max_size=6).map(
    lambda parts: '"' + "".join(parts) + '"'
)
_SCALARS = st.one_of(_NUMBERS, _STRINGS, st.sampled_from(["true", "false", "null"]))


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(children, max_size=6).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(_STRINGS, children), max_size=6).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    )


_VALUES = st.recursive(_SCALARS, _containers, max_leaves=25)


_SHELLS = {"[": "[{}, 1]", "(": "[[], {}]", "{": '{{"k": {}, "[": "]"}}'}


def _wrapped(value: str, shells: list[str]) -> str:
    for shell in shells:
        value = _SHELLS[shell].format(value)
    return value


_DEEP = st.builds(
    _wrapped,
    _VALUES,
    st.integers(50, 80).flatmap(lambda n: st.lists(st.sampled_from(sorted(_SHELLS)), min_size=n, max_size=n)),
)
# many shallow siblings (a few, repeated) and one deep member: more brackets than the bound, nested up to
# anywhere around it
_PAGES = st.builds(
    lambda items, copies, deep, at: (
        "[" + ",".join([*(items * copies)[:at], deep, *(items * copies)[at:]]) + "]"
    ),
    st.lists(_VALUES, min_size=1, max_size=3),
    st.integers(1, 30),
    _DEEP,
    st.integers(0, 60),
)
_TEXTS = st.one_of(_VALUES, _DEEP, _PAGES)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """Generated JSON, sometimes as UTF-8 with lone surrogates passed through, sometimes damaged."""
    raw = draw(_TEXTS).encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "cut", "insert", "delete"]))
    if raw and damage != "none":
        at = draw(st.integers(0, len(raw) - 1))
        if damage == "cut":
            raw = raw[:at]
        elif damage == "insert":
            raw = (
                raw[:at]
                + draw(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b"\xff"]))
                + raw[at:]
            )
        else:
            raw = raw[:at] + raw[at + 1 :]
    return raw


def _outcome(decode: Callable[[bytes], Any], raw: bytes) -> tuple[str, str]:
    try:
        return "decoded", repr(decode(raw))
    except UnreadableJson as exc:
        return "refused", str(exc)


@settings(max_examples=300, deadline=None)
@given(_bodies())
@example(b'["\\ud800"]')
@example(b'{"a": "\\uDC00"}')
@example(b'["\\\\ud800"]')
@example(b"[1e400]")
@example(b"[" + b"1" * 41 + b"]")
@example(b"[" * 65 + b"]" * 65)
@example(b'["' + b"[" * 70 + b'"]')
@example(
    b"[-9999999999999999999, 18446744073709551616, 9223372036854775808]"
)  # past 64 bits: orjson floats them
@example(b'{"a": 1E-400, "b": "\\ud83d\\ude00", "c": "\\u0000"}')
@example(b"\xef\xbb\xbf[1]")  # a byte order mark
@example(b"[" + b"1" * 30 + b"]")  # read exactly, through the hooks now
@example(b"[" + b"1" * 20 + b"." + b"2" * 40 + b"e-10]")  # decoded before, refused now (longer than 64)
def test_the_decoder_refuses_what_the_one_before_it_refused_with_the_same_message(raw: bytes) -> None:
    """The same outcome, except one the decoder before missed: a number longer than MAX_FLOAT_CHARS with no
    run of more than MAX_INT_DIGITS digits, which it read without the hooks."""
    now, before = _outcome(strict_json.decode_json, raw), _outcome(strict_json_before.decode_json, raw)
    if now != before:
        assert now == ("refused", f"a number longer than {strict_json.MAX_FLOAT_CHARS} characters")
    careful, fast = strict_json._route(raw)
    thirty_digits = b"0" * 30 in raw.translate(bytes.maketrans(b"123456789", b"000000000"))
    assert careful == (strict_json_before._needs_care(raw) or thirty_digits)
    assert not (careful and fast)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(_PIECES, max_size=300).map("".join), st.integers(55, 75).flatmap(_nested)))
def test_the_depth_check_agrees_with_the_one_before_it_on_any_bytes(text: str) -> None:
    raw = text.encode()
    assert _outcome(_check_depth, raw) == _outcome(strict_json_before._check_depth, raw)
