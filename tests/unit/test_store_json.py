"""The JSON the store writes with orjson (reconciler/store/engine.py): the same values the json module would
write, whatever they hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from reconciler.store.engine import details_json, param_json


@dataclass(frozen=True)
class Thing:
    name: str


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from([datetime(2026, 12, 2, 14, 0, tzinfo=UTC), Decimal("0.00100000"), Thing("x"), b"raw"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        # keys the json module makes strings
        | st.dictionaries(st.integers(0, 99), inner, max_size=4)
    ),
    max_leaves=20,
)


_MOMENT = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)


@given(st.dictionaries(st.text(max_size=12), _VALUES, max_size=8))
@example(
    {"at": _MOMENT, "amount": Decimal("0.001"), "thing": Thing("x"), "raw": b"x", "in": [{"at": _MOMENT}]}
)
def test_details_are_the_json_the_json_module_would_write(details: dict[str, Any]) -> None:
    written = details_json(details)
    assert json.loads(written) == json.loads(json.dumps(details, sort_keys=True, default=str))
    assert list(json.loads(written)) == sorted(details)  # keys sorted, as before


@given(st.lists(st.dictionaries(st.text(max_size=8), st.none() | st.integers(-(2**70), 2**70) | st.text())))
def test_statement_parameters_are_the_json_the_json_module_would_write(rows: list[dict[str, Any]]) -> None:
    assert json.loads(param_json(rows)) == json.loads(json.dumps(rows))


def test_details_are_compact_utf8_and_a_lone_surrogate_is_still_written() -> None:
    assert details_json({"b": "é", "a": 1}) == '{"a":1,"b":"é"}'
    assert json.loads(details_json({"raw": "\ud800"})) == {"raw": "\ud800"}  # the json module's escape
