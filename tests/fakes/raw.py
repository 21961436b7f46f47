"""Answers sent exactly as scripted, for the fakes' fault knobs and the fuzz tests.

A :class:`RawAnswer` is any status, any headers (aiohttp refuses only CR, LF and other C0 controls in
them) and any body bytes, optionally gzip-compressed, sent in chunks with pauses (a slow trickle),
repeated many times or endlessly (a large answer without a large buffer), or declaring a
``Content-Length`` it never sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["RawAnswer", "ScriptedServer"]

_HOLD_LIMIT = 30.0
_POLL = 0.02


async def _hold(request: web.Request) -> None:
    """Keep a response open until the client closes the connection (at most _HOLD_LIMIT seconds)."""
    for _ in range(int(_HOLD_LIMIT / _POLL)):  # aiohttp offers no disconnection event to wait on
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(_POLL)


@dataclass(frozen=True)
class RawAnswer:
    """One scripted answer.

    ``body`` is sent ``repeat`` times (forever with ``endless``), in pieces of ``chunk`` bytes with
    ``delay`` seconds between them; ``gzip`` compresses the stream and sets ``Content-Encoding``.
    ``content_length`` declares that length whatever is sent (a lie, or a huge promise), otherwise
    an un-gzipped finite body has its true length and the rest is sent chunked. ``abort`` drops the
    connection once the body is out, before the answer is complete (a chunked body without its last
    chunk, or a body shorter than its declared length).
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    gzip: bool = False
    chunk: int | None = None
    delay: float = 0.0
    repeat: int = 1
    endless: bool = False
    content_length: int | None = None
    abort: bool = False

    def _pieces(self) -> Iterator[bytes]:
        size = self.chunk or max(len(self.body), 1)
        count = 0
        while self.endless or count < self.repeat:
            count += 1
            for start in range(0, len(self.body), size):
                yield self.body[start : start + size]
            if not self.body and self.endless:
                return

    def _encoded(self) -> Iterator[bytes]:
        if not self.gzip:
            yield from self._pieces()
            return
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
        for piece in self._pieces():
            # A sync flush per piece puts every piece on the wire at once (deflate would buffer it).
            yield compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)
        yield compressor.flush()

    async def send(self, request: web.Request) -> web.StreamResponse:
        """Write this answer to ``request``; a client that goes away mid-body ends it quietly."""
        response = web.StreamResponse(status=self.status, headers=dict(self.headers))
        if self.gzip:
            response.headers["Content-Encoding"] = "gzip"
        if self.content_length is not None:
            response.content_length = self.content_length
        elif not self.gzip and not self.endless:
            response.content_length = len(self.body) * self.repeat
        else:
            response.enable_chunked_encoding()
        with contextlib.suppress(ConnectionError):
            await response.prepare(request)
            sent = 0
            for piece in self._encoded():
                if self.content_length is not None and sent + len(piece) > self.content_length:
                    piece = piece[: self.content_length - sent]
                await response.write(piece)
                sent += len(piece)
                if self.delay or self.endless:  # even 0: an endless body must not starve the loop
                    await asyncio.sleep(self.delay)
            if self.abort and request.transport is not None:
                request.transport.abort()
                return response
            if self.content_length is not None and sent < self.content_length:
                await _hold(request)  # a promise not kept: wait for the client to give up
                return response
            await response.write_eof()
        return response


class ScriptedServer:
    """An aiohttp server on 127.0.0.1 answering every GET with the next queued :class:`RawAnswer`.

    With nothing queued it answers 404. ``requests`` logs each request's path and headers.
    """

    def __init__(self) -> None:
        self.answers: deque[RawAnswer] = deque()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def queue(self, *answers: RawAnswer) -> None:
        self.answers.extend(answers)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.raw_path, dict(request.headers)))
        answer = self.answers.popleft() if self.answers else RawAnswer(404, b'{"code": "nothing-queued"}')
        return await answer.send(request)
