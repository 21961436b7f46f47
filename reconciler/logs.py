"""Logging through loguru to stderr: human on a terminal, journald priority prefixes, or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Literal

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

LogFormat = Literal["auto", "human", "journal", "json"]

# sd-daemon(3) priority prefixes by loguru level
_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


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
            # `\\<` escapes loguru's colour markup: an unescaped `<6>` is rejected as an unknown tag
            format=lambda record: f"\\<{_PRIORITY.get(record['level'].name, 6)}>{{message}}\n{{exception}}",
            colorize=False,
            diagnose=False,  # tracebacks with variable values could show secrets
            backtrace=False,
        )
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="<green>{time:YYYY-MM-DD HH:mm:ss}</green> <level>{level: <7}</level> {message}",
            colorize=sys.stderr.isatty(),
            diagnose=False,
            backtrace=False,
        )


def _json_sink(message: Message) -> None:
    record: Record = message.record
    line = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
    }
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        line["exception"] = "".join(traceback.format_exception(kind, value, tb)).rstrip()
    sys.stderr.write(json.dumps(line) + "\n")
