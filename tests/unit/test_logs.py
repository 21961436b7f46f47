"""Log output (SPEC §13): journald priority prefixes, JSON lines, human lines, stdlib logging through loguru."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest
from loguru import logger

from reconciler import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`logs.configure` replaces loguru's sinks and the root logger's handlers: put them back afterwards."""
    root_handlers, root_level = logging.root.handlers[:], logging.root.level
    yield
    logger.remove()
    logger.add(sys.stderr)
    logging.root.handlers[:] = root_handlers
    logging.root.setLevel(root_level)


def stderr_lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    return capfd.readouterr().err.splitlines()


def test_journal_lines_carry_sd_daemon_priority_prefixes(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("journal", "DEBUG")
    logger.debug("d")
    logger.info("i {}", "<b>not markup</b>")
    logger.warning("w")
    logger.error("e")
    logger.critical("c")
    assert stderr_lines(capfd) == ["<7>d", "<6>i <b>not markup</b>", "<4>w", "<3>e", "<2>c"]


def test_auto_is_journal_under_systemd_and_human_elsewhere(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    logs.configure("auto")
    logger.info("under systemd")
    monkeypatch.delenv("JOURNAL_STREAM")
    logs.configure("auto")
    logger.info("on a terminal")
    first, second = stderr_lines(capfd)
    assert first == "<6>under systemd"
    datetime.strptime(second[:19], "%Y-%m-%d %H:%M:%S")
    assert second[19:].split() == ["INFO", "on", "a", "terminal"]
    assert "\x1b[" not in second  # no colours when stderr is not a terminal


def test_json_lines_with_the_traceback_of_an_exception(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "INFO")
    logger.debug("below the level")
    logger.info('quoted "text"\nover two lines')
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    first, second = (json.loads(line) for line in stderr_lines(capfd))
    assert first["message"] == 'quoted "text"\nover two lines'
    assert first["level"] == "INFO"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert "exception" not in first
    assert second["level"] == "ERROR"
    assert second["exception"].startswith("Traceback (most recent call last):")
    assert second["exception"].endswith("ValueError: boom")


@pytest.mark.parametrize("name", ["aiohttp.client", "asyncio", "tenacity.retry"])
def test_stdlib_warnings_go_through_loguru(name: str, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("journal", "DEBUG")
    logging.getLogger(name).info("chatter stays out")
    logging.getLogger(name).warning("%s of %d", "one", 2)
    logging.getLogger(name).error("failed")
    assert stderr_lines(capfd) == [f"<4>{name}: one of 2", f"<3>{name}: failed"]
