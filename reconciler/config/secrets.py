"""Secrets by declared type: a key is a secret when its model declares it ``SecretStr``; only such a key ``X``
has a file form ``X_file`` (a path, or a systemd credential name looked up in ``$CREDENTIALS_DIRECTORY``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    SecretStr,
)
from pydantic.fields import FieldInfo

from reconciler import errors
from reconciler.config.models import Config, _model_of
from reconciler.config.values import _COMMON_FIELDS, UNRESOLVED_SECRET, DriverSettingsLookup, _secret_keys


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
