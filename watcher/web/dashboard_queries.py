"""What the merchant dashboard reads from the database (never writes: every change goes
through the ledger and the outbox functions the API uses). Each function takes the
`Db` first, for `Store.run`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from watcher.models import Invoice
from watcher.outbox import attempts_for
from watcher.render import transfer_json
from watcher.storage.base import Db
from watcher.storage.rows import load_invoices, transfer_from_row
from watcher.timeutil import iso
from watcher.web.dashboard_forms import Where

#: Transfer kinds the transfers page lists (those that can be assigned to an invoice).
ASSIGNABLE = ("unmatched", "late")
#: At most this many failed callbacks are queued again by one "redeliver all".
REDELIVER_ALL_MAX = 1000


def find_invoices(db: Db, where: Where, limit: int) -> tuple[list[Invoice], int | None]:
    """Newest first; (invoices, position for the next page or None)."""
    found = load_invoices(db, f"{where.sql} ORDER BY seq DESC LIMIT ?", [*where.params, limit + 1])
    more = len(found) > limit
    found = found[:limit]
    return found, (found[-1].seq if more and found else None)


def invoice_statuses(db: Db, ids: Iterable[str]) -> dict[str, str]:
    """The status of each of these invoices (those that exist)."""
    wanted = list(dict.fromkeys(ids))[:200]
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    return {
        r[0]: r[1]
        for r in db.execute(f"SELECT id, status FROM invoices WHERE id IN ({marks})", wanted)
    }


def children_of(db: Db, invoice_id: str) -> list[str]:
    """The remainder invoices of an invoice (its children), oldest first."""
    return [
        r[0] for r in db.execute(
            "SELECT id FROM invoices WHERE parent_id = ? ORDER BY seq", [invoice_id]
        )
    ]


def _decimals(db: Db, known: Mapping[tuple[str, str], int], network: str,
              asset: str) -> int:
    if (network, asset) in known:
        return known[(network, asset)]
    row = db.execute(  # a network no longer configured: its invoices remember the decimals
        "SELECT decimals FROM invoices WHERE network = ? AND asset = ? LIMIT 1",
        [network, asset],
    ).fetchone()
    return int(row[0]) if row else 0


def assignable_transfers(
    db: Db,
    kind: str,
    network: str | None,
    before: int | None,
    limit: int,
    decimals: Mapping[tuple[str, str], int],
) -> tuple[list[dict[str, Any]], int | None]:
    """Transfers of `kind` (unmatched or late) newest seen first, as the API's JSON;
    (transfers, position for the next page or None)."""
    where: list[str] = ["kind = ?"]
    params: list[Any] = [kind]
    if network:
        where.append("network = ?")
        params.append(network)
    if before is not None:
        where.append("rowid < ?")
        params.append(before)
    rows = list(
        db.query(
            f"SELECT rowid AS _pos, * FROM transfers WHERE {' AND '.join(where)} "
            "ORDER BY rowid DESC LIMIT ?",
            [*params, limit + 1],
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    position: int | None = rows[-1]["_pos"] if more and rows else None
    out = []
    for row in rows:
        del row["_pos"]
        t = transfer_from_row(row)
        out.append(transfer_json(t, _decimals(db, decimals, t.network, t.asset)))
    return out, position


def transfer_by_id(
    db: Db, transfer_id: str, decimals: Mapping[tuple[str, str], int]
) -> dict[str, Any] | None:
    row = next(iter(db.query("SELECT * FROM transfers WHERE id = ?", [transfer_id])), None)
    if row is None:
        return None
    t = transfer_from_row(row)
    return transfer_json(t, _decimals(db, decimals, t.network, t.asset))


def failed_deliveries(
    db: Db, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Deliveries that gave up, newest event first, each with its attempts; (rows,
    position for the next page or None)."""
    sql = (
        "SELECT event_id, event_seq, invoice_id, event, url, attempts, created_at, "
        "last_error FROM deliveries WHERE state = 'failed'"
    )
    params: list[Any] = []
    if before is not None:
        sql += " AND event_seq < ?"
        params.append(before)
    rows = list(db.query(sql + " ORDER BY event_seq DESC LIMIT ?", [*params, limit + 1]))
    more = len(rows) > limit
    rows = rows[:limit]
    attempts = attempts_for(db, [r["event_id"] for r in rows])
    for row in rows:
        row["createdAt"] = iso(row["created_at"])
        row["attempt_list"] = [
            {"at": iso(int(a["at"])), "statusCode": a["status_code"], "error": a["error"],
             "durationMs": a["duration_ms"]}
            for a in attempts[row["event_id"]]
        ]
    return rows, (rows[-1]["event_seq"] if more and rows else None)


def failed_event_ids(db: Db, limit: int = REDELIVER_ALL_MAX) -> list[str]:
    """The events of failed deliveries, oldest first (the order they are sent again)."""
    return [
        r[0] for r in db.execute(
            "SELECT event_id FROM deliveries WHERE state = 'failed' ORDER BY event_seq "
            "LIMIT ?", [limit],
        )
    ]


def delivery_counts(db: Db) -> dict[str, int]:
    """Deliveries by state (pending, delivered, failed)."""
    return {
        r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
    }
