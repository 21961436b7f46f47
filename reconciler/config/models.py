"""The configuration's models (docs/configuration.md): one per section, the provider sections, the whole."""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from reconciler import driver_api, timeutil
from reconciler.config.database import DatabaseSettings
from reconciler.config.values import (
    _COMMON_FIELDS,
    _COMMON_KEYS,
    _PROVIDER_ID,
    ENV_NESTING,
    ENV_PREFIX,
    MASK,
    MAX_BATCH_SIZE,
    UNRESOLVED_SECRET,
    Duration,
    PositiveDuration,
    ShortDuration,
    WholeNumber,
    _located_error,
    _number,
    _number_kind,
    _problem,
    _relocated,
    _seconds,
    _secret_keys,
    _Section,
    _whole_number,
)

_DURATION_ADAPTER: TypeAdapter[timedelta] = TypeAdapter(Duration)

_LEASE_ADAPTER: TypeAdapter[timedelta] = TypeAdapter(PositiveDuration)

# The core-owned provider keys written as durations, turned into CommonSettings' seconds.
_COMMON_DURATIONS: dict[str, TypeAdapter[timedelta]] = {
    "timeout": TypeAdapter(ShortDuration),
    "retry_max_delay": TypeAdapter(ShortDuration),
    "breaker_cooldown": TypeAdapter(ShortDuration),
}


class ReconcileSettings(_Section):
    """``[reconcile]``: pass timing, candidate window, the check schedule and the lease
    (docs/configuration.md §4.3, docs/reconcile.md §16)."""

    interval: PositiveDuration = timedelta(seconds=60)
    initial_delay: Duration = timedelta(seconds=15)
    max_age: PositiveDuration = timedelta(hours=72)
    batch_size: WholeNumber = Field(default=500, ge=1, le=MAX_BATCH_SIZE)
    paid_late: Literal["flag", "settle"] = "flag"
    schedule: tuple[PositiveDuration, PositiveDuration, PositiveDuration, PositiveDuration] = (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(minutes=60),
    )
    lease: PositiveDuration = timedelta(minutes=5)

    @field_validator("schedule", mode="before")
    @classmethod
    def _four_steps(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != 4:
            raise ValueError(
                f"needs exactly 4 steps (for invoices < 1 h, < 6 h, < 24 h old, and older), got {len(value)}"
            )
        return value


class PostSettleSettings(_Section):
    """``[post_settle]``: retries of post-settle tasks (docs/reconcile.md §15)."""

    max_attempts: WholeNumber = Field(default=8, ge=1)
    backoff: tuple[PositiveDuration, ...] = Field(
        default=(timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1)),
        min_length=1,
    )


class DaemonSettings(_Section):
    """``[daemon]``: how long SIGTERM waits for in-flight invoices."""

    shutdown_grace: ShortDuration = timedelta(seconds=30)


class LogSettings(_Section):
    """``[log]``: output format and minimum level."""

    format: Literal["auto", "human", "journal", "json"] = "auto"
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class LicenseSettings(_Section):
    """``[license]``: the Ed25519 signing key (read only by ``run``)."""

    signing_key_file: Path = Path("/etc/reconciler/signing-key.pem")


def _check_listen(value: str, example: str) -> str:
    host, _, port = value.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port with a port from 0 to 65535, e.g. {example}, got {value!r}")
    return value


class _Listener(_Section):
    """A section with a listener of its own: ``listen`` is ``host:port`` (``[::1]:9464`` for IPv6), each
    subclass giving its default, which the error message shows as the example."""

    listen: str

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value, str(cls.model_fields["listen"].default))

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class HttpSettings(_Listener):
    """``[http]``: the optional metrics and health listener, ``host:port`` (``[::1]:9464`` for IPv6)."""

    listen: str = "127.0.0.1:9464"


class ApiSettings(_Listener):
    """``[api]``: the operator API's own listener (docs/api.md), its master key and its bounds."""

    listen: str = "127.0.0.1:8090"
    #: manages API keys and may do everything; without it keys are managed with ``reconciler api-key``
    master_key: SecretStr | None = Field(default=None, repr=False)
    max_body_bytes: WholeNumber = Field(default=65536, ge=1024, le=1048576)
    max_page: WholeNumber = Field(default=200, ge=1, le=1000)
    #: failed authentications from one client address within ``failure_window`` before it gets 429
    max_failures: WholeNumber = Field(default=10, ge=1, le=1000)
    failure_window: ShortDuration = timedelta(minutes=1)

    @field_validator("master_key")
    @classmethod
    def _strong_enough(cls, value: SecretStr | None) -> SecretStr | None:
        secret = value.get_secret_value() if value is not None else UNRESOLVED_SECRET
        if secret != UNRESOLVED_SECRET and len(secret) < 32:
            raise ValueError("the master key must be at least 32 characters (e.g. openssl rand -base64 32)")
        return value


