"""The fake BTCPay Server's capacity: a server-side cap on requests handled at once (`make bench`'s C).

A small self-hosted BTCPay box serves a bounded number of requests at a time and queues the rest; the
benchmark's lower bound N·L/C depends on the fake doing the same, whatever the client sends.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.fakes import btcpay
from tests.fakes.btcpay import make_invoice

AUTH = {"Authorization": f"token {btcpay.API_KEY}"}


async def fetch_all(fake: btcpay.FakeBTCPay, count: int) -> list[int]:
    """`count` invoice GETs sent at once over as many connections; the statuses."""
    url = f"{fake.base_url}/api/v1/stores/{btcpay.STORE_ID}/invoices"
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> int:
            async with session.get(f"{url}/inv{n}", headers=AUTH) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one(n) for n in range(count))))


@pytest.mark.parametrize(("concurrency", "peak"), [(None, 6), (2, 2), (1, 1)])
async def test_a_concurrency_cap_queues_requests_beyond_it(concurrency: int | None, peak: int) -> None:
    async with btcpay.FakeBTCPay(concurrency=concurrency) as fake:
        fake.add(*(make_invoice(f"inv{n}") for n in range(6)))
        fake.fault(latency=0.2)  # every request holds its slot this long, so all six overlap

        statuses = await fetch_all(fake, 6)

    assert statuses == [200] * 6
    assert len(fake.log) == 6
    assert fake.peak_in_flight == peak
    assert fake.in_flight == 0


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        btcpay.FakeBTCPay(concurrency=0)
