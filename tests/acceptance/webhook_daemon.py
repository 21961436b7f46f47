"""`reconciler run` with its webhook listener in a subprocess (docs/webhooks.md), for the acceptance tests of
issue 14: the real BTCPay driver against the fake BTCPay served by the test's own event loop, and a real
database (a SQLite file or a PostgreSQL schema) that the test seeds and reads beside the daemon.

The daemon is started with `asyncio.create_subprocess_exec` (a blocking call would stop the fake from
answering); it listens on port 0 and the port is read from its "webhooks on" log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from reconciler import licenses
from reconciler.timeutil import format_ts
from tests.fakes.btcpay import API_KEY, STORE_ID
from tests.store.backends import Backend
from tests.support.process import clean_env
from tests.support.shop import new_id
from tests.webhooks.support import SECRET, btcpay_body, signature

PROVIDER = "btcpay_main"


def write_config(
    tmp: Path,
    db_url: str,
    base_url: str,
    *,
    webhooks: dict[str, Any] | None = None,
    interval: str = "1h",
    lease: str = "5m",
    initial_delay: str = "0s",
    max_concurrency: int = 16,
    name: str = "config.toml",
) -> Path:
    """A config for one fake BTCPay store (1 s timeout, one try: a 3 s lease is allowed) with the webhook
    secret of tests/webhooks/support.py; `webhooks` None: no listener."""
    key = tmp / "signing-key.pem"
    if not key.exists():
        licenses.write_new_key(key)
    (tmp / "btcpay-key").write_text(API_KEY)
    (tmp / "webhook-secret").write_text(SECRET)
    (tmp / "webhook-secret").chmod(0o600)
    text = (
        f'default_provider = "{PROVIDER}"\n'
        f"[database]\nurl = {json.dumps(db_url)}\n"
        f'[license]\nsigning_key_file = "{key}"\n'
        f'[reconcile]\ninterval = "{interval}"\nlease = "{lease}"\ninitial_delay = "{initial_delay}"\n'
        f"[providers.{PROVIDER}]\n"
        f'driver = "btcpay"\nbase_url = "{base_url}"\nstore_id = "{STORE_ID}"\n'
        f'api_key_file = "{tmp / "btcpay-key"}"\nwebhook_secret_file = "{tmp / "webhook-secret"}"\n'
        f'timeout = "1s"\nretry_attempts = 1\nmax_concurrency = {max_concurrency}\n'
    )
    if webhooks is not None:
        text += "[webhooks]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in webhooks.items())
    path = tmp / name
    path.write_text(text)
    return path


@dataclass
class Daemon:
    """One `reconciler ... run` process; its JSON log lines are collected as they come."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    port: int | None = None
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: Path, *args: str, webhooks: bool = True) -> Daemon:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler",
            "--config",
            str(config),
            "--log-format",
            "json",
            *(args or ("run",)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env(),
        )
        daemon = cls(proc)
        daemon._reader = asyncio.create_task(daemon._read())
        if webhooks:
            await daemon.wait_for("webhooks on http://")
            line = next(m for m in daemon.messages() if m.startswith("webhooks on http://"))
            daemon.port = int(line.split(":")[2].split("/")[0])
        return daemon

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def messages(self) -> list[str]:
        return [str(line.get("message", "")) for line in self.lines]

    async def wait_for(self, prefix: str, within: float = 30) -> None:
        async with asyncio.timeout(within):
            while not any(m.startswith(prefix) for m in self.messages()):
                assert self.proc.returncode is None, "\n".join(self.messages())
                await asyncio.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/{PROVIDER}"

    async def deliver(
        self, session: aiohttp.ClientSession, invoice_ref: str, delivery_id: str, **kwargs: Any
    ) -> tuple[int, str | None]:
        """POST one signed BTCPay delivery; its status and Retry-After."""
        body = btcpay_body(invoice_ref, delivery_id=delivery_id, **kwargs)
        headers = {"Content-Type": "application/json", "BTCPay-Sig": signature(body)}
        async with session.post(self.url, data=body, headers=headers) as response:
            await response.read()
            return response.status, response.headers.get("Retry-After")

    def rss_kib(self, key: str = "VmRSS") -> int:
        """The process's resident memory (`VmHWM`: its peak), from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc/{self.proc.pid}/status")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self, within: float = 20) -> int:
        """SIGTERM (unless it ended already), then its exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        return await self.wait(within)

    async def wait(self, within: float = 60) -> int:
        """Its exit code, once it ends by itself (`--once`)."""
        code = await asyncio.wait_for(self.proc.wait(), within)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, within)
        return code


async def seed(b: Backend, refs: list[str], *, due: bool = False) -> dict[str, str]:
    """One pending invoice of the BTCPay provider per provider invoice id, created a few minutes ago; not due
    for an hour unless `due`. Invoice id by provider invoice id."""
    product = new_id()
    now = datetime.now(UTC)
    await b.raw.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (:id, :slug, 'P', :t)",
        {"id": product, "slug": f"p-{product[:8]}", "t": format_ts(now)},
    )
    ids = {}
    for ref in refs:
        iid = new_id()
        await b.raw.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
            " created_at, updated_at, next_check_at) VALUES (:id, :p, :ref, :product, 'pending', 100000, :c, :c,"
            " :next)",
            {
                "id": iid,
                "p": PROVIDER,
                "ref": ref,
                "product": product,
                "c": format_ts(now - timedelta(minutes=5)),
                "next": None if due else format_ts(now + timedelta(hours=1)),
            },
        )
        ids[ref] = iid
    return ids


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    """Poll `condition()` until it is true; an AssertionError naming `what` after `within` seconds."""
    for _ in range(int(within / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")
