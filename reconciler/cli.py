"""Command line: argument parsing, the order of checks, and exit codes (SPEC §12). No business logic here.

Exit codes: 0 done; 1 internal or database failure; 2 configuration or usage error (nothing written);
75 (EX_TEMPFAIL) a `--once` pass that completed degraded, or `check-config --online` with a provider unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from loguru import logger

from reconciler import __version__, app, errors, licenses, logs, registry
from reconciler import config as config_module
from reconciler.config import Config
from reconciler.daemon import Daemon
from reconciler.health import HealthServer
from reconciler.metrics import Metrics
from reconciler.notify import Notifier
from reconciler.runner import PassSummary, Runner
from reconciler.timeutil import format_ts, utcnow

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DEGRADED = 75

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
    sub.add_parser("drivers", parents=[common], help="list installed drivers")
    status = sub.add_parser("status", parents=[common], help="pending work, instances, items for review")
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    explain = sub.add_parser("explain", parents=[common], help="dry-run one invoice and show the evidence")
    explain.add_argument("invoice_id")
    explain.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    keygen = sub.add_parser("keygen", parents=[common], help="write a new Ed25519 license signing key")
    keygen.add_argument("--out", type=Path, help="where to write it (default: license.signing_key_file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 for --help
        return int(exc.code or 0)
    command = args.command or "run"
    logs.configure(getattr(args, "log_format", "auto"))
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = {
        "run": _run,
        "check-config": _check_config,
        "init-db": _init_db,
        "drivers": _drivers,
        "status": _status,
        "explain": _explain,
        "keygen": _keygen,
    }[command]
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


_USAGE_ERRORS = (errors.ConfigError, errors.DriverLoadError, errors.SchemaError, errors.SigningKeyError)


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


def _fail(exc: BaseException, prefix: str = "error") -> None:
    message = exc.message if isinstance(exc, errors.ReconcilerError) else str(exc)
    for line in message.splitlines():
        logger.error("{}: {}", prefix, line)


def _config(args: argparse.Namespace, *, resolve_files: bool = True) -> Config:
    cfg = config_module.load_config(
        getattr(args, "config", config_module.DEFAULT_CONFIG_PATH), resolve_files=resolve_files
    )
    logs.configure(getattr(args, "log_format", cfg.log.format), cfg.log.level)  # --log-format wins
    return cfg


# -- run ---------------------------------------------------------------------------------------------------
async def _run(args: argparse.Namespace) -> int:
    dry_run = getattr(args, "dry_run", False)
    once = getattr(args, "once", False) or dry_run
    cfg = _config(args)
    loaded = app.load_drivers(cfg)
    signing_key = None if dry_run else licenses.load_signing_key(cfg.license.signing_key_file)
    store = await app.open_store(cfg)
    try:
        await store.require_schema()
        async with app.http_session(loaded) as session:
            runner = Runner(
                store,
                app.build_providers(loaded, session),
                app.runner_settings(cfg),
                signing_key=signing_key,
            )
            if dry_run:
                return await _dry_run(runner, as_json=getattr(args, "json", False))
            if once:
                summary = await runner.run_pass()
                _report(summary)
                return EXIT_DEGRADED if summary.is_degraded else EXIT_OK
            return await _daemon(cfg, store, runner, loaded)
    finally:
        await store.close()


async def _daemon(cfg: Config, store: Any, runner: Runner, loaded: dict[str, app.LoadedDriver]) -> int:
    """The service: READY once every check passed, a pass every interval, metrics and health if asked."""
    notifier = Notifier.from_env()
    metrics = Metrics()
    runner.observer = metrics
    providers = sorted(loaded)

    async def after_pass(summary: PassSummary) -> None:
        now = utcnow()
        try:
            report = await store.status_report(now=now, max_age=cfg.reconcile.max_age)
        except errors.StoreUnavailable as exc:  # like a failed pass: the next tick tries again
            logger.warning("pending-invoice metrics not refreshed: {}", exc.message)
            return
        metrics.backlog(report, now, providers)

    daemon = Daemon(
        runner,
        interval=cfg.reconcile.interval,
        initial_delay=cfg.reconcile.initial_delay,
        shutdown_grace=cfg.daemon.shutdown_grace,
        stall_after=cfg.reconcile.lease,
        notifier=notifier,
        after_pass=after_pass,
    )
    daemon.install_signal_handlers()
    server = None
    if cfg.http is not None:

        async def alive() -> tuple[bool, str]:
            return daemon.alive()

        async def ready() -> tuple[bool, str]:
            try:
                await store.require_schema()
            except errors.ReconcilerError as exc:
                return False, f"database: {exc.message}"
            return True, f"database reachable, {len(loaded)} driver(s) loaded"

        server = HealthServer(cfg.http.host, cfg.http.port, metrics, alive=alive, ready=ready)
        try:
            port = await server.start()
        except OSError as exc:
            raise errors.ConfigError(
                f"http.listen {cfg.http.listen}: cannot listen there: {exc.strerror}"
            ) from exc
        logger.info("metrics and health on http://{}:{}/", cfg.http.host, port)
    try:
        logger.info(
            "reconciler {} started: {} provider(s), database {}",
            __version__,
            len(loaded),
            cfg.database.display_url,
        )
        notifier.ready(f"started: {len(loaded)} provider(s)")
        await daemon.run()
        logger.info("stopped after {} pass(es)", daemon.passes)
        return EXIT_OK
    finally:
        if server is not None:
            await server.stop()
        notifier.close()


def _report(summary: PassSummary) -> None:
    (logger.warning if summary.is_degraded else logger.info)(summary.line())


async def _dry_run(runner: Runner, *, as_json: bool) -> int:
    lines: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(line, sort_keys=True, default=str), flush=True)
        else:
            lines.append(line)

    summary = await runner.dry_run(emit)
    if not as_json:
        _print_table(lines)
    _report(summary)
    return EXIT_DEGRADED if summary.is_degraded else EXIT_OK


def _print_table(lines: list[dict[str, Any]]) -> None:
    headers = ("invoice_id", "provider_id", "status", "raw_status", "decision", "evidence")
    rows = [
        (
            line["invoice_id"],
            line["provider_id"] or "-",
            line["status"],
            "/".join(p for p in (line["raw_status"], line["raw_additional_status"]) if p) or "-",
            line["decision"],
            _short_evidence(line["evidence"]),
        )
        for line in lines
    ]
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers[:-1])]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + "  evidence")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if not rows:
        print("(nothing due)")


def _short_evidence(evidence: dict[str, Any]) -> str:
    keys = ("new_status", "audits", "provider_amount_sats", "provider_paid_sats", "flags", "reason", "error")
    return ", ".join(f"{k}={evidence[k]}" for k in keys if evidence.get(k) not in (None, [], ""))


# -- other commands ------------------------------------------------------------------------------------------
async def _check_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    loaded = app.load_drivers(cfg)
    print(json.dumps(cfg.masked(), indent=2, sort_keys=True, default=str))
    if not args.online:
        return EXIT_OK
    code = EXIT_OK
    async with app.http_session(loaded) as session:
        for provider_id, provider in app.build_providers(loaded, session).items():
            try:
                await provider.driver.check()
            except errors.ProviderAuthError as exc:
                logger.error("provider {}: credentials refused: {}", provider_id, exc.message)
                code = EXIT_USAGE
            except errors.DriverError as exc:
                logger.error("provider {}: unreachable: {}", provider_id, exc.message)
                code = max(code, EXIT_DEGRADED) if code != EXIT_USAGE else code
            else:
                logger.info("provider {}: credentials and reachability OK", provider_id)
    return code


async def _init_db(args: argparse.Namespace) -> int:
    cfg = _config(args, resolve_files=False)  # no provider is called: secret files are not read
    store = await app.open_store(cfg, create=True)
    try:
        created = await store.init_schema()
    finally:
        await store.close()
    if created:
        logger.info("created the reconciler schema in {}", cfg.database.display_url)
    else:
        logger.info(
            "the schema in {} is already at the current version; nothing to do", cfg.database.display_url
        )
    return EXIT_OK


async def _drivers(args: argparse.Namespace) -> int:
    found = registry.installed()
    if not found:
        print("no drivers installed (entry-point group reconciler.drivers)")
    for item in found:
        print(f"{item.name:<12} {item.distribution or '?'} {item.version or '?'}  ({item.target})")
    return EXIT_OK


async def _status(args: argparse.Namespace) -> int:
    cfg = _config(args, resolve_files=False)  # no provider is called: secret files are not read
    store = await app.open_store(cfg)
    now = utcnow()
    try:
        await store.require_schema()
        report = await store.status_report(now=now, max_age=cfg.reconcile.max_age)
    finally:
        await store.close()
    data: dict[str, Any] = {
        "pending": [
            {
                "provider_id": p.provider_id,
                "pending": p.pending,
                "oldest_age_seconds": int((now - p.oldest_created_at).total_seconds()),
            }
            for p in report.pending
        ],
        "no_longer_checked": report.no_longer_checked,
        "instances": [
            {
                "lease_owner": i.lease_owner,
                "last_pass_started_at": format_ts(i.last_pass_started_at) if i.last_pass_started_at else None,
                "last_pass_finished_at": format_ts(i.last_pass_finished_at)
                if i.last_pass_finished_at
                else None,
                "last_summary": i.last_summary,
            }
            for i in report.instances
        ],
        "review": [{"action": a, "count": n, "latest": format_ts(t)} for a, n, t in report.review],
    }
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    print("pending invoices (checked):")
    for p in data["pending"] or [{"provider_id": "-", "pending": 0, "oldest_age_seconds": 0}]:
        print(f"  {p['provider_id'] or '(default)'}: {p['pending']} (oldest {_age(p['oldest_age_seconds'])})")
    print(f"pending invoices older than max_age, no longer checked: {data['no_longer_checked']}")
    print("instances:")
    for i in data["instances"] or [{"lease_owner": "(none yet)", "last_pass_finished_at": None}]:
        print(f"  {i['lease_owner']}: last pass finished {i['last_pass_finished_at'] or 'never'}")
    print("for review (last 30 days):")
    for r in data["review"] or [{"action": "(nothing)", "count": "", "latest": ""}]:
        print(f"  {r['action']} {r['count']} {r['latest']}".rstrip())
    return EXIT_OK


def _age(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m"


async def _explain(args: argparse.Namespace) -> int:
    cfg = _config(args)
    loaded = app.load_drivers(cfg)
    store = await app.open_store(cfg)
    try:
        await store.require_schema()
        invoice = await store.get_invoice(args.invoice_id)
        if invoice is None:
            logger.error("no invoice with id {} (explain takes invoices.id)", args.invoice_id)
            return EXIT_FAILURE
        history = await store.invoice_audits(invoice.id)
        async with app.http_session(loaded) as session:
            runner = Runner(
                store, app.build_providers(loaded, session), app.runner_settings(cfg), signing_key=None
            )
            lines: list[dict[str, Any]] = []
            await runner.dry_run(lines.append, only=invoice.id)
    finally:
        await store.close()
    result = {"invoice": _invoice_dict(invoice), "decision": lines[0], "audit_history": history}
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    decision = lines[0]
    print(f"invoice     {invoice.id} ({invoice.status.value}, {invoice.amount_sats} sats)")
    print(f"provider    {decision['provider_id'] or '-'}: {invoice.provider_invoice_id}")
    raw = "/".join(p for p in (decision["raw_status"], decision["raw_additional_status"]) if p) or "-"
    print(f"answer      {raw}")
    print(f"decision    {decision['decision']} (dry run: nothing written)")
    for key, value in sorted(decision["evidence"].items()):
        print(f"  {key:<22} {value}")
    print(f"audit history ({len(history)}):")
    for row in history:
        print(f"  {row['occurred_at']}  {row['action']}")
    return EXIT_OK


def _invoice_dict(invoice: Any) -> dict[str, Any]:
    fields = ("id", "payment_provider_id", "provider_invoice_id", "status", "amount_sats")
    return {f: getattr(invoice, f) for f in fields} | {
        "created_at": format_ts(invoice.created_at),
        "last_provider_status": invoice.last_provider_status,
    }


async def _keygen(args: argparse.Namespace) -> int:
    out: Path | None = args.out
    if out is None:
        out = _config(args, resolve_files=False).license.signing_key_file
    public = licenses.write_new_key(out)
    logger.info("wrote a new Ed25519 signing key to {} (mode 0600); its public key:", out)
    print(public, end="" if public.endswith("\n") else "\n")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
