"""Wiring: from a validated `Config` to a store and live providers. Validation first, I/O after."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from pydantic import BaseModel

from reconciler import config as config_module
from reconciler import errors, registry
from reconciler.config import Config, ProviderConfig
from reconciler.driver_api import Driver
from reconciler.runner import Provider, RunnerSettings
from reconciler.store import base


@dataclass(frozen=True, slots=True)
class LoadedDriver:
    """A configured provider whose driver loaded and whose options validated (nothing opened yet)."""

    config: ProviderConfig
    driver_cls: type[Driver]
    settings: BaseModel


def driver_settings(name: str) -> type[BaseModel]:
    """The ``Settings`` model of the installed driver ``name``, for ``config.load_config(driver_settings=...)``.

    Raises DriverLoadError when the driver is missing or broken (a ``Settings`` that is not a
    ``driver_api.DriverSettings`` included).
    """
    return registry.load(name).Settings


def driver_problems(provider: ProviderConfig) -> list[str]:
    """What is wrong with one provider section against its driver (missing driver, bad options)."""
    try:
        driver_cls = registry.load(provider.common.driver)
        config_module.validate_driver_settings(provider, driver_cls.Settings)
    except errors.DriverLoadError as exc:
        return [f"{provider.origin('driver')}: providers.{provider.id}.driver: {exc.message}"]
    except errors.ConfigError as exc:
        return exc.message.splitlines()
    return []


def load_drivers(cfg: Config) -> dict[str, LoadedDriver]:
    """Load and validate every configured provider's driver, offline (docs/drivers.md §6).

    Every provider's problems are reported at once, in provider-id order, as one error: a
    DriverLoadError when some driver is missing or broken, else a ConfigError for their options. A section
    whose options were validated when the configuration was loaded keeps those settings (its secret files
    are not read again).
    """
    loaded: dict[str, LoadedDriver] = {}
    problems: list[str] = []
    load_errors: list[errors.DriverLoadError] = []
    for provider_id, provider in sorted(cfg.providers.items()):
        try:
            driver_cls = registry.load(provider.common.driver)
            if isinstance(provider.settings, driver_cls.Settings):
                settings = provider.settings
            else:
                settings = config_module.validate_driver_settings(provider, driver_cls.Settings)
        except errors.DriverLoadError as exc:
            load_errors.append(exc)
            problems.append(f"{provider.origin('driver')}: providers.{provider_id}.driver: {exc.message}")
        except errors.ConfigError as exc:
            problems.extend(exc.message.splitlines())
        else:
            loaded[provider_id] = LoadedDriver(provider, driver_cls, settings)
    if load_errors:
        first = load_errors[0]
        raise errors.DriverLoadError(
            "\n".join(problems),
            driver=first.driver,
            entry_point=first.entry_point,
            distribution=first.distribution,
        )
    if problems:
        raise errors.ConfigError("\n".join(problems))
    return loaded


def build_providers(
    loaded: Mapping[str, LoadedDriver], session: aiohttp.ClientSession
) -> dict[str, Provider]:
    providers = {}
    for provider_id, item in loaded.items():
        try:
            driver = item.driver_cls(provider_id, item.settings, item.config.common, session)
        except Exception as exc:  # a third-party constructor: a startup error naming the driver
            raise errors.DriverLoadError(
                f"driver {item.config.common.driver!r} for provider {provider_id!r} failed to start: "
                f"{type(exc).__name__}: {exc}",
                driver=item.config.common.driver,
            ) from exc
        providers[provider_id] = Provider(provider_id, driver, item.config.common)
    return providers


def runner_settings(cfg: Config) -> RunnerSettings:
    r = cfg.reconcile
    return RunnerSettings(
        max_age=r.max_age,
        batch_size=r.batch_size,
        paid_late=r.paid_late,
        schedule=tuple(r.schedule),
        interval=r.interval,
        lease=r.lease,
        default_provider=cfg.default_provider,
        post_settle_max_attempts=cfg.post_settle.max_attempts,
        post_settle_backoff=tuple(cfg.post_settle.backoff),
    )


async def open_store(cfg: Config, *, create: bool = False) -> base.Store:
    """Open the configured database (SQLite, or PostgreSQL for a postgresql:// URL), checked before use:
    what the operator must fix is a ConfigError or SchemaError (exit 2), an unreachable server StoreUnavailable."""
    if cfg.database.backend == "sqlite":
        from reconciler.store.sqlite import SqliteStore

        return await SqliteStore.open(cfg.database.sqlite_path, create=create)
    try:
        from reconciler.store.postgres import PostgresStore
    except ImportError as exc:
        raise errors.ConfigError(
            f"database.url {cfg.database.display_url} needs the PostgreSQL driver: "
            "pip install 'invoice-reconciler[postgres]'"
        ) from exc
    return await PostgresStore.open(cfg.database.url)


def http_session(loaded: Mapping[str, LoadedDriver]) -> aiohttp.ClientSession:
    """The shared client session; drivers time each request, this total is a safety net above them.

    Provider APIs authenticate with a header, never a cookie: a jar that keeps none spares every answer's
    cookie parsing and every request's cookie lookup, and no provider can steer our requests with one."""
    longest = max((item.config.common.timeout for item in loaded.values()), default=10.0)
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=longest * 2 + 5), cookie_jar=aiohttp.DummyCookieJar()
    )
