"""`reconciler check-config --online` (docs/cli.md §2.2): 0 when every provider takes our key, 2 on a refused
key, 75 when a provider cannot be reached; it writes nothing and never needs the database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.acceptance.providers import RECONCILER, btcpay_provider, write_config, zaprite_provider
from tests.fakes.btcpay import FakeBTCPay
from tests.fakes.zaprite import FakeZaprite
from tests.support.process import clean_env

STORE = "CheckStore1"
KEY = "check-config-key-0123456789"


@pytest.fixture
async def btcpay() -> AsyncIterator[FakeBTCPay]:
    async with FakeBTCPay(store_id=STORE, api_keys={KEY: [f"btcpay.store.canviewinvoices:{STORE}"]}) as fake:
        yield fake


@pytest.fixture
async def zaprite() -> AsyncIterator[FakeZaprite]:
    async with FakeZaprite(api_key="zaprite-check-key") as fake:
        yield fake


async def check_online(config: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(RECONCILER),
        "--config",
        str(config),
        "check-config",
        "--online",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


async def test_good_credentials_exit_0(tmp_path: Path, btcpay: FakeBTCPay, zaprite: FakeZaprite) -> None:
    config = write_config(
        tmp_path,
        database=tmp_path / "absent.db",  # never opened
        providers={"shop": btcpay_provider(btcpay, KEY), "zap": zaprite_provider(zaprite)},
    )
    code, output = await check_online(config)
    assert code == 0, output
    assert "provider shop: credentials and reachability OK" in output
    assert "provider zap: credentials and reachability OK" in output
    assert KEY not in output and "zaprite-check-key" not in output
    assert not (tmp_path / "absent.db").exists()


async def test_a_refused_key_exits_2(tmp_path: Path, btcpay: FakeBTCPay, zaprite: FakeZaprite) -> None:
    config = write_config(
        tmp_path,
        database=tmp_path / "absent.db",
        providers={
            "shop": btcpay_provider(btcpay, "not-the-key-9876543210"),
            "zap": zaprite_provider(zaprite),
        },
    )
    code, output = await check_online(config)
    assert code == 2, output
    assert "provider shop: credentials refused" in output
    assert "not-the-key-9876543210" not in output


async def test_an_unreachable_provider_exits_75(tmp_path: Path, zaprite: FakeZaprite) -> None:
    config = write_config(
        tmp_path,
        database=tmp_path / "absent.db",
        providers={
            "zap": zaprite_provider(zaprite),
            "gone": {"driver": "btcpay", "base_url": "http://127.0.0.1:9", "store_id": STORE, "api_key": KEY},
        },
    )
    code, output = await check_online(config)
    assert code == 75, output
    assert "provider gone: unreachable" in output
    assert "provider zap: credentials and reachability OK" in output
