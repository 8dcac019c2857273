"""PostgreSQL through psycopg 3, behind the same small interface as SQLite (`base.Db`).

The ledger, outbox and queries write one SQL dialect, the part SQLite and PostgreSQL share:
`?` placeholders (turned into psycopg's `%s` here, once per statement text), `INSERT ...
ON CONFLICT`, `RETURNING`, integer 0/1 flags, amounts as TEXT holding base-unit integers
(exact, and the same semantics as SQLite's), times as BIGINT unix seconds.

psycopg 3 rather than asyncpg: every database call already runs on a store thread
(`Store.run`), with the ledger's transactions written as plain synchronous code; psycopg's
synchronous connection fits that unchanged, where asyncpg would make the ledger async.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from watcher.errors import StoreError, StoreRefused
from watcher.storage.base import Db
from watcher.storage.waiting import WaitingRows

#: what a PostgreSQL failure raises (`Store` turns it into a `StoreError`)
DatabaseError = psycopg.Error

#: the schema this code writes; a database at a newer version is refused
SCHEMA_VERSION = 1
#: values per multi-row INSERT of waiting rows (PostgreSQL takes at most 65,535)
_MAX_PARAMS = 30_000

_TOKEN = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\?|%|\s+INDEXED BY \w+", re.IGNORECASE
)


@lru_cache(maxsize=1024)
def format_sql(sql: str) -> str:
    """`?` placeholders -> `%s`; every literal `%` -> `%%` (psycopg reads `%` even inside
    quoted text); SQLite's `INDEXED BY` planner hints dropped (PostgreSQL's planner chooses
    alone). A `?` inside quoted text or a comment stays as it is."""

    def swap(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        if token[:1].isspace():
            return ""
        return token.replace("%", "%%")

    return _TOKEN.sub(swap, sql)


@lru_cache(maxsize=256)
def _pieces(template: str) -> tuple[str, ...]:
    """`template` cut at each `?` placeholder (not one inside quoted text or a comment)."""
    pieces: list[str] = []
    last = 0
    for m in _TOKEN.finditer(template):
        if m.group(0) == "?":
            pieces.append(template[last : m.start()])
            last = m.end()
    pieces.append(template[last:])
    return tuple(pieces)


#: psycopg parses a statement's `%s` placeholders once and caches the result only for
#: statements shorter than this and with fewer parameters (its `_queries` module); longer
#: ones (a range's multi-row transfer INSERT, an `IN (...)` of 500 ids) were parsed anew
#: on every call: 50-63 ms of a 500-payment range commit, measured
_PSYCOPG_CACHED_LENGTH = 4096
_PSYCOPG_CACHED_PARAMS = 50


@lru_cache(maxsize=64)
def raw_sql(sql: str) -> str:
    """`sql` for a `RawCursor`: `$1, $2, ...` for its `?` placeholders and SQLite's
    `INDEXED BY` hints dropped (`format_sql`'s rules; `%` needs no escaping there)."""
    return numbered(_TOKEN.sub(lambda m: "" if m.group(0)[:1].isspace() else m.group(0),
                               sql), 1)


def _long(sql: str, params: Sequence[Any]) -> bool:
    """Too long for psycopg's cache of parsed statements: send it with `raw_sql`."""
    return len(params) > _PSYCOPG_CACHED_PARAMS or len(sql) > _PSYCOPG_CACHED_LENGTH


def numbered(template: str, first: int) -> str:
    """`template` with PostgreSQL's own placeholders `$first`, `$first+1`, ... for its `?`s
    (for a `RawCursor`: psycopg then parses nothing, where it would parse a long
    multi-row INSERT anew each time; its cache keeps short statements only)."""
    head, *rest = _pieces(template)
    return head + "".join(f"${first + i}{piece}" for i, piece in enumerate(rest))


@dataclass(frozen=True)
class _Changed:
    """What `executemany` answers: the rows its statements changed."""

    rowcount: int


class PgDatabase:
    """One PostgreSQL connection (autocommit outside `transaction()`), used by one thread."""

    dialect = "postgres"
    rows_see_earlier_rows = False

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._depth = 0  # transaction() blocks entered (pipeline mode hides the status)
        self._notified = False  # `notify` was called in this transaction
        #: the server process serving this connection (its notifications carry it)
        self.backend_pid: int = conn.info.backend_pid
        self._later: list[tuple[Any, Callable[[Any], None]]] | None = None
        self._rows = WaitingRows()  # rows waiting to go inside `pipeline()`
        self._pipe: psycopg.Pipeline | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if self._rows:
            self._flush()
        if _long(sql, params):
            return psycopg.RawCursor(self.conn).execute(raw_sql(sql), params)
        return self.conn.execute(format_sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Changed:
        """One statement for each row (pipelined); `rowcount` sums what they changed
        (psycopg's own `rowcount` after `executemany` reads -1 inside a transaction), or is
        -1 inside `pipeline()`, where nothing is read back."""
        if self._rows:
            self._flush()
        if self._pipe is not None:  # nothing is read back inside a pipeline
            with self.conn.cursor() as cur:
                cur.executemany(format_sql(sql), rows)
            return _Changed(-1)
        with self.conn.cursor() as cur:
            cur.executemany(format_sql(sql), rows, returning=True)
            total = 0
            while True:
                total += max(cur.rowcount, 0)
                if not cur.nextset():
                    break
        return _Changed(total)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        if self._rows:
            self._flush()
        if _long(sql, params):
            with psycopg.RawCursor(self.conn, row_factory=dict_row) as raw:
                raw.execute(raw_sql(sql), params)
                yield from raw
            return
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(format_sql(sql), params)
            yield from cur

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0 or self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    @contextmanager
    def transaction(self) -> Iterator[PgDatabase]:
        """A write transaction; nested calls are savepoints. The outermost one first takes
        the database's write lock (`pg_advisory_xact_lock`, held to its end), as SQLite's
        `BEGIN IMMEDIATE` does: write transactions of every instance run one at a time, so
        events are numbered in commit order (a reader that has seen event N has seen every
        event before it) and an invoice's changes never interleave.

        Plain BEGIN/COMMIT statements, as the savepoints are: inside `pipeline()` they are
        queued with the rest (psycopg's `transaction()` syncs the pipeline twice at each
        end, measured), and a failed COMMIT raises when the pipeline syncs."""
        if self.in_transaction:
            yield from self._savepoint()
            return
        self._depth = 1
        self._notified = False
        try:
            self.conn.execute("BEGIN")
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])
            yield self
        except BaseException:
            self._rows.drop()
            self._abandon()
            raise
        self._depth = 0
        self._flush()
        self.conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[PgDatabase]:
        """`REPEATABLE READ, READ ONLY`: one snapshot for every statement inside (taken at
        the first); no lock is taken, so it never waits for the writer."""
        if self.in_transaction:
            yield self
            return
        self._depth = 1
        try:
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield self
        except BaseException:
            self._abandon()
            raise
        self._depth = 0
        self.conn.execute("COMMIT")

    def _abandon(self) -> None:
        """An outermost block failed: roll back unless the connection broke (the first error
        is the one raised; in an aborted pipeline the ROLLBACK is skipped: `pipeline()`
        sends it after the sync)."""
        self._depth = 0
        if not self.broken:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("ROLLBACK")

    def relaxed_commit(self) -> None:
        self.conn.execute("SET LOCAL synchronous_commit = off")

    def notify(self) -> None:
        """Every other instance's `Listener` hears of this transaction when it commits
        (not if it rolls back): once per transaction, queued like any statement."""
        if not self._notified:
            self._notified = True
            self.conn.execute("SELECT pg_notify(%s, '')", [CHANNEL])

    def _savepoint(self) -> Iterator[PgDatabase]:
        """A nested block as plain SAVEPOINT statements: in pipeline mode they are queued
        like any statement (psycopg's own nested `transaction()` cost 0.6 ms more each
        there, measured). A failed statement aborts the whole transaction instead (its
        error raises at the next read), so only Python exceptions roll a savepoint back."""
        self._depth += 1
        name = f"pw_{self._depth}"
        self._flush()
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            self._rows.drop()  # all written since the savepoint (it began with none waiting)
            failed = self.conn.info.transaction_status == pq.TransactionStatus.INERROR
            if not self.broken and not failed:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self._flush()
            self.conn.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._depth -= 1

    @contextmanager
    def pipeline(self) -> Iterator[PgDatabase]:
        """psycopg's pipeline mode: a round trip only where a result is read, and one at
        the end, when the values asked for with `later` are handed over (a nested block
        syncs at its own end). A failed statement raises at the next read or at the end
        (its transaction then rolls back). Inside, `rowcount` is not known until then."""
        if self._pipe is not None:
            yield self
            self._flush()
            self._pipe.sync()
            self._hand_over()
            return
        self._later = []
        try:
            with self.conn.pipeline() as pipe:
                self._pipe = pipe
                yield self
                self._flush()
        except BaseException:
            self._later = None
            self._rows.drop()
            raise
        finally:
            self._pipe = None
            # a statement failed, so the server skipped the rest, ROLLBACK or COMMIT too:
            # the transaction is still open (failed) after the sync
            if (self._depth == 0 and not self.broken
                    and self.conn.info.transaction_status != pq.TransactionStatus.IDLE):
                with contextlib.suppress(psycopg.Error):
                    self.conn.execute("ROLLBACK")
        self._hand_over()
        self._later = None

    def _hand_over(self) -> None:
        later, self._later = self._later or [], []
        for cursor, use in later:
            use(cursor.fetchall())

    def later(self, cursor: Any, use: Callable[[Any], None]) -> None:
        if self._later is None:
            use(cursor.fetchall())
        else:
            self._later.append((cursor, use))

    def insert(self, prefix: str, row: str, params: Sequence[Any]) -> None:
        self.update(prefix, row, params, "", None)

    def update(
        self, prefix: str, row: str, params: Sequence[Any], suffix: str, key: str | None
    ) -> None:
        if self._pipe is None:
            self.execute(f"{prefix} {row} {suffix}", params)
            return
        self._rows.hold(prefix, row, params, suffix, key)

    def _flush(self) -> None:
        """Send the waiting rows (`insert`): one INSERT per prefix (per 30,000 values)."""
        for prefix, suffix, rows in self._rows.take():
            while rows:
                take, values = 0, 0
                while take < len(rows) and values + len(rows[take][1]) <= _MAX_PARAMS:
                    values += len(rows[take][1])
                    take += 1
                chunk, rows = rows[: max(take, 1)], rows[max(take, 1):]
                texts, first = [], 1
                for row, params in chunk:
                    texts.append(numbered(row, first))
                    first += len(params)
                psycopg.RawCursor(self.conn).execute(
                    f"{prefix} {','.join(texts)} {suffix}",
                    [v for _, params in chunk for v in params])

    def data_version(self) -> int | None:
        """None: PostgreSQL has no cheap "another connection committed" counter, so the
        per-head refresh reads what changed since its last look every time."""
        return None

    @property
    def broken(self) -> bool:
        """The connection is lost (server restarted, network failed) or closed."""
        return self.conn.broken or self.conn.closed

    def close(self) -> None:
        self.conn.close()


