"""`api-key create | list | revoke`: the operator API's keys from the shell (docs/cli.md, docs/api.md §2)."""

from __future__ import annotations

import argparse
import json

from loguru import logger

from reconciler import app, audit, errors, ids
from reconciler.api import keys
from reconciler.commands import common
from reconciler.operator.actions import Actor
from reconciler.timeutil import utcnow


async def api_key(args: argparse.Namespace) -> int:
    cfg = common.configuration(args, resolve_files=False)  # no provider is called, no secret read
    if args.action == "create":
        try:
            role = keys.check_role(args.role)
            label = keys.check_label(args.label)
        except ValueError as exc:
            raise errors.ConfigError(str(exc)) from None
    store = await app.open_store(cfg)
    try:
        await store.require_schema()
        if args.action == "create":
            key_id, token = ids.new_id(), keys.new_token()
            made = audit.api_key_created(key_id, role=role.value, label=label, actor=Actor.current_cli().name)
            await store.insert_api_key(
                key_id=key_id,
                label=label,
                token_hash=keys.token_hash(token),
                role=role.value,
                now=utcnow(),
                audits=(made,),
            )
            logger.info("API key {} created (role {})", key_id, role.value)
            print(f"key {key_id} ({role.value}): its token, shown this once (only its SHA-256 is stored):")
            print(token)
            return common.EXIT_OK
        if args.action == "revoke":
            revoked = (audit.api_key_revoked(args.key_id, actor=Actor.current_cli().name),)
            if await store.revoke_api_key(args.key_id, now=utcnow(), audits=revoked):
                logger.info("API key {} revoked", args.key_id)
                print(f"key {args.key_id} revoked")
                return common.EXIT_OK
            row = await store.api_key(args.key_id)
            if row is None:
                logger.error("no API key with id {!r} (reconciler api-key list shows them)", args.key_id)
            else:
                logger.error("API key {} was revoked already, at {}", args.key_id, row.revoked_at)
            return common.EXIT_FAILURE
        rows = await store.api_keys()
    finally:
        await store.close()
    if getattr(args, "json", False):
        data = [
            {
                "id": r.id,
                "label": r.label,
                "role": r.role,
                "created_at": r.created_at,
                "last_used_at": r.last_used_at,
                "revoked_at": r.revoked_at,
            }
            for r in rows
        ]
        print(json.dumps(data, indent=2, sort_keys=True))
        return common.EXIT_OK
    for r in rows:
        state = f"revoked {r.revoked_at}" if r.revoked_at else f"last used {r.last_used_at or 'never'}"
        print(f"{r.id}  {r.role:<14}  created {r.created_at}  {state}  {r.label}")
    if not rows:
        print("(no API keys)")
    return common.EXIT_OK
