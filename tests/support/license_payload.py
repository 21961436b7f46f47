"""Reading a LIC1 payload v2 back, for tests (the reconciler only ever writes keys)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from reconciler import errors
from reconciler.licenses import _EPOCH, _HEAD, _SECOND, FLAG_FINGERPRINT_BOUND, FLAG_TRIAL, PAYLOAD_VERSION


@dataclass(frozen=True, slots=True)
class DecodedPayload:
    """A payload v2 read back: ids in canonical text, times as whole-second UTC datetimes."""

    version: int
    flags: int
    product_id: str
    license_id: str
    issued_at: datetime
    expires_at: datetime | None
    fingerprint: bytes
    entitlements: tuple[str, ...]

    @property
    def trial(self) -> bool:
        return bool(self.flags & FLAG_TRIAL)

    @property
    def fingerprint_bound(self) -> bool:
        return bool(self.flags & FLAG_FINGERPRINT_BOUND)


def decode_payload(payload: bytes) -> DecodedPayload:
    """Read payload v2 bytes back; LicenseEncodingError when they are not a well-formed payload v2."""
    if len(payload) < _HEAD.size or payload[0] != PAYLOAD_VERSION:
        raise errors.LicenseEncodingError(
            f"not a LIC1 payload v2: {len(payload)} bytes, version {payload[0] if payload else None}"
        )
    version, flags, product, license_, issued, expires, fingerprint, count = _HEAD.unpack_from(payload)
    entitlements: list[str] = []
    cursor = _HEAD.size
    for _ in range(count):
        if cursor >= len(payload) or cursor + 1 + payload[cursor] > len(payload):
            raise errors.LicenseEncodingError("LIC1 payload is truncated inside its entitlements")
        end = cursor + 1 + payload[cursor]
        try:
            entitlements.append(payload[cursor + 1 : end].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise errors.LicenseEncodingError("LIC1 payload has an entitlement that is not UTF-8") from exc
        cursor = end
    if cursor != len(payload):
        raise errors.LicenseEncodingError(f"LIC1 payload has {len(payload) - cursor} trailing bytes")
    return DecodedPayload(
        version=version,
        flags=flags,
        product_id=str(uuid.UUID(bytes=product)),
        license_id=str(uuid.UUID(bytes=license_)),
        issued_at=_EPOCH + issued * _SECOND,
        expires_at=None if expires == 0 else _EPOCH + expires * _SECOND,
        fingerprint=fingerprint,
        entitlements=tuple(entitlements),
    )
