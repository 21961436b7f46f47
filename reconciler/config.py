"""Settings models and configuration loading (docs/configuration.md, the lease rule of docs/reconcile.md §16).

:class:`Config` is a pydantic-settings ``BaseSettings``: its ``model_config`` declares the environment's
``RECONCILER_`` prefix and ``__`` nesting, and :func:`load_config` reads the layers with pydantic-settings
sources, highest priority first: the environment (:class:`_Environment`, an ``EnvSettingsSource``), then
the TOML file (:class:`_TomlFile`, a ``TomlConfigSettingsSource``). Two steps stay ours, because
``BaseSettings()`` merges and validates in one go and its errors cannot say which layer a bad value came
from: the layers are merged here, keeping which variable set each key, and the whole is validated with
``Config.model_validate`` so every problem can be reported at once, each naming its file or variable.

A key is a secret when its model declares it ``SecretStr``: the core's own models, or, in a provider
section, the driver's ``Settings``, found through ``load_config(driver_settings=...)``. Only such a key ``X``
has a file form ``X_file`` (a path, or a systemd credential name looked up in ``$CREDENTIALS_DIRECTORY``),
and only such keys are masked; ``ca_bundle_file: str`` is an ordinary option holding a path.
pydantic-settings' own secrets source reads one file per field name from a directory, which is not the
``X_file`` of docs/configuration.md (a key whose value names the file), so that resolution is written here.

Every problem surfaces as one :class:`errors.ConfigError` naming where the value came from (the file or
the environment variable), the dotted key and what is accepted. Secrets never appear in a message.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote_plus, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from reconciler import driver_api, errors, timeutil

DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.toml")
ENV_PREFIX = "RECONCILER_"
ENV_NESTING = "__"
MASK = "**********"
# What a `*_file` secret holds when loaded with resolve_files=False: the file is named, never read.
UNRESOLVED_SECRET = "not-read-resolve-files-is-off"  # no spaces: drivers may validate key shape

#: ``RECONCILER_*`` variables that are not configuration: the test harness's own (README, "Tests").
NOT_CONFIGURATION = ("RECONCILER_FIXTURES", "RECONCILER_TEST_PG_URL")
#: The longest duration any key accepts; a few keys have tighter bounds (config.example.toml).
MAX_DURATION = timedelta(days=3650)
MAX_BATCH_SIZE = 100_000

_PROVIDER_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_COMMON_FIELDS = driver_api.CommonSettings.model_fields
_COMMON_KEYS = frozenset(_COMMON_FIELDS)
_DURATION_FORM = 'a quoted whole number and a unit, e.g. "90s", "15m", "72h", "2d"'
_WHOLE_NUMBER = "expected a whole number, e.g. 500 (not true/false, a decimal or a quoted string)"
_NUMBER = "expected a finite number, e.g. 2.5 (not true/false, nan, inf or a quoted string)"
# What environment text may hold for a whole number or a number: ASCII digits, nothing Python would
# also accept (underscores, other scripts' digits, surrounding spaces, nan, inf).
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_PORT_TEXT = re.compile(r"[0-9]{1,5}")


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        number, unit = value[:-1].lstrip("0"), value[-1:]
        if unit in ("s", "m", "h", "d") and number.isascii() and number.isdigit() and len(number) > 9:
            # 10^9 seconds is 31 years, beyond every bound in any unit (and soon beyond what a
            # timedelta holds): say which bound, not that the arithmetic overflowed
            return timedelta.max
        return timeutil.parse_duration(value)
    raise ValueError(f"invalid duration {value!r}: write {_DURATION_FORM}")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _at_most(limit: timedelta) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > limit:
            raise ValueError(f"at most {timeutil.format_duration(limit)}: write a shorter duration")
        return value

    return AfterValidator(check)


def _whole_number(value: object) -> object:
    # bool is an int subclass and TOML's 2.0 is a float: both would pass pydantic's lax int
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(_WHOLE_NUMBER)
    return value


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(_NUMBER)
    return value


_AnyDuration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(timeutil.format_duration, return_type=str, when_used="json"),
]
Duration = Annotated[_AnyDuration, _at_most(MAX_DURATION)]
PositiveDuration = Annotated[_AnyDuration, AfterValidator(_positive), _at_most(MAX_DURATION)]
#: A wait the operator watches happen (a request, a retry, the stop): an hour is already far too long.
ShortDuration = Annotated[_AnyDuration, _at_most(timedelta(hours=1))]
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
_DURATION_ADAPTER: TypeAdapter[timedelta] = TypeAdapter(Duration)
_LEASE_ADAPTER: TypeAdapter[timedelta] = TypeAdapter(PositiveDuration)
# The core-owned provider keys written as durations, turned into CommonSettings' seconds.
_COMMON_DURATIONS: dict[str, TypeAdapter[timedelta]] = {
    "timeout": TypeAdapter(ShortDuration),
    "retry_max_delay": TypeAdapter(ShortDuration),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """``[database]``: ``sqlite://`` + a file path, or a ``postgresql://`` / ``postgres://`` URL."""

    url: str = "sqlite:///var/lib/reconciler/shop.db"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        scheme, separator, rest = url.partition("://")
        # Only the scheme is echoed: the rest of a URL may carry a password.
        if not separator:
            raise ValueError("expected sqlite:///path/to/file.db or postgresql://user@host/db")
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                f"unsupported scheme {scheme!r}: use sqlite:///path/to/file.db or postgresql://user@host/db"
            )
        if not rest:
            raise ValueError(f"{scheme}:// needs a {'file path' if scheme == 'sqlite' else 'host'}")
        if scheme == "sqlite":
            if "?" in rest or "#" in rest:
                # SQLite would otherwise open (or create) a file named after the whole text
                raise ValueError(
                    "a sqlite:// URL is a file path only: remove the '?...' query or '#...' fragment "
                    "(URL parameters such as ?mode=ro are not supported)"
                )
        else:
            _check_postgres_url(url)
        return url

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which store implementation serves this URL."""
        return "sqlite" if self.url.startswith("sqlite://") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file: everything after ``sqlite://`` (``sqlite:///var/x.db`` is ``/var/x.db``)."""
        if self.backend != "sqlite":
            raise ValueError("not a sqlite:// database url")
        return Path(self.url.removeprefix("sqlite://"))

    @property
    def display_url(self) -> str:
        """The URL with every password in it masked (userinfo, ``*password*`` parameters), for display."""
        if self.backend == "sqlite":
            return self.url
        return _masked_url(self.url)


