"""What `reconciler webhooks setup` decides and writes (docs/cli.md §2.13): the URL a provider is given,
the secret, and the file that holds it.

- :func:`registered_url`, pure: the operator's public base URL (what the reverse proxy forwards to the
  `[webhooks] listen` address) plus ``/webhooks/<provider_id>``, unless it ends with that already;
  ``https://`` unless the host is loopback.
- :func:`new_secret`: ``secrets.token_urlsafe`` of :data:`SECRET_BYTES` random bytes.
- :class:`SecretFile`: the secret written before the provider is asked, mode 0600 from its creation
  (``O_CREAT | O_EXCL``), never over an existing file unless forced; kept only once the provider
  registered the webhook, removed otherwise. Forced, it is written beside the target and renamed over
  it on success, so the old secret stays in place until the new one is registered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from reconciler import errors

SECRET_BYTES = 32
PATH_PREFIX = "/webhooks/"
_LOOPBACK_NAMES = frozenset({"localhost"})


def registered_url(public_url: str, provider_id: str) -> str:
    """The URL to register for ``provider_id``; ConfigError (exit 2) naming what is wrong with ``public_url``."""
    problem = _url_problem(public_url)
    if problem is not None:
        raise errors.ConfigError(f"--url {public_url!r}: {problem}")
    parts = urlsplit(public_url)
    suffix = f"{PATH_PREFIX}{provider_id}"
    path = parts.path.rstrip("/")
    if not path.endswith(suffix):
        path += suffix
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


def _url_problem(text: str) -> str | None:
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        return "must be a URL without spaces or control characters"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    try:
        _ = parts.port  # a malformed port raises
    except ValueError:
        return "has an invalid port"
    if scheme not in ("http", "https") or not parts.hostname:
        return "must be an https:// URL with a host (the public address your reverse proxy serves)"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        return "must not have a query or a fragment"
    if scheme == "http" and not is_loopback(parts.hostname):
        return (
            "must be https://: the provider would send its webhooks in clear text "
            "(http:// is accepted only for a loopback host, for tests)"
        )
    return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_secret() -> SecretStr:
    """A webhook secret: :data:`SECRET_BYTES` random bytes, URL-safe base64 (43 characters)."""
    return SecretStr(secrets.token_urlsafe(SECRET_BYTES))


class SecretFile:
    """A secret written to ``path`` (mode 0600) that is kept by :meth:`keep` or removed by :meth:`discard`.

    ConfigError (exit 2, nothing written) when ``path`` exists and ``force`` is false, when its
    directory is missing, or when it cannot be created or written.
    """

    def __init__(self, path: Path, secret: SecretStr, *, force: bool) -> None:
        self.path = path
        self._written = path if not force else path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
        if force and path.is_dir():
            raise errors.ConfigError(f"--secret-file {path} is a directory")
        _write_new(self._written, secret, replacing=force)

    def keep(self) -> None:
        """The secret stays at ``path`` (renamed over what was there, when forced)."""
        if self._written != self.path:
            try:
                os.replace(self._written, self.path)
            except OSError as exc:
                self.discard()
                raise errors.ConfigError(f"cannot replace {self.path}: {exc.strerror}") from exc
        _sync_directory(self.path.parent)

    def discard(self) -> None:
        """Remove what was written (the provider did not register the webhook)."""
        self._written.unlink(missing_ok=True)


def _write_new(path: Path, secret: SecretStr, *, replacing: bool) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError as exc:
        if replacing:  # our own random temporary name: somebody else's file there
            raise errors.ConfigError(f"cannot create {path}: it exists") from exc
        raise errors.ConfigError(
            f"--secret-file {path} already exists: will not overwrite a webhook secret "
            "(--force replaces it once the new webhook is registered)"
        ) from exc
    except FileNotFoundError as exc:
        raise errors.ConfigError(
            f"cannot create {path}: the directory {path.parent} does not exist "
            f"(create it first: install -d -m 0700 {path.parent})"
        ) from exc
    except OSError as exc:
        raise errors.ConfigError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            os.fchmod(out.fileno(), 0o600)  # exactly 0600 whatever the umask left
            out.write(secret.get_secret_value() + "\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise errors.ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def _sync_directory(directory: Path) -> None:
    """Make the new name durable; a filesystem that cannot sync a directory is not an error here."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
