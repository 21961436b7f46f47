"""The operator's actions on the command line (docs/cli.md): `review settle`, `review dismiss`, `recheck`,
`retry-task`, `provider pause|resume`. Each runs one action of reconciler/operator/actions.py as
`cli:<unix user>`.

Exit codes: 0 done; 1 refused because it does not apply now (not found, not applicable, a conflict: the
message on stderr says which); 2 invalid input (an empty, oversized or multi-line reason, an impossible id)
or a configuration, driver, key or schema problem (nothing written).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from reconciler.commands import common, reports
from reconciler.operator.actions import ActionRefused, Actor, Operator


async def _act(
    args: argparse.Namespace,
    action: Callable[[Operator, Actor], Awaitable[Any]],
    *,
    signing_key: bool,
    done: Callable[[Any], str],
) -> int:
    cfg = common.configuration(args)
    actor = Actor.current_cli()
    async with await Operator.open(cfg, signing_key=signing_key) as operator:
        try:
            result = await action(operator, actor)
        except ActionRefused as refused:
            logger.error("refused ({}): {}", refused.code, refused.message)
            return common.EXIT_USAGE if refused.code == "invalid" else common.EXIT_FAILURE
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict() if result is not None else {"done": True}, sort_keys=True))
    else:
        print(done(result))
    return common.EXIT_OK


async def review_settle(args: argparse.Namespace) -> int:
    return await _act(
        args,
        lambda op, actor: op.settle_flagged(args.invoice_id, args.reason, actor),
        signing_key=True,
        done=lambda r: f"invoice {r.invoice_id} settled by hand: license {r.license_id or '(renewal: none)'}",
    )


async def review_dismiss(args: argparse.Namespace) -> int:
    return await _act(
        args,
        lambda op, actor: op.dismiss(args.item_id, args.reason, actor),
        signing_key=False,
        done=lambda _: f"review item {args.item_id} dismissed",
    )


async def recheck(args: argparse.Namespace) -> int:
    def done(r: Any) -> str:
        line = f"invoice {r.invoice_id}: {r.decision}, now {r.status}"
        return line + (f", license {r.license_id}" if r.license_id else "")

    return await _act(args, lambda op, actor: op.recheck(args.invoice_id, actor), signing_key=True, done=done)


async def retry_task(args: argparse.Namespace) -> int:
    return await _act(
        args,
        lambda op, actor: op.retry_task(args.invoice_id, args.kind, actor),
        signing_key=False,
        done=lambda _: (
            f"post-settle task {args.kind} of invoice {args.invoice_id} queued again: the next pass runs it"
        ),
    )


async def provider(args: argparse.Namespace) -> int:
    pause = args.provider_action == "pause"

    async def action(op: Operator, actor: Actor) -> None:
        if pause:
            await op.pause_provider(args.provider_id, actor, reason=args.reason)
        else:
            await op.resume_provider(args.provider_id, actor, reason=args.reason)

    state = "paused: no instance checks its invoices" if pause else "resumed"
    return await _act(args, action, signing_key=False, done=lambda _: f"provider {args.provider_id} {state}")


async def review(args: argparse.Namespace) -> int:
    if args.review_action == "settle":
        return await review_settle(args)
    if args.review_action == "dismiss":
        return await review_dismiss(args)
    return await reports.review_list(args)  # `reconciler review` alone lists the open items
