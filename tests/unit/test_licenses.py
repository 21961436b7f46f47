"""docs/licenses.md: policy choice, license terms, the LIC1 payload v2 and the signing key file."""

from __future__ import annotations

import base64
import os
import re
import stat
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import keysat_licensing_client as sdk
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from reconciler import errors, licenses
from reconciler.models import Policy
from tests.support import license_payload

PRODUCT = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
LICENSE = "11111111-2222-4333-8444-555555555555"
ISSUED = datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC)
SIGNING_KEY = Ed25519PrivateKey.generate()
KEY_FORMAT = re.compile(r"^LIC1-[A-Z2-7]+-[A-Z2-7]+$")


def policy(slug: str = "p", **fields: Any) -> Policy:
    return Policy(id=fields.pop("id", f"pol-{slug}"), product_id=PRODUCT, slug=slug, **fields)


def b32decode(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def unix(moment: datetime) -> int:
    return int(moment.replace(microsecond=0).timestamp())


# --- policy choice ---------------------------------------------------------------------------------


def test_invoice_policy_wins_even_when_inactive() -> None:
    own = policy(slug="old", active=False)
    assert licenses.choose_policy(own, [policy(slug="default")]) is own


def test_active_default_slug_comes_next() -> None:
    first = policy(slug="basic", created_at="2020-01-01T00:00:00.000000Z")
    default = policy(slug="default", created_at="2024-01-01T00:00:00.000000Z")
    assert licenses.choose_policy(None, [first, default]) is default


def test_inactive_default_is_passed_over_for_first_active_by_created_at_then_id() -> None:
    ts = "2024-01-01T00:00:00.000000Z"
    candidates = [
        policy(slug="default", active=False, created_at="2019-01-01T00:00:00.000000Z"),
        policy(id="b", slug="later-id", created_at=ts),
        policy(id="a", slug="earlier-id", created_at=ts),
        policy(id="0", slug="newer", created_at="2025-01-01T00:00:00.000000Z"),
    ]
    chosen = licenses.choose_policy(None, candidates)
    assert chosen is not None
    assert chosen.slug == "earlier-id"


def test_no_active_policy_means_none() -> None:
    assert licenses.choose_policy(None, []) is None
    assert licenses.choose_policy(None, [policy(slug="default", active=False)]) is None


# --- terms -----------------------------------------------------------------------------------------


def test_no_policy_is_perpetual_and_bare() -> None:
    terms = licenses.license_terms(None, ISSUED)
    assert terms == licenses.LicenseTerms(None, ISSUED, None, False, 0, 1, ())


def test_duration_policy_expires_after_duration_and_keeps_its_fields() -> None:
    pol = policy(duration_seconds=3600, grace_seconds=60, max_machines=3, entitlements=("pro", "sync"))
    terms = licenses.license_terms(pol, ISSUED)
    assert terms == licenses.LicenseTerms(
        pol.id, ISSUED, ISSUED + timedelta(hours=1), False, 60, 3, ("pro", "sync")
    )


def test_zero_duration_is_perpetual_and_is_trial_flag_is_kept() -> None:
    terms = licenses.license_terms(policy(is_trial=True), ISSUED)
    assert terms.expires_at is None
    assert terms.is_trial


def test_recurring_with_trial_expires_after_trial_and_is_a_trial() -> None:
    pol = policy(is_recurring=True, trial_days=1, duration_seconds=999, renewal_period_days=30)
    terms = licenses.license_terms(pol, ISSUED)
    assert terms.expires_at == ISSUED + timedelta(seconds=86_400)
    assert terms.is_trial


def test_recurring_without_trial_uses_duration_and_is_not_a_trial() -> None:
    terms = licenses.license_terms(policy(is_recurring=True, duration_seconds=120), ISSUED)
    assert terms.expires_at == ISSUED + timedelta(seconds=120)
    assert not terms.is_trial


def test_trial_days_without_recurring_neither_expire_nor_flag() -> None:
    terms = licenses.license_terms(policy(trial_days=7), ISSUED)
    assert terms.expires_at is None
    assert not terms.is_trial


def test_subscription_terms() -> None:
    assert licenses.subscription_terms(None, ISSUED) is None
    assert licenses.subscription_terms(policy(trial_days=7), ISSUED) is None
    trial = licenses.subscription_terms(
        policy(is_recurring=True, trial_days=1, renewal_period_days=30), ISSUED
    )
    assert trial == licenses.SubscriptionTerms(30, ISSUED, ISSUED + timedelta(days=1))
    plain = licenses.subscription_terms(policy(is_recurring=True, renewal_period_days=30), ISSUED)
    assert plain == licenses.SubscriptionTerms(30, ISSUED, ISSUED + timedelta(days=30))
    at_least_a_day = licenses.subscription_terms(policy(is_recurring=True), ISSUED)
    assert at_least_a_day == licenses.SubscriptionTerms(1, ISSUED, ISSUED + timedelta(days=1))


# --- payload v2 ------------------------------------------------------------------------------------


def test_payload_bytes_at_their_offsets() -> None:
    payload = licenses.encode_payload(
        product_id=PRODUCT,
        license_id=LICENSE,
        issued_at=ISSUED,
        expires_at=datetime(2026, 2, 1, 3, 4, 5, 500_000, tzinfo=UTC),
        entitlements=["pro", "ünï", ""],
        trial=True,
    )
    tail = b"\x03pro" + bytes([len("ünï".encode())]) + "ünï".encode() + b"\x00"
    assert payload[0] == 2
    assert payload[1] == 0b10
    assert payload[2:18] == bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert payload[18:34] == bytes.fromhex("11111111222243338444555555555555")
    assert payload[34:42] == struct.pack(">Q", 1767323045)
    assert payload[42:50] == struct.pack(">Q", 1769915045)
    assert payload[50:82] == bytes(32)
    assert payload[82] == 3
    assert payload[83:] == tail


def test_perpetual_purchase_has_zero_expiry_and_no_flags() -> None:
    payload = licenses.encode_payload(
        product_id=PRODUCT,
        license_id=LICENSE,
        issued_at=ISSUED,
        expires_at=None,
        entitlements=[],
        trial=False,
    )
    assert (
        payload
        == b"\x02\x00"
        + uuid.UUID(PRODUCT).bytes
        + uuid.UUID(LICENSE).bytes
        + struct.pack(">QQ", 1767323045, 0)
        + bytes(32)
        + b"\x00"
    )


def encode(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "product_id": PRODUCT,
        "license_id": LICENSE,
        "issued_at": ISSUED,
        "expires_at": None,
        "entitlements": (),
        "trial": False,
    }
    fields.update(overrides)
    return licenses.encode_payload(**fields)


def test_largest_encodable_entitlements_round_trip() -> None:
    slugs = tuple("é" * 127 + str(i % 10) for i in range(255))  # 255 slugs of 255 bytes each
    assert license_payload.decode_payload(encode(entitlements=slugs)).entitlements == slugs


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"entitlements": ["x"] * 256}, "256 entitlements"),
        ({"entitlements": ["ok", "é" * 128]}, "256 bytes"),
        ({"product_id": "not-a-uuid"}, "product id"),
        ({"license_id": "42"}, "license id"),
        ({"issued_at": datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)}, "issued_at"),
        ({"expires_at": datetime(1970, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)}, "expires_at"),
    ],
)
def test_what_the_format_cannot_hold_raises(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(errors.LicenseEncodingError, match=complaint):
        encode(**overrides)


def test_naive_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        encode(issued_at=ISSUED.replace(tzinfo=None))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01" + bytes(82),
        bytes([2, 0]) + bytes(80),
        bytes([2, 0]) + bytes(80) + b"\x01",
        bytes([2, 0]) + bytes(80) + b"\x01\x05abc",
        bytes([2, 0]) + bytes(80) + b"\x01\x01\xff",
        bytes([2, 0]) + bytes(80) + b"\x00\x00",
    ],
    ids=["empty", "version1", "short", "missing-length", "overlong-slug", "not-utf8", "trailing"],
)
def test_decode_rejects_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(errors.LicenseEncodingError):
        license_payload.decode_payload(payload)


moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
expiries = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 1, 0, 0, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
slugs = st.lists(st.text(max_size=63), max_size=12)  # 63 code points are at most 252 UTF-8 bytes


@given(st.uuids(), st.uuids(), moments, expiries, slugs, st.booleans())
def test_round_trip(
    product: uuid.UUID,
    license_: uuid.UUID,
    issued: datetime,
    expires: datetime | None,
    entitlements: list[str],
    trial: bool,
) -> None:
    payload = licenses.encode_payload(
        product_id=str(product),
        license_id=str(license_),
        issued_at=issued,
        expires_at=expires,
        entitlements=entitlements,
        trial=trial,
    )
    decoded = license_payload.decode_payload(payload)
    assert decoded.trial is trial
    assert not decoded.fingerprint_bound
    assert decoded == license_payload.DecodedPayload(
        version=2,
        flags=0b10 if trial else 0,
        product_id=str(product),
        license_id=str(license_),
        issued_at=issued.replace(microsecond=0),
        expires_at=None if expires is None else expires.replace(microsecond=0),
        fingerprint=bytes(32),
        entitlements=tuple(entitlements),
    )


@given(st.binary(min_size=1, max_size=200), st.binary(min_size=64, max_size=64))
def test_key_format(payload: bytes, signature: bytes) -> None:
    key = licenses.format_key(payload, signature)
    assert KEY_FORMAT.match(key)
    _, payload_b32, signature_b32 = key.split("-")
    assert (b32decode(payload_b32), b32decode(signature_b32)) == (payload, signature)


