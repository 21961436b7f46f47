"""The commands behind `reconciler`: each takes the parsed arguments and returns the exit code.

Only the chosen command's module is imported (`handler`): a `run --once` from a timer pays for neither the
operator's desk, the API keys nor the webhook setup, and `--help` for none of them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Coroutine
from typing import Any

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

#: Each command's module (under `reconciler.commands`) and function.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run"),
    "check-config": ("setup", "check_config"),
    "init-db": ("setup", "init_db"),
    "migrate": ("setup", "migrate"),
    "drivers": ("setup", "drivers"),
    "status": ("reports", "status"),
    "doctor": ("reports", "doctor"),
    "explain": ("reports", "explain"),
    "keygen": ("setup", "keygen"),
    "review": ("desk", "review"),
    "recheck": ("desk", "recheck"),
    "retry-task": ("desk", "retry_task"),
    "provider": ("desk", "provider"),
    "api-key": ("keys", "api_key"),
    "webhooks": ("hooks", "webhooks"),
}


def handler(command: str) -> Handler:
    """The function of `command` (a key of `COMMANDS`), its module imported now."""
    module, function = COMMANDS[command]
    found: Handler = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return found
