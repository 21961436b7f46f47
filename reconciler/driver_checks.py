"""The driver contract checks (docs/drivers.md §6), written once.

`registry.load` runs them on every configured driver before the first pass (a problem is an exit-2
start-up error); `reconciler.testing.check_driver` runs the same ones in a driver's own tests. They look
at the class only: nothing is constructed, imported or opened.
"""

from __future__ import annotations

import inspect

from pydantic import BaseModel

from reconciler.driver_types import DriverSettings

_REQUIRED = ("fetch", "check")
_OPTIONAL = ("fetch_page", "fetch_many", "post_settle", "register_webhook")
#: SupportsWebhooks (docs/drivers.md §8): all three or none; parse_webhook and webhook_enabled plain methods
_WEBHOOKS = {"webhook_enabled": False, "parse_webhook": False, "webhook_aliases": True}


def problems(obj: object) -> list[str]:
    """Every way ``obj`` falls short of a driver class, in a fixed order; ``[]`` when it is one."""
    if not inspect.isclass(obj):
        return [f"{obj!r} is not a class"]
    found = []
    settings = _settings_problem(obj)
    if settings is not None:
        found.append(settings)
    kinds = getattr(obj, "post_settle_kinds", None)
    if not (isinstance(kinds, tuple) and all(isinstance(k, str) for k in kinds)):
        found.append("`post_settle_kinds` is not a tuple of strings")
    for method in _REQUIRED:
        if not inspect.iscoroutinefunction(getattr(obj, method, None)):
            found.append(f"`{method}` is not an async method")
    for method in _OPTIONAL:
        if hasattr(obj, method) and not inspect.iscoroutinefunction(getattr(obj, method)):
            found.append(f"`{method}` is not an async method")
    present = [method for method in _WEBHOOKS if hasattr(obj, method)]
    if present and len(present) != len(_WEBHOOKS):
        missing = ", ".join(f"`{m}`" for m in _WEBHOOKS if m not in present)
        found.append(f"it implements part of the webhook protocol: {missing} missing")
    for method in present:
        asynchronous = inspect.iscoroutinefunction(getattr(obj, method))
        if asynchronous != _WEBHOOKS[method]:
            found.append(f"`{method}` is {'' if asynchronous else 'not '}an async method")
    hint = getattr(obj, "webhook_setup_hint", "")
    if not isinstance(hint, str) or "\n" in hint:
        found.append("`webhook_setup_hint` is not one line of text")
    item_bytes = getattr(obj, "page_item_bytes", 1)
    if isinstance(item_bytes, bool) or not isinstance(item_bytes, int) or item_bytes < 1:
        found.append("`page_item_bytes` is not a positive whole number of bytes")
    return found


def _settings_problem(cls: type) -> str | None:
    settings = getattr(cls, "Settings", None)
    if not (inspect.isclass(settings) and issubclass(settings, BaseModel)):
        return "it has no pydantic `Settings` model"
    if not issubclass(settings, DriverSettings):
        return "its `Settings` does not subclass reconciler.driver_api.DriverSettings, which refuses unknown keys"
    extra = settings.model_config.get("extra")
    if extra != "forbid":
        return f"its `Settings` accepts unknown keys (extra={extra!r}): keep DriverSettings' extra='forbid'"
    return None
