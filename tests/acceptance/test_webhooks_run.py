"""`reconciler run` with `[webhooks]` (docs/webhooks.md, docs/configuration.md §4.10): the real command in a
subprocess starts the listener, a signed delivery licenses its invoice long before any pass would, and a bad
`listen` or webhook secret file ends the command with exit 2 before it touches the database.

The fake BTCPay runs in this test's event loop, so the daemon is started with `asyncio.create_subprocess_exec`
(see test_btcpay_once.py).
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import PENDING, Workspace, assert_refused, recent, toml
from tests.acceptance.providers import RECONCILER, btcpay_provider
from tests.fakes.btcpay import API_KEY, STORE_ID, FakeBTCPay, Payment, make_invoice
from tests.support.process import clean_env
from tests.support.shop import Shop
from tests.webhooks.support import SECRET, btcpay_body, signature

PROVIDER = "btcpay_main"
LISTENING = re.compile(r"webhooks on (http://127\.0\.0\.1:\d+)/webhooks/")


class Daemon:
    """`reconciler run` in a subprocess; its stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    async def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        async with asyncio.timeout(30):
            while True:
                for line in list(self.lines):
                    if found := pattern.search(line):
                        return found
                assert self.process.returncode is None, "\n".join(self.lines)
                await asyncio.sleep(0.02)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await self.process.wait()
            await self._reader
        return code


@pytest.fixture
async def fake() -> AsyncIterator[FakeBTCPay]:
    server = FakeBTCPay()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def write_config(tmp_path: Path, fake: FakeBTCPay, workspace: Workspace, **webhooks: Any) -> Path:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    config = {
        "database": {"url": f"sqlite://{workspace.db}"},
        "license": {"signing_key_file": str(workspace.key)},
        # no pass before an hour: whatever is decided here, the webhook did it
        "reconcile": {"initial_delay": "1h"},
        "webhooks": {"listen": "127.0.0.1:0"} | webhooks,
        "providers": {
            PROVIDER: btcpay_provider(fake, API_KEY, webhook_secret_file=str(secret_file)),
        },
    }
    path = tmp_path / "config.toml"
    path.write_text(toml(config), encoding="utf-8")
    return path


async def post(session: aiohttp.ClientSession, url: str, body: bytes, sig: str) -> int:
    headers = {"Content-Type": "application/json", "BTCPay-Sig": sig}
    async with session.post(f"{url}/webhooks/{PROVIDER}", data=body, headers=headers) as response:
        await response.read()
        return response.status


async def test_run_listens_and_a_signed_delivery_licenses_its_invoice_before_any_pass(
    tmp_path: Path, workspace: Workspace, fake: FakeBTCPay
) -> None:
    shop: Shop = workspace.shop
    iid = shop.invoice(
        shop.product(),
        provider=PROVIDER,
        provider_invoice_id="INV-HOOK",
        amount_sats=100_000,
        created_at=recent(),
    )
    fake.add(make_invoice("INV-HOOK", "Settled", payments=[Payment("0.001")], store_id=STORE_ID))
    config = write_config(tmp_path, fake, workspace)
    process = await asyncio.create_subprocess_exec(
        str(RECONCILER), "--config", str(config), "run", stderr=asyncio.subprocess.PIPE, env=clean_env()
    )
    daemon = Daemon(process)
    try:
        url = (await daemon.wait_for(LISTENING)).group(1)
        async with aiohttp.ClientSession() as session:
            body = btcpay_body("INV-HOOK", delivery_id="hook-1")
            assert await post(session, url, body, signature(body, "not-the-secret")) == 401
            assert await post(session, url, body, signature(body)) == 200
            async with asyncio.timeout(20):
                while not shop.licenses(iid):  # noqa: ASYNC110 (another process writes it)
                    await asyncio.sleep(0.05)
    finally:
        code = await daemon.stop()
    assert code == 0, "\n".join(daemon.lines)
    assert shop.status(iid) == "settled" and len(shop.licenses(iid)) == 1
    row = shop.rows("SELECT outcome, decision, decided_at FROM webhook_deliveries")
    assert [(r["outcome"], r["decision"]) for r in row] == [("decided", "settle")]
    assert "invoice.settled" in shop.actions(iid)
    assert SECRET not in "\n".join(daemon.lines)


def test_a_listen_address_that_is_taken_exits_2_before_any_write(workspace: Workspace) -> None:
    workspace.answers({"*": [PENDING]})
    workspace.shop.invoice(workspace.shop.product(), created_at=recent())
    before = workspace.state()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = workspace.config(
            {"reconcile": {"initial_delay": "0s"}, "webhooks": {"listen": f"127.0.0.1:{port}"}}
        )

        outcome = workspace.run("run", config=config)

    assert_refused(outcome, f"webhooks.listen 127.0.0.1:{port}", "cannot listen there")
    assert workspace.state() == before


@pytest.mark.parametrize(
    ("listen", "needle"),
    [
        pytest.param("8081", "expected host:port", id="no-host"),
        pytest.param("127.0.0.1:65536", "expected host:port", id="port-too-large"),
        pytest.param("127.0.0.1:http", "expected host:port", id="port-not-a-number"),
        pytest.param(":8081", "expected host:port", id="empty-host"),
    ],
)
def test_a_bad_listen_exits_2_before_any_write(workspace: Workspace, listen: str, needle: str) -> None:
    workspace.shop.invoice(workspace.shop.product(), created_at=recent())
    before = workspace.state()

    outcome = workspace.run("run", config=workspace.config({"webhooks": {"listen": listen}}))

    assert_refused(outcome, "webhooks.listen", needle)
    assert workspace.state() == before


BTCPAY = {"driver": "btcpay", "base_url": "http://127.0.0.1:9", "store_id": STORE_ID, "api_key": API_KEY}
ZAPRITE = {"driver": "zaprite", "base_url": "http://127.0.0.1:9", "api_key": "zk-test"}


@pytest.mark.parametrize(
    ("section", "content", "needles"),
    [
        pytest.param(BTCPAY, None, ["webhook_secret_file", "no such file"], id="btcpay-secret-missing"),
        pytest.param(BTCPAY, "\n", ["webhook_secret_file", "empty file"], id="btcpay-secret-empty"),
        pytest.param(ZAPRITE, None, ["webhook_token_file", "no such file"], id="zaprite-token-missing"),
        pytest.param(ZAPRITE, "short-token\n", ["webhook_token", "at least 24"], id="zaprite-token-short"),
    ],
)
def test_a_bad_webhook_secret_file_exits_2_before_any_write(
    workspace: Workspace, section: dict[str, str], content: str | None, needles: list[str]
) -> None:
    workspace.shop.invoice(workspace.shop.product(), created_at=recent())
    before = workspace.state()
    key = "webhook_secret_file" if section["driver"] == "btcpay" else "webhook_token_file"
    secret = workspace.root / "secrets" / "webhook"
    if content is not None:
        secret.parent.mkdir()
        secret.write_text(content, encoding="utf-8")
        secret.chmod(0o600)
    config = workspace.config(
        {
            "webhooks": {"listen": "127.0.0.1:0"},
            "providers": {"fake": None, "shop": section | {key: str(secret)}},
        }
    )

    outcome = workspace.run("run", config=config)

    assert_refused(outcome, "providers.shop", *needles)
    assert workspace.state() == before
