"""The interface every database offers the ledger, outbox and queries (`Db`): statements
with `?` placeholders, dict rows from `query`, nested transactions. SQLite
(`sqlite.SqliteDatabase`) and PostgreSQL (`postgres.PgDatabase`) implement it; nothing
above the storage package knows which one runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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
    #: Waiting rows of one statement (`insert`) go one after another, each seeing the rows
    #: before it (SQLite's `executemany`), so a row may depend on rows of its own kind
    #: that came earlier. False: they go as one statement, which sees none of them.
    rows_see_earlier_rows: bool

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...

    def query(self, sql: str, params: Sequence[Any] = ..., /) -> Iterator[dict[str, Any]]: ...

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self) -> AbstractContextManager[Any]:
        """A write transaction; nested calls are savepoints."""
        ...

    def snapshot(self) -> AbstractContextManager[Any]:
        """A read-only transaction: every statement inside sees the same committed state,
        so a read of several statements (an invoice, then its payments) is never torn by a
        commit between them. Inside a transaction: that transaction."""
        ...

    def pipeline(self) -> AbstractContextManager[Any]:
        """Statements inside are sent without waiting for each answer (PostgreSQL's
        pipeline mode): a round trip is paid only where a result is read (`fetchone`) and
        at the end. On both engines, rows written with `insert` and `update` inside wait
        and go together (SQLite: one `executemany` per statement)."""
        ...

    def later(self, cursor: Any, use: Callable[[Any], None]) -> None:
        """`use(cursor.fetchall())`: now, or, inside `pipeline()`, once it has sent
        everything (so reading a `RETURNING` value costs no round trip of its own)."""
        ...

    def insert(self, prefix: str, row: str, params: Sequence[Any]) -> None:
        """`INSERT ... VALUES` of one row: `prefix` is "INSERT INTO t (columns) VALUES",
        `row` its "(?, ...)" (expressions allowed). Inside `pipeline()` the rows wait, and
        go as one multi-row INSERT per `prefix` (SQLite: one `executemany`), in the order
        the prefixes came, before the next other statement (or savepoint, or commit); a
        savepoint rolled back drops its waiting rows. So a waiting row may depend only on
        rows of a prefix that came earlier (and, where `rows_see_earlier_rows`, on the
        rows of its own prefix before it), and nothing reads it before it goes. Outside
        `pipeline()`: executed at once."""
        ...

    def update(self, prefix: str, row: str, params: Sequence[Any], suffix: str, key: str) -> None:
        """`prefix` "UPDATE t SET c = v.column2, ... FROM (VALUES", `row` "(?, ...)" (typed
        with CASTs), `suffix` ") AS v WHERE t.id = v.column1": one row's new values, whole
        (not increments). Waits and goes like `insert`; a later update of the same `key`
        replaces a waiting one (both wrote every column)."""
        ...

    def relaxed_commit(self) -> None:
        """Inside a write transaction whose loss in a database server crash only repeats
        work (a callback attempt recorded, a delivery claimed: the callback is sent again,
        as at-least-once allows): its commit does not wait for the disk (PostgreSQL's
        `synchronous_commit = off` for this transaction). A later ordinary commit flushes
        it too, so nothing after it survives without it. SQLite: nothing changes (its WAL
        with `synchronous=NORMAL` never waits for the disk at a commit)."""
        ...

    def notify(self) -> None:
        """Inside a write transaction that wrote events or made deliveries due: other
        instances sharing the database (PostgreSQL) hear of it at the commit, so their live
        channels and callback senders look at once. SQLite: nothing (one instance)."""
        ...

    def data_version(self) -> int | None:
        """A number that changes when another connection commits, or None when the
        database cannot tell (then callers read what changed every time)."""
        ...

    def close(self) -> None: ...