#: what a failed connection says when retrying cannot help (credentials, names)
_REFUSED = ("authentication failed", "does not exist", "no password supplied",
            "no pg_hba.conf entry", "permission denied", "invalid", "SSL")


#: the LISTEN/NOTIFY channel of `PgDatabase.notify`
CHANNEL = "payment_watcher"


class Listener:
    """A thread with its own connection, LISTENing on `CHANNEL`: calls `on_change` (from
    that thread) after another instance committed events or due deliveries
    (`PgDatabase.notify`), so the live channels and the callback sender of every instance
    look at once rather than at their next poll. What this instance's own writer (backend
    `own()`) commits is left out: the daemon wakes them itself, as on SQLite. Notifications
    are a shortcut only: a lost one (connection down) is made up by those polls. The
    connection is opened again, with backoff, when it breaks."""

    def __init__(
        self, url: str, password: str | None, on_change: Callable[[], None],
        own: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.url = url
        self.password = password
        self.on_change = on_change
        self.own = own
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(with_defaults(self.url), password=self.password,
                                     autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.5
                    self.on_change()  # whatever was missed while not listening
                    while not self._stop.is_set():
                        if any(n.pid != self.own() for n in conn.notifies(timeout=1.0)):
                            self.on_change()
            except psycopg.Error:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def store_error(exc: psycopg.Error) -> StoreError:
    """A typed error naming the cause in one line, without the password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        return StoreError(f"PostgreSQL is unreachable: {text}")
    return StoreError(f"database error: {text}")


#: the tables a new database fills first. Until a table's first ANALYZE the planner has no
#: statistics for it and guesses: sequential scans for lookups by key, the wrong index for
#: an address. Autovacuum's first ANALYZE comes only after its nap (a minute by default).
FIRST_TABLES = ("invoices", "events", "deliveries", "attempts", "transfers")
#: rows written to a never-analysed table before `analyze_new_tables` analyses it
ANALYZE_AFTER_ROWS = 100


def analyze_new_tables(db: Db) -> int:
    """ANALYZE each of `FIRST_TABLES` that nobody has analysed yet (not autovacuum, not an
    operator) once `ANALYZE_AFTER_ROWS` rows were written to it; how many of them are still
    never analysed. Autovacuum keeps the statistics fresh after that."""
    rows = db.execute(
        "SELECT relname, n_mod_since_analyze FROM pg_stat_user_tables "
        "WHERE schemaname = current_schema() AND relname = ANY(?) "
        "AND last_analyze IS NULL AND last_autoanalyze IS NULL",
        [list(FIRST_TABLES)],
    ).fetchall()
    waiting = len(rows)
    for table, written in rows:
        if written >= ANALYZE_AFTER_ROWS:
            db.execute(f"ANALYZE {table}")  # a name from FIRST_TABLES
            waiting -= 1
    return waiting


#: libpq settings every connection takes unless its URL names its own (an operator's value is
#: kept). The keepalives and `tcp_user_timeout` make a connection whose server went silent
#: (a network partition, a host gone without a word) fail within ~25-30 s, where Linux's
#: own TCP settings take two hours for an idle connection and ~15 minutes for one waiting
#: on an answer: the daemon then answers 503 and connects again, instead of hanging.
CONNECTION_DEFAULTS = {
    "application_name": "payment-watcher",
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def connection_options(url: str) -> dict[str, str]:
    """The `CONNECTION_DEFAULTS` that `url` does not name (all of them if it cannot be
    read: connecting then says what is wrong with it)."""
    try:
        named = conninfo_to_dict(url)
    except psycopg.Error:
        named = {}
    return {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in named}


def with_defaults(url: str) -> str:
    """`url` as a libpq connection string with `connection_options` added (`url` itself
    when it cannot be read: connecting then says what is wrong with it)."""
    try:
        return make_conninfo(url, **connection_options(url))
    except psycopg.Error:
        return url


def connect(url: str, *, password: str | None = None, migrate: bool = True) -> PgDatabase:
    """Connect (autocommit) and, with `migrate`, create or check the schema. A server that
    refuses these credentials or names raises `StoreRefused` (retrying cannot help); one
    that cannot be reached, `StoreError` (systemd's `Restart=` tries again)."""
    try:
        conn = psycopg.connect(with_defaults(url), password=password, autocommit=True)
    except psycopg.Error as exc:
        text = " ".join(str(exc).split())
        where = f"database: cannot connect to PostgreSQL ({_safe(url)}): {text}"
        if any(marker in text for marker in _REFUSED):
            raise StoreRefused(where) from None
        raise StoreError(where) from None
    db = PgDatabase(conn)
    if migrate:
        try:
            apply_schema(db)
        except BaseException:
            db.close()
            raise
    return db


def _safe(url: str) -> str:
    """The URL without a query (it may carry options) and without any password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


def schema_version(db: PgDatabase) -> int:
    row = db.execute(
        "SELECT to_regclass('schema_version') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return 0
    found = db.execute("SELECT version FROM schema_version").fetchone()
    return int(found[0]) if found else 0


def apply_schema(db: PgDatabase) -> None:
    """Bring the schema to `SCHEMA_VERSION`, in one transaction under an advisory lock (two
    instances starting together do it once); refuse a newer one, naming both versions."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(?)", [_SCHEMA_LOCK])
        version = schema_version(db)
        if version > SCHEMA_VERSION:
            raise StoreRefused(
                f"database: its schema is version {version}, newer than this "
                f"payment-watcher's {SCHEMA_VERSION}: run a newer payment-watcher"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                db.execute(statement)
        if version == 0:
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
        elif version < SCHEMA_VERSION:
            db.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION])


#: pg_advisory_xact_lock key of schema changes ("pw-schema")
_SCHEMA_LOCK = 0x70772D736368656D
#: pg_advisory_xact_lock key every write transaction takes first ("pw-write")
WRITE_LOCK = 0x70772D7772697465

# The schema of SQLite's 15 migrations, as PostgreSQL's version 1. Flags stay INTEGER 0/1
# and amounts TEXT, so both databases answer the same SQL the same way. `transfers.rowid`
# stands for SQLite's implicit rowid (the API's transfer pages and retention use it).
_V1 = (
    """CREATE TABLE invoices (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        parent_id TEXT,
        external_id TEXT,
        fingerprint TEXT,
        status TEXT NOT NULL,
        network TEXT,
        chain_id BIGINT,
        asset TEXT,
        token_address TEXT,
        decimals INTEGER,
        to_addr TEXT,
        to_lower TEXT,
        shared INTEGER NOT NULL,
        amount TEXT,
        requested_amount TEXT,
        price TEXT,
        currency TEXT,
        email TEXT,
        payload TEXT,
        callback_url TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        expire_at BIGINT NOT NULL,
        closed_at BIGINT,
        refund_tx TEXT,
        opens_at BIGINT,
        client_id TEXT,
        redirect_url TEXT,
        rate TEXT,
        rate_source TEXT,
        rate_at BIGINT,
        derivation_index BIGINT,
        title TEXT,
        description TEXT,
        methods TEXT
    )""",
    "CREATE UNIQUE INDEX invoices_external_id ON invoices(external_id) "
    "WHERE external_id IS NOT NULL",
    "CREATE INDEX invoices_status ON invoices(network, status, expire_at)",
    "CREATE INDEX invoices_address ON invoices(network, asset, to_lower, status)",
    "CREATE INDEX invoices_list ON invoices(status, seq)",
    "CREATE INDEX invoices_updated ON invoices(updated_at)",
    "CREATE INDEX invoices_client ON invoices(client_id, seq) WHERE client_id IS NOT NULL",
    "CREATE INDEX invoices_derivation ON invoices(derivation_index) "
    "WHERE derivation_index IS NOT NULL",
    "CREATE INDEX invoices_unchosen ON invoices(expire_at) "
    "WHERE network IS NULL AND status = 'PENDING'",
    """CREATE TABLE invoice_legs (
        invoice_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        network TEXT NOT NULL,
        asset TEXT NOT NULL,
        decimals INTEGER NOT NULL,
        to_addr TEXT NOT NULL,
        to_lower TEXT NOT NULL,
        shared INTEGER NOT NULL,
        amount TEXT NOT NULL,
        derivation_index BIGINT,
        opens_at BIGINT,
        closed_at BIGINT NOT NULL,
        PRIMARY KEY (invoice_id, n)
    )""",
    "CREATE INDEX invoice_legs_address ON invoice_legs(network, asset, to_lower)",
    "CREATE INDEX invoice_legs_closed ON invoice_legs(network, closed_at)",
    """CREATE TABLE events (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        invoice_id TEXT NOT NULL,
        event TEXT NOT NULL,
        status TEXT,
        created_at BIGINT NOT NULL,
        body BYTEA NOT NULL,
        cause TEXT,
        pruned_at BIGINT
    )""",
    "CREATE INDEX events_invoice ON events(invoice_id, seq)",
    "CREATE INDEX events_unpruned ON events(created_at) WHERE pruned_at IS NULL",
    """CREATE TABLE deliveries (
        event_id TEXT PRIMARY KEY,
        event_seq BIGINT NOT NULL,
        invoice_id TEXT NOT NULL,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        created_at BIGINT NOT NULL,
        delivered_at BIGINT,
        last_error TEXT,
        window_start DOUBLE PRECISION,
        window_attempts INTEGER NOT NULL DEFAULT 0,
        head INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at)",
    "CREATE INDEX deliveries_invoice ON deliveries(invoice_id, event_seq)",
    "CREATE INDEX deliveries_heads ON deliveries(next_attempt_at, event_seq) "
    "WHERE state = 'pending' AND head = 1",
    """CREATE TABLE attempts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        status_code INTEGER,
        error TEXT,
        duration_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX attempts_event ON attempts(event_id, id)",
    "CREATE INDEX attempts_at ON attempts(at)",
    """CREATE TABLE cursors (
        network TEXT PRIMARY KEY,
        chain_id BIGINT NOT NULL,
        scanned_block BIGINT,
        scanned_hash TEXT,
        scanned_time BIGINT,
        head_block BIGINT,
        updated_at BIGINT NOT NULL,
        final_block BIGINT,
        finalized_block BIGINT
    )""",
    """CREATE TABLE blocks (
        network TEXT NOT NULL,
        number BIGINT NOT NULL,
        hash TEXT NOT NULL,
        parent_hash TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        PRIMARY KEY (network, number)
    )""",
    """CREATE TABLE derived_addresses (
        idx BIGINT PRIMARY KEY,
        address TEXT NOT NULL,
        key_id TEXT NOT NULL,
        created_at BIGINT NOT NULL
    )""",
    """CREATE TABLE transfers (
        rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        id TEXT NOT NULL UNIQUE,
        network TEXT NOT NULL,
        tx_hash TEXT NOT NULL,
        log_index INTEGER NOT NULL,
        trace TEXT NOT NULL DEFAULT '',
        asset TEXT NOT NULL,
        from_addr TEXT NOT NULL,
        to_addr TEXT NOT NULL,
        amount TEXT NOT NULL,
        block BIGINT NOT NULL,
        block_hash TEXT NOT NULL,
        timestamp BIGINT NOT NULL,
        invoice_id TEXT,
        kind TEXT NOT NULL,
        seen_at BIGINT NOT NULL,
        announced INTEGER NOT NULL DEFAULT 1,
        assigned INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (network, tx_hash, log_index, trace)
    )""",
    "CREATE INDEX transfers_invoice ON transfers(invoice_id)",
    "CREATE INDEX transfers_block ON transfers(network, block)",
    "CREATE INDEX transfers_kind ON transfers(kind, network)",
    "CREATE INDEX transfers_unannounced ON transfers(network, block) WHERE announced = 0",
    "CREATE INDEX transfers_unmatched_seen ON transfers(seen_at) WHERE kind = 'unmatched'",
    "CREATE VIEW payments AS SELECT * FROM transfers WHERE kind = 'payment'",
    """CREATE TABLE rescans (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        network TEXT NOT NULL,
        from_block BIGINT NOT NULL,
        to_block BIGINT NOT NULL,
        next_block BIGINT NOT NULL,
        state TEXT NOT NULL,
        added INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    "CREATE INDEX rescans_network ON rescans(network, state)",
    """CREATE TABLE dashboard_sessions (
        id_hash TEXT PRIMARY KEY,
        csrf TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        flash TEXT
    )""",
    "CREATE INDEX dashboard_sessions_seen ON dashboard_sessions(last_seen)",
    # who leads each network (watcher.cluster), for every instance's API and status
    """CREATE TABLE leaders (
        network TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        since BIGINT NOT NULL,
        seen_at BIGINT NOT NULL
    )""",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1}
