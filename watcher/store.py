"""SQLite storage through sqlite-utils: one connection owned by one writer thread.

Every call goes through `Store.run(fn, *args)`, which runs `fn(db, *args)` on that thread,
so the event loop never waits on disk and writes never interleave. Amounts are TEXT holding
base-unit integers (SQLite INTEGER stops at 2^63); times are INTEGER unix seconds.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from watcher.errors import StoreError
from watcher.models import (
    OPEN_STATUSES,
    Invoice,
    Leg,
    Method,
    Status,
    Transfer,
    transfer_id,
)

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
P = ParamSpec("P")
I = TypeVar("I")  # noqa: E741

migrations = Migrations("payment-watcher")
log = logging.getLogger(__name__)

#: WAL pages after which the writer checkpoints on its own commit: a safety net only when
#: a `Checkpointer` runs (SQLite's default, 1,000, applies otherwise)
WRITER_AUTOCHECKPOINT = 10_000


@migrations(name="0001_initial")
def _m0001(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE invoices (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            parent_id TEXT,
            external_id TEXT,
            fingerprint TEXT,
            status TEXT NOT NULL,
            network TEXT NOT NULL,
            chain_id INTEGER NOT NULL,
            asset TEXT NOT NULL,
            token_address TEXT,
            decimals INTEGER NOT NULL,
            to_addr TEXT NOT NULL,
            to_lower TEXT NOT NULL,
            shared INTEGER NOT NULL,
            amount TEXT NOT NULL,
            requested_amount TEXT NOT NULL,
            price TEXT,
            currency TEXT,
            email TEXT,
            payload TEXT,
            callback_url TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            expire_at INTEGER NOT NULL,
            closed_at INTEGER,
            refund_tx TEXT
        );
        CREATE UNIQUE INDEX invoices_external_id ON invoices(external_id)
            WHERE external_id IS NOT NULL;
        CREATE INDEX invoices_status ON invoices(network, status, expire_at);
        CREATE INDEX invoices_address ON invoices(network, asset, to_lower, status);
        CREATE INDEX invoices_list ON invoices(status, seq);

        CREATE TABLE transfers (
            network TEXT NOT NULL,
            tx_hash TEXT NOT NULL,
            log_index INTEGER NOT NULL,  -- -1 for a native transfer
            asset TEXT NOT NULL,
            from_addr TEXT NOT NULL,
            to_addr TEXT NOT NULL,
            amount TEXT NOT NULL,
            block INTEGER NOT NULL,
            block_hash TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            invoice_id TEXT,
            kind TEXT NOT NULL,  -- payment | late | unmatched
            seen_at INTEGER NOT NULL,
            PRIMARY KEY (network, tx_hash, log_index)
        );
        CREATE INDEX transfers_invoice ON transfers(invoice_id);
        CREATE INDEX transfers_block ON transfers(network, block);
        CREATE INDEX transfers_kind ON transfers(kind, network);
        CREATE VIEW payments AS SELECT * FROM transfers WHERE kind = 'payment';

        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            invoice_id TEXT NOT NULL,
            event TEXT NOT NULL,
            status TEXT,
            created_at INTEGER NOT NULL,
            body BLOB NOT NULL
        );
        CREATE INDEX events_invoice ON events(invoice_id, seq);

        CREATE TABLE deliveries (
            event_id TEXT PRIMARY KEY,
            event_seq INTEGER NOT NULL,
            invoice_id TEXT NOT NULL,
            event TEXT NOT NULL,
            url TEXT NOT NULL,
            state TEXT NOT NULL,  -- pending | delivered | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            created_at INTEGER NOT NULL,
            delivered_at INTEGER,
            last_error TEXT
        );
        CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
        CREATE INDEX deliveries_invoice ON deliveries(invoice_id, event_seq);

        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            at REAL NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms INTEGER NOT NULL
        );
        CREATE INDEX attempts_event ON attempts(event_id, id);

        CREATE TABLE cursors (
            network TEXT PRIMARY KEY,
            chain_id INTEGER NOT NULL,
            scanned_block INTEGER,
            scanned_hash TEXT,
            scanned_time INTEGER,
            head_block INTEGER,
            updated_at INTEGER NOT NULL
        );

        CREATE TABLE blocks (
            network TEXT NOT NULL,
            number INTEGER NOT NULL,
            hash TEXT NOT NULL,
            parent_hash TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            PRIMARY KEY (network, number)
        );
        """
    )


