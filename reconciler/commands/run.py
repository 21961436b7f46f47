"""`run`: the daemon, `--once` and `--dry-run`.

What only the daemon uses is imported by `daemon()`, each listener's module only when it is configured: a
`--once` pass from a timer loads no web server (aiohttp.web), metrics, operator API or webhook intake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import TYPE_CHECKING, Any

from loguru import logger

from reconciler import __version__, app, errors, licenses
from reconciler.commands import common
from reconciler.commands.common import report
from reconciler.config import Config
from reconciler.runner import PassSummary, Runner
from reconciler.timeutil import utcnow

if TYPE_CHECKING:
    from reconciler.api.server import ApiServer
    from reconciler.daemon import Daemon
    from reconciler.metrics import Metrics
    from reconciler.webhooks import WebhookService


async def run(args: argparse.Namespace) -> int:
    dry = getattr(args, "dry_run", False)
    single = getattr(args, "once", False) or dry
    cfg = common.configuration(args)
    loaded = app.load_drivers(cfg)
    signing_key = None if dry else licenses.load_signing_key(cfg.license.signing_key_file)
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
            if dry:
                return await dry_run_command(runner, as_json=getattr(args, "json", False))
            if single:
                return await once(runner, cfg.daemon.shutdown_grace.total_seconds())
            return await daemon(cfg, store, runner, loaded)
    finally:
        await store.close()


async def once(runner: Runner, grace: float) -> int:
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
            return common.EXIT_DEGRADED
    finally:
        stopper.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    report(summary)
    if stop.is_set():
        logger.info("stopped on request after the invoices in flight")
    return common.EXIT_DEGRADED if summary.is_degraded else common.EXIT_OK


async def daemon(cfg: Config, store: Any, runner: Runner, loaded: dict[str, app.LoadedDriver]) -> int:
    """The service: READY once every check passed, a pass every interval, metrics and health if asked."""
    from reconciler.daemon import Daemon
    from reconciler.metrics import Metrics
    from reconciler.notify import Notifier

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
    api_server = None
    if cfg.http is not None:
        from reconciler.health import HealthServer

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
    webhooks = None
    try:
        api_server = await _start_api(cfg, store, runner)
        webhooks = await _start_webhooks(cfg, store, runner, metrics)
        if webhooks is not None:
            _stop_when_failed(webhooks, daemon)
        logger.info(
            "reconciler {} started: {} provider(s), database {}",
            __version__,
            len(loaded),
            cfg.database.display_url,
        )
        notifier.ready(f"started: {len(loaded)} provider(s)")
        await daemon.run()
        failure = webhooks.failed() if webhooks is not None else None
        if failure is not None:
            raise failure
        logger.info("stopped after {} pass(es)", daemon.passes)
        return common.EXIT_OK
    finally:
        if webhooks is not None:
            await webhooks.stop()
        if server is not None:
            await server.stop()
        if api_server is not None:
            await api_server.stop()
        notifier.close()


async def _start_api(cfg: Config, store: Any, runner: Runner) -> ApiServer | None:
    """The operator API on its own listener (`[api]`), when configured (docs/api.md)."""
    if cfg.api is None:
        return None
    from reconciler.api.server import ApiServer
    from reconciler.operator import actions

    # the actions' own runner over the same store and providers: an action or a dry run never touches the state
    # of the pass in flight; every write goes through the same leases and fencing as a pass
    operator = actions.Operator(store, runner.providers, runner.settings, signing_key=runner.signing_key)
    api_server = ApiServer(
        store,
        cfg.api,
        providers={provider_id: p.masked() for provider_id, p in cfg.providers.items()},
        circuits=runner.circuits,
        operator=operator,
        clock=utcnow,
    )
    try:
        port = await api_server.start()
    except OSError as exc:
        raise errors.ConfigError(f"api.listen {cfg.api.listen}: cannot listen there: {exc.strerror}") from exc
    logger.info("operator API on http://{}:{}/api/v1/", cfg.api.host, port)
    return api_server


async def _start_webhooks(cfg: Config, store: Any, runner: Runner, metrics: Metrics) -> WebhookService | None:
    """The webhook listener and its workers (`[webhooks]`), when configured (docs/webhooks.md)."""
    if cfg.webhooks is None:
        return None
    from reconciler.webhooks import WebhookService

    service = WebhookService(
        cfg.webhooks,
        store,
        runner.providers,
        runner.settings,
        signing_key=runner.signing_key,
        observer=metrics,
        decisions=metrics,
    )
    try:
        port = await service.start()
    except OSError as exc:
        raise errors.ConfigError(
            f"webhooks.listen {cfg.webhooks.listen}: cannot listen there: {exc.strerror}"
        ) from exc
    logger.info("webhooks on http://{}:{}/webhooks/", cfg.webhooks.host, port)
    return service


def _stop_when_failed(service: WebhookService, daemon: Daemon) -> None:
    """A webhook worker that died of a bug stops the daemon, which then exits 1 with it."""

    def check(_: object) -> None:
        if service.failed() is not None:
            logger.error("the webhook workers stopped on an error: stopping")
            daemon.stop.set()

    for task in service.tasks:
        task.add_done_callback(check)


async def dry_run_command(runner: Runner, *, as_json: bool) -> int:
    lines: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(line, sort_keys=True, default=str), flush=True)
        else:
            lines.append(line)

    summary = await runner.dry_run(emit)
    if not as_json:
        print_table(lines)
    report(summary)
    return common.EXIT_DEGRADED if summary.is_degraded else common.EXIT_OK


def print_table(lines: list[dict[str, Any]]) -> None:
    headers = ("invoice_id", "provider_id", "status", "raw_status", "decision", "evidence")
    rows = [
        (
            line["invoice_id"],
            line["provider_id"] or "-",
            line["status"],
            "/".join(p for p in (line["raw_status"], line["raw_additional_status"]) if p) or "-",
            line["decision"],
            short_evidence(line["evidence"]),
        )
        for line in lines
    ]
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers[:-1])]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + "  evidence")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if not rows:
        print("(nothing due)")


def short_evidence(evidence: dict[str, Any]) -> str:
    keys = ("new_status", "audits", "provider_amount_sats", "provider_paid_sats", "flags", "reason", "error")
    return ", ".join(f"{k}={evidence[k]}" for k in keys if evidence.get(k) not in (None, [], ""))
