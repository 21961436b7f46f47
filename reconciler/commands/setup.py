"""`check-config`, `init-db`, `migrate`, `drivers` and `keygen`: setting up, no pass."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loguru import logger

from reconciler import app, errors, licenses, registry
from reconciler.commands import common


async def check_config(args: argparse.Namespace) -> int:
    cfg = common.configuration(args)
    loaded = app.load_drivers(cfg)
    print(json.dumps(cfg.masked(), indent=2, sort_keys=True, default=str))
    if not args.online:
        return common.EXIT_OK
    code = common.EXIT_OK
    async with app.http_session(loaded) as session:
        for provider_id, provider in app.build_providers(loaded, session).items():
            try:
                await provider.driver.check()
            except errors.ProviderAuthError as exc:
                logger.error("provider {}: credentials refused: {}", provider_id, exc.message)
                code = common.EXIT_USAGE
            except errors.DriverError as exc:
                logger.error("provider {}: unreachable: {}", provider_id, exc.message)
                code = max(code, common.EXIT_DEGRADED) if code != common.EXIT_USAGE else code
            else:
                logger.info("provider {}: credentials and reachability OK", provider_id)
    return code


async def init_db(args: argparse.Namespace) -> int:
    cfg = common.configuration(args, resolve_files=False)  # no provider is called: secret files are not read
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
    return common.EXIT_OK


async def migrate(args: argparse.Namespace) -> int:
    cfg = common.configuration(args, resolve_files=False)  # no provider is called: secret files are not read
    store = await app.open_store(cfg)  # never creates a database: that is init-db's job
    try:
        migrated = await store.migrate()
    finally:
        await store.close()
    where = cfg.database.display_url
    if migrated.applied:
        logger.info(
            "migrated the schema in {} from version {} to version {} ({})",
            where,
            migrated.from_version,
            migrated.to_version,
            ", ".join(migrated.applied),
        )
    elif migrated.from_version < migrated.to_version:
        logger.info(
            "the schema in {} is at version {}: another process applied the migrations meanwhile; nothing to do",
            where,
            migrated.to_version,
        )
    else:
        logger.info(
            "the schema in {} is already at version {}, the newest this reconciler knows; nothing to do",
            where,
            migrated.to_version,
        )
    return common.EXIT_OK


async def drivers(args: argparse.Namespace) -> int:
    found = registry.installed()
    if not found:
        print("no drivers installed (entry-point group reconciler.drivers)")
    for item in found:
        print(f"{item.name:<12} {item.distribution or '?'} {item.version or '?'}  ({item.target})")
    return common.EXIT_OK


async def keygen(args: argparse.Namespace) -> int:
    out: Path | None = args.out
    if out is None:
        out = common.configuration(args, resolve_files=False).license.signing_key_file
    public = licenses.write_new_key(out)
    logger.info("wrote a new Ed25519 signing key to {} (mode 0600); its public key:", out)
    print(public, end="" if public.endswith("\n") else "\n")
    return common.EXIT_OK
