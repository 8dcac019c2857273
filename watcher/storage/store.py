"""The store: the database (a SQLite file or a PostgreSQL URL), the one thread that owns
its writing connection and a reading thread with a connection of its own.

Every write goes through `Store.run(fn, *args)`, which runs `fn(db, *args)` on the writer
thread, so the event loop never waits on the database and writes never interleave; reads
that can go elsewhere use `Store.read`. `GroupCommit` shares one commit among concurrent
small writes (invoice creates).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from watcher.errors import StoreError
from watcher.storage.base import Db, is_postgres_url
from watcher.storage.sqlite import (
    WRITER_AUTOCHECKPOINT,
    Checkpointer,
    connect,
    connect_reader,
    store_error,
)

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
P = ParamSpec("P")
I = TypeVar("I")  # noqa: E741

log = logging.getLogger(__name__)


def transaction(db: Db) -> AbstractContextManager[Any]:
    """`db.transaction()`: a write transaction, nested calls savepoints."""
    return db.transaction()


def connect_database(database: str | Path, *, password: str | None = None) -> Db:
    """A migrated connection to a SQLite file or a `postgresql://` URL, for this thread."""
    if is_postgres_url(str(database)):
        from watcher.storage import postgres

        return postgres.connect(str(database), password=password)
    return connect(database)


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
            self._rdb = await self._submit(connect_reader, self.path, executor=self._reader)
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
        the database is in memory), inside one snapshot (`Db.snapshot`): it sees the last
        commit, whole, and never waits for a write in progress."""
        rdb = self._rdb
        if rdb is None:
            return await self.run(fn, *args, **kwargs)

        def call() -> T:
            db = self._connected(reader=True) if self.postgres else rdb
            with db.snapshot():
                return fn(db, *args, **kwargs)

        return await self._submit(call, executor=self._reader)

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

    def _writer_pid(self) -> int | None:
        """The backend process of the writing connection (PostgreSQL), read from the
        listener's thread: an int, read whole."""
        db = self._db
        return getattr(db, "backend_pid", None)

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

        self.listener = postgres.Listener(self.database, self._password, notify,
                                          own=self._writer_pid)
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
