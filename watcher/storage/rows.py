"""Rows <-> models, and the reads and writes of invoices, transfers, legs, derived
addresses and rescans that the ledger, the follower, the API and the CLI share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import orjson

from watcher.models import (
    OPEN_STATUSES,
    Invoice,
    Leg,
    Method,
    Status,
    Transfer,
)
from watcher.storage.base import Db


def rescan_json(row: dict[str, Any]) -> dict[str, Any]:
    from watcher.timeutil import iso

    return {
        "id": row["id"], "network": row["network"], "from": row["from_block"],
        "to": row["to_block"], "nextBlock": row["next_block"], "state": row["state"],
        "added": row["added"], "error": row["error"], "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
    }


def latest_rescans(db: Db) -> dict[str, dict[str, Any]]:
    """The newest rescan of each network, as JSON."""
    rows = db.query(
        "SELECT * FROM rescans WHERE id IN (SELECT MAX(id) FROM rescans GROUP BY network)"
    )
    return {r["network"]: rescan_json(r) for r in rows}


def next_derivation_index(db: Db, start: int) -> int:
    """The next index to hand out: after the highest taken, and not below `start`."""
    top = db.execute("SELECT MAX(idx) FROM derived_addresses").fetchone()[0]
    return start if top is None else max(start, int(top) + 1)


def insert_derived_address(
    db: Db, index: int, address: str, key_id: str, now: int
) -> None:
    db.execute(
        "INSERT INTO derived_addresses (idx, address, key_id, created_at) VALUES (?, ?, ?, ?)",
        [index, address, key_id, now],
    )


def newest_derived_address(db: Db) -> dict[str, Any] | None:
    """The derived address with the highest index, or None."""
    rows = list(db.query("SELECT * FROM derived_addresses ORDER BY idx DESC LIMIT 1"))
    return rows[0] if rows else None


def derived_addresses(
    db: Db, after: int | None = None, limit: int | None = None
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


def reset_delivery_heads(db: Db, event_ids: list[str]) -> None:
    """Mark the earliest pending delivery of each of these events' invoices as its head
    (and only that one). One statement, nothing read back (so it pipelines)."""
    marks = ",".join("?" * len(event_ids))
    db.execute(
        "UPDATE deliveries SET head = CASE WHEN state = 'pending' AND event_seq = (SELECT "
        "MIN(d.event_seq) FROM deliveries d WHERE d.invoice_id = deliveries.invoice_id "
        "AND d.state = 'pending') THEN 1 ELSE 0 END WHERE invoice_id IN (SELECT invoice_id "
        f"FROM deliveries WHERE event_id IN ({marks})) AND (state = 'pending' OR head = 1)",
        event_ids,
    )



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


def load_transfers_by_id(db: Db, ids: Iterable[str]) -> list[Transfer]:
    """The stored transfers with these ids (those that exist)."""
    wanted = list(ids)
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    rows = db.query(f"SELECT * FROM transfers WHERE id IN ({marks})", wanted)
    return [transfer_from_row(r) for r in rows]


def assign_transfer(db: Db, transfer_id: str, invoice_id: str) -> None:
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


#: rows per multi-row INSERT (18 columns), ids per `IN (...)`: well under both databases'
#: parameter limits
CHUNK = 500
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size` (one statement each)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_transfers(db: Db, rows: list[dict[str, Any]]) -> set[str]:
    """Insert transfer rows (`transfer_row`), skipping those stored before: the ids of
    the rows this call inserted. One statement per 500 rows, one answer read."""
    new: set[str] = set()
    for chunk in chunks(rows):
        row = chunk[0]  # the columns: transfer_row's fixed keys
        marks = "(" + ",".join("?" * len(row)) + ")"
        new.update(r[0] for r in db.execute(
            f"INSERT INTO transfers ({','.join(row)}) VALUES "
            f"{','.join([marks] * len(chunk))} ON CONFLICT DO NOTHING RETURNING id",
            [v for row in chunk for v in row.values()],
        ).fetchall())
    return new


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


def load_invoices(db: Db, where: str, params: Iterable[Any] = ()) -> list[Invoice]:
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


def load_legs(db: Db, invoice_ids: list[str]) -> dict[str, list[Leg]]:
    """The methods each invoice was switched away from, oldest first."""
    found: dict[str, list[Leg]] = {}
    for chunk in chunks(invoice_ids):
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


def insert_leg(db: Db, invoice_id: str, leg: Leg) -> None:
    db.execute(
        "INSERT INTO invoice_legs (invoice_id, n, network, asset, decimals, to_addr, to_lower, "
        "shared, amount, derivation_index, opens_at, closed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [invoice_id, leg.n, leg.network, leg.asset, leg.decimals, leg.to_addr,
         leg.to_addr.lower(), int(leg.shared), str(leg.amount), leg.derivation_index,
         leg.opens_at, leg.closed_at],
    )


def load_invoice(db: Db, invoice_id: str) -> Invoice | None:
    found = load_invoices(db, "id = ?", [invoice_id])
    return found[0] if found else None


def insert_invoice(db: Db, inv: Invoice, *, read_seq: bool = True) -> Invoice:
    """Write a new invoice. `read_seq`: set `inv.seq` (inside a pipeline, when it syncs);
    without it the row may wait to go with others (`Db.insert`) and the caller reads the
    seqs after (`read_seqs`)."""
    row = invoice_row(inv)
    if not read_seq:
        db.insert(f"INSERT INTO invoices ({','.join(row)}) VALUES",
                  f"({','.join('?' * len(row))})", list(row.values()))
        return inv
    cur = db.execute(
        f"INSERT INTO invoices ({','.join(row)}) VALUES ({','.join('?' * len(row))}) "
        "RETURNING seq",
        list(row.values()),
    )

    def use(found: Any) -> None:
        inv.seq = int(found[0][0])

    db.later(cur, use)  # inside a pipeline: set when it syncs (seq stays 0 until then)
    return inv


def read_seqs(db: Db, invoices: list[Invoice]) -> None:
    """Set each invoice's `seq` from the database (inside a pipeline, when it syncs)."""
    by_id = {inv.id: inv for inv in invoices}

    def use(found: Any) -> None:
        for invoice_id, seq in found:
            by_id[invoice_id].seq = int(seq)

    ids = list(by_id)
    for chunk in chunks(ids):
        db.later(db.execute(
            f"SELECT id, seq FROM invoices WHERE id IN ({','.join('?' * len(chunk))})", chunk),
            use)


