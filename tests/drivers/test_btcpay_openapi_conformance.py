"""The fake BTCPay Server against the published swagger templates, and the OpenAPI tooling it uses.

Every response the fake can serve validates strictly against ``../shared/fixtures/btcpay-openapi``,
except through a named deviation; each deviation is shown both necessary and sufficient on its own.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import btcpay, openapi
from tests.fakes.btcpay import Payment, make_invoice
from tests.fakes.raw import RawAnswer

AUTH = {"Authorization": f"token {btcpay.API_KEY}"}
INVOICES = f"/api/v1/stores/{btcpay.STORE_ID}/invoices"
PAYMENTS = [
    Payment("0.0004", "Settled", "BTC-CHAIN"),
    Payment("0.00060000999", "Settled", "BTC-LN"),
    Payment("0.0001", "Processing", "BTC-LNURL"),
    Payment("0.2", "Invalid", "BTC-CHAIN"),
    Payment("3", "Settled", "LTC-CHAIN"),
]


async def fetch(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> int:
    async with session.get(url, headers=AUTH if headers is None else headers) as response:
        await response.read()
        return response.status


def test_the_fakes_status_lists_are_the_documents_enums(btcpay_document: openapi.OpenAPIDocument) -> None:
    assert tuple(btcpay_document.component_schema("InvoiceStatus")["enum"]) == btcpay.STATUSES
    assert (
        tuple(btcpay_document.component_schema("InvoiceAdditionalStatus")["enum"])
        == btcpay.ADDITIONAL_STATUSES
    )


@pytest.mark.parametrize("generation", ["v1", "v2"])
async def test_every_response_the_fake_serves_conforms(
    btcpay_document: openapi.OpenAPIDocument, btcpay_session: aiohttp.ClientSession, generation: str
) -> None:
    async with btcpay.FakeBTCPay() as fake:  # one server generation at a time, as in real life
        base = fake.base_url
        combos = itertools.product(
            (*btcpay.STATUSES, *btcpay.LEGACY_STATUSES, "Refunded"),
            (*btcpay.ADDITIONAL_STATUSES, "PaidLater"),
            (("0.001", "BTC"), ("100000", "SATS"), ("49.99", "USD")),
        )
        urls = []
        for n, (status, additional, (amount, currency)) in enumerate(combos):
            invoice_id = f"inv{n}"
            fake.add(make_invoice(invoice_id, status, additional, amount, currency, PAYMENTS, generation))
            urls += [
                f"{base}{INVOICES}/{invoice_id}",
                f"{base}{INVOICES}/{invoice_id}?includePaymentMethods=true",
                f"{base}{INVOICES}/{invoice_id}/payment-methods",
                f"{base}{INVOICES}/{invoice_id}/payment-methods?onlyAccountedPayments=false",
            ]
        fake.add(make_invoice("theirs", store_id="another-store"))
        urls += [
            f"{base}{INVOICES}",
            f"{base}{INVOICES}?includePaymentMethods=true&take=50",
            f"{base}/api/v1/health",
            f"{base}/api/v1/api-keys/current",
            f"{base}{INVOICES}/missing",
            f"{base}{INVOICES}/theirs",
            f"{base}/api/v1/stores/another-store/invoices/theirs",
        ]
        for url in urls:
            await fetch(btcpay_session, url)
        for url in (f"{base}{INVOICES}/inv0", f"{base}/api/v1/api-keys/current", f"{base}/api/v1/health"):
            await fetch(btcpay_session, url, {"Authorization": "token wrong"})
        for injected in (400, 408, 429, 500, 502, 503):
            fake.fault("inv0", statuses=[injected], retry_after="5")
            await fetch(btcpay_session, f"{base}{INVOICES}/inv0")

    checked = btcpay.validate_exchanges(btcpay_document, fake.log)

    assert checked == len(fake.log) == len(urls) + 3 + 6
    assert {e.status for e in fake.log} >= {200, 401, 403, 404, 408, 429, 500, 503}


Scenario = Callable[[btcpay.FakeBTCPay, aiohttp.ClientSession], Awaitable[int]]


async def _include_payment_methods(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1", "Settled", payments=PAYMENTS))
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1?includePaymentMethods=true")


async def _v1_payment_method_fields(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1", "Settled", payments=PAYMENTS, generation="v1"))
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1/payment-methods")


async def _legacy_status(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1", "Complete"))
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1")


async def _future_status(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1", "Refunded", "PaidBack"))
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1")


async def _problem_details_bodies(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    return await fetch(session, f"{fake.base_url}{INVOICES}/missing")


async def _validation_problem_bodies(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    return await fetch(session, f"{fake.base_url}{INVOICES}?startDate=yesterday")


async def _api_keys_current(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    return await fetch(session, f"{fake.base_url}/api/v1/api-keys/current")


async def _injected_error_status(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1"))
    fake.fault("inv1", statuses=[503])
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1")


async def _fault_garbage_body(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1"))
    fake.fault("inv1", garbage=True)
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1")


async def _fault_wrong_shape(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.add(make_invoice("inv1"))
    fake.fault("inv1", wrong_shape={"status": 7})
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1")


async def _fault_raw_answer(fake: btcpay.FakeBTCPay, session: aiohttp.ClientSession) -> int:
    fake.fault("inv1", answers=[RawAnswer(200, b'{"status": 7}', {"Retry-After": "\u00b2"})])
    return await fetch(session, f"{fake.base_url}{INVOICES}/inv1")


SCENARIOS: dict[str, Scenario] = {
    "include-payment-methods": _include_payment_methods,
    "v1-payment-method-fields": _v1_payment_method_fields,
    "legacy-status": _legacy_status,
    "future-status": _future_status,
    "problem-details-bodies": _problem_details_bodies,
    "validation-problem-bodies": _validation_problem_bodies,
    "api-keys-current": _api_keys_current,
    "injected-error-status": _injected_error_status,
    "fault-garbage-body": _fault_garbage_body,
    "fault-wrong-shape": _fault_wrong_shape,
    "fault-raw-answer": _fault_raw_answer,
}


def test_every_deviation_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(btcpay.DEVIATIONS)
    assert all(d.why for d in btcpay.DEVIATIONS.values())


@pytest.mark.parametrize("name", sorted(btcpay.DEVIATIONS))
async def test_each_deviation_is_needed_and_enough(
    btcpay_document: openapi.OpenAPIDocument,
    btcpay_fake: btcpay.FakeBTCPay,
    btcpay_session: aiohttp.ClientSession,
    name: str,
) -> None:
    await SCENARIOS[name](btcpay_fake, btcpay_session)
    (exchange,) = btcpay_fake.log
    assert name in exchange.deviations
    route = exchange.route
    assert exchange.status is not None and route is not None

    def validate(names: tuple[str, ...]) -> None:
        assert exchange.status is not None and route is not None
        deviations = [btcpay.DEVIATIONS[n] for n in names]
        btcpay_document.validate_response(
            exchange.method, route, exchange.status, exchange.body, deviations=deviations
        )

    validate(exchange.deviations)
    with pytest.raises(AssertionError):
        validate(tuple(n for n in exchange.deviations if n != name))


# --- the OpenAPI tooling on small documents ---------------------------------------------------------


def document(schema: dict[str, Any], **responses: Any) -> openapi.OpenAPIDocument:
    return openapi.OpenAPIDocument(
        {
            "paths": {
                "/things/{id}": {
                    "parameters": [{"name": "id", "in": "path"}],
                    "get": {
                        "responses": {
                            "200": {"content": {"application/json": {"schema": schema}}},
                            "404": {"description": "no body"},
                            **responses,
                        }
                    },
                }
            },
            "components": {
                "schemas": {
                    "Base": {"properties": {"a": {"type": "string", "nullable": True}}},
                    "Kind": {"type": "string", "enum": ["x", "y"]},
                    "Closed": {
                        "allOf": [
                            {"$ref": "#/components/schemas/Base"},
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"b": {"type": "integer"}},
                            },
                        ]
                    },
                },
                "responses": {"problem": {"content": {"application/json": {"schema": {"type": "object"}}}}},
            },
        },
        aliases={"/v2/things/{id}": "/things/{id}"},
    )


def test_nullable_and_enum_translation() -> None:
    doc = document(
        {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["x"], "nullable": True},
                "ref": {"allOf": [{"$ref": "#/components/schemas/Kind"}], "nullable": True},
                "count": {"type": "integer", "format": "int32", "x-vendor": 1, "example": 3},
            },
        }
    )

    doc.validate_response("get", "/things/{id}", 200, {"kind": None, "ref": None, "count": 3})
    doc.validate_response("get", "/v2/things/{id}", 200, {"kind": "x", "ref": "y"})
    with pytest.raises(AssertionError, match=r"\$\.ref"):
        doc.validate_response("get", "/things/{id}", 200, {"ref": "z"})
    with pytest.raises(AssertionError, match="int32"):
        doc.validate_response("get", "/things/{id}", 200, {"count": 2**31})


def test_closed_all_of_is_merged_into_one_object() -> None:
    doc = document({"$ref": "#/components/schemas/Closed"})

    doc.validate_response("get", "/things/{id}", 200, {"a": None, "b": 1})
    with pytest.raises(AssertionError, match="'c' was unexpected"):
        doc.validate_response("get", "/things/{id}", 200, {"a": "x", "c": 1})


@pytest.mark.parametrize(
    ("value", "ok"), [("1", True), ("-0.00000001", True), ("1e5", False), ("1.", False), (1, False)]
)
def test_decimal_strings(value: Any, ok: bool) -> None:
    doc = document({"type": "string", "format": "decimal"})
    if ok:
        doc.validate_response("get", "/things/{id}", 200, value)
    else:
        with pytest.raises(AssertionError):
            doc.validate_response("get", "/things/{id}", 200, value)


def test_exclusive_bounds_become_numbers() -> None:
    doc = document({"type": "number", "minimum": 0, "exclusiveMinimum": True})

    doc.validate_response("get", "/things/{id}", 200, 0.5)
    with pytest.raises(AssertionError):
        doc.validate_response("get", "/things/{id}", 200, 0)


def test_responses_without_content_have_no_body_and_undocumented_ones_fail() -> None:
    doc = document({"type": "object"}, default={"$ref": "#/components/responses/problem"})

    doc.validate_response("get", "/things/{id}", 404, None)
    with pytest.raises(AssertionError, match="404"):
        doc.validate_response("get", "/things/{id}", 404, {"code": "x"})
    doc.validate_response("get", "/things/{id}", 503, {"code": "x"})  # "default"
    with pytest.raises(AssertionError, match="name a deviation"):
        document({"type": "object"}).validate_response("get", "/things/{id}", 503, {})
    with pytest.raises(AssertionError, match="not in the document"):
        doc.validate_response("post", "/things/{id}", 200, {})


def test_a_deviation_patches_a_copy() -> None:
    doc = document({"$ref": "#/components/schemas/Kind"})

    def allow_z(raw: dict[str, Any]) -> None:
        raw["components"]["schemas"]["Kind"]["enum"].append("z")

    deviation = openapi.Deviation("z", "servers send z", allow_z)
    doc.validate_response("get", "/things/{id}", 200, "z", deviations=[deviation])
    with pytest.raises(AssertionError):
        doc.validate_response("get", "/things/{id}", 200, "z")
    doc.validate_response(
        "get", "/things/{id}", 200, "<html>", deviations=[openapi.Deviation("f", "fault", None)]
    )


def test_loading_merges_fragments_and_refuses_conflicts(tmp_path: Path) -> None:
    shared = {"components": {"schemas": {"Id": {"type": "string"}}}}
    paths = {
        "paths": {
            "/a": {
                "get": {
                    "responses": {
                        "200": {
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Id"}}}
                        }
                    }
                }
            }
        }
    }
    (tmp_path / "shared.json").write_text(json.dumps(shared))
    (tmp_path / "paths.json").write_text(json.dumps(paths))

    doc = openapi.OpenAPIDocument.load(tmp_path / "shared.json", tmp_path / "paths.json")
    assert doc.response_schema("get", "/a", 200) == {"type": "string"}

    (tmp_path / "other.json").write_text(json.dumps({"components": {"schemas": {"Id": {"type": "integer"}}}}))
    with pytest.raises(ValueError, match="redefines 'Id'"):
        openapi.OpenAPIDocument.load(tmp_path / "shared.json", tmp_path / "other.json")


def test_fixtures_dir_defaults_next_to_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECONCILER_FIXTURES", raising=False)
    repo = Path(__file__).resolve().parents[2]

    assert openapi.fixtures_dir() == repo.parent / "shared" / "fixtures"


def test_missing_fixtures_skip_locally_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECONCILER_FIXTURES", str(tmp_path / "absent"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="RECONCILER_FIXTURES"):
        openapi.require_fixtures("btcpay-openapi")

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="absent"):
        openapi.require_fixtures("btcpay-openapi")

    monkeypatch.setenv("RECONCILER_FIXTURES", str(tmp_path))
    assert openapi.require_fixtures() == tmp_path
