"""BTCPay driver packaging, Settings validation, secrets hygiene and `check()` against the fake."""

from __future__ import annotations

import ast
import socket
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pydantic
import pytest
import reconciler_btcpay
from reconciler_btcpay import BTCPayDriver

from reconciler import driver_api
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay

SECRET = "s3cr3t-api-key-value"
VALID = {"base_url": "https://btcpay.example.com", "store_id": "9Cqd", "api_key": SECRET}


def settings(**overrides: Any) -> BTCPayDriver.Settings:
    return BTCPayDriver.Settings.model_validate({**VALID, **overrides})


def test_entry_point_loads_the_driver() -> None:
    (entry_point,) = [e for e in entry_points(group="reconciler.drivers") if e.name == "btcpay"]

    assert entry_point.load() is BTCPayDriver
    assert entry_point.dist is not None and entry_point.dist.name == "reconciler-btcpay"


async def test_driver_satisfies_the_protocol(btcpay_driver: BTCPayDriver) -> None:
    assert isinstance(btcpay_driver, driver_api.Driver)
    assert not isinstance(btcpay_driver, driver_api.SupportsFetchMany)
    assert not isinstance(btcpay_driver, driver_api.SupportsPostSettle)
    assert BTCPayDriver.post_settle_kinds == ()
    assert reconciler_btcpay.Settings is BTCPayDriver.Settings


def test_driver_imports_only_the_driver_api_from_the_core() -> None:
    package = Path(reconciler_btcpay.__file__).parent
    core_imports: set[str] = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                core_imports.update(a.name for a in node.names if a.name.split(".")[0] == "reconciler")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "reconciler":
                core_imports.update(f"{node.module}.{a.name}" for a in node.names)

    assert core_imports == {"reconciler.driver_api"}


def test_valid_settings() -> None:
    parsed = settings(base_url="http://127.0.0.1:8080/btcpay/")

    assert parsed.base_url == "http://127.0.0.1:8080/btcpay"
    assert parsed.store_id == "9Cqd"
    assert parsed.api_key.get_secret_value() == SECRET


@pytest.mark.parametrize(
    "overrides",
    [
        {"base_url": "ftp://btcpay.example.com"},
        {"base_url": "btcpay.example.com"},
        {"base_url": "https://"},
        {"base_url": "https://btcpay.example.com:notaport"},
        {"base_url": "https://user:pw@btcpay.example.com"},
        {"base_url": "https://btcpay.example.com/?x=1"},
        {"base_url": "https://btcpay.example.com/#x"},
        {"base_url": " https://btcpay.example.com"},
        {"store_id": ""},
        {"store_id": "a/b"},
        {"store_id": "a b"},
        {"api_key": ""},
        {"api_key": "two words"},
        {"api_key": "line\nbreak"},
        {"api_key_file": "/run/credentials/x"},  # resolved by the core, never seen here
        {"timeout": "10s"},  # core-owned keys are not the driver's
    ],
)
def test_invalid_settings(overrides: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        settings(**overrides)


def test_missing_settings() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        BTCPayDriver.Settings.model_validate({})

    assert {e["loc"][0] for e in caught.value.errors()} == {"base_url", "store_id", "api_key"}


def test_the_key_stays_out_of_reprs_and_validation_errors() -> None:
    parsed = settings()
    for text in (repr(parsed), str(parsed), str(parsed.model_dump())):
        assert SECRET not in text

    bad = f"{SECRET} trailing"
    with pytest.raises(pydantic.ValidationError) as caught:
        settings(api_key=bad, store_id="")
    assert SECRET not in str(caught.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        settings().store_id = "other"  # type: ignore[misc]


# --- check() ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "permissions",
    [
        [f"btcpay.store.canviewinvoices:{btcpay.STORE_ID}"],
        ["btcpay.store.canviewinvoices"],
        [f"btcpay.store.canmodifystoresettings:{btcpay.STORE_ID}"],
        ["unrestricted"],
    ],
)
async def test_check_accepts_a_key_that_can_view_the_stores_invoices(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, permissions: list[str]
) -> None:
    btcpay_fake.api_keys[btcpay.API_KEY] = permissions

    await btcpay_driver.check()

    (exchange,) = btcpay_fake.log
    assert (exchange.path, exchange.authorization) == ("/api/v1/api-keys/current", f"token {btcpay.API_KEY}")


@pytest.mark.parametrize(
    "permissions",
    [["btcpay.store.canviewinvoices:another-store"], ["btcpay.store.cancreateinvoice"], []],
)
async def test_check_refuses_a_key_without_the_permission(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, permissions: list[str]
) -> None:
    btcpay_fake.api_keys[btcpay.API_KEY] = permissions

    with pytest.raises(driver_api.ProviderAuthError, match="canviewinvoices"):
        await btcpay_driver.check()


async def test_check_refuses_an_unknown_key(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    with pytest.raises(driver_api.ProviderAuthError, match="HTTP 401") as caught:
        await btcpay_make_driver(api_key="zz-unknown-key-zz").check()

    assert caught.value.provider_id == "btcpay_main"
    assert "zz-unknown-key-zz" not in str(caught.value)


async def test_check_reports_an_unreachable_server(btcpay_make_driver: MakeBTCPayDriver) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(driver_api.ProviderUnavailable):
        await btcpay_make_driver(base_url=f"http://127.0.0.1:{port}").check()


async def test_check_reports_a_transient_failure(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.fault("api-keys/current", statuses=[503], retry_after="3")

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.check()

    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize(
    "fault",
    [
        {"garbage": True},
        {"wrong_shape": {"apiKey": btcpay.API_KEY, "permissions": "all"}},  # the real answer echoes the key
        {"statuses": [404]},
    ],
)
async def test_check_reports_an_unreadable_answer(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, fault: dict[str, Any]
) -> None:
    btcpay_fake.fault("api-keys/current", **fault)

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.check()

    assert btcpay.API_KEY not in str(caught.value)
