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
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from loguru import logger

from reconciler import __version__, app, errors, licenses, logs, registry
from reconciler import config as config_module
from reconciler.config import Config
from reconciler.daemon import Daemon
from reconciler.health import HealthServer
from reconciler.metrics import Metrics
from reconciler.models import Invoice, Unreadable
from reconciler.notify import Notifier
from reconciler.runner import PassSummary, Runner
from reconciler.timeutil import format_duration, format_ts, utcnow

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
        "doctor": _doctor,
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
    """The validated configuration; every problem of the file (driver options included) at once."""
    cfg = config_module.load_config(
        getattr(args, "config", config_module.DEFAULT_CONFIG_PATH),
        resolve_files=resolve_files,
        driver_settings=app.driver_settings,
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
                return await _once(runner, cfg.daemon.shutdown_grace.total_seconds())
            return await _daemon(cfg, store, runner, loaded)
    finally:
        await store.close()


async def _once(runner: Runner, grace: float) -> int:
    """One pass. SIGTERM / SIGINT drain it like the daemon: stop claiming, let in-flight invoices finish
    within `shutdown_grace`, then cancel (the runner releases what it still holds)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            logger.info(
                "{} received: finishing in-flight invoices, then stopping", signal.Signals(signum).name
            )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    task = asyncio.create_task(runner.run_pass(stop=stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                logger.warning("shutdown grace of {:.0f}s ran out: cancelling the pass", grace)
                task.cancel()
        try:
            summary = await task
        except asyncio.CancelledError:
            logger.warning("stopped before the pass finished: the invoices left are checked next time")
            return EXIT_DEGRADED
    finally:
        stopper.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    _report(summary)
    if stop.is_set():
        logger.info("stopped on request after the invoices in flight")
    return EXIT_DEGRADED if summary.is_degraded else EXIT_OK


async def _daemon(cfg: Config, store: Any, runner: Runner, loaded: dict[str, app.LoadedDriver]) -> int:
    """The service: READY once every check passed, a pass every interval, metrics and health if asked."""
    notifier = Notifier.from_env()
    providers = sorted(loaded)
    metrics = Metrics(providers=providers)
    runner.observer = metrics

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
        credentials_refused=lambda: metrics.refused,
    )
    daemon.install_signal_handlers()
    server = None
    if cfg.http is not None:

        async def alive() -> tuple[bool, str]:
            return daemon.alive()

        server = HealthServer(cfg.http.host, cfg.http.port, metrics, alive=alive, ready=daemon.ready)
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
    live_window = max(3 * cfg.reconcile.interval, cfg.reconcile.lease)
    try:
        await store.require_schema()
        report = await store.status_report(
            now=now, max_age=cfg.reconcile.max_age, instances_since=now - live_window
        )
    finally:
        await store.close()
    data = _status_data(report, now, cfg)
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    print("pending invoices (checked):")
    for p in data["pending"] or [{"provider_id": "-", "pending": 0, "oldest_age_seconds": 0}]:
        label = p["provider_id"] or _no_provider_label(cfg.default_provider)
        age = _age(p["oldest_age_seconds"]) if p["oldest_age_seconds"] is not None else "unreadable"
        print(f"  {label}: {p['pending']} (oldest {age})")
    print(f"pending invoices older than max_age, no longer checked: {data['no_longer_checked']}")
    print(f"instances (a pass in the last {format_duration(live_window)}):")
    for i in data["instances"]:
        print(f"  {i['lease_owner']}: {_instance_state(i)}")
    if not data["instances"]:
        print("  (none)")
    if data["other_instances"]:
        print(f"  and {data['other_instances']} older instance row(s), kept for 7 days")
    held = data["quarantined"]
    print(f"held back for a person ({held['total']}):")
    for q in held["invoices"]:
        what = f"unreadable {q['detail']}" if q["kind"] == "unreadable" else f"duplicate of {q['detail']}"
        print(f"  {q['invoice_id']}: {what}" + (f" (since {q['since']})" if q["since"] else ""))
    if held["total"] > len(held["invoices"]):
        print(f"  … and {held['total'] - len(held['invoices'])} more")
    if not held["total"]:
        print("  (nothing)")
    print("for review (last 30 days):")
    for r in data["review"] or [{"action": "(nothing)", "count": "", "latest": ""}]:
        print(f"  {r['action']} {r['count']} {r['latest']}".rstrip())
    return EXIT_OK


def _status_data(report: Any, now: datetime, cfg: Config) -> dict[str, Any]:
    def ts(moment: datetime | None) -> str | None:
        return format_ts(moment) if moment else None

    return {
        "pending": [
            {
                "provider_id": p.provider_id,
                "pending": p.pending,
                "oldest_age_seconds": int((now - p.oldest_created_at).total_seconds())
                if p.oldest_created_at is not None
                else None,
            }
            for p in report.pending
        ],
        "default_provider": cfg.default_provider,
        "no_longer_checked": report.no_longer_checked,
        "instances": [
            {
                "lease_owner": i.lease_owner,
                "started_at": ts(i.started_at),
                "last_pass_started_at": ts(i.last_pass_started_at),
                "last_pass_finished_at": ts(i.last_pass_finished_at),
                "last_summary": i.last_summary,
            }
            for i in report.instances
        ],
        "other_instances": report.other_instances,
        "quarantined": {
            "total": report.quarantined_total,
            "invoices": [
                {"invoice_id": q.invoice_id, "kind": q.kind, "detail": q.detail, "since": ts(q.since)}
                for q in report.quarantined
            ],
        },
        "review": [{"action": a, "count": n, "latest": format_ts(t)} for a, n, t in report.review],
    }


def _no_provider_label(default_provider: str | None) -> str:
    if default_provider is None:
        return "(no provider id: skipped, no default_provider is set)"
    return f"(no provider id: default_provider {default_provider})"


def _instance_state(instance: dict[str, Any]) -> str:
    finished, started = instance["last_pass_finished_at"], instance["last_pass_started_at"]
    if started is None:
        return f"started {instance['started_at']}, no pass yet"
    if finished is None or finished < started:
        return f"pass started {started}, not finished (running, or the process died)"
    return f"last pass finished {finished}"


def _age(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m"


async def _doctor(args: argparse.Namespace) -> int:
    """Every check `run` makes before its first pass, each reported, without a pass."""
    cfg = _config(args)
    results: list[tuple[str, str, BaseException | None]] = []

    def record(name: str, ok: str, error: BaseException | None = None) -> None:
        results.append((name, ok, error))

    try:
        loaded = app.load_drivers(cfg)
    except errors.ReconcilerError as exc:
        record("drivers", "", exc)
    else:
        described = ", ".join(f"{pid} ({item.config.common.driver})" for pid, item in loaded.items())
        record("drivers", described or "no provider configured")
    try:
        licenses.load_signing_key(cfg.license.signing_key_file)
    except errors.SigningKeyError as exc:
        record("signing key", "", exc)
    else:
        record("signing key", str(cfg.license.signing_key_file))
    try:
        store = await app.open_store(cfg)
        try:
            await store.require_schema()
            version = await store.schema_version()
        finally:
            await store.close()
    except errors.ReconcilerError as exc:
        record("database", "", exc)
    else:
        record("database", f"{cfg.database.display_url}, schema version {version}")
    code = EXIT_OK
    for name, ok, error in results:
        if error is None:
            print(f"ok      {name}: {ok}")
            continue
        usage = isinstance(error, _USAGE_ERRORS)
        code = max(code, EXIT_USAGE if usage else EXIT_FAILURE)
        message = error.message if isinstance(error, errors.ReconcilerError) else str(error)
        for n, line in enumerate(message.splitlines()):
            print(f"{'FAILED' if n == 0 else '      '}  {name}: {line}")
    return code


async def _explain(args: argparse.Namespace) -> int:
    if (args.invoice_id is None) == (args.provider_invoice_id is None):
        raise errors.ConfigError(
            "explain takes an INVOICE_ID (invoices.id) or --provider-invoice-id, not both"
        )
    cfg = _config(args)
    loaded = app.load_drivers(cfg)
    store = await app.open_store(cfg)
    results: list[dict[str, Any]] = []
    try:
        await store.require_schema()
        if args.invoice_id is not None:
            found = await store.get_invoice(args.invoice_id)
            rows = [found] if found is not None else []
        else:
            rows = await store.find_invoices(args.provider_invoice_id, args.provider)
        if not rows:
            what = (
                f"id {args.invoice_id}"
                if args.invoice_id
                else f"provider invoice id {args.provider_invoice_id!r}"
            )
            logger.error("no invoice with {} (explain takes invoices.id or --provider-invoice-id)", what)
            return EXIT_FAILURE
        async with app.http_session(loaded) as session:
            runner = Runner(
                store, app.build_providers(loaded, session), app.runner_settings(cfg), signing_key=None
            )
            for row in rows:
                lines: list[dict[str, Any]] = []
                await runner.dry_run(lines.append, only=row)
                invoice_id = row.id if isinstance(row, Invoice) else row.label
                results.append(
                    {
                        "invoice": _invoice_dict(row),
                        "decision": lines[0],
                        "license": await store.license_of(invoice_id),
                        "audit_history": await store.invoice_audits(invoice_id),
                    }
                )
    finally:
        await store.close()
    if getattr(args, "json", False):
        single = results[0] if args.invoice_id is not None else results
        print(json.dumps(single, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    for n, result in enumerate(results):
        if n:
            print()
        _print_explained(result)
    return EXIT_OK


def _print_explained(result: dict[str, Any]) -> None:
    invoice, decision, license_row = result["invoice"], result["decision"], result["license"]
    if invoice.get("unreadable"):
        print(f"invoice     {invoice['id']} (unreadable: {invoice['unreadable']})")
    else:
        print(f"invoice     {invoice['id']} ({invoice['status']}, {invoice['amount_sats']} sats)")
    print(f"provider    {decision['provider_id'] or '-'}: {invoice['provider_invoice_id']}")
    raw = "/".join(p for p in (decision["raw_status"], decision["raw_additional_status"]) if p) or "-"
    print(f"answer      {raw}")
    print(f"decision    {decision['decision']} (dry run: nothing written)")
    for key, value in sorted(decision["evidence"].items()):
        print(f"  {key:<22} {value}")
    if license_row is not None:
        expires = license_row["expires_at"] or "never"
        print(
            f"license     {license_row['id']} ({license_row['status']}), issued {license_row['issued_at']}, "
            f"expires {expires}"
        )
    history = result["audit_history"]
    print(f"audit history ({len(history)}):")
    for row in history:
        print(f"  {row['occurred_at']}  {row['action']}")


def _invoice_dict(row: Invoice | Unreadable) -> dict[str, Any]:
    if isinstance(row, Unreadable):
        return {
            "id": row.label,
            "payment_provider_id": row.payment_provider_id,
            "provider_invoice_id": row.provider_invoice_id,
            "unreadable": f"{row.column} {row.reason}",
            "last_provider_status": row.last_provider_status,
        }
    fields = ("id", "payment_provider_id", "provider_invoice_id", "status", "amount_sats")
    return {f: getattr(row, f) for f in fields} | {
        "status": row.status.value,
        "created_at": format_ts(row.created_at),
        "last_provider_status": row.last_provider_status,
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