@migrations(name="0002_delivery_retry_window")
def _m0002(db: Database) -> None:
    # A delivery's retry window: it starts at created_at and again at each redeliver, so a
    # redelivered event gets the whole backoff schedule and `callbacks.max_age` afresh.
    # window_start NULL means created_at; window_attempts picks the backoff step.
    db.executescript(
        """
        ALTER TABLE deliveries ADD COLUMN window_start REAL;
        ALTER TABLE deliveries ADD COLUMN window_attempts INTEGER NOT NULL DEFAULT 0;
        """
    )


@migrations(name="0003_invoices_updated_at")
def _m0003(db: Database) -> None:
    # The daemon picks up invoices that another process (the CLI) changed by updated_at.
    db.execute("CREATE INDEX invoices_updated ON invoices(updated_at)")


@migrations(name="0004_late_payment_announced")
def _m0004(db: Database) -> None:
    # A late payment is announced (its callback written) once it has the network's
    # confirmations, so a shallow reorg neither re-announces nor silently retracts it.
    # Rows from before this step were announced when recorded.
    db.executescript(
        """
        ALTER TABLE transfers ADD COLUMN announced INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX transfers_unannounced ON transfers(network, block) WHERE announced = 0;
        """
    )


@migrations(name="0005_invoice_opens_at")
def _m0005(db: Database) -> None:
    # Chain time an invoice's collecting window opens (see models.window_route); NULL for
    # invoices created before: their window opens at the beginning, as it did.
    db.execute("ALTER TABLE invoices ADD COLUMN opens_at INTEGER")


@migrations(name="0006_invoice_client_redirect")
def _m0006(db: Database) -> None:
    # The merchant's customer id (filter, channels) and the checkout's redirect target.
    db.executescript(
        """
        ALTER TABLE invoices ADD COLUMN client_id TEXT;
        ALTER TABLE invoices ADD COLUMN redirect_url TEXT;
        CREATE INDEX invoices_client ON invoices(client_id, seq) WHERE client_id IS NOT NULL;
        """
    )


@migrations(name="0007_invoice_rate")
def _m0007(db: Database) -> None:
    # Invoices priced in a currency keep the rate they were converted with.
    db.executescript(
        """
        ALTER TABLE invoices ADD COLUMN rate TEXT;
        ALTER TABLE invoices ADD COLUMN rate_source TEXT;
        ALTER TABLE invoices ADD COLUMN rate_at INTEGER;
        """
    )


@migrations(name="0008_derived_addresses")
def _m0008(db: Database) -> None:
    # Addresses derived from the merchant's xpub, one row per index handed out (in the
    # transaction of the invoice that took it, so an index is never handed out twice and a
    # rolled-back create leaves no gap). `key_id` tells which configured key derived it.
    for statement in (
        """
        CREATE TABLE derived_addresses (
            idx INTEGER PRIMARY KEY,
            address TEXT NOT NULL,
            key_id TEXT NOT NULL,
            created_at INTEGER NOT NULL
        )
        """,
        "ALTER TABLE invoices ADD COLUMN derivation_index INTEGER",
        "CREATE INDEX invoices_derivation ON invoices(derivation_index) "
        "WHERE derivation_index IS NOT NULL",
    ):
        db.execute(statement)


@migrations(name="0009_transfer_ids_traces")
def _m0009(db: Database) -> None:
    # Every transfer gets a stable `id` (API, assign); internal native transfers (a
    # contract's call, from traces) are keyed by their `trace` address as well, so they can
    # never collide with the transaction's own value or a log; `assigned` marks a transfer
    # made a payment by hand; an event may say what caused it (`cause`: "assigned").
    # One statement at a time: `executescript` would commit the migration's transaction.
    db.execute(
        """
        CREATE TABLE transfers_new (
            id TEXT NOT NULL UNIQUE,
            network TEXT NOT NULL,
            tx_hash TEXT NOT NULL,
            log_index INTEGER NOT NULL,  -- -1 for a native transfer
            trace TEXT NOT NULL DEFAULT '',  -- traceAddress of an internal one, e.g. "0.2"
            asset TEXT NOT NULL,
            from_addr TEXT NOT NULL,
            to_addr TEXT NOT NULL,
            amount TEXT NOT NULL,
            block INTEGER NOT NULL,
            block_hash TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            invoice_id TEXT,
            kind TEXT NOT NULL,  -- payment | late | unmatched
            seen_at INTEGER NOT NULL,
            announced INTEGER NOT NULL DEFAULT 1,
            assigned INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (network, tx_hash, log_index, trace)
        )
        """
    )
    rows = db.execute(
        "SELECT network, tx_hash, log_index, asset, from_addr, to_addr, amount, block, "
        "block_hash, timestamp, invoice_id, kind, seen_at, announced FROM transfers"
    ).fetchall()
    db.conn.executemany(
        "INSERT INTO transfers_new (id, network, tx_hash, log_index, asset, from_addr, "
        "to_addr, amount, block, block_hash, timestamp, invoice_id, kind, seen_at, announced) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(transfer_id(r[0], r[1], r[2], ""), *r) for r in rows],
    )
    for statement in (
        "DROP VIEW payments",
        "DROP TABLE transfers",
        "ALTER TABLE transfers_new RENAME TO transfers",
        "CREATE INDEX transfers_invoice ON transfers(invoice_id)",
        "CREATE INDEX transfers_block ON transfers(network, block)",
        "CREATE INDEX transfers_kind ON transfers(kind, network)",
        "CREATE INDEX transfers_unannounced ON transfers(network, block) WHERE announced = 0",
        "CREATE VIEW payments AS SELECT * FROM transfers WHERE kind = 'payment'",
        "ALTER TABLE events ADD COLUMN cause TEXT",
    ):
        db.execute(statement)


