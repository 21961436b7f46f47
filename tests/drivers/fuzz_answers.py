"""Hypothesis strategies for hostile provider answers: bodies, headers, statuses, transfers (issue 10).

An answer is a :class:`~tests.fakes.raw.RawAnswer`. Bodies are mostly a real answer (a BTCPay invoice,
a Zaprite order or contact) with fields replaced, removed or added; the rest come from nowhere:
random bytes, JSON of the wrong type, a body cut in two. Values are wrong types, huge and
non-finite numbers, deep nesting, lone surrogates and control characters, strings around the
200-character limit, look-alike statuses, odd decimals. Headers carry odd ``Retry-After`` values,
content types and encodings; statuses are mostly 200 with every kind of other; transfers are plain,
chunked, gzip, a slow trickle, endless, lying about their length, cut short or over the limit.

Hypothesis draws are what a fuzz of 10,000 examples per driver pays for, so hostile leaves come from
hand-made pools (one draw each), with fully random text, numbers and bytes mixed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.fakes.raw import RawAnswer

#: The body limit the fuzzed drivers run with (small, so that "over the limit" is cheap).
LIMIT = 16 * 1024
#: Per-request timeout of the fuzzed drivers: every scripted answer completes (or fails) well inside it.
TIMEOUT = 2.0


@dataclass(frozen=True)
class RawJson:
    """JSON text inserted as it is (what ``json.dumps`` would never write)."""

    text: str


# JSON text of the templates' containers by id: an edit copies only the containers on its path, so
# the rest of a mutated body is the template's own objects (alive as long as the module, so their
# ids are never reused) and is written once.
_WRITTEN: dict[int, str] = {}


def to_json(value: Any) -> str:
    """``value`` as JSON text; :class:`RawJson` verbatim, strings ASCII-escaped (so lone surrogates
    and control characters travel as ``\\u`` escapes, the way a provider would send them)."""
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, dict | list) and id(value) in _WRITTEN:
        return _WRITTEN[id(value)]
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value)


# --- pools of hostile leaves -------------------------------------------------------------------------------

ODD_CHARACTERS = [
    "\x00",
    "\x01",
    "\x1b",
    "\n",
    "\t",
    "\x7f",
    "\x85",  # C1 (NEL)
    "\u2028",
    "\ud800",  # lone surrogates
    "\udfff",
    "\u017f",  # ſ: casefolds to s
    "\u0131",  # ı: upper-cases to I
    "\u0661",  # Arabic-Indic digit one
    "\uff11",  # fullwidth digit one
    "\u00b2",  # ²: str.isdigit() says yes
    "\ufeff",
    "\U0001f600",
]
TEXTS: list[str] = [
    "",
    " ",
    "Settled",
    "settled",
    "SETTLED",
    "\u017fettled",
    "Settl\u0435d",  # Cyrillic e
    "New",
    "Processing",
    "Expired",
    "Invalid",
    "Complete",
    "Confirmed",
    "PaidLate",
    "PaidOver",
    "PaidPartial",
    "Marked",
    "None",
    "Refunded",
    "PAID",
    "paid",
    "pa\u0131d",
    "OVERPAID",
    "UNDERPAID",
    "PENDING",
    "EXPIRED",
    "CANCELLED",
    "CONFIRMED",
    "CARD",
    "BITCOIN",
    "BTC",
    "btc",
    "SATS",
    "\u017fats",
    "USD",
    "inv1",
    "inv2",
    "od_1",
    "ct_ada",
    "pp_1",
    ".",
    "..",
    "a/b",
    "%2F",
    "Settled\x00",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\ud83d",
    "line\nbreak",
    "\x1b[31mred",
    "tab\there",
    "\x7f",
    "\x85",
    "\u2028",
    "\U0001f600",
    "S" * 199,
    "S" * 200,
    "S" * 201,
    "x" * 5000,
    "2028-01-31T00:00:00Z",
    "12/28",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
]
DECIMALS: list[str] = [
    "0",
    "-0",
    "1",
    "-1",
    "-5",
    "0.001",
    "0.00012345",
    "0.000000005",
    "0.00001000999",
    "21000000",
    "100000",
    "10.5",
    "12.0",
    "9" * 40,
    "9" * 41,
    "0." + "0" * 7 + "4" + "9" * 30,
    "1" + "0" * 30,
    "NaN",
    "nan",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e3",
    "1E-8",
    "1e400",
    "1_000",
    "\u0661\u0660",
    "\uff11",
    "\u00b2",
    " 5",
    "5 ",
    "+5",
    ".5",
    "5.",
    "--5",
    "0x10",
    "1,5",
    "2.5.1",
    "",
]
NUMBERS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    -5,
    50_000,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    10**40 - 1,
    10**40,
    0.0,
    -0.0,
    1.5,
    1e-300,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
]
RAW_JSON: list[RawJson] = [
    RawJson(text)
    for text in [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1E+400",
        "1e308",
        "-0",
        "0e0",
        "9" * 40,
        "9" * 41,
        "-" + "9" * 41,
        "9" * 4300,
        "9" * 4301,
        "9" * 6000,
        "0." + "1" * 70,
        "1" * 400 + ".5",
        "[" * 63 + "]" * 63,
        "[" * 64 + "]" * 64,
        "[" * 65 + "]" * 65,
        "[" * 1000 + "]" * 1000,
        "[" * 5000 + "]" * 5000,
        '{"a": ' * 70 + "1" + "}" * 70,
        "[" * 2000,
        '"\\ud800"',
        '"\\udfff"',
        '"a\\ud83d"',
        '"\\ud83d\\ude00"',
        '"\\u0000"',
        '"\\\\ud800"',
        '"\\u001b[31m"',
        '{"\\ud800": 1}',
    ]
]
CONTAINERS: list[Any] = [
    [],
    {},
    [1],
    ["Settled"],
    {"a": None},
    [[[]]],
    {"status": "Settled"},
    [{"value": "1"}],
]


HOSTILE: list[Any] = [*TEXTS, *DECIMALS, *NUMBERS, *RAW_JSON, *CONTAINERS]
_RANDOM_TEXT = st.text(alphabet=st.characters() | st.sampled_from(ODD_CHARACTERS), max_size=12)
_RANDOM_NUMBER = st.integers() | st.floats()
# Strategies are built once: building one (sampled_from hashes its elements) costs more than a draw.
_HOSTILE = st.sampled_from(HOSTILE)
_SIXTEEN = st.integers(min_value=0, max_value=15)


@st.composite
def values(draw: st.DrawFn) -> Any:
    """One hostile JSON value: mostly from the pools (one draw), sometimes fully random."""
    kind = draw(_SIXTEEN)
    if kind <= 12:
        return draw(_HOSTILE)
    if kind == 13:
        return draw(_RANDOM_TEXT)
    if kind == 14:
        return draw(_RANDOM_NUMBER)
    return [draw(_HOSTILE), draw(_HOSTILE)]


VALUES = values()


def remember(template: Any) -> Any:
    """``template``, with the JSON text of each of its containers remembered (see ``_WRITTEN``)."""
    if isinstance(template, dict):
        for item in template.values():
            remember(item)
    elif isinstance(template, list):
        for item in template:
            remember(item)
    if isinstance(template, dict | list):
        _WRITTEN[id(template)] = to_json(template)
    return template


# --- template edits ----------------------------------------------------------------------------------------

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Edit:
    """Replace (or with ``delete`` remove) the value at ``path`` of a template body."""

    path: Path
    value: Any = None
    delete: bool = False


def apply(body: Any, edit: Edit) -> Any:
    """``body`` with ``edit`` made (a copy; paths that do not exist are left alone)."""
    if not edit.path:
        return edit.value
    head, rest = edit.path[0], edit.path[1:]
    if isinstance(body, dict) and isinstance(head, str):
        copy = dict(body)
        if not rest and edit.delete:
            copy.pop(head, None)
        else:
            copy[head] = apply(copy.get(head), Edit(rest, edit.value, edit.delete))
        return copy
    if isinstance(body, list) and isinstance(head, int) and head < len(body):
        items = list(body)
        if not rest and edit.delete:
            del items[head]
        else:
            items[head] = apply(items[head], Edit(rest, edit.value, edit.delete))
        return items
    return body


def mutated(
    template: Any, paths: Sequence[Path], likely: Mapping[str, Sequence[Any]] | None = None
) -> st.SearchStrategy[Any]:
    """``template`` with 0-3 edits at ``paths`` (or at a new key): a removal, a plausible value for
    the field (``likely``) or a hostile one."""
    remember(template)
    edits: list[tuple[Path, str]] = [
        (path, action) for path in paths for action in ("delete", "likely", "hostile", "hostile")
    ]
    edits += [((name,), "hostile") for name in ("extra", "", "\ud800", "id ", "STATUS")]
    plausible = {name: st.sampled_from(list(options)) for name, options in (likely or {}).items()}
    some_edits, one_edit = st.integers(min_value=0, max_value=3), st.sampled_from(edits)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        body = template
        for _ in range(draw(some_edits)):
            path, action = draw(one_edit)
            if action == "delete":
                body = apply(body, Edit(path, delete=True))
                continue
            options = plausible.get(str(path[-1]) if path else "") if action == "likely" else None
            value = draw(options if options is not None else VALUES)
            body = apply(body, Edit(path, value))
        return body

    return build()


# --- headers, statuses, transfers ------------------------------------------------------------------------

RETRY_AFTERS = [
    "0",
    "7",
    "120",
    "86400",
    "86401",
    "99999999999999999999",
    "9" * 400,
    "-1",
    "1.5",
    "+3",
    " 7 ",
    "007",
    "\u00b2",
    "\u0661",
    "\uff17",
    "1e3",
    "0x10",
    "",
    "soon",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Wed, 31 Feb 2026 00:00:00 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
    "Mon, 01 Jan 0001 00:00:00 GMT",
    "Wed, 04 Mar 2026 05:08:07 +0000",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "text/html",
    "text/plain; charset=latin-1",
    "",
]
CONTENT_ENCODINGS = ["identity", "gzip", "deflate", "br", "zstd", "x-unknown", "gzip, gzip"]
# What aiohttp will send in a header: no CR, LF or other C0 control but tab, no DEL, no surrogate.
_HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    | st.sampled_from(["\t", "\u00e9", "\u00b2", "\u0661", "\uff17", "\u2028", "\U0001f600", "\x85"]),
    max_size=30,
)


_RETRY_AFTER = (
    st.sampled_from(RETRY_AFTERS) | st.integers(min_value=0, max_value=10**30).map(str) | _HEADER_TEXT
)


_CONTENT_TYPE = st.sampled_from(CONTENT_TYPES)
_CONTENT_ENCODING = st.sampled_from(CONTENT_ENCODINGS)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    """Some of Retry-After, Content-Type, Content-Encoding and a header of no meaning."""
    chosen = draw(_SIXTEEN)
    found: dict[str, str] = {}
    if chosen & 1:
        found["Retry-After"] = draw(_RETRY_AFTER)
    if chosen & 2:
        found["Content-Type"] = draw(_CONTENT_TYPE)
    if chosen & 4 and draw(_SIXTEEN) < 4:
        found["Content-Encoding"] = draw(_CONTENT_ENCODING)
    if chosen & 8:
        found["X-Fuzz"] = draw(_HEADER_TEXT)
    return found


HEADERS = headers()
# No 1xx: an informational status alone is a server that never answers (a timeout, slow to fuzz);
# tests/drivers/test_http_boundary.py covers it once.
_OTHER_STATUSES = [201, 202, 203, 204, 206, 301, 302, 304, 307, 400, 401, 403, 404, 405, 408,
                   409, 410, 418, 422, 429, 451, 500, 502, 503, 504, 599, 600, 999]  # fmt: skip


_CHUNK = st.sampled_from([16, 64, 512, 4096])
_GZIP_CHUNK = st.sampled_from([None, 7, 1024])


_TRANSFERS = (
    ["plain"] * 24 + ["chunked"] * 4 + ["gzip"] * 4 + ["trickle", "abort", "short", "oversized", "endless"]
)
# Status and transfer in one draw (each draw costs; their product is a small list).
_STATUS_AND_TRANSFER = st.sampled_from(
    [(status, transfer) for status in [200] * 60 + _OTHER_STATUSES + [250, 299, 333, 450, 499, 550, 777]
     for transfer in _TRANSFERS]
)  # fmt: skip


@st.composite
def answers(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> RawAnswer:
    """A whole answer: status, headers, a body from ``bodies`` and a way of sending it."""
    status, transfer = draw(_STATUS_AND_TRANSFER)
    found = draw(HEADERS)
    body = b"" if status in (204, 304) else draw(bodies)
    if transfer == "chunked":
        return RawAnswer(status, body, found, chunk=draw(_CHUNK), repeat=1)
    if transfer == "gzip":
        found.pop("Content-Encoding", None)
        return RawAnswer(status, body, found, gzip=True, chunk=draw(_GZIP_CHUNK))
    if transfer == "trickle":
        return RawAnswer(status, body[:300], found, chunk=draw(_CHUNK), delay=0.002)
    if transfer == "abort":
        return RawAnswer(status, body, found, chunk=draw(_CHUNK), abort=True)
    if transfer == "short":
        return RawAnswer(status, body, found, content_length=len(body) + 1 + draw(_SIXTEEN), abort=True)
    if transfer == "oversized":
        return RawAnswer(status, body + b" " * (LIMIT + 1 - len(body)), found)
    if transfer == "endless":
        return RawAnswer(status, b"[" + b"1," * 512, found, chunk=1024, endless=True, gzip=draw(_SIXTEEN) < 8)
    return RawAnswer(status, body, found)


_ODD_BODIES = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b"<html>502 Bad Gateway</html>",
    b"\xef\xbb\xbf{}",
    b"\xff\xfe{}",
    b"\x00",
]


_TWELVE = st.integers(min_value=0, max_value=11)
_BYTES = st.binary(max_size=64)
_ODD_BODY = st.sampled_from(_ODD_BODIES)


def json_bodies(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Mostly ``documents`` as JSON; else random bytes, a hostile value, a body cut in two, an odd body."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        kind = draw(_TWELVE)
        if kind <= 7:
            return to_json(draw(documents)).encode()
        if kind == 8:
            return draw(_BYTES)
        if kind == 9:
            return to_json(draw(VALUES)).encode()
        if kind == 10:
            whole = to_json(draw(documents)).encode()
            return whole[: len(whole) * draw(_SIXTEEN) // 16]
        return draw(_ODD_BODY)

    return build()


#: Invoice ids: mostly the one the answers are for, sometimes one no URL path can hold.
INVOICE_ID_LIST = ["inv1"] * 16 + ["", ".", "..", "a/b", "x" * 201, "a\x00b", "\ud800", "\u00fcn\u00ef"]
