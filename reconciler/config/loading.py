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
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    TomlConfigSettingsSource,
)

from reconciler import errors
from reconciler.config.models import (
    _COMMON_DURATIONS,
    Config,
    ProviderConfig,
    _known_keys,
    _model_of,
    _partial_lease_problems,
    _split_provider_sections,
    _valid_provider,
)
from reconciler.config.secrets import _Drivers, _resolve_config_secrets, _resolve_secrets
from reconciler.config.values import (
    _COMMON_FIELDS,
    _COMMON_KEYS,
    _INTEGER_TEXT,
    _NUMBER_TEXT,
    ENV_NESTING,
    ENV_PREFIX,
    NOT_CONFIGURATION,
    DriverSettingsLookup,
    _describe,
    _dotted,
    _is_secret,
    _number_kind,
    _unknown_key,
)

#: How :func:`load_config` finds a driver's ``Settings`` model from the driver's name (``app.driver_settings``
#: looks up the installed entry point); it raises :class:`errors.DriverLoadError` for a missing or broken driver.


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
    """A variable's value as its key's declared kind of number or switch, from its ``text``; else as the library
    ``read`` it."""
    if declared is bool:
        if text.strip().lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.strip().lower() == "true"
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
