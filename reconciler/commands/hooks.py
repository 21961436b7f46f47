"""`webhooks setup PROVIDER_ID --url PUBLIC_URL`: register the daemon's webhook with a provider that can
(docs/cli.md §2.13, docs/operations.md "Webhooks")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loguru import logger

from reconciler import app, errors, webhook_setup
from reconciler import config as config_module
from reconciler.commands import common
from reconciler.config import Config
from reconciler.driver_api import SupportsWebhookSetup

#: Where `[webhooks] listen` usually points (the address the reverse proxy forwards /webhooks/ to).
LISTEN_EXAMPLE = "127.0.0.1:8081"


async def webhooks(args: argparse.Namespace) -> int:
    provider_id: str = args.provider_id
    url = webhook_setup.registered_url(args.url, provider_id)
    cfg = common.configuration(args)
    if provider_id not in cfg.providers:
        known = ", ".join(sorted(cfg.providers)) or "none"
        raise errors.ConfigError(f"no provider {provider_id!r} in the configuration (configured: {known})")
    loaded = app.load_drivers(cfg)[provider_id]
    driver_name = loaded.config.common.driver
    if not callable(getattr(loaded.driver_cls, "register_webhook", None)):
        hint = getattr(loaded.driver_cls, "webhook_setup_hint", None)
        how = (
            hint.replace("{url}", url)
            if isinstance(hint, str) and hint
            else f"set the webhook up in the provider's own dashboard, with the URL {url}"
        )
        raise errors.ConfigError(
            f"provider {provider_id!r}: driver {driver_name!r} cannot register webhooks; {how}"
        )
    path = _secret_path(args, cfg, provider_id)
    secret = webhook_setup.new_secret()
    secret_file = webhook_setup.SecretFile(path, secret, force=args.force)
    try:
        async with app.http_session({provider_id: loaded}) as session:
            driver = app.build_providers({provider_id: loaded}, session)[provider_id].driver
            if not isinstance(driver, SupportsWebhookSetup):
                raise errors.DriverLoadError(
                    f"driver {driver_name!r} has a register_webhook that is not a method", driver=driver_name
                )
            webhook_id = await driver.register_webhook(url, secret)
    except errors.DriverError as exc:
        secret_file.discard()
        return _refused(provider_id, exc)
    except BaseException:
        secret_file.discard()
        raise
    secret_file.keep()
    logger.info(
        "provider {}: registered webhook {!r} for {} (secret in {})", provider_id, webhook_id, url, path
    )
    _print_next_steps(provider_id, webhook_id, url, path)
    return common.EXIT_OK


def _secret_path(args: argparse.Namespace, cfg: Config, provider_id: str) -> Path:
    """``--secret-file``, else ``credentials/<provider_id>_webhook_secret`` beside the configuration file."""
    given: Path | None = args.secret_file
    if given is not None:
        return given.absolute()
    config_path = Path(getattr(args, "config", config_module.DEFAULT_CONFIG_PATH))
    return (config_path.absolute().parent / "credentials" / f"{provider_id}_webhook_secret").absolute()


def _refused(provider_id: str, exc: errors.DriverError) -> int:
    """Log why the provider did not register the webhook; the exit code (docs/cli.md §2.13)."""
    if isinstance(exc, errors.ProviderAuthError):
        logger.error("error: provider {}: webhook not registered: {}", provider_id, exc.message)
        return common.EXIT_USAGE
    if isinstance(exc, errors.ProviderUnavailable):
        logger.error(
            "failure: provider {}: webhook not registered, the provider is unavailable: {} (if the request "
            "reached it, the webhook may exist anyway: look at its webhook list before running this again)",
            provider_id,
            exc.message,
        )
        return common.EXIT_DEGRADED
    logger.error("failure: provider {}: webhook not registered: {}", provider_id, exc.message)
    return common.EXIT_FAILURE


def _print_next_steps(provider_id: str, webhook_id: str, url: str, path: Path) -> None:
    credential = path.name
    print(f"registered webhook {webhook_id} for provider {provider_id}: {url}")
    print(f"its secret is in {path} (mode 0600); add to the configuration:")
    print()
    print(f"[providers.{provider_id}]")
    print(f"webhook_secret_file = {json.dumps(str(path))}")
    print()
    print("[webhooks]")
    print(f"listen = {json.dumps(LISTEN_EXAMPLE)}")
    print()
    print(f"# and have the reverse proxy forward {url} to that address (docs/operations.md, Webhooks).")
    print(f"# Under systemd, rather: webhook_secret_file = {json.dumps(credential)} with")
    print(f"#   LoadCredential={credential}:{path}")