@migrations(name="0010_finality_rescans")
def _m0010(db: Database) -> None:
    # The node's block of the network's finality tag and its `finalized` block, as read with
    # the newest head (NULL: not read); and rescans of past ranges, resumable: `next_block`
    # is the first block not rescanned yet.
    for statement in (
        "ALTER TABLE cursors ADD COLUMN final_block INTEGER",
        "ALTER TABLE cursors ADD COLUMN finalized_block INTEGER",
        """
        CREATE TABLE rescans (
            id INTEGER PRIMARY KEY,
            network TEXT NOT NULL,
            from_block INTEGER NOT NULL,
            to_block INTEGER NOT NULL,
            next_block INTEGER NOT NULL,
            state TEXT NOT NULL,  -- running | stopped | done | failed
            added INTEGER NOT NULL DEFAULT 0,  -- transfers it recorded
            error TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )
        """,
        "CREATE INDEX rescans_network ON rescans(network, state)",
    ):
        db.execute(statement)


def reset_delivery_head(db: Database, invoice_id: str) -> None:
    """Mark the earliest pending delivery of an invoice as its head (and only that one)."""
    db.execute(
        "UPDATE deliveries SET head = COALESCE(state = 'pending' AND event_seq = (SELECT "
        "MIN(event_seq) FROM deliveries WHERE invoice_id = ? AND state = 'pending'), 0) "
        "WHERE invoice_id = ? "
        "AND (state = 'pending' OR head = 1)",
        [invoice_id, invoice_id],
    )


@migrations(name="0011_dashboard_sessions")
def _m0011(db: Database) -> None:
    # Sessions of the merchant dashboard: the cookie's random id is stored only as its
    # SHA-256, the API key only as a fingerprint (a session ends when its key is removed
    # from the config); `csrf` is the session's form token; `flash` one message (JSON) for
    # the next page. Times are the host's clock (sessions are not chain decisions).
    for statement in (
        """
        CREATE TABLE dashboard_sessions (
            id_hash TEXT PRIMARY KEY,
            csrf TEXT NOT NULL,
            key_fingerprint TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            flash TEXT
        )
        """,
        "CREATE INDEX dashboard_sessions_seen ON dashboard_sessions(last_seen)",
    ):
        db.execute(statement)


@migrations(name="0012_delivery_heads")
def _m0012(db: Database) -> None:
    # `head` marks the one pending delivery of each invoice that may be sent (its earliest
    # pending event); the sender's due query reads only heads through a partial index, so
    # it costs O(due), not O(pending), while a receiver is down and later events queue up.
    for statement in (
        "ALTER TABLE deliveries ADD COLUMN head INTEGER NOT NULL DEFAULT 0",
        "UPDATE deliveries SET head = 1 WHERE state = 'pending' AND NOT EXISTS (SELECT 1 "
        "FROM deliveries p WHERE p.invoice_id = deliveries.invoice_id "
        "AND p.state = 'pending' AND p.event_seq < deliveries.event_seq)",
        "CREATE INDEX deliveries_heads ON deliveries(next_attempt_at) "
        "WHERE state = 'pending' AND head = 1",
    ):
        db.execute(statement)


#: The invoice columns a method invoice leaves empty until the customer chooses a method.
_METHOD_COLUMNS = ("network TEXT", "chain_id INTEGER", "asset TEXT", "decimals INTEGER",
                   "to_addr TEXT", "to_lower TEXT", "amount TEXT", "requested_amount TEXT")


