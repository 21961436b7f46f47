"""The commands behind `reconciler`: each takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from reconciler.commands import desk, hooks, keys, reports, run, setup

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

HANDLERS: dict[str, Handler] = {
    "run": run.run,
    "check-config": setup.check_config,
    "init-db": setup.init_db,
    "migrate": setup.migrate,
    "drivers": setup.drivers,
    "status": reports.status,
    "doctor": reports.doctor,
    "explain": reports.explain,
    "keygen": setup.keygen,
    "review": desk.review,
    "recheck": desk.recheck,
    "retry-task": desk.retry_task,
    "provider": desk.provider,
    "api-key": keys.api_key,
    "webhooks": hooks.webhooks,
}
