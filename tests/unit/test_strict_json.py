"""The depth check of reconciler/strict_json.py against a plain walk over the same bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.strict_json import MAX_JSON_DEPTH, UnreadableJson, _check_depth


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
