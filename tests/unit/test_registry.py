"""Driver discovery: what makes a loaded entry point a driver, and the errors that name it
(docs/drivers.md §6)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from reconciler import driver_api, driver_checks, errors, registry
from reconciler.testing import FakeDriver


class _NoSettings:
    post_settle_kinds: ClassVar[tuple[str, ...]] = ()

    async def fetch(self, _: str) -> Any: ...

    async def check(self) -> None: ...


class _SyncFetch(FakeDriver):
    def fetch(self, provider_invoice_id: str) -> Any:
        return None


class _BadKinds(FakeDriver):
    post_settle_kinds = ["x"]  # type: ignore[assignment]  # noqa: RUF012 - wrong on purpose


class _SyncPostSettle(FakeDriver):
    def post_settle(self, task: Any) -> Any:
        return None


class _SyncRegisterWebhook(FakeDriver):
    def register_webhook(self, url: str, secret: Any) -> str:
        return "id"


class _HintNotText(FakeDriver):
    webhook_setup_hint: ClassVar[Any] = ("set it up", "there")


class _SettingsNotAModel(FakeDriver):
    Settings: ClassVar[type[BaseModel]] = dict  # type: ignore[assignment]


class _PlainModel(BaseModel):
    latency: float = 0.0


class _PlainModelSettings(FakeDriver):
    Settings: ClassVar[type[BaseModel]] = _PlainModel


class _ExtraAllowed(driver_api.DriverSettings):
    model_config = ConfigDict(extra="allow")


class _ExtraAllowedSettings(FakeDriver):
    Settings: ClassVar[type[BaseModel]] = _ExtraAllowed


@pytest.mark.parametrize(
    ("candidate", "problem"),
    [
        (FakeDriver(), "is not a class"),
        (_NoSettings, "no pydantic `Settings`"),
        (_SettingsNotAModel, "no pydantic `Settings`"),
        (_PlainModelSettings, "`Settings` does not subclass reconciler.driver_api.DriverSettings"),
        (_ExtraAllowedSettings, "`Settings` accepts unknown keys (extra='allow')"),
        (_BadKinds, "`post_settle_kinds` is not a tuple"),
        (_SyncFetch, "`fetch` is not an async method"),
        (_SyncPostSettle, "`post_settle` is not an async method"),
        (_SyncRegisterWebhook, "`register_webhook` is not an async method"),
        (_HintNotText, "`webhook_setup_hint` is not one line of text"),
    ],
)
def test_a_broken_driver_is_described(candidate: object, problem: str) -> None:
    (found,) = driver_checks.problems(candidate)
    assert problem in found


def test_a_good_driver_has_no_problem() -> None:
    assert driver_checks.problems(FakeDriver) == []


def test_the_shipped_drivers_declare_their_webhook_setup() -> None:
    btcpay, zaprite = registry.load("btcpay"), registry.load("zaprite")
    assert driver_checks.problems(btcpay) == driver_checks.problems(zaprite) == []
    assert issubclass(btcpay, driver_api.SupportsWebhookSetup)
    assert not hasattr(zaprite, "register_webhook")
    assert "{url}" in zaprite.webhook_setup_hint  # type: ignore[attr-defined]


def test_installed_drivers_name_their_distribution() -> None:
    found = {d.name: d for d in registry.installed()}
    assert found["btcpay"].distribution == "reconciler-btcpay"
    assert found["zaprite"].distribution == "reconciler-zaprite"
    assert "entry point reconciler.drivers:btcpay" in found["btcpay"].origin


def test_a_missing_driver_names_the_entry_point_and_what_is_installed() -> None:
    with pytest.raises(errors.DriverLoadError) as caught:
        registry.load("nosuch")
    assert "reconciler.drivers:nosuch" in caught.value.message
    assert "btcpay" in caught.value.message
    assert caught.value.entry_point == "reconciler.drivers:nosuch"


def test_a_real_driver_loads() -> None:
    driver = registry.load("btcpay")
    assert driver.__name__ == "BTCPayDriver"
