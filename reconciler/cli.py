"""Command line: argument parsing, the order of checks, and exit codes (docs/cli.md). No business logic here.

Exit codes: 0 done; 1 internal or database failure; 2 configuration or usage error (nothing written);
75 (EX_TEMPFAIL) a `--once` pass that completed degraded, or `check-config --online` with a provider unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from loguru import logger

from reconciler import __version__, commands, errors, logs
from reconciler.api import keys
from reconciler.commands import common

EXIT_OK = common.EXIT_OK
EXIT_FAILURE = common.EXIT_FAILURE
EXIT_USAGE = common.EXIT_USAGE
EXIT_DEGRADED = common.EXIT_DEGRADED

LOG_FORMATS = ("auto", "human", "journal", "json")


def _parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the subcommand: each subparser repeats them with
    # SUPPRESS defaults so a value given on one side is not reset by the other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="configuration file")
    common.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS)
    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument(
        "--once", action="store_true", default=argparse.SUPPRESS, help="one pass, then exit"
    )
    run_opts.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS, help="read providers, write nothing"
    )
    run_opts.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON lines output")

    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Reconcile pending invoices with their payment providers and issue licenses exactly once.",
        parents=[common, run_opts],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common, run_opts], help="the daemon (default), or one pass with --once")
    check = sub.add_parser("check-config", parents=[common], help="validate and print the configuration")
    check.add_argument("--online", action="store_true", help="also verify each provider's credentials")
    sub.add_parser("init-db", parents=[common], help="create the schema in an empty database")
    sub.add_parser(
        "migrate", parents=[common], help="upgrade the database schema to this release's version, in place"
    )
    sub.add_parser("drivers", parents=[common], help="list installed drivers")
    status = sub.add_parser("status", parents=[common], help="pending work, instances, items for review")
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    review = sub.add_parser(
        "review", parents=[common], help="the open review items, oldest first; settle or dismiss one"
    )
    review.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    review.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="list at most N items (default 50)"
    )
    sub.add_parser(
        "doctor", parents=[common], help="every start-up check of `run` (config, drivers, key, database)"
    )
    explain = sub.add_parser("explain", parents=[common], help="dry-run one invoice and show the evidence")
    explain.add_argument("invoice_id", nargs="?", help="invoices.id")
    explain.add_argument(
        "--provider-invoice-id", help="look the invoice up by the provider's id instead (every row with it)"
    )
    explain.add_argument("--provider", help="with --provider-invoice-id: only rows of this provider id")
    explain.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    keygen = sub.add_parser("keygen", parents=[common], help="write a new Ed25519 license signing key")
    keygen.add_argument("--out", type=Path, help="where to write it (default: license.signing_key_file)")
    _desk_parsers(sub, common, review)
    api_key = sub.add_parser(
        "api-key", parents=[common], help="the operator API's keys: create, list, revoke"
    )
    key_sub = api_key.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = key_sub.add_parser("create", parents=[common], help="create a key and print its token once")
    create.add_argument("--role", required=True, choices=[role.value for role in keys.Role])
    create.add_argument("--label", required=True, help="who holds it and what for")
    listing = key_sub.add_parser("list", parents=[common], help="every key, revoked ones included")
    listing.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    revoke = key_sub.add_parser("revoke", parents=[common], help="revoke a key: its next request gets 401")
    revoke.add_argument("key_id", help="api_keys.id (api-key list shows them)")
    hooks = sub.add_parser("webhooks", parents=[common], help="provider webhooks: register the daemon's")
    hook_sub = hooks.add_subparsers(dest="webhooks_action", metavar="ACTION", required=True)
    setup = hook_sub.add_parser(
        "setup", parents=[common], help="register the webhook with the provider and write its secret file"
    )
    setup.add_argument("provider_id", help="a [providers.<id>] of the configuration")
    setup.add_argument(
        "--url",
        required=True,
        metavar="PUBLIC_URL",
        help="the public https:// base your reverse proxy forwards to [webhooks] listen "
        "(/webhooks/<provider_id> is appended unless it ends with it)",
    )
    setup.add_argument(
        "--secret-file",
        type=Path,
        metavar="PATH",
        help="where to write the secret, mode 0600 (default: credentials/<provider_id>_webhook_secret "
        "beside the configuration file)",
    )
    setup.add_argument(
        "--force", action="store_true", help="replace an existing secret file once the webhook is registered"
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100000, not {text!r}")
    return value


def _desk_parsers(sub: Any, common: argparse.ArgumentParser, review: argparse.ArgumentParser) -> None:
    """The operator's actions (docs/cli.md; reconciler/operator/actions.py); `review` alone lists the open
    items, `review settle|dismiss` act on one."""
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="the result as JSON")
    reason = argparse.ArgumentParser(add_help=False)
    reason.add_argument("--reason", required=True, help="why (one line, at most 1,000 characters; audited)")
    actions = review.add_subparsers(dest="review_action", metavar="ACTION")
    settle = actions.add_parser(
        "settle",
        parents=[common, reason, as_json],
        help="settle an expired or invalid invoice its provider reports paid late or underpaid",
    )
    settle.add_argument("invoice_id", help="invoices.id")
    dismiss = actions.add_parser("dismiss", parents=[common, reason], help="dismiss an open review item")
    dismiss.add_argument("item_id", help="review_items.id")
    recheck = sub.add_parser(
        "recheck", parents=[common, as_json], help="check one invoice now and record it as a pass would"
    )
    recheck.add_argument("invoice_id", help="invoices.id")
    retry = sub.add_parser("retry-task", parents=[common], help="queue a failed post-settle task again")
    retry.add_argument("invoice_id", help="invoices.id")
    retry.add_argument("kind", help="post_settle_tasks.kind")
    provider = sub.add_parser("provider", parents=[common], help="pause or resume a provider")
    verbs = provider.add_subparsers(dest="provider_action", metavar="ACTION", required=True)
    for verb, what in (("pause", "stop checking its invoices, on every instance"), ("resume", "check again")):
        p = verbs.add_parser(verb, parents=[common], help=what)
        p.add_argument("provider_id", help="a [providers.<id>] of the configuration")
        p.add_argument("--reason", help="why (one line, audited)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 for --help
        return int(exc.code or 0)
    command = args.command or "run"
    logs.configure(getattr(args, "log_format", "auto"))
    handler = _handler(command)
    if sys.stdout is None:  # started with stdout closed: print() writes nowhere, nothing to watch
        return _outcome(handler, args, None)
    stdout = _WatchedStdout(sys.stdout)
    sys.stdout = stdout
    try:
        code = _outcome(handler, args, stdout)
        with contextlib.suppress(BrokenPipeError):  # the watcher notes it
            stdout.flush()
    finally:
        sys.stdout = stdout.stream
    if stdout.broken:
        _silence_stdout()
    return code


#: Live containers the cyclic garbage collector lets accumulate before it walks its youngest generation
#: (CPython's default is 700). What a pass allocates is freed by reference counting as each invoice ends; at
#: 700, the objects of the few hundred invoices in flight (their rows, snapshots, plans and list pages) were
#: walked again some 520 times per 10,000 invoices, about 0.2 s of CPU. Reference cycles (a failed task's
#: traceback) are still collected, after this many.
GC_YOUNG_THRESHOLD = 50_000


def _handler(command: str) -> commands.Handler:
    """The command's function, its modules imported with the cyclic garbage collector paused, then frozen.

    Those modules' objects live as long as the process: collecting while hundreds of them load frees next to
    nothing (the little it would, under half a megabyte, stays), and once frozen (`gc.freeze`) no later collection,
    the one at exit included, walks them again. About a quarter of the CPU of an empty `--once` pass. The
    command's work then runs with a young generation of `GC_YOUNG_THRESHOLD`."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return commands.handler(command)
    finally:
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
        if enabled:
            gc.enable()


