"""SQLite through sqlite-utils: opening and migrating the file, `SqliteDatabase` (the `Db`
interface), the WAL `Checkpointer`. Amounts are TEXT holding base-unit integers (SQLite
INTEGER stops at 2^63); times are INTEGER unix seconds. `storage.store.Store` runs it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.utils import dedupe_keys

from watcher.errors import StoreError, StoreRefused
from watcher.storage.schema import migrations
from watcher.storage.waiting import WaitingRows

log = logging.getLogger(__name__)

#: WAL pages after which the writer checkpoints on its own commit: a safety net only when
#: a `Checkpointer` runs (SQLite's default, 1,000, applies otherwise)
WRITER_AUTOCHECKPOINT = 10_000


def connect(path: str | Path) -> SqliteDatabase:
    """Open (creating with mode 0600) and migrate the database. Call on the owning thread."""
    path = Path(path)
    if str(path) != ":memory:":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create the database {path}: {exc.strerror}") from None
        # SQLite alone says "unable to open database file": name the cause
        if not os.access(path, os.W_OK):
            raise StoreError(f"the database file is read-only: {path}")
        if not os.access(path.parent, os.W_OK):
            raise StoreError(
                f"the database directory is read-only (WAL files go there): {path.parent}"
            )
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db = SqliteDatabase(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA foreign_keys=ON")
    known = {m.name for m in migrations._migrations}
    unknown = [m.name for m in migrations.applied(db) if m.name not in known]
    if unknown:
        db.close()
        raise StoreRefused(
            f"database: {path} has migration {unknown[-1]}, newer than this "
            f"payment-watcher's last ({migrations._migrations[-1].name}): run a newer "
            "payment-watcher"
        )
    migrations.apply(db)
    return db


class SqliteDatabase(Database):
    """sqlite-utils' `Database` with the rest of the `base.Db` interface."""

    dialect = "sqlite"
    rows_see_earlier_rows = True

    #: rows waiting to go inside `pipeline()` (`insert`, `update`); None outside one
    _rows: WaitingRows | None = None

    def execute(self, sql: str, parameters: Any = None) -> sqlite3.Cursor:
        if self._rows:
            self._flush()
        return super().execute(sql, parameters)

    def query(self, sql: str, params: Any = None) -> Generator[dict[str, Any], None, None]:
        """Dict rows of a statement, executed now. sqlite-utils' own `query` (4.2) wraps
        every statement in a SAVEPOINT and a RELEASE, to refuse statements that return no
        rows: ~6 us more per read, measured; every caller here reads rows."""
        if self._rows:
            self._flush()
        cursor = self.conn.execute(sql, () if params is None else params)
        keys = dedupe_keys(d[0] for d in cursor.description)
        return (dict(zip(keys, row, strict=True)) for row in cursor)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> sqlite3.Cursor:
        if self._rows:
            self._flush()
        return self.conn.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    @contextmanager
    def transaction(self) -> Iterator[SqliteDatabase]:
        """A write transaction. The outermost one starts with `BEGIN IMMEDIATE`: it takes
        the write lock first, waiting up to `busy_timeout` for another writer (the CLI). A
        deferred `BEGIN` that reads and then writes fails at once with "database is locked"
        when another process wrote in between (WAL cannot upgrade a stale read snapshot).
        Nested calls are savepoints (rows waiting when one starts go first; those written
        inside it are dropped if it rolls back)."""
        conn = self.conn
        if conn.in_transaction:
            self._flush()
            try:
                with self.atomic():
                    yield self
                    self._flush()
            except BaseException:
                if self._rows is not None:
                    self._rows.drop()
                raise
            return
        self._flush()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
            self._flush()
        except BaseException:
            if self._rows is not None:
                self._rows.drop()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[SqliteDatabase]:
        """A deferred `BEGIN`: WAL keeps the state of the first read for every later one
        until `COMMIT`; it never waits for the writer, nor the writer for it."""
        conn = self.conn
        if conn.in_transaction:
            yield self
            return
        conn.execute("BEGIN")
        try:
            yield self
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def notify(self) -> None:
        pass

    def relaxed_commit(self) -> None:
        pass

    @contextmanager
    def pipeline(self) -> Iterator[SqliteDatabase]:
        """Rows written with `insert` and `update` inside wait and go together, one
        `executemany` per statement (one compiled statement for all of them, measured
        cheaper than a statement each), before anything else is executed."""
        if self._rows is not None:
            yield self
            self._flush()
            return
        self._rows = WaitingRows()
        try:
            yield self
            self._flush()
        finally:
            self._rows = None

    def later(self, cursor: Any, use: Callable[[Any], None]) -> None:
        use(cursor.fetchall())

    def insert(self, prefix: str, row: str, params: Sequence[Any]) -> None:
        self.update(prefix, row, params, "", None)

    def update(
        self, prefix: str, row: str, params: Sequence[Any], suffix: str, key: str | None
    ) -> None:
        if self._rows is None:
            super().execute(f"{prefix} {row} {suffix}", params)
            return
        self._rows.hold(prefix, row, params, suffix, key)

    def _flush(self) -> None:
        """Send the waiting rows: per statement, one `executemany` per run of rows with the
        same text, in the order they came."""
        if not self._rows:
            return
        for prefix, suffix, rows in self._rows.take():
            for text, run in groupby(rows, key=itemgetter(0)):
                self.conn.executemany(f"{prefix} {text} {suffix}", [params for _, params in run])

    def data_version(self) -> int:
        """`PRAGMA data_version`: changes when another connection commits."""
        return int(self.execute("PRAGMA data_version").fetchone()[0])


def store_error(exc: sqlite3.Error) -> StoreError:
    """A typed error naming the likely cause (locked, read-only, disk full)."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        hint = "the database is locked by another process"
    elif "readonly" in text or "read-only" in text:
        hint = "the database file is read-only"
    elif "full" in text:
        hint = "the disk is full"
    else:
        hint = "database error"
    return StoreError(f"{hint}: {text}")


class Checkpointer:
    """Copies the WAL into the database file from a thread and connection of its own
    (`PRAGMA wal_checkpoint(PASSIVE)` every `interval` seconds), so that the writer's
    commits do not: a checkpoint on commit (SQLite's default, every 1,000 pages) made a
    range commit of 500 payments take ~40 ms longer. PASSIVE never waits for the writer or
    a reader; the writer still checkpoints by itself past `WRITER_AUTOCHECKPOINT` pages
    should this thread fall behind or fail."""

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:  # the writer's own checkpoints still run
                    log.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()


def connect_reader(path: Path) -> SqliteDatabase:
    """A read-only connection to a migrated database (for `Store.read`)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=ON")
    return SqliteDatabase(conn)