@migrations(name="0013_payment_methods")
def _m0013(db: Database) -> None:
    # Method invoices (the customer chooses how to pay): the method's columns may be NULL
    # until chosen, so the table is rebuilt from its own definition without those NOT NULLs
    # (SQLite cannot drop a constraint); `methods` (JSON) lists what may be chosen, and
    # `invoice_legs` keeps each method the customer switched away from, which still takes
    # late payments.
    sql = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'invoices'"
    ).fetchone()[0]
    indexes = [r[0] for r in db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'invoices' "
        "AND sql IS NOT NULL").fetchall()]
    for column in _METHOD_COLUMNS:
        sql, n = re.subn(rf"\b{column} NOT NULL", column, sql)
        if n != 1:
            raise RuntimeError(f"migration 0013: invoices.{column} is not as expected")
    sql = sql.replace("CREATE TABLE invoices", "CREATE TABLE invoices_new", 1)
    db.execute(sql)
    for statement in (
        "INSERT INTO invoices_new SELECT * FROM invoices",
        "DROP TABLE invoices",
        "ALTER TABLE invoices_new RENAME TO invoices",
        *indexes,
        "ALTER TABLE invoices ADD COLUMN title TEXT",
        "ALTER TABLE invoices ADD COLUMN description TEXT",
        "ALTER TABLE invoices ADD COLUMN methods TEXT",
        "CREATE INDEX invoices_unchosen ON invoices(expire_at) "
        "WHERE network IS NULL AND status = 'PENDING'",
        """
        CREATE TABLE invoice_legs (
            invoice_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            network TEXT NOT NULL,
            asset TEXT NOT NULL,
            decimals INTEGER NOT NULL,
            to_addr TEXT NOT NULL,
            to_lower TEXT NOT NULL,
            shared INTEGER NOT NULL,
            amount TEXT NOT NULL,
            derivation_index INTEGER,
            opens_at INTEGER,
            closed_at INTEGER NOT NULL,
            PRIMARY KEY (invoice_id, n)
        )
        """,
        "CREATE INDEX invoice_legs_address ON invoice_legs(network, asset, to_lower)",
        "CREATE INDEX invoice_legs_closed ON invoice_legs(network, closed_at)",
    ):
        db.execute(statement)


@migrations(name="0014_retention")
def _m0014(db: Database) -> None:
    # Retention (watcher.retention): an event whose body was pruned keeps its row with a
    # stub body and `pruned_at` (host time); the indexes let each batch find the oldest
    # candidates of each kind without scanning the table.
    for statement in (
        "ALTER TABLE events ADD COLUMN pruned_at INTEGER",
        "CREATE INDEX events_unpruned ON events(created_at) WHERE pruned_at IS NULL",
        "CREATE INDEX attempts_at ON attempts(at)",
        "CREATE INDEX transfers_unmatched_seen ON transfers(seen_at) WHERE kind = 'unmatched'",
    ):
        db.execute(statement)


def rescan_json(row: dict[str, Any]) -> dict[str, Any]:
    from watcher.timeutil import iso

    return {
        "id": row["id"], "network": row["network"], "from": row["from_block"],
        "to": row["to_block"], "nextBlock": row["next_block"], "state": row["state"],
        "added": row["added"], "error": row["error"], "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
    }


def latest_rescans(db: Database) -> dict[str, dict[str, Any]]:
    """The newest rescan of each network, as JSON."""
    rows = db.query(
        "SELECT * FROM rescans WHERE id IN (SELECT MAX(id) FROM rescans GROUP BY network)"
    )
    return {r["network"]: rescan_json(r) for r in rows}


def next_derivation_index(db: Database, start: int) -> int:
    """The next index to hand out: after the highest taken, and not below `start`."""
    top = db.execute("SELECT MAX(idx) FROM derived_addresses").fetchone()[0]
    return start if top is None else max(start, int(top) + 1)


def insert_derived_address(
    db: Database, index: int, address: str, key_id: str, now: int
) -> None:
    db.execute(
        "INSERT INTO derived_addresses (idx, address, key_id, created_at) VALUES (?, ?, ?, ?)",
        [index, address, key_id, now],
    )


def newest_derived_address(db: Database) -> dict[str, Any] | None:
    """The derived address with the highest index, or None."""
    rows = list(db.query("SELECT * FROM derived_addresses ORDER BY idx DESC LIMIT 1"))
    return rows[0] if rows else None