def _outcome(
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    args: argparse.Namespace,
    stdout: _WatchedStdout | None,
) -> int:
    """The command's exit code; every way it can end, including a crash, becomes one."""
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError as exc:
        if stdout is not None and stdout.broken:  # the reader went away (`reconciler status | head`)
            return EXIT_OK
        return _crash(exc)
    except (errors.ReconcilerError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(leaf, errors.ReconcilerError) for leaf in leaves):
            return _crash(exc)
        usage = [leaf for leaf in leaves if isinstance(leaf, _USAGE_ERRORS)]
        for leaf in leaves:
            _fail(leaf, "error" if isinstance(leaf, _USAGE_ERRORS) else "failure")
        return EXIT_USAGE if usage else EXIT_FAILURE
    except Exception as exc:
        return _crash(exc)


def _crash(exc: BaseException) -> int:
    """A bug of ours: logged loudly with its traceback, in the chosen log format, and exit 1."""
    logger.opt(exception=exc).critical("reconciler crashed: {}: {}", type(exc).__name__, exc)
    return EXIT_FAILURE


class _WatchedStdout:
    """``sys.stdout`` as the commands see it: writes go through; a broken pipe on it is remembered."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.broken = True
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.broken = True
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _silence_stdout() -> None:
    """Point the stdout file descriptor at /dev/null, so the interpreter's last flush of what is still
    buffered cannot fail with an "Exception ignored ... BrokenPipeError" (as Python's signal docs advise)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (captured in tests): nothing will be flushed to a pipe
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


_USAGE_ERRORS = common.USAGE_ERRORS


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


def _fail(exc: BaseException, prefix: str = "error") -> None:
    message = exc.message if isinstance(exc, errors.ReconcilerError) else str(exc)
    for line in message.splitlines():
        logger.error("{}: {}", prefix, line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
