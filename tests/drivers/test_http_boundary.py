"""The one HTTP boundary every driver uses (``driver_api.JsonClient``), over real sockets (issue 10).

One table of transport failures, one table of statuses, bounded bodies (declared, chunked, gzip),
strict JSON, strict ``Retry-After``, and no secret in any message or exception chain.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from reconciler import app, driver_api
from tests.fakes.raw import RawAnswer, ScriptedServer

SECRET = "s3cr3t-key-0123456789"
LIMIT = 64 * 1024
MakeClient = Callable[..., driver_api.JsonClient]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    try:
        yield scripted
    finally:
        await scripted.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def make_client(server: ScriptedServer, session: aiohttp.ClientSession) -> MakeClient:
    def make(
        *, timeout: float = 5.0, limit: int = LIMIT, base_url: str | None = None
    ) -> driver_api.JsonClient:
        return driver_api.JsonClient(
            provider_id="prov",
            service="Acme",
            base_url=base_url or server.base_url,
            authorization=driver_api.SecretStr(f"token {SECRET}"),
            timeout=timeout,
            max_response_bytes=limit,
            session=session,
        )

    return make


@pytest.fixture
def client(make_client: MakeClient) -> driver_api.JsonClient:
    return make_client()


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` / ``__context__``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(e for e in (item.__cause__, item.__context__) if e is not None)


def assert_no_secret(exc: BaseException) -> None:
    for item in chain(exc):
        for text in (str(item), repr(item), repr(item.args)):
            assert SECRET not in text, f"{type(item).__name__} shows the key: {text}"
        request_info = getattr(item, "request_info", None)
        if request_info is not None:
            assert SECRET not in repr(request_info)


def ok(body: Any = None, **fields: Any) -> RawAnswer:
    return RawAnswer(200, json.dumps({"ok": True} if body is None else body).encode(), **fields)


# --- the request -------------------------------------------------------------------------------------


async def test_the_request_carries_the_authorization_header_and_asks_for_json(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    server.queue(ok())

    assert await client.get_json("/a/b%2Fc", {"x": "1"}) == {"ok": True}

    ((path, headers),) = server.requests
    assert path == "/a/b%2Fc?x=1"
    assert headers["Authorization"] == f"token {SECRET}"
    assert headers["Accept"] == "application/json"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(
    server: ScriptedServer, client: driver_api.JsonClient, status: int
) -> None:
    server.queue(RawAnswer(status, b"", {"Location": "/elsewhere"}), ok())

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert caught.value.http_status == status
    assert len(server.requests) == 1  # the key never travels to the Location


# --- statuses: one table for every driver --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, driver_api.ProviderAuthError),
        (403, driver_api.ProviderAuthError),
        (404, driver_api.InvoiceNotFound),
        (408, driver_api.ProviderUnavailable),
        (429, driver_api.ProviderUnavailable),
        (500, driver_api.ProviderUnavailable),
        (503, driver_api.ProviderUnavailable),
        (599, driver_api.ProviderUnavailable),
        # Only 200 is an answer: a 201/202/204/206 to a GET is not the resource (BTCPay accepted only
        # 200, Zaprite any 2xx).
        (201, driver_api.BadProviderResponse),
        (202, driver_api.BadProviderResponse),
        (203, driver_api.BadProviderResponse),
        (204, driver_api.BadProviderResponse),
        (206, driver_api.BadProviderResponse),
        (300, driver_api.BadProviderResponse),
        (304, driver_api.BadProviderResponse),
        (400, driver_api.BadProviderResponse),
        (410, driver_api.BadProviderResponse),
        (418, driver_api.BadProviderResponse),
        (422, driver_api.BadProviderResponse),
        (600, driver_api.BadProviderResponse),
        (999, driver_api.BadProviderResponse),
    ],
)
async def test_every_status_maps_through_one_table(
    server: ScriptedServer, client: driver_api.JsonClient, status: int, error: type[driver_api.DriverError]
) -> None:
    body = b"" if status in (204, 304) else json.dumps({"ok": True}).encode()  # those have no body
    server.queue(RawAnswer(status, body))

    with pytest.raises(error) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert type(caught.value) is error
    assert (caught.value.provider_id, caught.value.invoice_id, caught.value.http_status) == (
        "prov",
        "inv1",
        status,
    )
    assert f"HTTP {status}" in str(caught.value)
    assert str(caught.value).startswith("prov: Acme invoice 'inv1': ")


@pytest.mark.parametrize("status", [100, 102, 103])
async def test_an_informational_status_alone_is_a_server_that_never_answers(
    server: ScriptedServer, make_client: MakeClient, status: int
) -> None:
    server.queue(RawAnswer(status, b""))

    with pytest.raises(driver_api.ProviderUnavailable, match="timed out"):
        await make_client(timeout=0.3).get_json("/x", invoice_id="inv1")


async def test_404_without_an_invoice_is_a_bad_response(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    server.queue(RawAnswer(404, b""))

    with pytest.raises(driver_api.BadProviderResponse):
        await client.get_json("/api/v1/something")


async def test_an_error_body_code_and_message_are_shown_printable_and_bounded(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    body = {"code": "no-such-thing", "message": "The thing\nwas\x1b[31m not found" + "!" * 500}
    server.queue(RawAnswer(404, json.dumps(body).encode()))

    with pytest.raises(driver_api.InvoiceNotFound) as caught:
        await client.get_json("/x", invoice_id="inv1")

    message = str(caught.value)
    assert "(no-such-thing: The thing?was?[31m not found!!!" in message
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 300


async def test_a_huge_error_body_still_maps_its_status(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    server.queue(RawAnswer(503, b"<html>" + b"x" * 1024, repeat=10_000, headers={"Retry-After": "3"}))

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert (caught.value.http_status, caught.value.retry_after) == (503, 3.0)


# --- Retry-After: only where it matters, strictly ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("\u00b2", None),  # '²'.isdigit() is True; float('²') raised ValueError (issue 10)
        ("99999999999999999999", driver_api.RETRY_AFTER_MAX),  # overflowed timedelta downstream
        ("-1", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
async def test_retry_after_on_a_transient_status(
    server: ScriptedServer, client: driver_api.JsonClient, header: str, seconds: float | None
) -> None:
    server.queue(RawAnswer(429, b"", {"Retry-After": header}))

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert caught.value.retry_after == seconds


@pytest.mark.parametrize("header", ["\u00b2", "99999999999999999999", "soon", "1e9"])
async def test_retry_after_never_fails_a_good_answer(
    server: ScriptedServer, client: driver_api.JsonClient, header: str
) -> None:
    server.queue(ok(headers={"Retry-After": header}))

    reply = await client.get("/x")

    assert (reply.status, reply.retry_after) == (200, None)
    assert client.json(reply) == {"ok": True}


# --- bounded bodies (issue 10: one 300 MB answer took peak RSS from 48 MB to 861 MB) ------------------------


async def test_a_body_at_the_limit_is_read(server: ScriptedServer, client: driver_api.JsonClient) -> None:
    body = b"[" + b" " * (LIMIT - 2) + b"]"
    server.queue(RawAnswer(200, body), RawAnswer(200, body, chunk=1000))

    assert await client.get_json("/x") == []
    assert await client.get_json("/x") == []


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    # The server promises 1 TB, sends a few bytes and then nothing: only a client that refuses the
    # promise itself answers before its timeout.
    server.queue(RawAnswer(200, b'{"status": ', content_length=10**12))
    started = time.monotonic()

    with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes") as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert time.monotonic() - started < 2.0
    assert caught.value.http_status == 200


async def test_a_chunked_body_is_abandoned_at_the_limit(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    server.queue(RawAnswer(200, b"[" + b"1," * 4096, chunk=8192, endless=True))
    started = time.monotonic()

    with pytest.raises(driver_api.BadProviderResponse, match=rf"max_response_bytes \({LIMIT} bytes\)"):
        await client.get_json("/x", invoice_id="inv1")

    assert time.monotonic() - started < 2.0


async def test_a_gzip_bomb_is_refused_by_its_decompressed_size_in_bounded_memory(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    client = make_client(limit=1024 * 1024)
    # An endless gzip stream of zeros: about 1 KB on the wire per MB decompressed.
    server.queue(RawAnswer(200, bytes(1024 * 1024), gzip=True, endless=True))
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes"):
            await client.get_json("/x", invoice_id="inv1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 24 * 1024 * 1024  # the limit plus the decompressor's and the fake's buffers


async def test_a_small_gzip_answer_is_read(server: ScriptedServer, client: driver_api.JsonClient) -> None:
    server.queue(ok({"status": "Settled"}, gzip=True))

    assert await client.get_json("/x") == {"status": "Settled"}


async def test_a_slow_trickle_is_bounded_by_the_timeout(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    server.queue(RawAnswer(200, b'{"status": "Settled"}' * 100, chunk=1, delay=0.05))
    started = time.monotonic()

    with pytest.raises(driver_api.ProviderUnavailable, match=r"within 0\.5s"):
        await make_client(timeout=0.5).get_json("/x", invoice_id="inv1")

    assert time.monotonic() - started < 2.0


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- strict JSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "Expecting value"),
        (b"<html>Bad Gateway</html>", "Expecting value"),
        (b'{"status": "Settled"} trailing', "Extra data"),
        (b'\xff\xfe{"status": "Settled"}', "UTF-8"),
        (b'{"status": "Sett\xc3led"}', "UTF-8"),
        (b'{"status": "\xed\xa0\x80"}', "UTF-8"),  # an encoded surrogate is not UTF-8
        (b"[" * 30_000 + b"]" * 30_000, "nested deeper than 64"),  # RecursionError (issue 10)
        (b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper than 64"),
        (b'{"amount": ' + b"9" * 5000 + b"}", "longer than 40 digits"),  # ValueError (issue 10)
        (b'{"amount": ' + b"9" * 41 + b"}", "longer than 40 digits"),
        (b'{"amount": -' + b"9" * 41 + b"}", "longer than 40 digits"),
        (b'{"amount": NaN}', "NaN"),
        (b'{"amount": Infinity}', "Infinity"),
        (b'{"amount": -Infinity}', "Infinity"),
        (b'{"amount": 1e999}', "too large"),
        (b'{"amount": 1.' + b"5" * 100 + b"}", "longer than 64 characters"),
        (b'{"status": "\\ud800"}', "lone surrogate"),  # the store cannot write it (issue 10)
        (b'{"status": "Settled", "x": ["\\udfff"]}', "lone surrogate"),
        (b'{"\\uDBFF": 1}', "lone surrogate"),
        (b'{"status": "a\x00b"}', "control character"),  # raw controls are not JSON
    ],
)
async def test_unreadable_json_is_a_bad_response(
    server: ScriptedServer, client: driver_api.JsonClient, body: bytes, reason: str
) -> None:
    server.queue(RawAnswer(200, body))

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert "not JSON" in str(caught.value)
    assert reason in str(caught.value)
    assert caught.value.http_status == 200


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a surrogate pair is a character
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, not an escape
        (b"[" * 64 + b"]" * 64, nested(64)),
        (b'{"amount": ' + b"9" * 40 + b"}", {"amount": int("9" * 40)}),
        (b'["[[[[", "\\"{{{{"]', ["[[[[", '"{{{{']),
        (b'{"a": "\\u0000"}', {"a": "\x00"}),  # escaped controls decode; check_snapshot refuses them
        (b" \r\n\t[1.5e300] ", [1.5e300]),
    ],
)
async def test_json_that_is_fine_is_read(
    server: ScriptedServer, client: driver_api.JsonClient, body: bytes, value: Any
) -> None:
    server.queue(RawAnswer(200, body))

    assert await client.get_json("/x") == value


# --- transport failures: one table ----------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_refused_connection_is_unavailable(make_client: MakeClient) -> None:
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await make_client(base_url=f"http://127.0.0.1:{unused_port()}").get_json("/x", invoice_id="inv1")

    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    assert caught.value.http_status is None
    assert_no_secret(caught.value)


async def test_a_timeout_is_unavailable(server: ScriptedServer, make_client: MakeClient) -> None:
    server.queue(RawAnswer(200, b"{}", delay=5.0, chunk=1))

    with pytest.raises(driver_api.ProviderUnavailable, match=r"within 0\.2s") as caught:
        await make_client(timeout=0.2).get_json("/x", invoice_id="inv1")

    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_a_body_cut_short_is_unavailable(server: ScriptedServer, client: driver_api.JsonClient) -> None:
    # Declares more than it sends, then closes: a truncated payload.
    server.queue(RawAnswer(200, b'{"status": "Sett', content_length=100))

    async def cut() -> None:
        await asyncio.sleep(0.2)
        await server.close()

    closing = asyncio.create_task(cut())
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await client.get_json("/x", invoice_id="inv1")
    await closing

    assert isinstance(caught.value.__cause__, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)
    assert_no_secret(caught.value)


async def test_a_broken_gzip_stream_is_unavailable(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    server.queue(RawAnswer(200, b"this is not gzip", headers={"Content-Encoding": "gzip"}))

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert isinstance(caught.value.__cause__, aiohttp.ClientPayloadError)
    assert_no_secret(caught.value)


async def test_an_answer_that_is_not_http_is_a_bad_response_whose_chain_shows_no_key(
    make_client: MakeClient,
) -> None:
    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(nonsense, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(driver_api.BadProviderResponse) as caught:
            await make_client(base_url=f"http://127.0.0.1:{port}").get_json("/x", invoice_id="inv1")
    finally:
        listener.close()
        await listener.wait_closed()

    # aiohttp's ClientResponseError carries request_info with our headers, and its repr shows them:
    # Zaprite kept the Bearer key there (issue 10).
    assert isinstance(caught.value.__cause__, aiohttp.ClientResponseError)
    assert caught.value.__cause__.request_info.headers.get("Authorization") is None
    assert_no_secret(caught.value)


# --- secrets ----------------------------------------------------------------------------------------------


async def test_a_server_that_echoes_the_key_never_gets_it_into_a_message(
    server: ScriptedServer, client: driver_api.JsonClient
) -> None:
    body = {"code": "bad-key", "message": f"key {SECRET} (token {SECRET}) is not valid"}
    server.queue(RawAnswer(400, json.dumps(body).encode()))

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert "key ********** (**********) is not valid" in str(caught.value)
    assert_no_secret(caught.value)


FAILURES: list[RawAnswer] = [
    RawAnswer(401, json.dumps({"code": "x", "message": SECRET}).encode()),
    RawAnswer(503, b"", {"Retry-After": "2"}),
    RawAnswer(200, b"not json"),
    RawAnswer(200, b'{"a": NaN}'),
    RawAnswer(200, b"[" * 1000),
    RawAnswer(200, b"x", content_length=10**9),
    RawAnswer(200, b"garbage", headers={"Content-Encoding": "gzip"}),
    RawAnswer(302, b"", {"Location": f"/{SECRET}"}),
]


@pytest.mark.parametrize("answer", FAILURES, ids=lambda a: f"{a.status}-{a.body[:8]!r}")
async def test_no_failure_leaves_the_key_in_its_exception_chain(
    server: ScriptedServer, client: driver_api.JsonClient, answer: RawAnswer
) -> None:
    server.queue(answer)

    with pytest.raises(driver_api.DriverError) as caught:
        await client.get_json("/x", invoice_id="inv1")

    assert_no_secret(caught.value)


def test_the_key_is_scrubbed_from_messages_built_by_hand() -> None:
    client = driver_api.JsonClient(
        provider_id="p",
        service="Acme",
        base_url="http://127.0.0.1:1",
        authorization=driver_api.SecretStr("Bearer k3y-k3y-k3y"),
        timeout=1,
        max_response_bytes=1024,
        session=None,  # type: ignore[arg-type]  # never used: no request is made
    )

    error = client.error(
        driver_api.ProviderUnavailable, "upstream said: Bearer k3y-k3y-k3y / k3y-k3y-k3y", "i"
    )

    assert "k3y" not in str(error)
    assert "upstream said: ********** / **********" in str(error)


async def test_the_shared_session_keeps_no_cookie_a_provider_sets(server: ScriptedServer) -> None:
    """Providers authenticate by header: a cookie one sets is never sent back (app.http_session)."""
    set_cookie = {"Set-Cookie": "session=steer-me; Path=/", "Content-Type": "application/json"}
    server.queue(RawAnswer(body=b"{}", headers=set_cookie), RawAnswer(body=b"{}", headers=set_cookie))
    async with app.http_session({}) as session:
        client = driver_api.JsonClient(
            provider_id="prov",
            service="Acme",
            # a host name: aiohttp's default jar would keep this cookie (it drops those of bare IPs)
            base_url=server.base_url.replace("127.0.0.1", "localhost"),
            authorization=driver_api.SecretStr(f"token {SECRET}"),
            timeout=5.0,
            max_response_bytes=LIMIT,
            session=session,
        )
        await client.get_json("/first")
        await client.get_json("/second")

    assert [path for path, _ in server.requests] == ["/first", "/second"]
    assert all("Cookie" not in headers for _, headers in server.requests)
