"""The loopback listener (`[http] listen`): what /metrics, /healthz and /readyz answer, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from reconciler.health import HealthServer
from reconciler.metrics import Metrics


async def _fine() -> tuple[bool, str]:
    return True, "fine"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    health = HealthServer("127.0.0.1", 0, Metrics(providers=["fake"]), alive=_fine, ready=_fine)
    port = await health.start()
    yield f"http://127.0.0.1:{port}/"
    await health.stop()


async def test_metrics_answer_the_text_format_with_its_version(server: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(server + "metrics") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        body = await reply.text()
    assert 'reconciler_passes_total{result="degraded"} 0.0' in body


async def test_metrics_answer_openmetrics_to_a_scraper_that_asks_for_it(server: str) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with (
        aiohttp.ClientSession() as session,
        session.get(server + "metrics", headers={"Accept": accept}) as reply,
    ):
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0;")
        body = await reply.text()
    assert body.endswith("# EOF\n")
    assert 'reconciler_passes_total{result="degraded"} 0.0' in body
