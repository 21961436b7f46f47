"""The SQL store: the use cases written once over named queries (invoices.py, settle.py, tasks.py,
reporting.py on engine.py) and the schema checks; each dialect supplies the connections and transactions
(`SqliteStore`, `PostgresStore`)."""

from __future__ import annotations

from reconciler import errors
from reconciler.store import queries, schema
from reconciler.store.engine import Tx
from reconciler.store.invoices import InvoiceUseCases
from reconciler.store.reporting import Reporting
from reconciler.store.settle import SettleUseCase
from reconciler.store.tasks import TaskUseCases


class SqlStore(InvoiceUseCases, SettleUseCase, TaskUseCases, Reporting):
    async def schema_version(self) -> int | None:
        tables = {str(row[0]) for row in await self._read("schema_tables", {})}
        versions: list[object] = []
        if "schema_meta" in tables:
            columns = await self._read("schema_columns", {})
            if not any(r["table_name"] == "schema_meta" and r["column_name"] == "version" for r in columns):
                raise errors.SchemaError(
                    "schema_meta is not ours (it has no version column): "
                    "point database.url at the reconciler's database"
                )
            versions = [row[0] for row in await self._read("schema_version", {})]
        return schema.check_schema(tables, versions)

    async def schema_shape(self) -> schema.SchemaShape:
        return schema.SchemaShape.from_rows(
            await self._read("schema_columns", {}), await self._read("schema_indexes", {})
        )

    async def init_schema(self) -> bool:
        async def create(tx: Tx) -> bool:
            # one init-db at a time; another may have created the schema while we waited
            await tx.returning("lock", {"key": "reconciler init-db"})
            if {str(row[0]) for row in await tx.returning("schema_tables", {})} & schema.OUR_TABLES:
                return False
            await tx.script(queries.schema_sql())
            return True

        if await self.schema_version() is None and await self._atomic("init-db", create):
            return True
        await self.require_schema()
        return False
