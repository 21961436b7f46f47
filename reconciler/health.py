"""The optional loopback listener (`[http] listen`): /metrics, /healthz (the loop is alive), /readyz
(database reachable, drivers loaded)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from reconciler.metrics import Metrics

Check = Callable[[], Awaitable[tuple[bool, str]]]


class HealthServer:
    def __init__(self, host: str, port: int, metrics: Metrics, *, alive: Check, ready: Check) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self._alive = alive
        self._ready = ready
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get(hdrs.ACCEPT, ""))
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    async def _healthz(self, _: web.Request) -> web.Response:
        ok, why = await self._alive()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = await self._ready()
        return web.Response(status=200 if ok else 503, text=why + "\n")
