"""SQLite through sqlite-utils: one connection owned by one writer thread.

Every call goes through `Store.run(fn, *args)`, which runs `fn(db, *args)` on that thread,
so the event loop never waits on disk and writes never interleave. Amounts are TEXT holding
base-unit integers (SQLite INTEGER stops at 2^63); times are INTEGER unix seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from sqlite_utils import Database

from watcher.errors import StoreError, StoreRefused
from watcher.storage.base import Db, is_postgres_url
from watcher.storage.schema import migrations

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
P = ParamSpec("P")
I = TypeVar("I")  # noqa: E741

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

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> sqlite3.Cursor:
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
        Nested calls are savepoints."""
        conn = self.conn
        if conn.in_transaction:
            with self.atomic():
                yield self
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def data_version(self) -> int:
        """`PRAGMA data_version`: changes when another connection commits."""
        return int(self.execute("PRAGMA data_version").fetchone()[0])


def transaction(db: Db) -> AbstractContextManager[Any]:
    """`db.transaction()`: a write transaction, nested calls savepoints."""
    return db.transaction()


def connect_database(database: str | Path, *, password: str | None = None) -> Db:
    """A migrated connection to a SQLite file or a `postgresql://` URL, for this thread."""
    if is_postgres_url(str(database)):
        from watcher.storage import postgres

        return postgres.connect(str(database), password=password)
    return connect(database)


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


class Store:
    """The database, the one thread that owns its writing connection, and a reading thread
    with a connection of its own: with WAL (and on PostgreSQL), reads (`read`) see the last
    commit and never wait for a write in progress (a large range commit). `database` is a
    SQLite file or a `postgresql://` URL. With `checkpoints` (the daemon, on SQLite), a
    `Checkpointer` keeps WAL checkpoints off the writer's commits."""

    def __init__(
        self, database: str | Path, *, checkpoints: bool = False, password: str | None = None
    ) -> None:
        self.database = str(database)
        self._password = password
        self.postgres = is_postgres_url(self.database)
        self.path = Path(database)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        self._db: Db | None = None
        self._rdb: Db | None = None
        self._checkpoints = checkpoints
        self.checkpointer: Checkpointer | None = None
        self.listener: Any = None  # postgres.Listener, after `on_change`

    async def open(self) -> Store:
        if self.postgres:
            from watcher.storage import postgres

            self._db = await self._submit(
                partial(postgres.connect, password=self._password), self.database
            )
            self._rdb = await self._submit(
                partial(postgres.connect, password=self._password, migrate=False),
                self.database, executor=self._reader,
            )
            return self
        sdb = await self._submit(connect, self.path)
        self._db = sdb
        if str(self.path) != ":memory:":
            self._rdb = await self._submit(_connect_reader, self.path, executor=self._reader)
            if self._checkpoints:
                self.checkpointer = Checkpointer(self.path)
                self.checkpointer.start()
                await self._submit(
                    lambda: sdb.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
                )
        return self

    async def _submit(
        self, fn: Callable[..., T], *args: Any, executor: ThreadPoolExecutor | None = None
    ) -> T:
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor or self._executor, partial(fn, *args))
        except sqlite3.Error as exc:
            raise store_error(exc) from exc
        except Exception as exc:
            if self.postgres:
                from watcher.storage import postgres

                if isinstance(exc, postgres.DatabaseError):
                    raise postgres.store_error(exc) from exc
            raise

    async def read(
        self, fn: Callable[Concatenate[Db, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(db, *args)`, which only reads, on the reading thread (on the writer's when
        the database is in memory)."""
        rdb = self._rdb
        if rdb is None:
            return await self.run(fn, *args, **kwargs)
        if self.postgres:
            return await self._submit(
                lambda: fn(self._connected(reader=True), *args, **kwargs), executor=self._reader
            )
        return await self._submit(lambda: fn(rdb, *args, **kwargs), executor=self._reader)

    async def run(
        self, fn: Callable[Concatenate[Db, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(db, *args)` on the writer thread."""
        if self._db is None:
            raise StoreError("the store is not open")
        if self.postgres:
            return await self._submit(lambda: fn(self._connected(), *args, **kwargs))
        db = self._db
        return await self._submit(lambda: fn(db, *args, **kwargs))

    def _connected(self, *, reader: bool = False) -> Db:
        """PostgreSQL, on the connection's own thread: the connection, opened again first
        if it broke (the server restarted, the network failed). Session state, such as a
        network's leadership lock, is not carried over: it is won again or not at all."""
        from watcher.storage import postgres

        db = self._rdb if reader else self._db
        assert isinstance(db, postgres.PgDatabase)
        if not db.broken:
            return db
        with contextlib.suppress(Exception):
            db.close()
        fresh = postgres.connect(self.database, password=self._password, migrate=False)
        log.warning("database: connected again to PostgreSQL (%s)",
                    "reader" if reader else "writer")
        if reader:
            self._rdb = fresh
        else:
            self._db = fresh
        return fresh

    def on_change(self, callback: Callable[[], None]) -> None:
        """PostgreSQL: call `callback` on this event loop after any instance's write
        commits (`postgres.Listener`). SQLite: nothing (this process is the only writer
        but for the CLI, which the pollers pick up)."""
        if not self.postgres:
            return
        import asyncio

        from watcher.storage import postgres

        loop = asyncio.get_running_loop()

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(callback)

        self.listener = postgres.Listener(self.database, self._password, notify)
        self.listener.start()

    async def close(self) -> None:
        if self.listener is not None:
            import asyncio

            listener, self.listener = self.listener, None
            await asyncio.get_running_loop().run_in_executor(None, listener.stop)
        if self.checkpointer is not None:
            import asyncio

            checkpointer, self.checkpointer = self.checkpointer, None
            await asyncio.get_running_loop().run_in_executor(None, checkpointer.stop)
        if self._rdb is not None:
            rdb, self._rdb = self._rdb, None
            await self._submit(rdb.close, executor=self._reader)
        if self._db is not None:
            db, self._db = self._db, None
            await self._submit(db.close)
        self._reader.shutdown(wait=True)
        self._executor.shutdown(wait=True)


def _connect_reader(path: Path) -> SqliteDatabase:
    """A read-only connection to a migrated database (for `Store.read`)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=ON")
    return SqliteDatabase(conn)


class GroupCommit(Generic[I, T]):
    """Group commit for small writes from concurrent requests (invoice creates).

    Items submitted while a batch is being written wait for the next batch, so a burst of
    N requests costs a few commits instead of N. `write(db, items)` writes one batch in one
    transaction and returns, per item, its result or the exception that item raised (its
    own savepoint rolled back); an exception out of `write` fails the whole batch. Each
    caller is answered only after the commit that holds its item.
    """

    def __init__(
        self, store: Store, write: Callable[[Db, list[I]], list[T | Exception]]
    ) -> None:
        self.store = store
        self.write = write
        self._pending: list[tuple[I, asyncio.Future[T]]] = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    async def submit(self, item: I) -> T:
        import asyncio

        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._writing:
            self._writing = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self.batches += 1
                try:
                    results = await self.store.run(self.write, [item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue  # the caller went away; its item is written all the same
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._writing = False
