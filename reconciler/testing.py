"""Test helpers shipped for the reconciler's own tests and for driver authors (docs/writing-a-driver.md).

`check_driver(cls)` runs the checks the core runs when it loads a driver (docs/drivers.md §6) and raises
`DriverContractError` (an `AssertionError`) naming every problem; `driver_problems(cls)` returns them.
`FakeDriver` is a scripted, in-process driver: give it per-invoice outcomes (snapshots or driver errors) and it
answers `fetch` with them, recording every call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import aiohttp
from pydantic import BaseModel

from reconciler import driver_checks
from reconciler.driver_api import (
    CommonSettings,
    DriverSettings,
    InvoiceNotFound,
    PostSettleResult,
    PostSettleTask,
    ProviderStatus,
    Snapshot,
)

Outcome = Snapshot | BaseException
_T = TypeVar("_T")


class DriverContractError(AssertionError):
    """A class the core would refuse to load as a driver; ``problems`` says why, one line each."""

    def __init__(self, name: str, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"- {problem}" for problem in self.problems)
        super().__init__(f"{name} is not a driver the core would load (docs/drivers.md §6):\n{lines}")


def driver_problems(cls: object) -> list[str]:
    """Every reason the core would refuse ``cls`` at load time (exit 2, docs/drivers.md §6); ``[]`` when none.

    The same checks, by the same code, as loading a configured driver: a class, a ``Settings`` that
    subclasses ``DriverSettings`` and keeps ``extra="forbid"``, ``post_settle_kinds`` a tuple of strings,
    ``fetch`` and ``check`` coroutine functions, ``fetch_page`` / ``fetch_many`` / ``post_settle`` too when
    present, and ``page_item_bytes`` a positive int when present.
    """
    return driver_checks.problems(cls)


def check_driver(cls: _T) -> _T:
    """``cls`` itself when the core would load it as a driver; else :class:`DriverContractError`.

    For a driver's own test suite (``check_driver(MyDriver)``): it looks at the class only, constructs
    nothing and needs no configuration, network or event loop.
    """
    problems = driver_problems(cls)
    if problems:
        raise DriverContractError(getattr(cls, "__qualname__", repr(cls)), problems)
    return cls


class FakeDriverSettings(DriverSettings):
    latency: float = 0.0


def snapshot(status: ProviderStatus | str, raw: str | None = None, **fields: Any) -> Snapshot:
    """A Snapshot with a plausible raw status for `status` (`snapshot("SETTLED", amount_sats=1000)`)."""
    typed = ProviderStatus(status)
    return Snapshot(status=typed, raw_status=raw or typed.value.title(), **fields)


class FakeDriver:
    """A scripted driver. Each invoice id has a queue of outcomes; the last one repeats.

    An id with no script raises `InvoiceNotFound`, like a provider that never saw it.
    """

    Settings: ClassVar[type[BaseModel]] = FakeDriverSettings
    post_settle_kinds: ClassVar[tuple[str, ...]] = ()
    #: keep every fetched id in `calls` (off for long subprocess runs, where nobody reads them)
    record_calls: ClassVar[bool] = True

    def __init__(
        self,
        provider_id: str = "fake",
        settings: Any = None,
        common: CommonSettings | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.provider_id = provider_id
        self.settings = settings if settings is not None else FakeDriverSettings()
        self.common = common or CommonSettings(driver="fake")
        self.latency: float = getattr(self.settings, "latency", 0.0)
        self.calls: list[str] = []
        self.checks = 0
        self.post_settle_calls: list[PostSettleTask] = []
        self.post_settle_results: deque[PostSettleResult | BaseException] = deque()
        self._script: dict[str, deque[Outcome]] = {}

    def script(self, provider_invoice_id: str, *outcomes: Outcome) -> None:
        """Answer `fetch(provider_invoice_id)` with `outcomes` in order, the last one repeating."""
        if not outcomes:
            raise ValueError("give at least one outcome")
        self._script[provider_invoice_id] = deque(outcomes)

    def script_many(self, ids: Iterable[str], *outcomes: Outcome) -> None:
        for provider_invoice_id in ids:
            self.script(provider_invoice_id, *outcomes)

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        if self.record_calls:
            self.calls.append(provider_invoice_id)
        if self.latency:
            await asyncio.sleep(self.latency)
        queue = self._script.get(provider_invoice_id)
        if not queue:
            raise InvoiceNotFound(
                f"{self.provider_id}: invoice {provider_invoice_id} not found",
                provider_id=self.provider_id,
                invoice_id=provider_invoice_id,
            )
        outcome = queue.popleft() if len(queue) > 1 else queue[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def check(self) -> None:
        self.checks += 1

    async def post_settle(self, task: PostSettleTask) -> PostSettleResult:
        self.post_settle_calls.append(task)
        outcome = self.post_settle_results.popleft()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
