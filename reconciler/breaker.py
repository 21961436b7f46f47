"""A provider's outage breaker (docs/reconcile.md §3), kept across passes by the runner and consulted by each
pass's gate (traffic.py) before every request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from loguru import logger

from reconciler import errors
from reconciler.driver_api import ProviderUnavailable
from reconciler.timeutil import Clock, format_ts

if TYPE_CHECKING:
    from reconciler.traffic import Provider


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


#: `reconciler_provider_breaker_state`'s value for each state.
CIRCUIT_GAUGE: dict[str, int] = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

#: What a request's end says about the provider: it answered (whatever the answer), it was unavailable
#: (timeout, connection error, 408, 5xx), or nothing (a bug in the driver, a cancelled pass).
Signal = Literal["answered", "unavailable", "neutral"]


class CircuitOpen(ProviderUnavailable):
    """No request was sent: the provider's outage circuit is open."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """A breaker's permission for one request: the circuit's generation then, and whether it is the probe."""

    generation: int
    probe: bool = False


class Breaker:
    """One provider's outage breaker (docs/reconcile.md §3), kept across passes by the runner.

    Closed, it counts the calls in a row that got no answer (the gate records a fetch, or a batch, once,
    when it gives up after its retries, so one sick invoice cannot open it alone); any answer, a 429 too
    (the provider is up and asks us to slow down), resets the count. At `threshold` it opens: no request
    until `cooldown` has passed on the injected clock. Then it is half-open: the first request is the
    probe, one try, and every other one waits for its outcome; an answer closes the circuit, an
    unavailable answer opens it for another cool-down. An answer to a request sent before the circuit
    opened changes nothing: only the probe speaks for the provider once it is open.
    """

    def __init__(
        self,
        provider_id: str,
        *,
        threshold: int,
        cooldown: timedelta,
        clock: Clock,
        on_change: Callable[[str, CircuitState], None] = lambda *_: None,
    ) -> None:
        self.provider_id = provider_id
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._on_change = on_change
        #: calls in a row that got no answer, while closed
        self.failures = 0
        self.opened_at: datetime | None = None
        #: None while closed; the end of the cool-down once open (then half-open from that moment)
        self.open_until: datetime | None = None
        self._generation = 0
        #: set when the probe in flight ends; None when there is none
        self._probe: asyncio.Event | None = None

    @classmethod
    def for_provider(
        cls, provider: Provider, *, clock: Clock, on_change: Callable[[str, CircuitState], None] | None = None
    ) -> Breaker:
        common = provider.common
        return cls(
            provider.id,
            threshold=common.breaker_threshold,
            cooldown=timedelta(seconds=common.breaker_cooldown),
            clock=clock,
            on_change=on_change or (lambda *_: None),
        )

    @property
    def state(self) -> CircuitState:
        if self.open_until is None:
            return CircuitState.CLOSED
        if self._probe is None and self.clock() < self.open_until:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def reason(self) -> str | None:
        """Why this provider is held back (the summary's `degraded`, `STATUS=`), or None while closed."""
        state = self.state
        if state is CircuitState.OPEN:
            assert self.open_until is not None
            return f"circuit open until {format_ts(self.open_until)}"
        if state is CircuitState.HALF_OPEN:
            return "circuit half-open (its next request is a probe)"
        return None

    def describe(self) -> dict[str, str]:
        """The circuit as the pass summary records it (`reconciler status` reads it there)."""
        state = self.state
        if state is CircuitState.CLOSED or self.opened_at is None or self.open_until is None:
            return {"state": CircuitState.CLOSED.value}
        return {
            "state": state.value,
            "opened_at": format_ts(self.opened_at),
            "until": format_ts(self.open_until),
        }

    def refused(self) -> CircuitOpen:
        until = format_ts(self.open_until) if self.open_until is not None else "?"
        return CircuitOpen(
            f"{self.provider_id}: circuit open until {until} (the provider was unavailable): not asked",
            provider_id=self.provider_id,
        )

    async def admit(self) -> Ticket:
        """Permission to send one request; raises CircuitOpen while the circuit is open. Half-open, the
        first caller becomes the probe and the others wait for its outcome."""
        while True:
            state = self.state
            if state is CircuitState.CLOSED:
                return Ticket(self._generation)
            if state is CircuitState.OPEN:
                raise self.refused()
            if self._probe is None:
                self._probe = asyncio.Event()
                logger.info("provider {}: cool-down over, sending one probe request", self.provider_id)
                self._on_change(self.provider_id, CircuitState.HALF_OPEN)
                return Ticket(self._generation, probe=True)
            await self._probe.wait()

    async def settled(self) -> None:
        """Return once no probe is in flight (at once when none is)."""
        while self._probe is not None:
            await self._probe.wait()

    def record(self, ticket: Ticket, signal: Signal, error: str | None = None) -> bool:
        """How the request admitted with `ticket` ended; True when that opened the circuit."""
        if ticket.probe:
            probe, self._probe = self._probe, None
            if probe is not None:
                probe.set()
            if signal == "answered":
                self._close()
            elif signal == "unavailable":
                self._open(error, again=True)
                return True
            return False  # it said nothing: still half-open, the next request is the probe
        if ticket.generation != self._generation or self.open_until is not None:
            return False  # sent before the circuit opened
        if signal == "answered":
            self.failures = 0
        elif signal == "unavailable":
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(error, again=False)
                return True
        return False

    def _open(self, error: str | None, *, again: bool) -> None:
        now = self.clock()
        self._generation += 1
        self.opened_at, self.open_until = now, now + self.cooldown
        self.failures = 0
        cause = "the probe got no answer" if again else f"{self.threshold} fetch(es) in a row got no answer"
        logger.warning(
            "provider {}: {} (last: {}): circuit open, no requests until {}",
            self.provider_id,
            cause,
            error or "unavailable",
            format_ts(self.open_until),
        )
        self._on_change(self.provider_id, CircuitState.OPEN)

    def _close(self) -> None:
        self.opened_at = self.open_until = None
        self.failures = 0
        logger.info("provider {}: the probe was answered: circuit closed", self.provider_id)
        self._on_change(self.provider_id, CircuitState.CLOSED)


def _signal(exc: BaseException) -> Signal:
    if isinstance(exc, ProviderUnavailable):
        return "answered" if exc.http_status == 429 else "unavailable"
    if isinstance(exc, errors.InvoiceNotFound | errors.BadProviderResponse | errors.ProviderAuthError):
        return "answered"
    return "neutral"
