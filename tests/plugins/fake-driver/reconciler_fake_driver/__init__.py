"""A scripted driver for subprocess tests, configured by a JSON file.

`script_path` (a JSON file; not `*_file`, which the core reads as a secret) maps provider invoice ids to a list of outcomes (the last repeats); `"*"` is the default for ids
not listed. An outcome is a snapshot (`{"status": "SETTLED", "raw_status": "Settled", "amount_sats": 1000}`) or
an error (`{"error": "unavailable" | "auth" | "not_found" | "bad_response" | "crash", "retry_after": 5}`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel

from reconciler.driver_api import (
    BadProviderResponse,
    CommonSettings,
    DriverSettings,
    InvoiceNotFound,
    ProviderAuthError,
    ProviderStatus,
    ProviderUnavailable,
    Snapshot,
)
from reconciler.testing import FakeDriver


class ScriptedSettings(DriverSettings):
    script_path: str
    latency: float = 0.0


def _outcome(spec: dict[str, Any], provider_id: str) -> Snapshot | BaseException:
    error = spec.get("error")
    if error is None:
        fields = {k: v for k, v in spec.items() if k != "status"}
        return Snapshot(status=ProviderStatus(spec["status"]), **fields)
    message = f"{provider_id}: scripted {error}"
    errors: dict[str, BaseException] = {
        "unavailable": ProviderUnavailable(message, retry_after=spec.get("retry_after")),
        "auth": ProviderAuthError(message),
        "not_found": InvoiceNotFound(message),
        "bad_response": BadProviderResponse(message),
        "crash": RuntimeError(message),
    }
    return errors[error]


class ScriptedDriver(FakeDriver):
    Settings: ClassVar[type[BaseModel]] = ScriptedSettings
    record_calls = False

    def __init__(
        self,
        provider_id: str,
        settings: Any,
        common: CommonSettings,
        session: aiohttp.ClientSession,
    ) -> None:
        super().__init__(provider_id, settings, common, session)
        script = json.loads(Path(settings.script_path).read_text())
        self._default = [_outcome(spec, provider_id) for spec in script.pop("*", [])]
        for invoice_id, outcomes in script.items():
            self.script(invoice_id, *(_outcome(spec, provider_id) for spec in outcomes))

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        if self._default and provider_invoice_id not in self._script:
            if len(self._default) == 1:  # one answer for every unlisted id: nothing to remember per id
                if self.latency:
                    await asyncio.sleep(self.latency)
                outcome = self._default[0]
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome
            self.script(provider_invoice_id, *self._default)
        return await super().fetch(provider_invoice_id)
