"""``[database]``: the URL, checked without echoing what may be a password, and shown with every password masked."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote_plus, urlsplit

from pydantic import (
    field_validator,
)

from reconciler.config.values import (
    _PORT_TEXT,
    MASK,
    _Section,
)


class DatabaseSettings(_Section):
    """``[database]``: ``sqlite://`` + a file path, or a ``postgresql://`` / ``postgres://`` URL."""

    url: str = "sqlite:///var/lib/reconciler/shop.db"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        scheme, separator, rest = url.partition("://")
        # Only the scheme is echoed: the rest of a URL may carry a password.
        if not separator:
            raise ValueError("expected sqlite:///path/to/file.db or postgresql://user@host/db")
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                f"unsupported scheme {scheme!r}: use sqlite:///path/to/file.db or postgresql://user@host/db"
            )
        if not rest:
            raise ValueError(f"{scheme}:// needs a {'file path' if scheme == 'sqlite' else 'host'}")
        if scheme == "sqlite":
            if "?" in rest or "#" in rest:
                # SQLite would otherwise open (or create) a file named after the whole text
                raise ValueError(
                    "a sqlite:// URL is a file path only: remove the '?...' query or '#...' fragment "
                    "(URL parameters such as ?mode=ro are not supported)"
                )
        else:
            _check_postgres_url(url)
        return url

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which store implementation serves this URL."""
        return "sqlite" if self.url.startswith("sqlite://") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file: everything after ``sqlite://`` (``sqlite:///var/x.db`` is ``/var/x.db``)."""
        if self.backend != "sqlite":
            raise ValueError("not a sqlite:// database url")
        return Path(self.url.removeprefix("sqlite://"))

    @property
    def display_url(self) -> str:
        """The URL with every password in it masked (userinfo, ``*password*`` parameters), for display."""
        if self.backend == "sqlite":
            return self.url
        return _masked_url(self.url)


def _url_parts(url: str) -> tuple[str, str, str, str | None, str | None]:
    """``scheme://netloc/path?query#fragment`` split by hand: unlike ``urlsplit`` it never raises."""
    scheme, _, rest = url.partition("://")
    rest, hash_sign, fragment = rest.partition("#")
    rest, question_mark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return scheme, netloc, slash + path, query if question_mark else None, fragment if hash_sign else None


def _check_postgres_url(url: str) -> None:
    """What the PostgreSQL client would only trip over when connecting: ports, IPv6 brackets, the query."""
    _, netloc, _, query, _ = _url_parts(url)
    try:
        urlsplit(url)
    except ValueError:
        raise ValueError("not a valid URL: check the [brackets] around an IPv6 address") from None
    hosts = netloc.rpartition("@")[2]
    ports = []
    for host in hosts.split(",") if hosts else []:
        if host.startswith("["):
            address, bracket, port = host[1:].partition("]")
            if not bracket or not address or (port and not port.startswith(":")):
                raise ValueError("not a valid URL: write an IPv6 host as [address] or [address]:port")
            ports.append(port[1:])
        else:
            ports.append(host.partition(":")[2])
    if query is not None:
        try:
            parameters = parse_qs(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(
                "the query string must be name=value pairs joined by '&', e.g. ?sslmode=require"
            ) from None
        for value in parameters.get("port", []):
            ports.extend(value.split(","))
    for port in ports:
        if port and not (_PORT_TEXT.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ValueError("port must be a number from 1 to 65535, e.g. postgresql://user@host:5432/db")


def _masked_url(url: str) -> str:
    scheme, netloc, path, query, fragment = _url_parts(url)
    # The last "@" ends the userinfo; masking everything after its first ":" also covers clients that
    # split at the first "@" instead.
    user_info, at, hosts = netloc.rpartition("@")
    if at and ":" in user_info:
        netloc = f"{user_info.partition(':')[0]}:{MASK}@{hosts}"
    shown = f"{scheme}://{netloc}{path}"
    if query is not None:
        shown += "?" + "&".join(_masked_parameter(item) for item in query.split("&"))
    if fragment is not None:
        shown += "#" + fragment
    return shown


def _masked_parameter(item: str) -> str:
    name = item.partition("=")[0]
    if "password" in unquote_plus(name).lower():
        return f"{name}={MASK}"
    return item
