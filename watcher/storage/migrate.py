"""`payment-watcher migrate-to-postgres`: copy a SQLite database into an empty PostgreSQL one.

Everything is copied in one PostgreSQL transaction from one SQLite read snapshot (stop the
daemon first: what it writes after the snapshot would not be copied). Keys keep their
values (invoice and event numbers, transfer positions), the identity sequences continue
after them. Before the commit, each table's row count and the sums of the amounts (as
integers) are compared on both sides; any difference rolls everything back. The copy is
then analysed, so the planner has statistics from the daemon's first query.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from watcher.errors import StoreRefused
from watcher.storage.postgres import PgDatabase
from watcher.storage.sqlite import SqliteDatabase

#: every table, parents first; (table, identity column or None)
TABLES: tuple[tuple[str, str | None], ...] = (
    ("invoices", "seq"),
    ("invoice_legs", None),
    ("events", "seq"),
    ("deliveries", None),
    ("attempts", "id"),
    ("cursors", None),
    ("blocks", None),
    ("derived_addresses", None),
    ("transfers", "rowid"),
    ("rescans", "id"),
    ("dashboard_sessions", None),
)

#: amounts (TEXT holding base-unit integers) whose sums are compared
AMOUNTS: tuple[tuple[str, str], ...] = (
    ("invoices", "amount"),
    ("invoices", "requested_amount"),
    ("invoice_legs", "amount"),
    ("transfers", "amount"),
)

CHUNK = 2_000


@dataclass
class Report:
    rows: dict[str, int] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=dict)  # "table.column" -> sum


def _columns(db: SqliteDatabase, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()]


def _pg_columns(db: PgDatabase, table: str) -> set[str]:
    return {r[0] for r in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = ?", [table])}


def _chunks(db: SqliteDatabase, sql: str) -> Iterator[list[tuple[Any, ...]]]:
    cursor = db.execute(sql)
    while rows := cursor.fetchmany(CHUNK):
        yield [tuple(r) for r in rows]


def _count(db: SqliteDatabase | PgDatabase, table: str) -> int:
    row = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _sum(db: SqliteDatabase | PgDatabase, table: str, column: str) -> int:
    """Exact: the TEXT amounts summed as Python integers (no float, no 2^63 limit)."""
    total = 0
    for (value,) in db.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"):
        total += int(value)
    return total


def check_empty(target: PgDatabase) -> None:
    """`StoreRefused` naming what the target already holds."""
    held = {t: n for t, _ in TABLES if (n := _count(target, t))}
    if held:
        listed = ", ".join(f"{n} {t}" for t, n in held.items())
        raise StoreRefused(f"--to: the PostgreSQL database is not empty ({listed}); "
                           "migrate into a new, empty database")


def copy(source: SqliteDatabase, target: PgDatabase) -> Report:
    """Copy every table, verify counts and amount sums, commit; the report of what was
    copied. Raises `StoreRefused` for a non-empty target or a mismatch (nothing kept)."""
    report = Report()
    source.execute("BEGIN")  # one read snapshot for the whole copy
    try:
        with target.transaction():
            check_empty(target)
            for table, identity in TABLES:
                report.rows[table] = _copy_table(source, target, table, identity)
            for table, column in AMOUNTS:
                report.sums[f"{table}.{column}"] = _sum(source, table, column)
            _verify(source, target, report)
    finally:
        source.execute("ROLLBACK")
    target.execute("ANALYZE")  # statistics for the planner now, as after any bulk load
    return report


def _copy_table(
    source: SqliteDatabase, target: PgDatabase, table: str, identity: str | None
) -> int:
    columns = _columns(source, table)
    if identity == "rowid":  # SQLite's implicit rowid: PostgreSQL's explicit column
        columns = ["rowid", *columns]
    missing = set(columns) - _pg_columns(target, table)
    if missing:
        raise StoreRefused(f"--to: table {table} lacks columns {sorted(missing)}")
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    override = " OVERRIDING SYSTEM VALUE" if identity else ""
    insert = f"INSERT INTO {table} ({names}){override} VALUES ({marks})"
    copied = 0
    for rows in _chunks(source, f"SELECT {names} FROM {table}"):
        target.executemany(insert, rows)
        copied += len(rows)
    if identity and copied:
        target.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{identity}'), "
            f"(SELECT MAX({identity}) FROM {table}))"
        )
    return copied


def _verify(source: SqliteDatabase, target: PgDatabase, report: Report) -> None:
    for table, _ in TABLES:
        there = _count(target, table)
        if there != report.rows[table] or there != _count(source, table):
            raise StoreRefused(f"{table}: {report.rows[table]} rows read, {there} in "
                               "PostgreSQL: nothing was kept")
    for table, column in AMOUNTS:
        here, there = report.sums[f"{table}.{column}"], _sum(target, table, column)
        if here != there:
            raise StoreRefused(f"{table}.{column}: the amounts sum to {here} in SQLite and "
                               f"{there} in PostgreSQL: nothing was kept")