def derived_addresses(
    db: Database, after: int | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Derived addresses in index order (from after `after`), each with its invoices'
    `(id, network, asset, status)` under `invoices`."""
    sql = "SELECT idx, address, key_id, created_at FROM derived_addresses"
    args: list[Any] = []
    if after is not None:
        sql += " WHERE idx > ?"
        args.append(after)
    sql += " ORDER BY idx"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    rows = [dict(r) for r in db.query(sql, args)]
    if rows:
        lo, hi = rows[0]["idx"], rows[-1]["idx"]
        by_index: dict[int, list[dict[str, Any]]] = {}
        for r in db.query(
            "SELECT id, network, asset, status, derivation_index FROM invoices "
            "WHERE derivation_index BETWEEN ? AND ? ORDER BY seq",
            [lo, hi],
        ):
            by_index.setdefault(r["derivation_index"], []).append(
                {k: r[k] for k in ("id", "network", "asset", "status")}
            )
        for row in rows:
            row["invoices"] = by_index.get(row["idx"], [])
            if not row["invoices"]:
                # an index passed over because its address was already collecting (a
                # hand-given address): show the invoices there (rare, so unindexed)
                row["invoices"] = [
                    dict(r) for r in db.query(
                        "SELECT id, network, asset, status FROM invoices WHERE to_lower = ? "
                        "ORDER BY seq", [row["address"].lower()],
                    )
                ]
    return rows


def connect(path: str | Path) -> Database:
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
    db = Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA foreign_keys=ON")
    migrations.apply(db)
    return db


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """A write transaction. The outermost one starts with `BEGIN IMMEDIATE`: it takes the
    write lock first, waiting up to `busy_timeout` for another writer (the CLI). A deferred
    `BEGIN` that reads and then writes fails at once with "database is locked" when another
    process wrote in between (WAL cannot upgrade a stale read snapshot). Nested calls are
    savepoints."""
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


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
    with a read-only connection of its own: with WAL, reads (`read`) see the last commit
    and never wait for a write in progress (a large range commit). With `checkpoints`
    (the daemon), a `Checkpointer` keeps WAL checkpoints off the writer's commits."""

    def __init__(self, path: str | Path, *, checkpoints: bool = False) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        self._db: Database | None = None
        self._rdb: Database | None = None
        self._checkpoints = checkpoints
        self.checkpointer: Checkpointer | None = None

    async def open(self) -> Store:
        self._db = await self._submit(connect, self.path)
        if str(self.path) != ":memory:":
            self._rdb = await self._submit(_connect_reader, self.path, executor=self._reader)
            if self._checkpoints:
                self.checkpointer = Checkpointer(self.path)
                self.checkpointer.start()
                db = self._db
                await self._submit(
                    lambda: db.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
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

    async def read(
        self, fn: Callable[Concatenate[Database, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(db, *args)`, which only reads, on the reading thread (on the writer's when
        the database is in memory)."""
        rdb = self._rdb
        if rdb is None:
            return await self.run(fn, *args, **kwargs)
        return await self._submit(lambda: fn(rdb, *args, **kwargs), executor=self._reader)

    async def run(
        self, fn: Callable[Concatenate[Database, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(db, *args)` on the writer thread."""
        if self._db is None:
            raise StoreError("the store is not open")
        db = self._db
        return await self._submit(lambda: fn(db, *args, **kwargs))

    async def close(self) -> None:
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


def _connect_reader(path: Path) -> Database:
    """A read-only connection to a migrated database (for `Store.read`)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=ON")
    return Database(conn)


class GroupCommit(Generic[I, T]):
    """Group commit for small writes from concurrent requests (invoice creates).

    Items submitted while a batch is being written wait for the next batch, so a burst of
    N requests costs a few commits instead of N. `write(db, items)` writes one batch in one
    transaction and returns, per item, its result or the exception that item raised (its
    own savepoint rolled back); an exception out of `write` fails the whole batch. Each
    caller is answered only after the commit that holds its item.
    """

    def __init__(
        self, store: Store, write: Callable[[Database, list[I]], list[T | Exception]]
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


# ---------------------------------------------------------------- rows <-> models


def transfer_from_row(row: dict[str, Any]) -> Transfer:
    li = row["log_index"]
    return Transfer(
        network=row["network"],
        asset=row["asset"],
        tx_hash=row["tx_hash"],
        log_index=None if li < 0 else li,
        from_addr=row["from_addr"],
        to_addr=row["to_addr"],
        amount=int(row["amount"]),
        block=row["block"],
        block_hash=row["block_hash"],
        timestamp=row["timestamp"],
        invoice_id=row["invoice_id"],
        kind=row["kind"],
        trace=row.get("trace") or None,
        assigned=bool(row.get("assigned") or 0),
    )


def load_transfers_by_id(db: Database, ids: Iterable[str]) -> list[Transfer]:
    """The stored transfers with these ids (those that exist)."""
    wanted = list(ids)
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    rows = db.query(f"SELECT * FROM transfers WHERE id IN ({marks})", wanted)
    return [transfer_from_row(r) for r in rows]


def assign_transfer(db: Database, transfer_id: str, invoice_id: str) -> None:
    """Make a stored transfer a payment of `invoice_id` by hand: kind payment, `assigned`,
    and `announced`, so no late-payment callback is ever written for it."""
    db.execute(
        "UPDATE transfers SET kind = 'payment', invoice_id = ?, assigned = 1, announced = 1 "
        "WHERE id = ?",
        [invoice_id, transfer_id],
    )


def transfer_row(t: Transfer, seen_at: int) -> dict[str, Any]:
    return {
        "network": t.network,
        "tx_hash": t.tx_hash,
        "log_index": -1 if t.log_index is None else t.log_index,
        "trace": t.trace or "",
        "id": t.id,
        "assigned": int(t.assigned),
        "asset": t.asset,
        "from_addr": t.from_addr,
        "to_addr": t.to_addr,
        "amount": str(t.amount),
        "block": t.block,
        "block_hash": t.block_hash,
        "timestamp": t.timestamp,
        "invoice_id": t.invoice_id,
        "kind": t.kind,
        "seen_at": seen_at,
        "announced": 0 if t.kind == "late" else 1,
    }


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)


def _methods(text: str | None) -> list[Method] | None:
    if text is None:
        return None
    return [Method(m["network"], m["asset"]) for m in orjson.loads(text)]


def invoice_from_row(
    row: dict[str, Any], transfers: Iterable[Transfer] = (), legs: Iterable[Leg] = ()
) -> Invoice:
    inv = Invoice(
        id=row["id"],
        seq=row["seq"],
        status=Status(row["status"]),
        network=row["network"],
        chain_id=row["chain_id"],
        asset=row["asset"],
        token_address=row["token_address"],
        decimals=row["decimals"],
        to_addr=row["to_addr"],
        shared=bool(row["shared"]),
        amount=_int_or_none(row["amount"]),
        requested_amount=_int_or_none(row["requested_amount"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expire_at=row["expire_at"],
        parent_id=row["parent_id"],
        external_id=row["external_id"],
        price=row["price"],
        currency=row["currency"],
        email=row["email"],
        payload=orjson.loads(row["payload"]) if row["payload"] is not None else None,
        callback_url=row["callback_url"],
        client_id=row["client_id"],
        redirect_url=row["redirect_url"],
        rate=row["rate"],
        rate_source=row["rate_source"],
        rate_at=row["rate_at"],
        derivation_index=row["derivation_index"],
        closed_at=row["closed_at"],
        opens_at=row["opens_at"],
        refund_tx=row["refund_tx"],
        fingerprint=row["fingerprint"],
        title=row["title"],
        description=row["description"],
        methods=_methods(row["methods"]),
        legs=list(legs),
    )
    for t in transfers:
        (inv.payments if t.kind == "payment" else inv.late_payments).append(t)
    return inv


def invoice_row(inv: Invoice) -> dict[str, Any]:
    return {
        "id": inv.id,
        "parent_id": inv.parent_id,
        "external_id": inv.external_id,
        "fingerprint": inv.fingerprint,
        "status": inv.status.value,
        "network": inv.network,
        "chain_id": inv.chain_id,
        "asset": inv.asset,
        "token_address": inv.token_address,
        "decimals": inv.decimals,
        "to_addr": inv.to_addr,
        "to_lower": inv.to_addr.lower() if inv.to_addr is not None else None,
        "shared": int(inv.shared),
        "amount": str(inv.amount) if inv.amount is not None else None,
        "requested_amount": (
            str(inv.requested_amount) if inv.requested_amount is not None else None
        ),
        "price": inv.price,
        "currency": inv.currency,
        "email": inv.email,
        "payload": orjson.dumps(inv.payload).decode() if inv.payload is not None else None,
        "callback_url": inv.callback_url,
        "client_id": inv.client_id,
        "redirect_url": inv.redirect_url,
        "rate": inv.rate,
        "rate_source": inv.rate_source,
        "rate_at": inv.rate_at,
        "derivation_index": inv.derivation_index,
        "created_at": inv.created_at,
        "updated_at": inv.updated_at,
        "expire_at": inv.expire_at,
        "closed_at": inv.closed_at,
        "opens_at": inv.opens_at,
        "refund_tx": inv.refund_tx,
        "title": inv.title,
        "description": inv.description,
        "methods": (
            orjson.dumps([{"network": m.network, "asset": m.asset} for m in inv.methods]).decode()
            if inv.methods is not None else None
        ),
    }


_TRANSFER_ORDER = "ORDER BY block, log_index"


def load_invoices(db: Database, where: str, params: Iterable[Any] = ()) -> list[Invoice]:
    """Invoices matching a WHERE clause, with their payments and late payments."""
    rows = list(db.query(f"SELECT * FROM invoices WHERE {where}", list(params)))
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    by_invoice: dict[str, list[Transfer]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for t in db.query(
            f"SELECT * FROM transfers WHERE invoice_id IN ({marks}) "
            f"AND kind IN ('payment', 'late') {_TRANSFER_ORDER}",
            chunk,
        ):
            by_invoice[t["invoice_id"]].append(transfer_from_row(t))
    return _with_legs(db, rows, by_invoice)


def load_legs(db: Database, invoice_ids: list[str]) -> dict[str, list[Leg]]:
    """The methods each invoice was switched away from, oldest first."""
    found: dict[str, list[Leg]] = {}
    for start in range(0, len(invoice_ids), 500):
        chunk = invoice_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for r in db.query(
            f"SELECT * FROM invoice_legs WHERE invoice_id IN ({marks}) ORDER BY invoice_id, n",
            chunk,
        ):
            found.setdefault(r["invoice_id"], []).append(Leg(
                n=r["n"], network=r["network"], asset=r["asset"], decimals=r["decimals"],
                to_addr=r["to_addr"], shared=bool(r["shared"]), amount=int(r["amount"]),
                derivation_index=r["derivation_index"], opens_at=r["opens_at"],
                closed_at=r["closed_at"],
            ))
    return found


def insert_leg(db: Database, invoice_id: str, leg: Leg) -> None:
    db.execute(
        "INSERT INTO invoice_legs (invoice_id, n, network, asset, decimals, to_addr, to_lower, "
        "shared, amount, derivation_index, opens_at, closed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [invoice_id, leg.n, leg.network, leg.asset, leg.decimals, leg.to_addr,
         leg.to_addr.lower(), int(leg.shared), str(leg.amount), leg.derivation_index,
         leg.opens_at, leg.closed_at],
    )


def load_invoice(db: Database, invoice_id: str) -> Invoice | None:
    found = load_invoices(db, "id = ?", [invoice_id])
    return found[0] if found else None


def insert_invoice(db: Database, inv: Invoice) -> Invoice:
    row = invoice_row(inv)
    cur = db.execute(
        f"INSERT INTO invoices ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
        list(row.values()),
    )
    inv.seq = int(cur.lastrowid or 0)
    return inv


def update_invoice_method(db: Database, inv: Invoice) -> None:
    """Write a chosen method's fields (and everything `update_invoice` writes)."""
    row = invoice_row(inv)
    del row["id"]
    sets = ", ".join(f"{column} = ?" for column in row)  # fixed column names
    db.execute(f"UPDATE invoices SET {sets} WHERE id = ?", [*row.values(), inv.id])


def update_invoice(db: Database, inv: Invoice) -> None:
    db.execute(
        "UPDATE invoices SET status = ?, updated_at = ?, closed_at = ?, refund_tx = ? "
        "WHERE id = ?",
        [inv.status.value, inv.updated_at, inv.closed_at, inv.refund_tx, inv.id],
    )


def watched_invoices(db: Database, network: str, since: int) -> list[Invoice]:
    """Open invoices of a network, and those that stopped collecting at or after `since`
    (still within their late-payment window). Payments are not loaded."""
    return list(iter_watched_invoices(db, network, since))


#: Rows read at a time when the watch index is filled (see `iter_watched_invoices`).
_INDEX_CHUNK = 2000


def iter_watched_invoices(db: Database, network: str, since: int) -> Iterator[Invoice]:
    """`watched_invoices`, a chunk of rows at a time: filling a watch index of 100,000
    invoices never holds them all as objects at once (the allocator would keep that peak
    for the life of the process). Must be consumed on the connection's thread."""
    statuses = ",".join(f"'{s.value}'" for s in OPEN_STATUSES)
    cursor = db.execute(
        f"SELECT * FROM invoices WHERE network = ? AND (status IN ({statuses}) "
        "OR MIN(COALESCE(closed_at, expire_at), expire_at) >= ?) UNION "
        "SELECT * FROM invoices WHERE id IN (SELECT invoice_id FROM invoice_legs "
        "WHERE network = ? AND closed_at >= ?)",
        [network, since, network, since],
    )
    names = [d[0] for d in cursor.description]
    while chunk := cursor.fetchmany(_INDEX_CHUNK):
        yield from _with_legs(db, [dict(zip(names, r, strict=True)) for r in chunk])


def _with_legs(
    db: Database, rows: list[dict[str, Any]],
    transfers: dict[str, list[Transfer]] | None = None,
) -> list[Invoice]:
    """Invoices from rows, with the methods switched away from, and with their payments
    and late payments when `transfers` (by invoice id) is given."""
    switched = [r["id"] for r in rows if r["methods"] is not None]
    legs = load_legs(db, switched) if switched else {}
    found = transfers or {}
    return [invoice_from_row(r, found.get(r["id"], ()), legs.get(r["id"], ())) for r in rows]


def index_invoices(db: Database, network: str, late_window: int) -> list[Invoice]:
    """`iter_index_invoices` as a list (tests, tools; the daemon streams)."""
    return list(iter_index_invoices(db, network, late_window))


def iter_index_invoices(db: Database, network: str, late_window: int) -> Iterator[Invoice]:
    """The invoices a network's watch index starts with: every open one, and every one
    that stopped collecting late enough that a block the follower has not yet scanned (or
    that a reorg may still replace) can hold a late payment for it. Decided by the
    scanned blocks' times, not the host's clock: after an outage, nothing is dropped."""
    row = db.execute(
        "SELECT MIN(timestamp) FROM blocks WHERE network = ?", [network]
    ).fetchone()
    oldest = row[0] if row and row[0] is not None else None
    cursor = db.execute(
        "SELECT scanned_time FROM cursors WHERE network = ?", [network]
    ).fetchone()
    scanned = cursor[0] if cursor and cursor[0] is not None else None
    times = [t for t in (oldest, scanned) if t is not None]
    since = min(times) - late_window if times else 0
    return iter_watched_invoices(db, network, since)


def invoices_updated_since(db: Database, since: int, network: str) -> list[Invoice]:
    """Invoices of a network changed at or after `since`, and those that left it for
    another method since then (payments not loaded)."""
    return _with_legs(db, list(db.query(
        # by the time index: the planner would take invoices_status (network) and walk
        # every invoice of the network (50 ms at 100,000) on each new head
        "SELECT * FROM invoices INDEXED BY invoices_updated "
        "WHERE updated_at >= ? AND network = ? UNION "
        "SELECT * FROM invoices WHERE id IN (SELECT invoice_id FROM invoice_legs "
        "WHERE network = ? AND closed_at >= ?)", [since, network, network, since])))


def invoices_changed_elsewhere(
    db: Database, since: int, network: str, version: int | None
) -> tuple[int, list[Invoice] | None, list[str]]:
    """What the per-head refresh needs: (`PRAGMA data_version` now, the invoices, their
    ids). When another connection (the CLI) committed since `version`, the invoices of
    `invoices_updated_since` (ids empty). Otherwise only the daemon's own writes happened,
    and they reach its index with their outcomes: just the ids (None for the invoices), so
    the caller loads those its index does not hold yet (an outcome not reported by the time
    the follower looks; see `invoices_by_ids`). Reloading every invoice the API had just
    created cost 25-65 ms of the writer per block at hundreds of creates a second."""
    now_version = int(db.execute("PRAGMA data_version").fetchone()[0])
    if now_version != version:
        return now_version, invoices_updated_since(db, since, network), []
    ids = [r[0] for r in db.execute(
        "SELECT id FROM invoices INDEXED BY invoices_updated "
        "WHERE updated_at >= ? AND network = ? UNION "
        "SELECT invoice_id FROM invoice_legs WHERE network = ? AND closed_at >= ?",
        [since, network, network, since]).fetchall()]
    return now_version, None, ids


def invoices_by_ids(db: Database, ids: list[str]) -> list[Invoice]:
    """The invoices with these ids, with their legs (payments not loaded)."""
    marks = ",".join("?" * len(ids))
    return _with_legs(db, list(db.query(f"SELECT * FROM invoices WHERE id IN ({marks})", ids)))


def status_counts(db: Database) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in db.query("SELECT status, COUNT(*) AS n FROM invoices GROUP BY status")
    }