def update_invoice_method(db: Db, inv: Invoice) -> None:
    """Write a chosen method's fields (and everything `update_invoice` writes)."""
    row = invoice_row(inv)
    del row["id"]
    sets = ", ".join(f"{column} = ?" for column in row)  # fixed column names
    db.execute(f"UPDATE invoices SET {sets} WHERE id = ?", [*row.values(), inv.id])


def update_invoice(db: Db, inv: Invoice) -> None:
    """Write an invoice's status, times and refund (inside a pipeline the row may wait and
    go with others: `Db.update`). SQLite runs a waiting update once per row
    (`executemany`): the plain form, measured ~1.6x cheaper there than `UPDATE ... FROM
    (VALUES ...)`, which PostgreSQL needs to update many rows in one statement."""
    if db.dialect == "sqlite":
        db.update("UPDATE invoices SET status = ?, updated_at = ?, closed_at = ?, "
                  "refund_tx = ? WHERE id = ?", "",
                  [inv.status.value, inv.updated_at, inv.closed_at, inv.refund_tx, inv.id],
                  "", inv.id)
        return
    db.update(
        "UPDATE invoices SET status = v.column2, updated_at = v.column3, "
        "closed_at = v.column4, refund_tx = v.column5 FROM (VALUES",
        "(CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), "
        "CAST(? AS TEXT))",
        [inv.id, inv.status.value, inv.updated_at, inv.closed_at, inv.refund_tx],
        ") AS v WHERE invoices.id = v.column1", inv.id,
    )


def watched_invoices(db: Db, network: str, since: int) -> list[Invoice]:
    """Open invoices of a network, and those that stopped collecting at or after `since`
    (still within their late-payment window). Payments are not loaded."""
    return list(iter_watched_invoices(db, network, since))


#: Rows read at a time when the watch index is filled (see `iter_watched_invoices`).
_INDEX_CHUNK = 2000


