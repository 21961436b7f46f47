"""`reconciler webhooks setup`'s own decisions (docs/cli.md §2.13): the URL rule, the secret, the secret file."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import errors, webhook_setup

# --- the URL rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "registered"),
    [
        ("https://shop.example.com", "https://shop.example.com/webhooks/btcpay_main"),
        ("https://shop.example.com/", "https://shop.example.com/webhooks/btcpay_main"),
        ("https://shop.example.com/reconciler/", "https://shop.example.com/reconciler/webhooks/btcpay_main"),
        ("https://shop.example.com/webhooks/btcpay_main", "https://shop.example.com/webhooks/btcpay_main"),
        ("https://shop.example.com/webhooks/btcpay_main/", "https://shop.example.com/webhooks/btcpay_main"),
        ("HTTPS://shop.example.com:8443/x", "https://shop.example.com:8443/x/webhooks/btcpay_main"),
        # another provider's suffix is not ours: appended
        ("https://h.example/webhooks/other", "https://h.example/webhooks/other/webhooks/btcpay_main"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/webhooks/btcpay_main"),
        ("http://localhost:8081", "http://localhost:8081/webhooks/btcpay_main"),
        ("http://[::1]:8081", "http://[::1]:8081/webhooks/btcpay_main"),
        ("http://127.1.2.3", "http://127.1.2.3/webhooks/btcpay_main"),
    ],
)
def test_the_registered_url(given_url: str, registered: str) -> None:
    assert webhook_setup.registered_url(given_url, "btcpay_main") == registered


@pytest.mark.parametrize(
    ("given_url", "why"),
    [
        ("http://shop.example.com", "must be https://"),
        ("http://10.0.0.1:8081", "must be https://"),
        ("http://localhost.example.com", "must be https://"),
        ("ftp://shop.example.com", "https:// URL with a host"),
        ("shop.example.com", "https:// URL with a host"),
        ("https://", "https:// URL with a host"),
        ("https://user:pw@shop.example.com", "credentials"),
        ("https://shop.example.com/?a=1", "query or a fragment"),
        ("https://shop.example.com/#x", "query or a fragment"),
        ("https://shop.example.com/a b", "spaces"),
        ("https://shop.example.com/\x00", "control characters"),
        ("https://shop.example.com:99999", "invalid port"),
        ("", "spaces"),
    ],
)
def test_urls_refused_with_the_reason(given_url: str, why: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        webhook_setup.registered_url(given_url, "btcpay_main")
    assert why in caught.value.message
    assert caught.value.message.startswith("--url ")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-/._~", max_size=40))
def test_the_registered_url_always_ends_with_the_provider_route_once(path: str) -> None:
    url = webhook_setup.registered_url(f"https://shop.example.com/{path}", "zap")
    assert url.endswith("/webhooks/zap")
    assert webhook_setup.registered_url(url, "zap") == url  # given back, it is kept


# --- the secret -----------------------------------------------------------------------------------------


def test_secrets_are_long_random_and_url_safe() -> None:
    made = {webhook_setup.new_secret().get_secret_value() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert len(secret) >= 43  # 32 bytes, base64
        assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# --- the secret file ------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_file_is_0600_with_the_secret_and_kept(tmp_path: Path) -> None:
    secret = webhook_setup.new_secret()
    path = tmp_path / "hook.secret"
    old_umask = os.umask(0)  # even a permissive umask leaves it private
    try:
        secret_file = webhook_setup.SecretFile(path, secret, force=False)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert path.read_text() == secret.get_secret_value() + "\n"
    secret_file.keep()
    assert path.read_text() == secret.get_secret_value() + "\n"


def test_the_file_is_never_readable_by_others_while_it_is_written(tmp_path: Path) -> None:
    """Watch the directory while files are created: no moment shows one with more than 0600."""
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for entry in os.scandir(tmp_path):
                with contextlib.suppress(FileNotFoundError):
                    seen.add(stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(200):
            webhook_setup.SecretFile(tmp_path / f"s{n}", webhook_setup.new_secret(), force=n % 2 == 0).keep()
    finally:
        stop.set()
        watcher.join()
    assert seen and seen <= {0o600}


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "hook.secret"
    path.write_text("the old secret\n")
    with pytest.raises(errors.ConfigError) as caught:
        webhook_setup.SecretFile(path, webhook_setup.new_secret(), force=False)
    assert "already exists" in caught.value.message
    assert "--force" in caught.value.message
    assert path.read_text() == "the old secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hook.secret"]


def test_forced_the_old_secret_stays_until_kept(tmp_path: Path) -> None:
    path = tmp_path / "hook.secret"
    path.write_text("the old secret\n")
    path.chmod(0o644)
    secret = webhook_setup.new_secret()
    secret_file = webhook_setup.SecretFile(path, secret, force=True)
    assert path.read_text() == "the old secret\n"
    secret_file.keep()
    assert path.read_text() == secret.get_secret_value() + "\n"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hook.secret"]


@pytest.mark.parametrize("force", [False, True])
def test_discarded_nothing_new_is_left(tmp_path: Path, force: bool) -> None:
    path = tmp_path / "hook.secret"
    if force:
        path.write_text("the old secret\n")
    webhook_setup.SecretFile(path, webhook_setup.new_secret(), force=force).discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["hook.secret"] if force else [])
    if force:
        assert path.read_text() == "the old secret\n"


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        webhook_setup.SecretFile(tmp_path / "nope" / "s", webhook_setup.new_secret(), force=False)
    assert f"the directory {tmp_path / 'nope'} does not exist" in caught.value.message


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "hook.secret"
    link.symlink_to(target)
    with pytest.raises(errors.ConfigError):
        webhook_setup.SecretFile(link, webhook_setup.new_secret(), force=False)
    assert not target.exists()