# --- signing ---------------------------------------------------------------------------------------


def test_signature_verifies_with_cryptography_alone() -> None:
    terms = licenses.license_terms(policy(entitlements=("pro",)), ISSUED)
    key = licenses.sign_license(SIGNING_KEY, product_id=PRODUCT, license_id=LICENSE, terms=terms)
    assert KEY_FORMAT.match(key)
    _, payload_b32, signature_b32 = key.split("-")
    payload, signature = b32decode(payload_b32), b32decode(signature_b32)
    SIGNING_KEY.public_key().verify(signature, payload)
    tampered = payload[:-1] + b"X"
    with pytest.raises(InvalidSignature):
        SIGNING_KEY.public_key().verify(signature, tampered)


@pytest.mark.parametrize(
    "pol",
    [
        policy(slug="perpetual", entitlements=("pro", "sync")),
        policy(slug="yearly", duration_seconds=365 * 86_400, entitlements=("pro",)),
        policy(slug="trial", is_recurring=True, trial_days=14, renewal_period_days=30),
    ],
    ids=lambda pol: pol.slug,
)
def test_published_sdk_reads_our_key(pol: Policy) -> None:
    terms = licenses.license_terms(pol, ISSUED)
    key = licenses.sign_license(SIGNING_KEY, product_id=PRODUCT, license_id=LICENSE, terms=terms)
    verifier = sdk.Verifier(sdk.PublicKey.from_pem(licenses.public_pem(SIGNING_KEY)))
    ok = verifier.verify(key)
    assert str(ok.product_id) == PRODUCT
    assert str(ok.license_id) == LICENSE
    assert ok.issued_at == unix(ISSUED)
    assert ok.expires_at == (0 if terms.expires_at is None else unix(terms.expires_at))
    assert ok.is_trial is terms.is_trial
    assert ok.is_trial is (pol.slug == "trial")
    assert not ok.is_fingerprint_bound
    assert ok.entitlements == list(pol.entitlements)
    with pytest.raises(sdk.LicensingError):
        sdk.Verifier(sdk.PublicKey.from_pem(licenses.public_pem(Ed25519PrivateKey.generate()))).verify(key)


# --- the signing key file --------------------------------------------------------------------------


