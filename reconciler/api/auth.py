"""Who is asking (docs/api.md §2): `Authorization: Bearer <token>`, checked in constant time.

A token is the master key (`[api] master_key`) or an API key's, found by its SHA-256 in `api_keys`.
A missing, malformed, unknown or revoked token is one refusal, `Unauthorized`, the same for all four.
Failed authentications are counted per client address; past `max_failures` within `window` that address
is refused with `Throttled` until its oldest failure leaves the window. The table of addresses is bounded:
past `MAX_ADDRESSES` the address that failed longest ago is forgotten.

No token is kept, logged or put in an error: only hashes are compared, and a key is named by its id.
"""

from __future__ import annotations

import hmac
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pydantic import SecretStr

from reconciler.api import keys
from reconciler.store import base
from reconciler.timeutil import Clock

#: Client addresses whose failures are remembered at once.
MAX_ADDRESSES = 10_000
#: `last_used_at` is written at most this often per key.
TOUCH_EVERY = timedelta(minutes=1)
#: The longest `Authorization` header read; a longer one is malformed.
MAX_HEADER = 512


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an API key (its id and role) or the master key (`key_id` None)."""

    key_id: str | None
    role: str | None
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """What audit rows name as the actor: `api-key:<key id>`, `api-key:master` for the master key."""
        return f"api-key:{self.key_id if self.key_id is not None else 'master'}"

    @property
    def who(self) -> str:
        """The caller in a refusal's message (never the token)."""
        return "the master key" if self.key_id is None else f"API key {self.key_id} (role {self.role})"


MASTER = Principal(key_id=None, role=None, scopes=keys.MASTER_SCOPES)


class Unauthorized(Exception):
    """No valid token: missing, malformed, unknown or revoked (one answer for all four)."""


class Throttled(Exception):
    """Too many failed authentications from this client address lately."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class FailureLimiter:
    """Failed authentications per client address in a sliding window, in bounded memory."""

    def __init__(self, *, max_failures: int, window: float, max_addresses: int = MAX_ADDRESSES) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds until `address` may try again, or None when it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.max_failures:
            return None
        return failures[0] + self.window - now

    def failed(self, address: str, now: float) -> None:
        failures = self._failures.get(address)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=self.max_failures)
        failures.append(now)
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


class Authenticator:
    def __init__(
        self,
        store: base.Store,
        master_key: SecretStr | None,
        *,
        limiter: FailureLimiter,
        clock: Clock,
        monotonic: Callable[[], float],
    ) -> None:
        self._store = store
        self._master_hash = keys.token_hash(master_key.get_secret_value()) if master_key is not None else None
        self._limiter = limiter
        self._clock = clock
        self._monotonic = monotonic
        self._touched: dict[str, float] = {}

    async def authenticate(self, header: str | None, address: str) -> Principal:
        """The caller of a request from `address` with this `Authorization` header; `Throttled` when that
        address failed too often lately, `Unauthorized` when the token is not valid."""
        now = self._monotonic()
        wait = self._limiter.retry_after(address, now)
        if wait is not None:
            raise Throttled(max(1, math.ceil(wait)))
        principal = await self._identify(header)
        if principal is None:
            self._limiter.failed(address, now)
            raise Unauthorized
        return principal

    async def _identify(self, header: str | None) -> Principal | None:
        token = _bearer(header)
        if token is None:
            return None
        digest = keys.token_hash(token)
        if self._master_hash is not None and hmac.compare_digest(digest, self._master_hash):
            return MASTER
        if not keys.well_formed(token):
            return None
        row = await self._store.api_key_by_hash(digest)
        if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
            return None
        await self._touch(row.id)
        return Principal(key_id=row.id, role=row.role, scopes=keys.scopes(row.role))

    async def _touch(self, key_id: str) -> None:
        """`last_used_at`, at most once a minute per key: skipped here when this process wrote it lately,
        and in SQL when another process did."""
        now = self._monotonic()
        last = self._touched.get(key_id)
        if last is not None and now - last < TOUCH_EVERY.total_seconds():
            return
        if len(self._touched) >= MAX_ADDRESSES:
            self._touched.clear()
        self._touched[key_id] = now
        moment = self._clock()
        await self._store.touch_api_key(key_id, now=moment, stale_before=moment - TOUCH_EVERY)


def _bearer(header: str | None) -> str | None:
    """The token of `Bearer <token>` (the scheme in any case), or None when the header is not that."""
    if header is None or len(header) > MAX_HEADER:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or not token.isascii() or not token.isprintable():
        return None
    if " " in token:
        return None
    return token