def _url_parts(url: str) -> tuple[str, str, str, str | None, str | None]:
    """``scheme://netloc/path?query#fragment`` split by hand: unlike ``urlsplit`` it never raises."""
    scheme, _, rest = url.partition("://")
    rest, hash_sign, fragment = rest.partition("#")
    rest, question_mark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return scheme, netloc, slash + path, query if question_mark else None, fragment if hash_sign else None


def _check_postgres_url(url: str) -> None:
    """What the PostgreSQL client would only trip over when connecting: ports, IPv6 brackets, the query."""
    _, netloc, _, query, _ = _url_parts(url)
    try:
        urlsplit(url)
    except ValueError:
        raise ValueError("not a valid URL: check the [brackets] around an IPv6 address") from None
    hosts = netloc.rpartition("@")[2]
    ports = []
    for host in hosts.split(",") if hosts else []:
        if host.startswith("["):
            address, bracket, port = host[1:].partition("]")
            if not bracket or not address or (port and not port.startswith(":")):
                raise ValueError("not a valid URL: write an IPv6 host as [address] or [address]:port")
            ports.append(port[1:])
        else:
            ports.append(host.partition(":")[2])
    if query is not None:
        try:
            parameters = parse_qs(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(
                "the query string must be name=value pairs joined by '&', e.g. ?sslmode=require"
            ) from None
        for value in parameters.get("port", []):
            ports.extend(value.split(","))
    for port in ports:
        if port and not (_PORT_TEXT.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ValueError("port must be a number from 1 to 65535, e.g. postgresql://user@host:5432/db")


def _masked_url(url: str) -> str:
    scheme, netloc, path, query, fragment = _url_parts(url)
    # The last "@" ends the userinfo; masking everything after its first ":" also covers clients that
    # split at the first "@" instead.
    user_info, at, hosts = netloc.rpartition("@")
    if at and ":" in user_info:
        netloc = f"{user_info.partition(':')[0]}:{MASK}@{hosts}"
    shown = f"{scheme}://{netloc}{path}"
    if query is not None:
        shown += "?" + "&".join(_masked_parameter(item) for item in query.split("&"))
    if fragment is not None:
        shown += "#" + fragment
    return shown


def _masked_parameter(item: str) -> str:
    name = item.partition("=")[0]
    if "password" in unquote_plus(name).lower():
        return f"{name}={MASK}"
    return item


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


class HttpSettings(_Section):
    """``[http]``: the optional metrics and health listener, ``host:port`` (``[::1]:9464`` for IPv6)."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"expected host:port with a port from 0 to 65535, e.g. 127.0.0.1:9464, got {value!r}"
            )
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


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


#: How :func:`load_config` finds a driver's ``Settings`` model from the driver's name (``app.driver_settings``
#: looks up the installed entry point); it raises :class:`errors.DriverLoadError` for a missing or broken driver.
DriverSettingsLookup = Callable[[str], type[BaseModel]]


def validate_driver_settings(
    provider: ProviderConfig,
    settings_model: type[BaseModel],
    *,
    environ: Mapping[str, str] | None = None,
    resolve_files: bool = True,
) -> BaseModel:
    """Validate a provider's options against its driver's ``Settings``; a ConfigError names each bad key.

    An ``X_file`` option is read first (as :func:`load_config` does, ``environ`` giving
    ``$CREDENTIALS_DIRECTORY``) when ``settings_model`` declares ``X`` a ``SecretStr``.
    """
    options = dict(provider.options)
    set_by_environment = {key for key in provider.origins if key}
    secret_problems = _resolve_secrets(
        options,
        settings_model.model_fields,
        set_by_environment,
        os.environ if environ is None else environ,
        resolve_files=resolve_files,
    )
    if secret_problems:
        raise errors.ConfigError(
            "\n".join(
                f"{provider.origin(key)}: providers.{provider.id}.{key}: {problem}"
                for key, problem in secret_problems
            )
        )
    try:
        return settings_model.model_validate(options)
    except ValidationError as exc:
        accepted = sorted(set(settings_model.model_fields) | _COMMON_KEYS)
        lines = []
        for error in exc.errors(include_url=False):
            key = ".".join(str(part) for part in error["loc"])
            problem = _describe(error, accepted)
            field = settings_model.model_fields.get(key)
            if error["type"] == "missing" and field is not None and _is_secret(field):
                problem = f"required: set {key} or {key}_file"
            lines.append(
                f"{provider.origin(str(error['loc'][0]) if error['loc'] else '')}: providers.{provider.id}.{key}: "
                f"{problem} (driver {provider.common.driver!r})"
            )
        raise errors.ConfigError("\n".join(lines)) from None


def load_config(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    resolve_files: bool = True,
    driver_settings: DriverSettingsLookup | None = None,
    driver_problems: Callable[[ProviderConfig], list[str]] | None = None,
) -> Config:
    """Read the TOML file (none: defaults), lay the ``RECONCILER_*`` environment over it, validate.

    With ``driver_settings`` each provider section is checked against its driver's ``Settings`` in the
    same round as the rest, even when other parts have problems, so everything is reported together: a
    driver that cannot be loaded, options that do not validate. The keys that model declares
    ``SecretStr`` are the section's secrets (read from ``X_file`` when given so, masked by
    :meth:`Config.masked`), and :attr:`ProviderConfig.settings` holds the validated model. Without it
    provider options are kept as written. ``driver_problems``, if given, is a further check run for every
    provider section that validates.

    ``environ`` defaults to ``os.environ``; every ``RECONCILER_*`` variable is configuration except
    :data:`NOT_CONFIGURATION`, so a misspelt one is an error. A value for a number key is read as that
    kind of number (``RECONCILER_RECONCILE__BATCH_SIZE=100``); one starting with ``[`` that is a JSON array
    sets a list (``RECONCILER_RECONCILE__SCHEDULE='["1m","5m","15m","1h"]'``). A secret ``X`` or ``X_file``
    from the environment replaces the file's ``X`` and ``X_file``. Every problem found is reported at once.

    With ``resolve_files=False`` no ``X_file`` is opened (nor ``$CREDENTIALS_DIRECTORY`` required): each
    becomes ``X = SecretStr(UNRESOLVED_SECRET)``, enough to validate a file offline.
    A lease shorter than :meth:`Config.lease_problems` allows is an error here too, so ``run`` refuses it.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "configuration"
    # the sources in pydantic-settings' order, highest priority first: each is read in full before merging
    environment = _Environment(Config, environ)
    overrides = environment()
    data = _TomlFile(Config, path)() if path is not None else {}
    _merge(data, overrides)
    origins = environment.origins
    problems = list(environment.problems)
    drivers = _Drivers(driver_settings) if driver_settings is not None else None

    def line(loc: tuple[str, ...], problem: str) -> str:
        origin = next((f"${origins[loc[:n]]}" for n in range(len(loc), 0, -1) if loc[:n] in origins), source)
        return f"{origin}: {'.'.join(loc) or '(top level)'}: {problem}"

    # Every problem at once, in a stable order: the environment's (by variable name), the secret files',
    # the models' (by key, providers in file order), the lease rule for whatever did validate, then each
    # provider's driver (by provider id).
    secret_problems = _resolve_config_secrets(data, origins, environ, resolve_files, drivers)
    problems += [line(loc, problem) for loc, problem in secret_problems]
    # a section whose secret file failed would only repeat that problem as "api_key: required"
    unresolved = {loc[1] for loc, _ in secret_problems if len(loc) > 1 and loc[0] == "providers"}
    failed = {(*loc[:-1], loc[-1].removesuffix("_file")) for loc, _ in secret_problems}
    try:
        config: Config | None = Config.model_validate(data)
    except ValidationError as exc:
        config = None
        problems += [
            line(_dotted(error["loc"]), _describe(error, _known_keys(_dotted(error["loc"])[:-1])))
            for error in exc.errors(include_url=False)
            if _dotted(error["loc"]) not in failed
        ]
    lease_problems = config.lease_problems() if config is not None else _partial_lease_problems(data)
    problems += [line(("reconcile", "lease"), problem) for problem in lease_problems]
    if config is not None:
        sections = list(config.providers.values())
    else:
        written = data.get("providers")
        split = _split_provider_sections(written) if isinstance(written, dict) else {}
        sections = [p for p in map(_valid_provider, split.values()) if p is not None]
    checked: dict[str, ProviderConfig] = {}
    for provider in sorted(sections, key=lambda p: p.id):
        located = provider.model_copy(update={"origins": _origins_of(provider.id, source, origins)})
        checked[provider.id] = located
        if provider.id in unresolved:
            continue
        if drivers is not None:
            model = drivers.settings(provider.common.driver)
            if isinstance(model, errors.DriverLoadError):
                problems.append(
                    f"{located.origin('driver')}: providers.{provider.id}.driver: {model.message}"
                )
                continue
            try:
                settings = validate_driver_settings(
                    located, model, environ=environ, resolve_files=resolve_files
                )
            except errors.ConfigError as exc:
                problems += exc.message.splitlines()
            else:
                checked[provider.id] = located.model_copy(update={"settings": settings})
        if driver_problems is not None:
            problems += driver_problems(located)
    if problems or config is None:
        raise errors.ConfigError("\n".join(problems))
    return config.model_copy(
        update={"providers": {provider_id: checked[provider_id] for provider_id in config.providers}}
    )


class _Drivers:
    """The ``driver_settings`` lookup, asked once per driver name; a load failure is kept as the answer."""

    def __init__(self, lookup: DriverSettingsLookup) -> None:
        self._lookup = lookup
        self._found: dict[str, type[BaseModel] | errors.DriverLoadError] = {}

    def settings(self, driver: str) -> type[BaseModel] | errors.DriverLoadError:
        if driver not in self._found:
            try:
                self._found[driver] = self._lookup(driver)
            except errors.DriverLoadError as exc:
                self._found[driver] = exc
        return self._found[driver]

    def fields(self, driver: object) -> Mapping[str, FieldInfo]:
        """The fields of ``driver``'s ``Settings``; none when it is not a name or cannot be loaded."""
        if not isinstance(driver, str):
            return {}
        model = self.settings(driver)
        return {} if isinstance(model, errors.DriverLoadError) else model.model_fields


def _origins_of(provider_id: str, source: str, origins: Mapping[tuple[str, ...], str]) -> dict[str, str]:
    keys = {
        loc[2]: f"${name}"
        for loc, name in origins.items()
        if loc[:2] == ("providers", provider_id) and loc[2:]
    }
    return {"": source} | keys


class _TomlFile(TomlConfigSettingsSource):
    """The configuration file. pydantic-settings skips a file that is missing or not a regular file and
    lets read and syntax errors escape; here each is an error naming the file (a pipe such as
    ``--config <(...)`` is read like a file)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self._path = path
        super().__init__(settings_cls, toml_file=path)

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        return _read_toml(self._path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.ConfigError(f"{path}: config file not found (give one with --config FILE)") from None
    except UnicodeDecodeError:
        raise errors.ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"{path}: TOML syntax error: {exc}") from None


def _is_configuration(name: str) -> bool:
    return name.upper().startswith(ENV_PREFIX) and name.upper() not in NOT_CONFIGURATION


class _Environment(EnvSettingsSource):
    """The ``RECONCILER_*`` variables of ``environ``, nested at ``__`` by pydantic-settings, then checked.

    The library reads them into the nested dict (names in any case, JSON arrays decoded). What it would
    skip or take loosely is checked here, one problem per variable: a name that is no key, an empty key
    between separators, a variable under a key another one set to a single value, a number the key's
    type does not take. ``origins`` says which variable set each key.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = {name: environ[name] for name in sorted(environ) if _is_configuration(name)}
        self.origins: dict[tuple[str, ...], str] = {}
        self.problems: list[str] = []
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # the given mapping, not os.environ
        return {name.lower(): value for name, value in self._given.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        # Only a JSON array is decoded. Any other text is left for the model to judge, so a bad value is one
        # located problem among the others rather than the library's SettingsError for the whole load.
        if isinstance(value, str) and value.startswith("["):
            try:
                decoded = json.loads(value)
            except ValueError:
                return value
            if isinstance(decoded, list):
                return decoded
        return value

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        locs = {name: tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTING)) for name in self._given}
        named = {loc: name for name, loc in locs.items()}
        for name, loc in locs.items():
            problem = self._check(data, name, loc, named)
            if problem is None:
                self.origins[loc] = name
            else:
                self.problems.append(f"${name}: {problem}")
        return data

    def _check(
        self, data: dict[str, Any], name: str, loc: tuple[str, ...], named: Mapping[tuple[str, ...], str]
    ) -> str | None:
        """What is wrong with variable ``name`` as "key: problem" (its value is taken out of ``data`` then)."""
        if "" in loc:
            _discard(data, loc[: loc.index("") + 1])
            return f"empty key between {ENV_NESTING!r} separators (write RECONCILER_SECTION__KEY)"
        if loc[0] not in Config.model_fields:
            return f"{loc[0]}: {_unknown_variable(name, loc[0])}"
        dotted = ".".join(loc)
        node: Any = data
        for depth, part in enumerate(loc[:-1], start=1):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                above = ".".join(loc[:depth])
                other = named.get(loc[:depth])
                if other is not None:
                    return f"{dotted}: conflicts with ${other}, which sets {above} to a single value"
                return f"{dotted}: {above} is a single value, not a section of keys"
        try:
            node[loc[-1]] = _environment_value(self._given[name], _declared_type(loc), node[loc[-1]])
        except ValueError as exc:
            del node[loc[-1]]
            return f"{dotted}: {exc}"
        return None


def _discard(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    """Remove the key at ``loc`` from nested ``data``, if it is there."""
    node: Any = data
    for part in loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def _unknown_variable(name: str, key: str) -> str:
    problem = _unknown_key(
        key, list(Config.model_fields), note=f"not configuration: {', '.join(NOT_CONFIGURATION)}"
    )
    close = difflib.get_close_matches(name.upper(), NOT_CONFIGURATION, n=1)
    if close and "did you mean" not in problem:
        problem = problem.replace("unknown key (", f"unknown key (did you mean ${close[0]}? ", 1)
    return problem


def _declared_type(loc: tuple[str, ...]) -> Any:
    """The type of the key at ``loc``, as far as the core declares it (None for a driver's options)."""
    if loc[0] == "providers":
        key = loc[2] if len(loc) == 3 else ""
        if key in _COMMON_FIELDS and key not in _COMMON_DURATIONS:
            return _COMMON_FIELDS[key].annotation
        return None
    model: type[BaseModel] | None = Config
    annotation: Any = None
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        annotation = field.annotation
        model = _model_of(annotation)
    return annotation


def _environment_value(text: str, declared: Any, read: Any) -> Any:
    """A variable's value as its key's declared kind of number, from its ``text``; else as the library ``read`` it."""
    kind = _number_kind(declared)
    if kind is int:
        if not _INTEGER_TEXT.fullmatch(text):
            raise ValueError("expected a whole number in digits, e.g. 100")
        if len(text) > 18:  # beyond every bound, and int() refuses thousands of digits
            raise ValueError("too large a number")
        return int(text)
    if kind is float:
        if not _NUMBER_TEXT.fullmatch(text):
            raise ValueError("expected a number in digits, e.g. 2.5")
        return float(text)
    return read


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Lay ``overrides`` over ``base`` in place, section by section."""
    for key, value in overrides.items():
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        else:
            base[key] = value


def _is_secret(field: FieldInfo) -> bool:
    """Whether a field is declared ``SecretStr`` (or ``SecretStr | None``)."""
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType):
        return set(typing.get_args(field.annotation)) - {type(None)} == {SecretStr}
    return field.annotation is SecretStr


def _secret_keys(fields: Mapping[str, FieldInfo]) -> list[str]:
    return [key for key, field in fields.items() if _is_secret(field)]


def _resolve_config_secrets(
    data: dict[str, Any],
    origins: dict[tuple[str, ...], str],
    environ: Mapping[str, str],
    resolve_files: bool,
    drivers: _Drivers | None,
) -> list[tuple[tuple[str, ...], str]]:
    """Resolve the secrets of every section in place: the core's by its models, a provider's by its driver's
    (a provider's options are left as written when its driver is not known)."""
    sections: list[tuple[tuple[str, ...], Any, Mapping[str, FieldInfo]]] = [((), data, Config.model_fields)]
    for name, field in Config.model_fields.items():
        model = _model_of(field.annotation)
        if model is not None and name != "providers":
            sections.append(((name,), data.get(name), model.model_fields))
    providers = data.get("providers")
    for provider_id, section in providers.items() if isinstance(providers, dict) else ():
        driver = section.get("driver") if isinstance(section, dict) else None
        options = drivers.fields(driver) if drivers is not None else {}
        sections.append((("providers", provider_id), section, _COMMON_FIELDS | dict(options)))
    problems = []
    for loc, section, fields in sections:
        if not isinstance(section, dict):
            continue
        set_by_environment = {key[-1] for key in origins if key[:-1] == loc}
        for key, problem in _resolve_secrets(
            section, fields, set_by_environment, environ, resolve_files=resolve_files
        ):
            problems.append(((*loc, key), problem))
        for key in _secret_keys(fields):
            if (*loc, f"{key}_file") in origins:
                origins[(*loc, key)] = origins[(*loc, f"{key}_file")]
    return problems


def _resolve_secrets(
    section: dict[str, Any],
    fields: Mapping[str, FieldInfo],
    set_by_environment: Collection[str],
    environ: Mapping[str, str],
    *,
    resolve_files: bool,
) -> list[tuple[str, str]]:
    """Make each key ``fields`` declares ``SecretStr`` a ``SecretStr`` in ``section``, in place, reading it from
    its ``X_file`` form when given so; the problems, by the key written. ``X`` or ``X_file`` set by the
    environment replaces the other form given in the file."""
    problems = []
    for key in _secret_keys(fields):
        file_key = f"{key}_file"
        if file_key in fields:  # the model declares X_file itself: an ordinary option
            continue
        if key in section and file_key in section:
            from_environment = {key, file_key} & set(set_by_environment)
            if len(from_environment) != 1:
                section.pop(file_key)
                problems.append((file_key, f"both {key} and {file_key} are set: keep one"))
                continue
            section.pop(({key, file_key} - from_environment).pop())
        if file_key in section:
            name = section.pop(file_key)
            if not isinstance(name, str) or not name:
                problems.append((file_key, "expected a file path or a systemd credential name"))
            elif not resolve_files:
                section[key] = SecretStr(UNRESOLVED_SECRET)
            else:
                try:
                    section[key] = SecretStr(_read_secret(name, environ))
                except errors.ConfigError as exc:
                    problems.append((file_key, exc.message))
        elif isinstance(section.get(key), str):
            section[key] = SecretStr(section[key])
    return problems


def _read_secret(name: str, environ: Mapping[str, str]) -> str:
    if "/" in name:
        path = Path(name)
    else:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise errors.ConfigError(
                f"{name!r} has no '/', so it names a systemd credential, but $CREDENTIALS_DIRECTORY is not "
                "set: run under systemd with LoadCredential= or give the file's path"
            )
        path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise errors.ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise errors.ConfigError(f"{path}: empty file")
    return secret


def _dotted(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """A pydantic error location as the TOML keys the operator wrote."""
    parts = tuple(str(part) for part in loc)
    # Provider sections are split into id/common/options internally; the operator wrote them flat.
    if len(parts) >= 3 and parts[0] == "providers" and parts[2] in ("id", "common", "options"):
        return parts[:2] + parts[3:]
    return parts


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


def _describe(error: Any, accepted: list[str]) -> str:
    """One pydantic error as an operator-facing problem (never its input: it may be a secret)."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(str(error["loc"][-1]), accepted)
    if kind == "missing":
        return "required but not set"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return str(error["msg"])


def _unknown_key(key: str, accepted: list[str], *, note: str = "") -> str:
    if not accepted:
        return "unknown key"
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}accepted: {', '.join(accepted)}{'; ' + note if note else ''})"


def _relocated(exc: ValidationError, prefix: tuple[str, ...]) -> list[InitErrorDetails]:
    return [
        InitErrorDetails(
            type=PydanticCustomError("config", "{message}", {"message": _describe(error, [])}),
            loc=prefix + error["loc"],
            input=error["input"],
        )
        for error in exc.errors(include_url=False)
    ]


def _problem(loc: tuple[str, ...], message: str, value: object) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError("config", "{message}", {"message": message}), loc=loc, input=value
    )


def _located_error(loc: tuple[str, ...], message: str, value: object) -> ValidationError:
    return ValidationError.from_exception_data("Config", [_problem(loc, message, value)])


def _number_kind(annotation: Any) -> type[int] | type[float] | None:
    """``int`` or ``float`` when a field holds that kind of number (``X | None`` too), else None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = set(typing.get_args(annotation)) if union else {annotation}
    kinds.discard(type(None))
    if kinds == {int}:
        return int
    if kinds and kinds <= {int, float}:
        return float
    return None


def _seconds(seconds: float) -> str:
    return timeutil.format_duration(timedelta(seconds=seconds))
