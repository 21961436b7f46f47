"""Licenses (docs/licenses.md): which policy applies, the terms it grants, and the signed LIC1 key.

Pure: no database and no clock; every time is a parameter. The key is Keysat's payload v2, so the
published SDKs (e.g. ``keysat_licensing_client``) verify it offline::

    LIC1-<base32(payload)>-<base32(Ed25519 signature over payload)>

    [0] version 2  [1] flags (bit 0 fingerprint-bound, bit 1 trial)  [2:18] product id  [18:34] license id
    [34:42] issued_at u64  [42:50] expires_at u64 (0 = perpetual)  [50:82] fingerprint hash
    [82] entitlement count, then each entitlement as <u8 length><UTF-8 bytes>      (all big-endian)
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler import errors
from reconciler.models import Policy, UnreadablePolicy

PAYLOAD_VERSION = 2
FLAG_FINGERPRINT_BOUND = 0b01
FLAG_TRIAL = 0b10
KEY_PREFIX = "LIC1"

_HEAD = struct.Struct(">BB16s16sQQ32sB")  # everything up to and including the entitlement count
_NO_FINGERPRINT = bytes(32)
_MAX_ITEMS = 255
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def choose_policy(
    invoice_policy: Policy | UnreadablePolicy | None, product_policies: Sequence[Policy | UnreadablePolicy]
) -> Policy | UnreadablePolicy | None:
    """The invoice's own policy (even if inactive); else the product's active `default`; else its first
    active policy by (created_at, id); else None.

    An unreadable policy is returned when the choice depends on it (it is the invoice's own, or there is no
    readable active `default` and an unreadable active policy could be the one chosen): the invoice cannot be
    licensed until it is fixed, and the caller quarantines it.
    """
    if invoice_policy is not None:
        return invoice_policy
    readable = [p for p in product_policies if isinstance(p, Policy) and p.active]
    unreadable = [p for p in product_policies if isinstance(p, UnreadablePolicy)]
    for policy in readable:
        if policy.slug == "default":
            return policy
    if unreadable:
        return unreadable[0]
    return min(readable, key=lambda policy: (policy.created_at, policy.id), default=None)


@dataclass(frozen=True, slots=True)
class LicenseTerms:
    """What a license row holds besides its ids; times at the precision given (the key truncates)."""

    policy_id: str | None
    issued_at: datetime
    expires_at: datetime | None
    is_trial: bool
    grace_seconds: int
    max_machines: int
    entitlements: tuple[str, ...]


def license_terms(policy: Policy | None, issued_at: datetime) -> LicenseTerms:
    """The terms `policy` grants a license issued at `issued_at`; no policy means perpetual, bare."""
    if policy is None:
        return LicenseTerms(
            policy_id=None,
            issued_at=issued_at,
            expires_at=None,
            is_trial=False,
            grace_seconds=0,
            max_machines=1,
            entitlements=(),
        )
    recurring_trial = policy.is_recurring and policy.trial_days > 0
    if recurring_trial:
        expires_at: datetime | None = issued_at + timedelta(days=policy.trial_days)
    elif policy.duration_seconds:
        expires_at = issued_at + timedelta(seconds=policy.duration_seconds)
    else:
        expires_at = None
    return LicenseTerms(
        policy_id=policy.id,
        issued_at=issued_at,
        expires_at=expires_at,
        is_trial=policy.is_trial or recurring_trial,
        grace_seconds=policy.grace_seconds,
        max_machines=policy.max_machines,
        entitlements=policy.entitlements,
    )


@dataclass(frozen=True, slots=True)
class SubscriptionTerms:
    """The schedule of a new subscription row (docs/licenses.md §5, recurring policy)."""

    period_days: int
    started_at: datetime
    next_renewal_at: datetime


def subscription_terms(policy: Policy | None, started_at: datetime) -> SubscriptionTerms | None:
    """The subscription a recurring `policy` starts at `started_at`; None when it is not recurring."""
    if policy is None or not policy.is_recurring:
        return None
    period_days = max(policy.renewal_period_days, 1)
    first_days = policy.trial_days if policy.trial_days > 0 else period_days
    return SubscriptionTerms(period_days, started_at, started_at + timedelta(days=first_days))


def encode_payload(
    *,
    product_id: str,
    license_id: str,
    issued_at: datetime,
    expires_at: datetime | None,
    entitlements: Sequence[str],
    trial: bool,
) -> bytes:
    """The payload v2 bytes of a purchase key (never fingerprint-bound).

    Raises LicenseEncodingError for what the format cannot hold: an id that is not a UUID, a time
    before the epoch, more than 255 entitlements or a slug over 255 bytes.
    """
    if len(entitlements) > _MAX_ITEMS:
        raise errors.LicenseEncodingError(
            f"{len(entitlements)} entitlements cannot be encoded: a LIC1 key holds at most {_MAX_ITEMS}"
        )
    tail = bytearray()
    for slug in entitlements:
        raw = slug.encode("utf-8")
        if len(raw) > _MAX_ITEMS:
            raise errors.LicenseEncodingError(
                f"entitlement {slug[:40]!r}… is {len(raw)} bytes: a LIC1 key holds slugs of at most "
                f"{_MAX_ITEMS} bytes"
            )
        tail += bytes((len(raw),)) + raw
    head = _HEAD.pack(
        PAYLOAD_VERSION,
        FLAG_TRIAL if trial else 0,
        _uuid_bytes("product id", product_id),
        _uuid_bytes("license id", license_id),
        _unix_seconds("issued_at", issued_at, minimum=0),
        # 0 means perpetual, so an expiry must land at least one whole second after the epoch.
        0 if expires_at is None else _unix_seconds("expires_at", expires_at, minimum=1),
        _NO_FINGERPRINT,
        len(entitlements),
    )
    return head + bytes(tail)


def format_key(payload: bytes, signature: bytes) -> str:
    """`LIC1-<payload>-<signature>`, each RFC 4648 base32, upper case, without padding."""
    return f"{KEY_PREFIX}-{_b32(payload)}-{_b32(signature)}"


def sign_license(
    private_key: Ed25519PrivateKey, *, product_id: str, license_id: str, terms: LicenseTerms
) -> str:
    """The signed license key for `terms`; LicenseEncodingError when they cannot be encoded."""
    payload = encode_payload(
        product_id=product_id,
        license_id=license_id,
        issued_at=terms.issued_at,
        expires_at=terms.expires_at,
        entitlements=terms.entitlements,
        trial=terms.is_trial,
    )
    return format_key(payload, private_key.sign(payload))


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PKCS#8 PEM file `path`; SigningKeyError (one line) otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise errors.SigningKeyError(
            f"signing key file {path} does not exist: create one with `reconciler keygen --out {path}` "
            "or point [license] signing_key_file at an existing key"
        ) from exc
    except PermissionError as exc:
        raise errors.SigningKeyError(
            f"signing key file {path} is not readable by this user (permission denied): fix its owner "
            "or mode, or pass it as a systemd credential (LoadCredential=)"
        ) from exc
    except OSError as exc:
        raise errors.SigningKeyError(f"signing key file {path} cannot be read: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # raised by cryptography for a password-protected key
        raise errors.SigningKeyError(
            f"signing key file {path} is encrypted: the reconciler needs an unencrypted PKCS#8 PEM key"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise errors.SigningKeyError(
            f"signing key file {path} is not a PEM private key: expected an Ed25519 key in PKCS#8 PEM "
            "(`-----BEGIN PRIVATE KEY-----`), as `reconciler keygen` writes"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise errors.SigningKeyError(
            f"signing key file {path} is not an Ed25519 key ({type(key).__name__}): "
            "generate one with `reconciler keygen`"
        )
    return key


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """`key` as an unencrypted PKCS#8 PEM (the format Keysat keeps its issuer key in)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PrivateKey) -> str:
    """The SPKI PEM public key, what `keysat_licensing_client.PublicKey.from_pem` takes."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def write_new_key(path: Path) -> str:
    """Write a new signing key to `path` (mode 0600, never over an existing file); its public PEM.

    ConfigError when `path` exists or cannot be created.
    """
    key = generate_signing_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise errors.ConfigError(f"{path} already exists: will not overwrite a signing key") from exc
    except OSError as exc:
        raise errors.ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem(key))
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise errors.ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    return public_pem(key)


#: every pair of RFC 4648 base32 letters, indexed by the 10 bits they encode
_B32_PAIRS = [a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"]


def _b32(data: bytes) -> str:
    """RFC 4648 base32 of `data`, without padding: what `base64.b32encode(data)` writes less its `=`, from one
    integer ten bits at a time (the standard library's is Python too, and walks five bytes at a time)."""
    letters = (len(data) * 8 + 4) // 5
    pairs = (letters + 1) // 2
    value = int.from_bytes(data, "big") << (pairs * 10 - len(data) * 8)
    return "".join([_B32_PAIRS[(value >> shift) & 0x3FF] for shift in range(pairs * 10 - 10, -10, -10)])[
        :letters
    ]


_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _uuid_bytes(field: str, text: str) -> bytes:
    if _CANONICAL_UUID.fullmatch(text):  # the form ids are stored in: no need to build a uuid.UUID
        return bytes.fromhex(text.replace("-", ""))
    try:
        return uuid.UUID(text).bytes
    except ValueError as exc:
        raise errors.LicenseEncodingError(f"{field} {text!r} is not a UUID") from exc


def _unix_seconds(field: str, moment: datetime, *, minimum: int) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{field} must be timezone-aware")
    seconds = (moment - _EPOCH) // _SECOND
    if seconds < minimum:
        earliest = (_EPOCH + minimum * _SECOND).isoformat()
        raise errors.LicenseEncodingError(
            f"{field} {moment.isoformat()} cannot be encoded: a LIC1 key holds times from {earliest} on"
        )
    return seconds
