"""A provider credential kept out of what the HTTP boundary reports: masked in every message, and never
reachable through an exception chained to a driver error (aiohttp's response errors carry our request
headers, and their repr shows them)."""

from __future__ import annotations

import aiohttp
from pydantic import SecretStr

from reconciler import errors

MASK = "**********"


class Scrubber:
    """Masks one ``Authorization`` value, and the credential after its scheme, wherever they would show."""

    def __init__(self, authorization: SecretStr) -> None:
        header = authorization.get_secret_value()
        # The whole value first, so that "token <key>" is masked as one.
        self._secrets = tuple(
            sorted({s for s in (header, header.rpartition(" ")[2]) if s}, key=len, reverse=True)
        )

    def scrub(self, text: str) -> str:
        """``text`` with the ``Authorization`` value and its credential masked."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def chain(self, error: errors.DriverError, cause: BaseException) -> errors.DriverError:
        """``error`` caused by ``cause`` when nothing in ``cause``'s chain shows a secret, else by nothing."""
        error.__cause__ = cause if _forget_authorization(cause, self._secrets) else None
        error.__suppress_context__ = True
        return error


def _forget_authorization(exc: BaseException, secrets: tuple[str, ...]) -> bool:
    """Drop request headers from every aiohttp error in ``exc``'s chain; whether the chain is then clean.

    ``ClientResponseError`` carries ``request_info`` with our headers, and its repr shows them.
    """
    seen: set[int] = set()
    chain: list[BaseException] = [exc]
    while chain:
        item = chain.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, aiohttp.ClientResponseError):
            info = item.request_info
            kept = info.headers.copy()
            kept.popall("Authorization", None)
            item.request_info = info._replace(headers=type(info.headers)(kept))
            item.args = (item.request_info, item.history)
        try:
            shown = f"{item!r} {item!s} {item.args!r}"
        except Exception:  # an exception whose repr fails cannot be checked, so it is not kept
            return False
        if any(secret in shown for secret in secrets):
            return False
        chain.extend(e for e in (item.__cause__, item.__context__) if e is not None)
    return True
