"""The SQLite schema: sqlite-utils migrations, applied in order by `sqlite.connect`."""

from __future__ import annotations

import re

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from watcher.models import (
    transfer_id,
)

migrations = Migrations("payment-watcher")


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


@migrations(name="0015_heads_in_event_order")
def _m0015(db: Database) -> None:
    # Due deliveries with the same `next_attempt_at` go in event order, read straight from
    # the index (no sort): before, ties kept SQLite's insertion order, which PostgreSQL
    # does not promise.
    for statement in (
        "DROP INDEX deliveries_heads",
        "CREATE INDEX deliveries_heads ON deliveries(next_attempt_at, event_seq) "
        "WHERE state = 'pending' AND head = 1",
    ):
        db.execute(statement)
