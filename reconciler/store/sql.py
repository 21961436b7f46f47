"""The SQL store: the use cases written once over named queries (invoices.py, settle.py, tasks.py,
operator.py, reporting.py, api.py, webhooks.py on engine.py) and the schema checks; each dialect supplies the connections
and transactions (`SqliteStore`, `PostgresStore`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from reconciler import errors
from reconciler.store import migrations, queries, schema
from reconciler.store.api import ApiUseCases
from reconciler.store.engine import Row, Tx
from reconciler.store.invoices import InvoiceUseCases
from reconciler.store.operator import OperatorUseCases
from reconciler.store.records import Migrated
from reconciler.store.reporting import Reporting
from reconciler.store.reviews import ReviewUseCases
from reconciler.store.settle import SettleUseCase
from reconciler.store.tasks import TaskUseCases
from reconciler.store.webhooks import WebhookUseCases

#: What every schema change takes first (init-db, each migration): one at a time across every process.
_SCHEMA_LOCK = "reconciler schema"


class SqlStore(
    InvoiceUseCases,
    SettleUseCase,
    TaskUseCases,
    OperatorUseCases,
    Reporting,
    ReviewUseCases,
    ApiUseCases,
    WebhookUseCases,
):
    #: "sqlite" or "postgres": which text of the queries and migrations the store runs
    dialect: str

    async def schema_version(self) -> int | None:
        return await _schema_version(self._read)

    async def schema_shape(self) -> schema.SchemaShape:
        return await _schema_shape(self._read)

    async def init_schema(self) -> bool:
        async def create(tx: Tx) -> bool:
            # one init-db at a time; another may have created the schema while we waited
            await tx.returning("lock", {"key": _SCHEMA_LOCK})
            if {str(row[0]) for row in await tx.returning("schema_tables", {})} & schema.OUR_TABLES:
                return False
            await tx.script(queries.schema_sql())
            return True

        if await self.schema_version() is None and await self._atomic("init-db", create):
            return True
        await self.require_schema()
        return False

    async def migrate(self) -> Migrated:
        known = migrations.load(self.dialect)

        async def step(tx: Tx) -> tuple[int, str | None]:
            """Under the schema lock, with nobody else migrating: the database checked at its version, then
            the next migration it lacks applied; (the version found, the migration applied or None)."""
            await tx.returning("lock", {"key": _SCHEMA_LOCK})
            version = await _schema_version(tx.returning)
            if version is None:
                raise errors.SchemaError(
                    "the database has no reconciler schema to migrate: create it with `reconciler init-db` "
                    "(which creates the newest version directly)"
                )
            # a database damaged at its own version is refused before anything changes
            schema.check_shape(await _schema_shape(tx.returning), version)
            pending = [m for m in known if m.version > version]
            if not pending:
                return version, None
            migration = pending[0]
            await tx.script(migration.script)
            reached = {"version": migration.version, "previous": version}
            if migration.version != version + 1 or await tx.exec("set_schema_version", reached) != 1:
                raise errors.SchemaError(
                    f"schema_meta changed while {migration.name} ran: restore the database from a backup"
                )
            return version, migration.name

        start: int | None = None
        applied: list[str] = []
        while True:
            version, name = await self._atomic("migrate", step)
            start = version if start is None else start
            if name is None:
                break
            applied.append(name)
        await self.require_schema()
        return Migrated(start, schema.SCHEMA_VERSION, tuple(applied))


Read = Callable[[str, dict[str, Any]], Awaitable[list[Row]]]


async def _schema_version(read: Read) -> int | None:
    """Our schema version through `read` (the store's own reads, or a transaction's)."""
    tables = {str(row[0]) for row in await read("schema_tables", {})}
    versions: list[object] = []
    if "schema_meta" in tables:
        columns = await read("schema_columns", {})
        if not any(r["table_name"] == "schema_meta" and r["column_name"] == "version" for r in columns):
            raise errors.SchemaError(
                "schema_meta is not ours (it has no version column): "
                "point database.url at the reconciler's database"
            )
        versions = [row[0] for row in await read("schema_version", {})]
    return schema.check_schema(tables, versions)


async def _schema_shape(read: Read) -> schema.SchemaShape:
    return schema.SchemaShape.from_rows(await read("schema_columns", {}), await read("schema_indexes", {}))
