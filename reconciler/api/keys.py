"""Roles, scopes and tokens of the operator API (docs/api.md §2). Pure: no I/O.

A token is `rk_` and 32 random bytes in URL-safe base64 (43 characters), shown once when its key is
created; only its SHA-256 (hex) is stored, and a key is found by that hash. A role's scopes are computed
here at request time, so a role can grow without a migration.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from enum import StrEnum

from reconciler.safe_text import UNSAFE_TEXT


class Role(StrEnum):
    """What an API key may do; `api_keys.role` holds the value."""

    READ_ONLY = "read-only"
    LICENSE_ISSUER = "license-issuer"
    SUPPORT = "support"
    FULL_ADMIN = "full-admin"


READS: tuple[str, ...] = ("invoices:read", "reviews:read", "audit:read", "providers:read", "instances:read")
WRITES: tuple[str, ...] = (
    "licenses:write",  # settle a flagged invoice: issues its license
    "invoices:write",  # re-check an invoice now
    "reviews:write",  # dismiss a review item
    "tasks:write",  # retry a failed post-settle task
    "providers:write",  # pause / resume a provider
)
#: Held by the master key alone, never by a role: creating, listing and revoking API keys.
MANAGE_KEYS = "api-keys:manage"

_ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.READ_ONLY: frozenset(READS),
    Role.LICENSE_ISSUER: frozenset((*READS, "licenses:write")),
    Role.SUPPORT: frozenset((*READS, "licenses:write", "invoices:write", "reviews:write", "tasks:write")),
    Role.FULL_ADMIN: frozenset((*READS, *WRITES)),
}
MASTER_SCOPES: frozenset[str] = frozenset((*READS, *WRITES, MANAGE_KEYS))

TOKEN_PREFIX = "rk_"
_TOKEN = re.compile(r"rk_[A-Za-z0-9_-]{43}")


def scopes(role: str) -> frozenset[str]:
    """The scopes of `role` now; none for a role this release does not know (a newer writer's)."""
    try:
        return _ROLE_SCOPES[Role(role)]
    except ValueError:
        return frozenset()


def new_token() -> str:
    """A fresh token: `rk_` + 32 random bytes, URL-safe base64 without padding."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def well_formed(token: str) -> bool:
    """Whether `token` has the shape of one of our tokens (cheap, before any lookup)."""
    return _TOKEN.fullmatch(token) is not None


def token_hash(token: str) -> str:
    """What `api_keys.token_hash` stores for `token`: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_label(label: object, *, limit: int = 200) -> str:
    """A key's label as given (1 to `limit` characters, not only spaces, no control characters); ValueError
    saying what is wrong otherwise."""
    if not isinstance(label, str) or not label.strip():
        raise ValueError("label: required, a non-empty string (who holds the key, what for)")
    if len(label) > limit:
        raise ValueError(f"label: at most {limit} characters (got {len(label)})")
    if UNSAFE_TEXT.search(label):
        raise ValueError("label: control characters are not accepted")
    return label


def check_role(role: object) -> Role:
    """`role` as a Role; ValueError naming the roles otherwise."""
    try:
        return Role(role) if isinstance(role, str) else Role("")
    except ValueError:
        raise ValueError(f"role: one of {', '.join(r.value for r in Role)}") from None