class WebhookSettings(_Listener):
    """``[webhooks]``: the webhook listener (docs/webhooks.md) and the bounds of its intake."""

    listen: str = "127.0.0.1:8081"
    #: invoices waiting for a worker at most; when full a delivery is answered 503 (its nudge is durable)
    intake: WholeNumber = Field(default=1000, ge=1, le=100_000)
    #: invoices worked on at once, each through the lease, fetch and settle of a pass
    workers: WholeNumber = Field(default=4, ge=1, le=256)
    #: what a 503 asks the provider to wait (`Retry-After`)
    retry_after: ShortDuration = timedelta(seconds=5)

    @field_validator("retry_after")
    @classmethod
    def _whole_seconds(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value


class ProviderConfig(BaseModel):
    """One ``[providers.<id>]`` section: the core-owned keys and the driver's options.

    ``options`` are the section's other keys. Loaded with the driver known (``load_config(driver_settings=
    ...)``), they are checked against its ``Settings``, which ``settings`` then holds; each key it declares
    ``SecretStr`` is a ``SecretStr`` in ``options`` too, read from its ``X_file`` form if it was given so.
    Without the driver, ``options`` are as written and ``settings`` is None
    (:func:`validate_driver_settings` checks them later).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    common: driver_api.CommonSettings
    # not in the repr: without the driver known, nothing says which of them are secrets
    options: dict[str, Any] = Field(default_factory=dict, repr=False)
    #: Where the section's keys were set, for error lines: key -> ``$VARIABLE``; "" -> the file.
    origins: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    #: The options validated by the driver's ``Settings`` (set by :func:`load_config` with ``driver_settings``).
    settings: BaseModel | None = Field(default=None, exclude=True, repr=False)

    def origin(self, key: str) -> str:
        """The file or ``$VARIABLE`` that set ``key`` (an ``X`` resolved from ``X_file`` too)."""
        return (
            self.origins.get(key) or self.origins.get(f"{key}_file") or self.origins.get("", "configuration")
        )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _PROVIDER_ID.match(value) or ENV_NESTING in value:
            raise ValueError(
                f"invalid provider id {value!r}: use lower-case letters, digits and _, starting with a "
                f"letter, without {ENV_NESTING!r}"
            )
        return value

    @field_validator("common", mode="before")
    @classmethod
    def _durations_to_seconds(cls, value: Any) -> Any:
        """Durations become CommonSettings' seconds; numbers are checked as strictly as the core's own."""
        if not isinstance(value, dict):
            return value
        converted = dict(value)
        problems: list[InitErrorDetails] = []
        for key, item in value.items():
            try:
                if key in _COMMON_DURATIONS:
                    converted[key] = _COMMON_DURATIONS[key].validate_python(item).total_seconds()
                elif key in _COMMON_FIELDS and _COMMON_FIELDS[key].annotation is bool:
                    if not isinstance(item, bool):  # pydantic's lax bool would take 1, "yes" or "off"
                        raise ValueError("expected true or false")
                elif key in _COMMON_FIELDS and (kind := _number_kind(_COMMON_FIELDS[key].annotation)):
                    (_whole_number if kind is int else _number)(item)
            except ValidationError as exc:
                problems.extend(_relocated(exc, (key,)))
            except ValueError as exc:
                problems.append(_problem((key,), str(exc), item))
        if problems:
            raise ValidationError.from_exception_data("CommonSettings", problems)
        return converted

    def masked(self) -> dict[str, Any]:
        """The section in TOML's terms: durations as strings, the driver's options as its ``Settings`` holds
        them with every key it declares ``SecretStr`` masked; every option masked if the driver is unknown."""
        common: dict[str, Any] = self.common.model_dump()
        for key in _COMMON_DURATIONS:
            common[key] = timeutil.format_duration(timedelta(seconds=common[key]))
        if self.settings is None:
            return common | dict.fromkeys(self.options, MASK)
        options: dict[str, Any] = self.settings.model_dump(mode="json")
        secrets = _secret_keys(type(self.settings).model_fields)
        return common | options | {key: MASK for key in secrets if options.get(key) is not None}


class Config(BaseSettings):
    """The whole configuration (docs/configuration.md): the TOML file with the ``RECONCILER_*`` environment
    over it.

    Read it with :func:`load_config`. A ``Config`` constructed in code is exactly its arguments: it reads
    neither the environment nor a file (:meth:`settings_customise_sources`).
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTING,
        case_sensitive=True,  # the file's keys; the environment's names are matched in any case
    )

    default_provider: str | None = None
    database: DatabaseSettings = DatabaseSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    post_settle: PostSettleSettings = PostSettleSettings()
    daemon: DaemonSettings = DaemonSettings()
    log: LogSettings = LogSettings()
    license: LicenseSettings = LicenseSettings()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    http: HttpSettings | None = None
    api: ApiSettings | None = None
    webhooks: WebhookSettings | None = None

    @field_validator("providers", mode="before")
    @classmethod
    def _split_sections(cls, value: Any) -> Any:
        return _split_provider_sections(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _default_provider_exists(self) -> Config:
        if self.default_provider is not None and self.default_provider not in self.providers:
            configured = ", ".join(sorted(self.providers)) or "none"
            raise _located_error(
                ("default_provider",),
                f"names provider {self.default_provider!r}, which has no [providers.{self.default_provider}] "
                f"section (configured: {configured})",
                self.default_provider,
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    def lease_problems(self) -> list[str]:
        """Why ``[reconcile] lease`` is too short for some provider (docs/reconcile.md §16); empty when it is
        long enough."""
        return _lease_problems(self.reconcile.lease, self.providers.values())

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data: durations as strings, every secret masked."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude={"providers"}, exclude_none=True)
        data["database"]["url"] = self.database.display_url
        data["providers"] = {provider_id: p.masked() for provider_id, p in self.providers.items()}
        return data


def _split_provider_sections(sections: dict[str, Any]) -> dict[str, Any]:
    """The TOML form of each provider section split into the core-owned keys and the driver's options."""
    return {
        provider_id: {
            "id": provider_id,
            "common": {k: v for k, v in section.items() if k in _COMMON_KEYS},
            "options": {k: v for k, v in section.items() if k not in _COMMON_KEYS},
        }
        if isinstance(section, dict)
        else section
        for provider_id, section in sections.items()
    }


def _lease_problems(lease_length: timedelta, providers: Iterable[ProviderConfig]) -> list[str]:
    lease = lease_length.total_seconds()
    problems = []
    for provider in providers:
        common = provider.common
        worst = common.worst_fetch
        if lease < 2 * worst:
            problems.append(
                f"lease {_seconds(lease)} is shorter than 2 × the worst fetch of provider "
                f"{provider.id!r} ({_seconds(worst)} = timeout {_seconds(common.timeout)} × "
                f"{common.retry_attempts} attempts + retry_max_delay {_seconds(common.retry_max_delay)} × "
                f"{common.retry_attempts - 1}): set lease to at least {_seconds(math.ceil(2 * worst))} "
                "or lower that provider's timeout, retry_attempts or retry_max_delay"
            )
    return problems


def _partial_lease_problems(data: dict[str, Any]) -> list[str]:
    """The lease rule where the rest of the configuration has problems: for the parts that validate."""
    reconcile = data.get("reconcile", {})
    sections = data.get("providers", {})
    if not isinstance(reconcile, dict) or not isinstance(sections, dict):
        return []
    try:
        lease = _LEASE_ADAPTER.validate_python(reconcile.get("lease", ReconcileSettings().lease))
    except ValidationError:
        return []
    providers = [_valid_provider(section) for section in _split_provider_sections(sections).values()]
    return _lease_problems(lease, [provider for provider in providers if provider is not None])


def _valid_provider(section: Any) -> ProviderConfig | None:
    try:
        return ProviderConfig.model_validate(section)
    except ValidationError:
        return None


def _known_keys(section: tuple[str, ...]) -> list[str]:
    """The keys accepted in a section of the file (empty where the keys are open-ended)."""
    model: type[BaseModel] | None = Config
    for part in section:
        field = model.model_fields.get(part) if model is not None else None
        model = _model_of(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``X`` or ``X | None``), or None for a plain value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
