"""`reconciler webhooks setup` (docs/cli.md §2.13), the real command in a subprocess against the fake BTCPay
(its webhook registration checked against the Greenfield fixture) and the fake Zaprite; the btcpay and
zaprite drivers are found through their entry points."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.conftest import Workspace
from tests.acceptance.providers import RECONCILER, btcpay_provider, write_config, zaprite_provider
from tests.fakes import btcpay as fake_btcpay
from tests.fakes import openapi
from tests.fakes.btcpay import FakeBTCPay
from tests.fakes.zaprite import FakeZaprite
from tests.support.process import clean_env

STORE = "HookStore1"
KEY = "webhook-setup-key-0123456789"
VIEW = f"btcpay.store.canviewinvoices:{STORE}"
HOOKS = f"btcpay.store.webhooks.canmodifywebhooks:{STORE}"
PUBLIC = "https://shop.example.com"
REGISTERED = "https://shop.example.com/webhooks/shop"
EVENTS = [
    "InvoiceCreated",
    "InvoiceReceivedPayment",
    "InvoiceProcessing",
    "InvoicePaymentSettled",
    "InvoiceSettled",
    "InvoiceExpired",
    "InvoiceInvalid",
    "InvoiceExpiredPaidPartial",
    "InvoicePaidAfterExpiration",
]


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
async def btcpay() -> AsyncIterator[FakeBTCPay]:
    openapi.require_fixtures("btcpay-openapi")
    async with FakeBTCPay(store_id=STORE, api_keys={KEY: [VIEW, HOOKS]}) as fake:
        yield fake
    fake_btcpay.validate_exchanges(fake_btcpay.openapi_document(openapi.fixtures_dir()), fake.log)


@pytest.fixture
async def zaprite() -> AsyncIterator[FakeZaprite]:
    async with FakeZaprite(api_key="zaprite-hook-key") as fake:
        yield fake


@pytest.fixture
def config(tmp_path: Path, btcpay: FakeBTCPay, zaprite: FakeZaprite) -> Path:
    (tmp_path / "credentials").mkdir(mode=0o700)
    return write_config(
        tmp_path,
        database=tmp_path / "absent.db",  # never opened
        providers={"shop": btcpay_provider(btcpay, KEY), "zap": zaprite_provider(zaprite)},
    )


async def setup(config: Path, *args: str | Path) -> Ran:
    process = await asyncio.create_subprocess_exec(
        str(RECONCILER),
        "--config",
        str(config),
        "webhooks",
        "setup",
        *(str(a) for a in args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


def assert_no_secret(ran: Ran, *secrets: str) -> None:
    for secret in (KEY, "zaprite-hook-key", *secrets):
        assert secret not in ran.output, ran


async def test_registers_the_webhook_and_writes_its_secret_file(
    tmp_path: Path, config: Path, btcpay: FakeBTCPay
) -> None:
    ran = await setup(config, "shop", "--url", PUBLIC)

    assert ran.code == 0, ran
    [(webhook_id, webhook)] = btcpay.webhooks.registered.items()
    assert webhook["url"] == REGISTERED
    assert webhook["authorizedEvents"] == {"everything": False, "specificEvents": EVENTS}
    assert webhook["enabled"] is True and webhook["automaticRedelivery"] is True
    path = tmp_path / "credentials" / "shop_webhook_secret"  # the default: beside the configuration
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text()
    assert secret == webhook["secret"] + "\n"
    assert len(webhook["secret"]) >= 43
    assert f"registered webhook {webhook_id} for provider shop: {REGISTERED}" in ran.stdout
    assert "[providers.shop]" in ran.stdout
    assert f'webhook_secret_file = "{path}"' in ran.stdout
    assert '[webhooks]\nlisten = "127.0.0.1:8081"' in ran.stdout
    assert_no_secret(ran, webhook["secret"])
    assert not (tmp_path / "absent.db").exists()


async def test_the_secret_file_given_is_used(tmp_path: Path, config: Path, btcpay: FakeBTCPay) -> None:
    path = tmp_path / "mine.secret"
    ran = await setup(config, "shop", "--url", f"{PUBLIC}/webhooks/shop", "--secret-file", path)

    assert ran.code == 0, ran
    [webhook] = btcpay.webhooks.registered.values()
    assert webhook["url"] == REGISTERED  # given with the route: kept as it is
    assert path.read_text() == webhook["secret"] + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_an_existing_secret_file_is_kept_unless_forced(
    tmp_path: Path, config: Path, btcpay: FakeBTCPay
) -> None:
    path = tmp_path / "credentials" / "shop_webhook_secret"
    path.write_text("the old secret\n")

    refused = await setup(config, "shop", "--url", PUBLIC)
    assert refused.code == 2, refused
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert path.read_text() == "the old secret\n"
    assert btcpay.log == []  # the provider was never asked

    forced = await setup(config, "shop", "--url", PUBLIC, "--force")
    assert forced.code == 0, forced
    [webhook] = btcpay.webhooks.registered.values()
    assert path.read_text() == webhook["secret"] + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


async def test_a_key_without_the_permission_names_it(
    tmp_path: Path, config: Path, btcpay: FakeBTCPay
) -> None:
    btcpay.api_keys[KEY] = [VIEW]

    ran = await setup(config, "shop", "--url", PUBLIC)

    assert ran.code == 2, ran
    assert "webhook not registered" in ran.stderr
    assert "lacks the permission btcpay.store.webhooks.canmodifywebhooks" in ran.stderr
    assert "grant it" in ran.stderr
    assert btcpay.served("webhooks") == [403]
    assert btcpay.webhooks.registered == {}
    assert list((tmp_path / "credentials").iterdir()) == []  # the new secret is not left behind
    assert_no_secret(ran)


async def test_an_unavailable_provider_exits_75_and_leaves_no_file(
    tmp_path: Path, config: Path, btcpay: FakeBTCPay
) -> None:
    btcpay.fault("webhooks", statuses=[503])

    ran = await setup(config, "shop", "--url", PUBLIC)

    assert ran.code == 75, ran
    assert "unavailable" in ran.stderr and "webhook list" in ran.stderr
    assert list((tmp_path / "credentials").iterdir()) == []


async def test_an_unknown_provider_id(config: Path, btcpay: FakeBTCPay) -> None:
    ran = await setup(config, "nope", "--url", PUBLIC)

    assert ran.code == 2, ran
    assert "no provider 'nope' in the configuration (configured: shop, zap)" in ran.stderr
    assert btcpay.log == []


async def test_a_zaprite_provider_is_told_to_use_the_dashboard(
    tmp_path: Path, config: Path, zaprite: FakeZaprite
) -> None:
    ran = await setup(config, "zap", "--url", PUBLIC)

    assert ran.code == 2, ran
    assert "driver 'zaprite' cannot register webhooks" in ran.stderr
    assert "Zaprite's dashboard" in ran.stderr
    assert "https://shop.example.com/webhooks/zap/<token>" in ran.stderr
    assert "webhook_token_file" in ran.stderr
    assert list((tmp_path / "credentials").iterdir()) == []
    assert zaprite.log == []


@pytest.mark.parametrize("url", ["http://shop.example.com", "https://shop.example.com/?x=1"])
async def test_a_url_refused(tmp_path: Path, config: Path, btcpay: FakeBTCPay, url: str) -> None:
    ran = await setup(config, "shop", "--url", url)

    assert ran.code == 2, ran
    assert f"--url {url!r}" in ran.stderr
    assert btcpay.log == []
    assert list((tmp_path / "credentials").iterdir()) == []


async def test_a_driver_without_webhook_setup_or_hint_gets_the_generic_advice(workspace: Workspace) -> None:
    """The scripted `fake` driver (tests/plugins/fake-driver, by its entry point) offers neither."""
    ran = await setup(workspace.config(), "fake", "--url", PUBLIC)

    assert ran.code == 2, ran
    assert "driver 'fake' cannot register webhooks" in ran.stderr
    assert (
        "in the provider's own dashboard, with the URL https://shop.example.com/webhooks/fake" in ran.stderr
    )
    assert not (workspace.root / "credentials").exists()
