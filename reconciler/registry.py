"""Driver discovery: entry points in the group `reconciler.drivers`, validated when loaded.

A configured driver that is missing, fails to import, or does not look like a `driver_api.Driver` is a
`DriverLoadError` naming the entry point and its distribution, raised before the first pass (exit 2). Its
`Settings` must subclass `driver_api.DriverSettings` and keep `extra="forbid"`: the core validates every
option of a provider section against it, and a model that let unknown keys through would let a misspelt
option fall back to its default unnoticed. The checks are `driver_checks.problems`, the ones
`reconciler.testing.check_driver` runs in a driver's own tests; every problem found is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from reconciler import driver_checks, errors
from reconciler.driver_api import Driver

GROUP = "reconciler.drivers"


@dataclass(frozen=True, slots=True)
class InstalledDriver:
    """An entry point of the `reconciler.drivers` group and the distribution that provides it."""

    name: str
    target: str
    distribution: str | None
    version: str | None

    @property
    def origin(self) -> str:
        where = f"{self.distribution} {self.version}" if self.distribution else "an unknown distribution"
        return f"entry point {GROUP}:{self.name} = {self.target!r} from {where}"


def installed() -> list[InstalledDriver]:
    """Every driver entry point installed, sorted by name."""
    found = []
    for entry in metadata.entry_points(group=GROUP):
        dist = entry.dist
        found.append(
            InstalledDriver(
                name=entry.name,
                target=entry.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
        )
    return sorted(found, key=lambda d: d.name)


def load(name: str) -> type[Driver]:
    """Import and validate the driver registered as `name`."""
    entries = [e for e in metadata.entry_points(group=GROUP) if e.name == name]
    if not entries:
        names = ", ".join(d.name for d in installed()) or "none"
        raise errors.DriverLoadError(
            f"driver {name!r} is not installed: no entry point {GROUP}:{name} (installed drivers: {names}); "
            f"install its distribution, e.g. `pip install reconciler-{name}`",
            driver=name,
            entry_point=f"{GROUP}:{name}",
        )
    entry = entries[0]
    info = InstalledDriver(
        entry.name,
        entry.value,
        entry.dist.metadata["Name"] if entry.dist is not None else None,
        entry.dist.version if entry.dist is not None else None,
    )
    try:
        loaded = entry.load()
    except Exception as exc:  # third-party import code can raise anything; report it as a load failure
        raise errors.DriverLoadError(
            f"driver {name!r} failed to import ({info.origin}): {type(exc).__name__}: {exc}",
            driver=name,
            entry_point=f"{GROUP}:{name}",
            distribution=info.distribution,
        ) from exc
    problems = driver_checks.problems(loaded)
    if problems:
        raise errors.DriverLoadError(
            _broken_message(name, info.origin, problems),
            driver=name,
            entry_point=f"{GROUP}:{name}",
            distribution=info.distribution,
        )
    driver_cls: type[Driver] = loaded
    return driver_cls


def _broken_message(name: str, origin: str, problems: list[str]) -> str:
    return f"driver {name!r} is broken ({origin}): {'; '.join(problems)}"
