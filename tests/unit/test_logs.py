"""Log output (docs/cli.md §5.3): journald priority prefixes, JSON lines, human lines, stdlib logging through
loguru."""

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


# -- issue 10: one logger call is one line, whatever provider text it carries -----------------------------------
FORGED = "Settled\n<2>forged critical\r\x1b[31m\x00\x7f\x85\u2028\u2029\ttab\x1c"
ESCAPED = "Settled\\n<2>forged critical\\r\\x1b[31m\\x00\\x7f\\x85\\u2028\\u2029\\ttab\\x1c"


@pytest.mark.parametrize("fmt", ["human", "journal"])
def test_control_characters_in_a_message_are_escaped(
    fmt: logs.LogFormat, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure(fmt, "INFO")
    logger.warning("provider status {}", FORGED)
    logging.getLogger("aiohttp.client").warning("header %s", "a\nb")

    first, second = stderr_lines(capfd)

    assert first.endswith(f"provider status {ESCAPED}")
    assert second.endswith("aiohttp.client: header a\\nb")
    if fmt == "journal":
        assert first.startswith("<4>provider status ")


def test_printable_text_is_left_alone(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("journal", "INFO")
    logger.info("paid 10 000 sats, café, 日本, back\\slash, {braces}, <b>")

    assert stderr_lines(capfd) == ["<6>paid 10 000 sats, café, 日本, back\\slash, {braces}, <b>"]


def test_a_traceback_stays_multi_line_and_each_journal_line_keeps_the_priority(
    capfd: pytest.CaptureFixture[str],
) -> None:
    logs.configure("journal", "INFO")
    try:
        raise ValueError("bad answer\n<2>forged")
    except ValueError:
        logger.exception("fetch of {} failed", "inv\n1")

    lines = stderr_lines(capfd)

    assert lines[0] == "<3>fetch of inv\\n1 failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-2:] == ["<3>ValueError: bad answer", "<3><2>forged"]
    assert all(line.startswith("<3>") for line in lines)


def test_a_human_traceback_stays_multi_line(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("human", "INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it\nfailed")

    lines = stderr_lines(capfd)

    assert lines[0].endswith("ERROR   it\\nfailed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_json_lines_stay_one_line_with_control_characters(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "INFO")
    logger.info("status {}", FORGED)

    (line,) = stderr_lines(capfd)

    assert json.loads(line)["message"] == f"status {FORGED}"


def test_json_lines_carry_the_invoice_and_provider_as_fields(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "INFO")
    logger.bind(invoice_id="inv-1", provider_id="btcpay_main", other="not a field").warning("fetch failed")
    logger.info("no invoice here")
    with logger.contextualize(invoice_id="inv-2"):
        logger.info("inside a context")
    logger.bind(invoice_id="inv-3", provider_id=None).info("the default provider")

    first, second, third, fourth = (json.loads(line) for line in stderr_lines(capfd))

    assert first == first | {"invoice_id": "inv-1", "provider_id": "btcpay_main", "message": "fetch failed"}
    assert set(first) == {"time", "level", "message", "invoice_id", "provider_id"}
    assert set(second) == {"time", "level", "message"}
    assert third["invoice_id"] == "inv-2" and "provider_id" not in third
    assert (fourth["invoice_id"], fourth["provider_id"]) == ("inv-3", None)


@pytest.mark.parametrize(
    ("fmt", "expected"), [("journal", "<4>fetch failed"), ("human", " WARNING fetch failed")]
)
def test_human_and_journal_lines_do_not_show_the_fields(
    fmt: logs.LogFormat, expected: str, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure(fmt, "INFO")
    logger.bind(invoice_id="inv-1", provider_id="btcpay_main").warning("fetch failed")

    (line,) = stderr_lines(capfd)

    assert line.endswith(expected) and "inv-1" not in line
