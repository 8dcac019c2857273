"""The interface every database offers the ledger, outbox and queries (`Db`): statements
with `?` placeholders, dict rows from `query`, nested transactions. SQLite
(`sqlite.SqliteDatabase`) and PostgreSQL (`postgres.PgDatabase`) implement it; nothing
above the storage package knows which one runs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol


def is_postgres_url(database: str) -> bool:
    """`database` names a PostgreSQL server (else it is a SQLite file)."""
    return database.startswith(("postgresql://", "postgres://"))


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int, /) -> list[Any]: ...

    @property
    def description(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    #: "sqlite" or "postgres": for the few statements only one of them has
    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...

    def query(self, sql: str, params: Sequence[Any] = ..., /) -> Iterator[dict[str, Any]]: ...

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self) -> AbstractContextManager[Any]:
        """A write transaction; nested calls are savepoints."""
        ...

    def data_version(self) -> int | None:
        """A number that changes when another connection commits, or None when the
        database cannot tell (then callers read what changed every time)."""
        ...

    def close(self) -> None: ...
