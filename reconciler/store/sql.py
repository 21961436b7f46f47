"""The SQL store: the use cases written once over named queries (invoices.py, settle.py, tasks.py,
operator.py, reporting.py, api.py on engine.py) and the schema checks; each dialect supplies the connections
and transactions (`SqliteStore`, `PostgresStore`)."""

from __future__ import annotations

from reconciler import errors
from reconciler.store import migrations, queries, schema
from reconciler.store.api import ApiUseCases
from reconciler.store.engine import Tx
from reconciler.store.invoices import InvoiceUseCases
from reconciler.store.operator import OperatorUseCases
from reconciler.store.records import Migrated
from reconciler.store.reporting import Reporting
from reconciler.store.settle import SettleUseCase
from reconciler.store.tasks import TaskUseCases

#: What every schema change takes first (init-db, each migration): one at a time across every process.
_SCHEMA_LOCK = "reconciler schema"


class SqlStore(InvoiceUseCases, SettleUseCase, TaskUseCases, OperatorUseCases, Reporting, ApiUseCases):
    #: "sqlite" or "postgres": which text of the queries and migrations the store runs
    dialect: str

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
        start = await self.schema_version()
        if start is None:
            raise errors.SchemaError(
                "the database has no reconciler schema to migrate: create it with `reconciler init-db` "
                "(which creates the newest version directly)"
            )
        # a database damaged at its own version is refused before anything changes
        schema.check_shape(await self.schema_shape(), start)
        applied: list[str] = []
        for migration in migrations.load(self.dialect):
            if migration.version <= start:
                continue

            async def step(tx: Tx, migration: migrations.Migration = migration) -> bool:
                # one migration at a time; another process may have applied this one while we waited
                await tx.returning("lock", {"key": _SCHEMA_LOCK})
                rows = await tx.returning("schema_version", {})
                version = int(rows[0][0])
                if version >= migration.version:
                    return False
                await tx.script(migration.script)
                previous = {"version": migration.version, "previous": migration.version - 1}
                if await tx.exec("set_schema_version", previous) != 1:
                    raise errors.SchemaError(
                        f"schema_meta changed while {migration.name} ran: restore the database from a backup"
                    )
                return True

            if await self._atomic(f"migrate {migration.name}", step):
                applied.append(migration.name)
        await self.require_schema()
        return Migrated(start, schema.SCHEMA_VERSION, tuple(applied))
