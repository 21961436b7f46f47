"""The part of the store interface (`base.Store`) the operator API reads and writes: its keys and its pages
(implemented in store/api.py, docs/api.md)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reconciler.models import AuditRecord
from reconciler.store.records import ApiKeyRow, InstanceRow, InvoiceFilter, PageRequest


class ApiStore(abc.ABC):
    # -- the operator API (store/api.py) --------------------------------------------------------------------
    @abc.abstractmethod
    async def insert_api_key(
        self,
        *,
        key_id: str,
        label: str,
        token_hash: str,
        role: str,
        now: datetime,
        audits: Sequence[AuditRecord] = (),
    ) -> None:
        """Store a new key: its id, label, role and the SHA-256 of its token, with `audits` in the same
        transaction."""

    @abc.abstractmethod
    async def api_key_by_hash(self, token_hash: str) -> ApiKeyRow | None:
        """The key whose token has this SHA-256, revoked or not."""

    @abc.abstractmethod
    async def api_key(self, key_id: str) -> ApiKeyRow | None:
        """One key by its id."""

    @abc.abstractmethod
    async def api_keys(self) -> list[ApiKeyRow]:
        """Every key, oldest first."""

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str, *, now: datetime, audits: Sequence[AuditRecord] = ()) -> bool:
        """Revoke a key, with `audits` in the same transaction; False (nothing written) when there is no
        such key or it was revoked already."""

    @abc.abstractmethod
    async def touch_api_key(self, key_id: str, *, now: datetime, stale_before: datetime) -> bool:
        """Set `last_used_at` unless it is at or after `stale_before`; whether it was set."""

    @abc.abstractmethod
    async def api_invoices(self, where: InvoiceFilter, page: PageRequest) -> list[dict[str, Any]]:
        """A page of invoices as stored, newest first (sort key: created_at, id)."""

    @abc.abstractmethod
    async def api_invoice(self, invoice_id: str) -> dict[str, Any] | None:
        """One invoice as stored, or None."""

    @abc.abstractmethod
    async def api_open_reviews(self, kind: str | None, page: PageRequest) -> list[dict[str, Any]]:
        """A page of open review items, oldest first (sort key: opened_at, id)."""

    @abc.abstractmethod
    async def api_target_audits(
        self, target_kind: str, target_id: str, page: PageRequest
    ) -> list[dict[str, Any]]:
        """A page of one target's audit rows, oldest first (sort key: occurred_at, id)."""

    @abc.abstractmethod
    async def api_provider_controls(self) -> dict[str, dict[str, Any]]:
        """provider id -> its `provider_controls` row (paused, changed_by, changed_at, reason)."""

    @abc.abstractmethod
    async def api_instances(self) -> list[InstanceRow]:
        """Every `reconciler_instances` row, latest pass first."""
