"""`status`, `doctor` and `explain`: what the reconciler knows and would do, without writing."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from loguru import logger

from reconciler import app, errors, licenses, review
from reconciler.commands import common
from reconciler.config import Config
from reconciler.models import Invoice, Unreadable
from reconciler.runner import Runner
from reconciler.safe_text import printable
from reconciler.timeutil import format_duration, format_ts, utcnow


async def status(args: argparse.Namespace) -> int:
    cfg = common.configuration(args, resolve_files=False)  # no provider is called: secret files are not read
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
        return common.EXIT_OK
    print("pending invoices (checked):")
    for p in data["pending"] or [{"provider_id": "-", "pending": 0, "oldest_age_seconds": 0}]:
        label = p["provider_id"] or _no_provider_label(cfg.default_provider)
        age = _age(p["oldest_age_seconds"]) if p["oldest_age_seconds"] is not None else "unreadable"
        print(f"  {label}: {p['pending']} (oldest {age})")
    print(f"pending invoices older than max_age, no longer checked: {data['no_longer_checked']}")
    print(f"instances (a pass in the last {format_duration(live_window)}):")
    for i in data["instances"]:
        print(f"  {i['lease_owner']}: {_instance_state(i)}")
        for c in data["circuits"]:
            if c["lease_owner"] == i["lease_owner"]:
                print(f"    {c['provider_id']}: {_circuit_state(c, now)}")
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
    if data["paused"]:
        print("paused providers (their invoices are not checked; `reconciler provider resume ID`):")
        for c in data["paused"]:
            why = f": {c['reason']}" if c["reason"] else ""
            print(f"  {c['provider_id']}: by {c['by']} since {c['since']}{why}")
    print("open for review (`reconciler review` lists them):")
    for r in data["review"]:
        print(f"  {r['action']}: {r['count']} (oldest {r['oldest'] or '?'})")
    if not data["review"]:
        print("  (nothing)")
    return common.EXIT_OK


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
        "circuits": [
            {"lease_owner": i.lease_owner, "provider_id": provider_id, **circuit}
            for i in report.instances
            for provider_id, circuit in _open_circuits(i.last_summary)
        ],
        "quarantined": {
            "total": report.quarantined_total,
            "invoices": [
                {"invoice_id": q.invoice_id, "kind": q.kind, "detail": q.detail, "since": ts(q.since)}
                for q in report.quarantined
            ],
        },
        "review": [
            {"action": r.kind, "count": r.count, "oldest": ts(r.oldest), "latest": ts(r.latest)}
            for r in report.review
        ],
        "paused": [
            {"provider_id": c.provider_id, "by": c.changed_by, "since": ts(c.changed_at), "reason": c.reason}
            for c in report.paused
        ],
    }


def _open_circuits(summary: Any) -> list[tuple[str, dict[str, str]]]:
    """The outage circuits a pass summary recorded as not closed (docs/reconcile.md §3); a summary from an
    older version, or one somebody edited, shows none rather than failing the command."""
    circuits = summary.get("circuits") if isinstance(summary, dict) else None
    if not isinstance(circuits, dict):
        return []
    found = []
    for provider_id, circuit in sorted(circuits.items()):
        if not isinstance(circuit, dict) or circuit.get("state") not in ("open", "half_open"):
            continue
        fields = ("state", "opened_at", "until")
        found.append((str(provider_id), {f: str(circuit[f]) for f in fields if circuit.get(f) is not None}))
    return found


def _circuit_state(circuit: dict[str, str], now: datetime) -> str:
    until = circuit.get("until", "?")
    if circuit["state"] == "half_open":
        return "circuit half-open: its next request is a probe"
    if until < format_ts(now):
        return f"circuit open until {until} (over: its next request is a probe)"
    return f"circuit open until {until}"


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


async def review_list(args: argparse.Namespace) -> int:
    """`reconciler review`: the open review items, oldest first (docs/review.md)."""
    cfg = common.configuration(args, resolve_files=False)  # no provider is called: secret files are not read
    limit: int = args.limit
    store = await app.open_store(cfg)
    try:
        await store.require_schema()
        items = await store.open_review_items(limit=limit + 1)  # one more says whether there are more
    finally:
        await store.close()
    more, items = len(items) > limit, items[:limit]
    rows = [_review_row(item) for item in items]
    if getattr(args, "json", False):
        print(json.dumps({"items": rows, "more": more}, indent=2, sort_keys=True))
        return common.EXIT_OK
    if not rows:
        print("nothing open for review")
        return common.EXIT_OK
    for r in rows:
        provider = r["provider_id"] or "-"
        pinv = printable(r["provider_invoice_id"] or "-", 60)
        invoice = printable(r["invoice_id"], 60)
        print(f"{r['opened_at'] or '?'}  {r['kind']}  invoice {invoice} ({provider} {pinv})")
        print(f"    {r['summary']}")
    if more:
        print(f"… more than {limit} open: --limit N shows more")
    return common.EXIT_OK


def _review_row(item: Any) -> dict[str, Any]:
    return {
        "item_id": item.id,
        "invoice_id": item.invoice_id,
        "provider_id": item.provider_id,
        "provider_invoice_id": item.provider_invoice_id,
        "kind": item.kind,
        "opened_at": format_ts(item.opened_at) if item.opened_at else None,
        "audit_id": item.audit_id,
        "summary": review.summary(item.kind, item.details),
    }


async def doctor(args: argparse.Namespace) -> int:
    """Every check `run` makes before its first pass, each reported, without a pass."""
    cfg = common.configuration(args)
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
    code = common.EXIT_OK
    for name, ok, error in results:
        if error is None:
            print(f"ok      {name}: {ok}")
            continue
        usage = isinstance(error, common.USAGE_ERRORS)
        code = max(code, common.EXIT_USAGE if usage else common.EXIT_FAILURE)
        message = error.message if isinstance(error, errors.ReconcilerError) else str(error)
        for n, line in enumerate(message.splitlines()):
            print(f"{'FAILED' if n == 0 else '      '}  {name}: {line}")
    return code


async def explain(args: argparse.Namespace) -> int:
    if (args.invoice_id is None) == (args.provider_invoice_id is None):
        raise errors.ConfigError(
            "explain takes an INVOICE_ID (invoices.id) or --provider-invoice-id, not both"
        )
    cfg = common.configuration(args)
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
            return common.EXIT_FAILURE
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
        return common.EXIT_OK
    for n, result in enumerate(results):
        if n:
            print()
        _print_explained(result)
    return common.EXIT_OK


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
