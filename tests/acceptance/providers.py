"""Acceptance helpers for runs against fake providers: a config file naming the fakes, and the real
``reconciler`` command in a subprocess.

The fakes (``tests.fakes.btcpay``, ``tests.fakes.zaprite``) run in the test's own event loop, so the
command is started with :mod:`asyncio.subprocess`: the fakes keep answering while the test awaits it,
and their request logs and knobs stay plain Python objects.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import licenses
from tests.fakes.btcpay import FakeBTCPay
from tests.fakes.zaprite import FakeZaprite
from tests.support.process import clean_env

#: The console script installed with the distribution (drivers are found through entry points).
RECONCILER = Path(sys.executable).with_name("reconciler")

Section = Mapping[str, object]


def btcpay_provider(fake: FakeBTCPay, api_key: str, **options: object) -> dict[str, object]:
    """A ``[providers.<id>]`` section for the store ``fake`` serves."""
    return {
        "driver": "btcpay",
        "base_url": fake.base_url,
        "store_id": fake.store_id,
        "api_key": api_key,
    } | options


def zaprite_provider(fake: FakeZaprite, **options: object) -> dict[str, object]:
    """A ``[providers.<id>]`` section for the account ``fake`` serves."""
    return {"driver": "zaprite", "base_url": fake.url, "api_key": fake.api_key} | options


def _toml_section(name: str, values: Section) -> str:
    # JSON strings, integers, booleans and arrays of them are valid TOML values.
    return f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def write_config(
    directory: Path,
    *,
    database: Path,
    providers: Mapping[str, Section],
    default_provider: str | None = None,
    reconcile: Section | None = None,
    post_settle: Section | None = None,
) -> Path:
    """Write ``config.toml`` (and a fresh signing key) into ``directory``; returns the config path."""
    key = directory / "signing-key.pem"
    if not key.exists():
        licenses.write_new_key(key)
    parts = [f"default_provider = {json.dumps(default_provider)}\n"] if default_provider else []
    parts.append(_toml_section("database", {"url": f"sqlite://{database}"}))
    parts.append(_toml_section("license", {"signing_key_file": str(key)}))
    if reconcile:
        parts.append(_toml_section("reconcile", reconcile))
    if post_settle:
        parts.append(_toml_section("post_settle", post_settle))
    parts.extend(_toml_section(f"providers.{pid}", section) for pid, section in providers.items())
    config = directory / "config.toml"
    config.write_text("\n".join(parts), encoding="utf-8")
    return config


@dataclass(frozen=True)
class Result:
    """How one ``reconciler --once`` ended: exit code, stderr, and its JSON log lines."""

    returncode: int
    stderr: str

    @property
    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def messages(self, level: str) -> list[str]:
        """The messages logged at exactly ``level`` (``"WARNING"``, ``"ERROR"``...)."""
        return [line["message"] for line in self.log if line["level"] == level]


async def spawn_once(config: Path) -> asyncio.subprocess.Process:
    """Start ``reconciler --config FILE --log-format json run --once`` with a clean environment."""
    env = clean_env()
    return await asyncio.create_subprocess_exec(
        str(RECONCILER),
        "--config",
        str(config),
        "--log-format",
        "json",
        "run",
        "--once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def finish(process: asyncio.subprocess.Process) -> Result:
    """Wait (a minute at most) for a started run and collect what it wrote."""
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, stderr.decode())


async def reconcile_once(config: Path) -> Result:
    """One ``reconciler --once`` pass against ``config``, awaited to its end."""
    return await finish(await spawn_once(config))
