"""A scripted driver for subprocess tests, configured by a JSON file.

`script_path` (a JSON file) maps provider invoice ids to a list of outcomes (the last repeats); `"*"` is the
default for ids not listed. An outcome is a snapshot (`{"status": "SETTLED", "raw_status": "Settled", "amount_sats": 1000}`) or
an error (`{"error": "unavailable" | "auth" | "not_found" | "bad_response" | "crash", "retry_after": 5}`).

Two more entry points serve the configuration tests: `fake_secrets` (:class:`SecretsDriver`), a third-party
driver with a secret and a path among its options, and `fake_loose` (:class:`LooseDriver`), whose `Settings`
is a plain pydantic model the core must refuse to load.
"""

from __future__ import annotations

import asyncio
import hashlib
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
    SecretStr,
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


class SecretsSettings(DriverSettings):
    """Options of a third-party driver: a secret by its declared type, and a path that only ends in `_file`."""

    access_key: SecretStr
    ca_bundle_file: str
    #: what `check` compares the key it was given with, so a test can tell it got the right one
    access_key_sha256: str


class SecretsDriver(FakeDriver):
    """`check` (``check-config --online``) proves what the core handed over: the key, and a path as a path."""

    Settings: ClassVar[type[BaseModel]] = SecretsSettings
    record_calls = False

    async def check(self) -> None:
        settings = self.settings
        assert isinstance(settings, SecretsSettings)
        given = hashlib.sha256(settings.access_key.get_secret_value().encode()).hexdigest()
        if given != settings.access_key_sha256:
            raise ProviderAuthError(f"{self.provider_id}: the access key is not the expected one")
        try:
            bundle = await asyncio.to_thread(Path(settings.ca_bundle_file).read_text, encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise ProviderUnavailable(f"{self.provider_id}: ca_bundle_file is not a readable path") from exc
        if not bundle.startswith("-----BEGIN CERTIFICATE-----"):
            raise ProviderUnavailable(f"{self.provider_id}: ca_bundle_file does not hold a CA bundle")


class LooseSettings(BaseModel):
    """Not a DriverSettings: unknown keys would pass unnoticed, so the core refuses the driver."""

    latency: float = 0.0


class LooseDriver(FakeDriver):
    Settings: ClassVar[type[BaseModel]] = LooseSettings
