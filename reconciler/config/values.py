"""The value types, bounds and names of the configuration, and how a problem with one is described."""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    SecretStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from reconciler import driver_api, timeutil

DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.toml")

ENV_PREFIX = "RECONCILER_"

ENV_NESTING = "__"

MASK = "**********"

# What a `*_file` secret holds when loaded with resolve_files=False: the file is named, never read.
UNRESOLVED_SECRET = "not-read-resolve-files-is-off"  # no spaces: drivers may validate key shape

#: ``RECONCILER_*`` variables that are not configuration: the test harness's own (README, "Tests").
NOT_CONFIGURATION = ("RECONCILER_FIXTURES", "RECONCILER_TEST_PG_URL")

#: The longest duration any key accepts; a few keys have tighter bounds (config.example.toml).
MAX_DURATION = timedelta(days=3650)

MAX_BATCH_SIZE = 100_000

_PROVIDER_ID = re.compile(r"^[a-z][a-z0-9_]*$")

_COMMON_FIELDS = driver_api.CommonSettings.model_fields

_COMMON_KEYS = frozenset(_COMMON_FIELDS)

_DURATION_FORM = 'a quoted whole number and a unit, e.g. "90s", "15m", "72h", "2d"'

_WHOLE_NUMBER = "expected a whole number, e.g. 500 (not true/false, a decimal or a quoted string)"

_NUMBER = "expected a finite number, e.g. 2.5 (not true/false, nan, inf or a quoted string)"

# What environment text may hold for a whole number or a number: ASCII digits, nothing Python would
# also accept (underscores, other scripts' digits, surrounding spaces, nan, inf).
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")

_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")

_PORT_TEXT = re.compile(r"[0-9]{1,5}")


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        number, unit = value[:-1].lstrip("0"), value[-1:]
        if unit in ("s", "m", "h", "d") and number.isascii() and number.isdigit() and len(number) > 9:
            # 10^9 seconds is 31 years, beyond every bound in any unit (and soon beyond what a
            # timedelta holds): say which bound, not that the arithmetic overflowed
            return timedelta.max
        return timeutil.parse_duration(value)
    raise ValueError(f"invalid duration {value!r}: write {_DURATION_FORM}")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _at_most(limit: timedelta) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > limit:
            raise ValueError(f"at most {timeutil.format_duration(limit)}: write a shorter duration")
        return value

    return AfterValidator(check)


def _whole_number(value: object) -> object:
    # bool is an int subclass and TOML's 2.0 is a float: both would pass pydantic's lax int
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(_WHOLE_NUMBER)
    return value


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(_NUMBER)
    return value


_AnyDuration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(timeutil.format_duration, return_type=str, when_used="json"),
]

Duration = Annotated[_AnyDuration, _at_most(MAX_DURATION)]

PositiveDuration = Annotated[_AnyDuration, AfterValidator(_positive), _at_most(MAX_DURATION)]

#: A wait the operator watches happen (a request, a retry, the stop): an hour is already far too long.
ShortDuration = Annotated[_AnyDuration, _at_most(timedelta(hours=1))]

WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


def _dotted(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """A pydantic error location as the TOML keys the operator wrote."""
    parts = tuple(str(part) for part in loc)
    # Provider sections are split into id/common/options internally; the operator wrote them flat.
    if len(parts) >= 3 and parts[0] == "providers" and parts[2] in ("id", "common", "options"):
        return parts[:2] + parts[3:]
    return parts


def _describe(error: Any, accepted: list[str]) -> str:
    """One pydantic error as an operator-facing problem (never its input: it may be a secret)."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(str(error["loc"][-1]), accepted)
    if kind == "missing":
        return "required but not set"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return str(error["msg"])


def _unknown_key(key: str, accepted: list[str], *, note: str = "") -> str:
    if not accepted:
        return "unknown key"
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}accepted: {', '.join(accepted)}{'; ' + note if note else ''})"


def _relocated(exc: ValidationError, prefix: tuple[str, ...]) -> list[InitErrorDetails]:
    return [
        InitErrorDetails(
            type=PydanticCustomError("config", "{message}", {"message": _describe(error, [])}),
            loc=prefix + error["loc"],
            input=error["input"],
        )
        for error in exc.errors(include_url=False)
    ]


def _problem(loc: tuple[str, ...], message: str, value: object) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError("config", "{message}", {"message": message}), loc=loc, input=value
    )


def _located_error(loc: tuple[str, ...], message: str, value: object) -> ValidationError:
    return ValidationError.from_exception_data("Config", [_problem(loc, message, value)])


def _number_kind(annotation: Any) -> type[int] | type[float] | None:
    """``int`` or ``float`` when a field holds that kind of number (``X | None`` too), else None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = set(typing.get_args(annotation)) if union else {annotation}
    kinds.discard(type(None))
    if kinds == {int}:
        return int
    if kinds and kinds <= {int, float}:
        return float
    return None


def _seconds(seconds: float) -> str:
    return timeutil.format_duration(timedelta(seconds=seconds))


def _is_secret(field: FieldInfo) -> bool:
    """Whether a field is declared ``SecretStr`` (or ``SecretStr | None``)."""
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType):
        return set(typing.get_args(field.annotation)) - {type(None)} == {SecretStr}
    return field.annotation is SecretStr


def _secret_keys(fields: Mapping[str, FieldInfo]) -> list[str]:
    return [key for key, field in fields.items() if _is_secret(field)]


#: Finds a driver's `Settings` model by driver name (the wiring's registry lookup).
DriverSettingsLookup = Callable[[str], type[BaseModel]]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
