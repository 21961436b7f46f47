"""Logging through loguru to stderr: human on a terminal, journald priority prefixes, or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record, RecordException

LogFormat = Literal["auto", "human", "journal", "json"]

# sd-daemon(3) priority prefixes by loguru level
_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

# Every character that could end or rewrite a line (C0, DEL, C1, the Unicode line and paragraph
# separators) as a visible escape, so provider text in a message can never start a forged line.
_ESCAPES: dict[int, str] = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
#: ``extra`` keys (``logger.bind(invoice_id=..., provider_id=...)``) that JSON lines carry as top-level fields.
FIELDS = ("invoice_id", "provider_id")
# The record's escaped message and traceback, set by the format functions for the format string.
_LINE = "_reconciler_line"
_TRACEBACK = "_reconciler_traceback"


def one_line(text: str) -> str:
    """``text`` with every control character escaped (a newline becomes the two characters ``\\n``)."""
    return text.translate(_ESCAPES)


def resolve_format(fmt: LogFormat) -> Literal["human", "journal", "json"]:
    if fmt != "auto":
        return fmt
    return "journal" if os.environ.get("JOURNAL_STREAM") else "human"


class _Intercept(logging.Handler):
    """Hands stdlib logging records (aiohttp, asyncio, tenacity) to loguru, keeping level and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def configure(fmt: LogFormat = "auto", level: str = "INFO") -> None:
    """Route every log line to stderr in the chosen format (one sink; replaces loguru's default)."""
    logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)
    logger.remove()
    chosen = resolve_format(fmt)
    if chosen == "json":
        logger.add(_json_sink, level=level, format="{message}", diagnose=False, backtrace=False)
    elif chosen == "journal":
        logger.add(
            sys.stderr,
            level=level,
            format=_journal_format,
            colorize=False,
            diagnose=False,  # tracebacks with variable values could show secrets
            backtrace=False,
        )
    else:
        logger.add(
            sys.stderr,
            level=level,
            format=_human_format,
            colorize=sys.stderr.isatty(),
            diagnose=False,
            backtrace=False,
        )


_HUMAN = (
    "<green>{time:YYYY-MM-DD HH:mm:ss}</green> <level>{level: <7}</level> "
    + f"{{extra[{_LINE}]}}"
    + "\n{exception}"
)


def _human_format(record: Record) -> str:
    record["extra"][_LINE] = one_line(record["message"])
    return _HUMAN


def _journal_format(record: Record) -> str:
    priority = _PRIORITY.get(record["level"].name, 6)
    record["extra"][_LINE] = one_line(record["message"])
    # `\\<` escapes loguru's colour markup: an unescaped `<6>` is rejected as an unknown tag
    line = f"\\<{priority}>{{extra[{_LINE}]}}\n"
    if record["exception"] is None:
        return line
    # Every traceback line carries the record's priority too, so no line of exception text can pass
    # for a priority prefix of its own (and `journalctl -p err` shows the whole traceback).
    record["extra"][_TRACEBACK] = "".join(
        f"<{priority}>{text}\n" for text in _traceback(record["exception"]).splitlines()
    )
    return line + f"{{extra[{_TRACEBACK}]}}"


def _traceback(exception: RecordException) -> str:
    kind, value, tb = exception
    return "".join(traceback.format_exception(kind, value, tb)).rstrip()


def _json_sink(message: Message) -> None:
    record: Record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
    }
    line.update({key: record["extra"][key] for key in FIELDS if key in record["extra"]})
    if record["exception"] is not None:
        line["exception"] = _traceback(record["exception"])
    sys.stderr.write(json.dumps(line, default=str) + "\n")