def test_load_signing_key_reads_what_private_pem_writes(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(licenses.private_pem(SIGNING_KEY))
    loaded = licenses.load_signing_key(path)
    assert licenses.public_pem(loaded) == licenses.public_pem(SIGNING_KEY)


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"hello, not a key\n", "not a PEM private key"),
        (licenses.public_pem(SIGNING_KEY).encode(), "not a PEM private key"),
        (pkcs8(rsa.generate_private_key(65537, 2048)), "not an Ed25519 key"),
        (pkcs8(ec.generate_private_key(ec.SECP256R1())), "not an Ed25519 key"),
        (
            SIGNING_KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
    ],
    ids=["text", "public-key", "rsa", "ec", "encrypted"],
)
def test_load_signing_key_refuses_what_is_not_an_ed25519_private_key(
    tmp_path: Path, content: bytes, complaint: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    with pytest.raises(errors.SigningKeyError, match=complaint) as caught:
        licenses.load_signing_key(path)
    message = caught.value.message
    assert str(path) in message
    assert "\n" not in message
    body = [line for line in content.decode(errors="replace").splitlines() if line and "-----" not in line]
    assert not any(line in message for line in body)


def test_load_signing_key_missing_file_names_keygen(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(errors.SigningKeyError, match="does not exist") as caught:
        licenses.load_signing_key(path)
    assert str(path) in caught.value.message
    assert "reconciler keygen" in caught.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_load_signing_key_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(licenses.private_pem(SIGNING_KEY))
    path.chmod(0)
    with pytest.raises(errors.SigningKeyError, match="permission denied"):
        licenses.load_signing_key(path)


def test_load_signing_key_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(errors.SigningKeyError, match="cannot be read"):
        licenses.load_signing_key(tmp_path)


def test_write_new_key_creates_a_private_file_matching_its_public_pem(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    public = licenses.write_new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert licenses.public_pem(licenses.load_signing_key(path)) == public


def test_write_new_key_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    path.write_bytes(b"the operator's key")
    with pytest.raises(errors.ConfigError, match="will not overwrite") as caught:
        licenses.write_new_key(path)
    assert str(path) in caught.value.message
    assert path.read_bytes() == b"the operator's key"


def test_write_new_key_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot create"):
        licenses.write_new_key(tmp_path / "absent" / "key.pem")


def test_a_settle_plan_names_its_license_and_subscription_with_time_ordered_uuid7s() -> None:
    """New license and subscription rows go to the end of their id index, not to a random page of it."""
    from reconciler import settlement
    from reconciler.models import Invoice, InvoiceStatus

    key = Ed25519PrivateKey.generate()
    now = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    product = str(uuid.uuid4())
    policy = Policy(str(uuid.uuid4()), product, "monthly", is_recurring=True, renewal_period_days=30)
    license_ids: list[str] = []
    subscription_ids: list[str] = []
    for n in range(3):
        invoice = Invoice(
            str(uuid.uuid4()),
            "btcpay",
            f"inv-{n}",
            product,
            policy.id,
            InvoiceStatus.PENDING,
            1000,
            None,
            None,
            None,
            None,
            now - timedelta(minutes=30),
        )
        plan = settlement.plan(
            invoice, policy, provider_id="btcpay", post_settle_kinds=(), now=now, signing_key=key
        )
        assert isinstance(plan, settlement.Plan) and plan.license and plan.subscription
        license_ids.append(plan.license.id)
        subscription_ids.append(plan.subscription.id)
    for ids in (license_ids, subscription_ids):
        parsed = [uuid.UUID(i) for i in ids]
        assert all(u.version == 7 and str(u) == i for u, i in zip(parsed, ids, strict=True))
        assert all(u.int >> 80 == int(now.timestamp() * 1000) for u in parsed)
        assert ids == sorted(ids) and len(set(ids)) == 3


@given(st.binary(max_size=300))
def test_the_key_base32_is_rfc4648_without_padding(data: bytes) -> None:
    assert licenses._b32(data) == base64.b32encode(data).decode("ascii").rstrip("=")


@given(
    st.uuids(),
    st.sampled_from([str, lambda u: str(u).upper(), lambda u: "{" + str(u) + "}", lambda u: u.hex]),
)
def test_a_uuid_encodes_to_its_16_bytes_in_any_form_uuid_accepts(value: uuid.UUID, form: Any) -> None:
    assert licenses._uuid_bytes("license id", form(value)) == value.bytes