def iter_watched_invoices(db: Db, network: str, since: int) -> Iterator[Invoice]:
    """`watched_invoices`, a chunk of rows at a time: filling a watch index of 100,000
    invoices never holds them all as objects at once (the allocator would keep that peak
    for the life of the process). Must be consumed on the connection's thread."""
    statuses = ",".join(f"'{s.value}'" for s in OPEN_STATUSES)
    cursor = db.execute(
        f"SELECT * FROM invoices WHERE network = ? AND (status IN ({statuses}) "
        "OR (CASE WHEN closed_at < expire_at THEN closed_at ELSE expire_at END) >= ?) UNION "
        "SELECT * FROM invoices WHERE id IN (SELECT invoice_id FROM invoice_legs "
        "WHERE network = ? AND closed_at >= ?)",
        [network, since, network, since],
    )
    names = [d[0] for d in cursor.description]
    while chunk := cursor.fetchmany(_INDEX_CHUNK):
        yield from _with_legs(db, [dict(zip(names, r, strict=True)) for r in chunk])


def _with_legs(
    db: Db, rows: list[dict[str, Any]],
    transfers: dict[str, list[Transfer]] | None = None,
) -> list[Invoice]:
    """Invoices from rows, with the methods switched away from, and with their payments
    and late payments when `transfers` (by invoice id) is given."""
    switched = [r["id"] for r in rows if r["methods"] is not None]
    legs = load_legs(db, switched) if switched else {}
    found = transfers or {}
    return [invoice_from_row(r, found.get(r["id"], ()), legs.get(r["id"], ())) for r in rows]


def index_invoices(db: Db, network: str, late_window: int) -> list[Invoice]:
    """`iter_index_invoices` as a list (tests, tools; the daemon streams)."""
    return list(iter_index_invoices(db, network, late_window))


def iter_index_invoices(db: Db, network: str, late_window: int) -> Iterator[Invoice]:
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


def invoices_updated_since(db: Db, since: int, network: str) -> list[Invoice]:
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
    db: Db, since: int, network: str, version: int | None
) -> tuple[int | None, list[Invoice] | None, list[str]]:
    """What the per-head refresh needs: (`db.data_version()` now, the invoices, their
    ids). When another connection (the CLI) committed since `version`, the invoices of
    `invoices_updated_since` (ids empty). Otherwise only the daemon's own writes happened,
    and they reach its index with their outcomes: just the ids (None for the invoices), so
    the caller loads those its index does not hold yet (an outcome not reported by the time
    the follower looks; see `invoices_by_ids`). Reloading every invoice the API had just
    created cost 25-65 ms of the writer per block at hundreds of creates a second. A
    database that cannot tell (PostgreSQL, where other instances write) is read in full."""
    now_version = db.data_version()
    if now_version is None or now_version != version:
        return now_version, invoices_updated_since(db, since, network), []
    ids = [r[0] for r in db.execute(
        "SELECT id FROM invoices INDEXED BY invoices_updated "
        "WHERE updated_at >= ? AND network = ? UNION "
        "SELECT invoice_id FROM invoice_legs WHERE network = ? AND closed_at >= ?",
        [since, network, network, since]).fetchall()]
    return now_version, None, ids


def last_event_seq(db: Db) -> int:
    row = db.execute("SELECT MAX(seq) FROM events").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def invoices_after_event(db: Db, network: str, after: int) -> tuple[int, list[Invoice]]:
    """(the newest event now, the invoices on `network` (or that switched from it) with an
    event after `after`): what changed, whichever instance wrote it (several instances on
    PostgreSQL, where events are numbered in commit order). Every change the follower must
    know of (create, method chosen or switched, status) writes an event."""
    newest = last_event_seq(db)
    if newest <= after:
        return newest, []
    changed = ("SELECT DISTINCT invoice_id FROM events WHERE seq > ? AND seq <= ?")
    return newest, _with_legs(db, list(db.query(
        f"SELECT * FROM invoices WHERE id IN ({changed}) AND network = ? UNION "
        f"SELECT * FROM invoices WHERE id IN (SELECT invoice_id FROM invoice_legs "
        f"WHERE network = ? AND invoice_id IN ({changed}))",
        [after, newest, network, network, after, newest])))


def invoices_by_ids(db: Db, ids: list[str]) -> list[Invoice]:
    """The invoices with these ids, with their legs (payments not loaded); read 500 ids a
    query (a refresh after a burst of creates may ask for thousands)."""
    found: list[dict[str, Any]] = []
    for chunk in chunks(ids):
        found += db.query(
            f"SELECT * FROM invoices WHERE id IN ({','.join('?' * len(chunk))})", chunk)
    return _with_legs(db, found)


def status_counts(db: Db) -> dict[str, int]:
    return {
        r["status"]: r["n"]
        for r in db.query("SELECT status, COUNT(*) AS n FROM invoices GROUP BY status")
    }
