"""A PostgreSQL server that only refuses: it speaks the startup part of the wire protocol (SSL negotiation,
a cleartext password request, an ErrorResponse) so clients meet a refusal exactly as a real server sends it.

`silent` accepts TCP connections and never answers, like a host behind a firewall that drops replies.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_PROTOCOL_3 = 196608
_CLEARTEXT_PASSWORD = 3

Behaviour = Literal["refuse-password", "silent"]


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        code + value.encode() + b"\0"
        for code, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


@dataclass
class FakePostgres:
    behaviour: Behaviour
    #: The passwords clients sent (to prove a secret reached the server yet not the output).
    passwords: list[str] = field(default_factory=list)
    port: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> FakePostgres:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # `silent`: the kernel completes each handshake, nobody ever reads
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        if self.behaviour == "refuse-password":
            sock.settimeout(0.1)
            self._thread = threading.Thread(target=self._serve, name="fake-postgres", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        assert self._sock is not None
        self._sock.close()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # the client hung up first: nothing more to say to it
                    self._refuse(conn)

    def _refuse(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!I", _read_exactly(conn, 4))
            body = _read_exactly(conn, length - 4)
            (code,) = struct.unpack("!I", body[:4])
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                conn.sendall(b"N")
                continue
            if code != _PROTOCOL_3:
                return
            parts = body[4:].split(b"\0")
            params = dict(zip(parts[0::2], parts[1::2], strict=False))
            user = params.get(b"user", b"").decode()
            break
        conn.sendall(b"R" + struct.pack("!II", 8, _CLEARTEXT_PASSWORD))
        kind = _read_exactly(conn, 1)
        (length,) = struct.unpack("!I", _read_exactly(conn, 4))
        payload = _read_exactly(conn, length - 4)
        if kind == b"p":
            self.passwords.append(payload.rstrip(b"\0").decode())
        conn.sendall(_error_response("28P01", f'password authentication failed for user "{user}"'))
