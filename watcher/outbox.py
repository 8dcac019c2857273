"""The callback outbox in SQL: which deliveries are due, and what each attempt did.

The ledger writes one `deliveries` row (state `pending`, `next_attempt_at` = now) in the same
transaction as each event; the sender (callbacks.py) reads due rows here and records every
attempt here. Functions take the `Db` first so they can be passed to `Store.run`.

Per-invoice order: a delivery is due only when no earlier event of the same invoice is still
`pending`; an earlier one that is `failed` (given up) does not hold the later ones back.

Retry window: `window_start` (NULL = `created_at`) and `window_attempts` (migration 0002)
restart at each redeliver, so a redelivered event gets the full backoff schedule and
`callbacks.max_age` again; `attempts` keeps counting every attempt ever made.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Literal

from watcher.errors import Gone
from watcher.storage.base import Db
from watcher.storage.rows import chunks, reset_delivery_heads
from watcher.storage.store import transaction

Outcome = Literal["delivered", "retry", "failed"]

#: Longest `error` text kept per attempt.
MAX_ERROR = 500

#: A sendable delivery: pending and its invoice's head (earliest pending event). `head` is
#: kept with every change of state (see `rows.reset_delivery_heads`); the partial index
#: `deliveries_heads` holds exactly these rows, so reading them is O(due).
_HEAD = "d.state = 'pending' AND d.head = 1"
#: the due heads, oldest first, ties in event order: both read from the index of heads
#: (`{skip}`: the busy invoices left out)
DUE_SQL = (
    "SELECT d.event_id, d.event_seq, d.invoice_id, d.event, d.url, d.attempts, "
    "d.window_attempts, COALESCE(d.window_start, d.created_at) AS window_start, "
    "d.created_at, d.next_attempt_at, e.body "
    "FROM deliveries d INDEXED BY deliveries_heads JOIN events e ON e.id = d.event_id "
    f"WHERE d.next_attempt_at <= ? AND {_HEAD}{{skip}} "
    "ORDER BY d.next_attempt_at, d.event_seq LIMIT ?"
)


def _not_busy(busy: Collection[str]) -> tuple[str, list[str]]:
    if not busy:
        return "", []
    return f" AND d.invoice_id NOT IN ({','.join('?' * len(busy))})", list(busy)


def due(
    db: Db, now: float, limit: int, busy: Collection[str], *, lock: bool = False
) -> list[dict[str, Any]]:
    """Up to `limit` deliveries to attempt now, oldest due first, with the event's `body`.

    A row is due when it is `pending`, `next_attempt_at <= now`, it is the earliest pending
    event of its invoice, and its invoice is not in `busy` (being sent right now).
    Each row: event_id, event_seq, invoice_id, event, url, attempts, window_attempts,
    window_start, created_at, next_attempt_at, body (bytes). `lock` (inside a transaction,
    see `claim`): the rows are locked, and rows another transaction locked are skipped.
    """
    if limit <= 0:
        return []
    skip, params = _not_busy(busy)
    sql = DUE_SQL.format(skip=skip)
    if lock and db.dialect == "postgres":
        sql += " FOR UPDATE OF d SKIP LOCKED"
    rows = db.query(sql, [now, *params, limit])
    out = []
    for row in rows:
        body = row["body"]
        row["body"] = body.encode() if isinstance(body, str) else bytes(body)
        out.append(row)
    return out


def claim(
    db: Db, now: float, limit: int, busy: Collection[str], lease: float
) -> list[dict[str, Any]]:
    """`due`, claimed for this instance (several instances share the outbox): in one
    transaction the rows are locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL: another
    instance's claim passes them over) and their `next_attempt_at` moved `lease` seconds
    on, so no other instance takes them while this one sends. An instance that dies
    mid-send leaves them due again when the lease ends (sent at least once, never by two
    instances at once as long as `lease` outlasts a send). Recording the attempt sets
    `next_attempt_at` anew."""
    with transaction(db):
        db.relaxed_commit()  # lost in a crash: the lease never began, sent again
        rows = due(db, now, limit, busy, lock=True)
        for part in chunks(rows):  # one statement, nothing read back
            chunk = [r["event_id"] for r in part]
            db.execute(
                "UPDATE deliveries SET next_attempt_at = ? "
                f"WHERE event_id IN ({','.join('?' * len(chunk))})",
                [now + lease, *chunk],
            )
    return rows


def next_due_at(db: Db, busy: Collection[str] = ()) -> float | None:
    """When the next delivery becomes due (may be in the past), None if nothing waits.

    Only the earliest pending event of each invoice counts (the others wait for it);
    invoices in `busy` are left out (their sender wakes up when it is done).
    """
    found: list[float | None] = []
    with db.pipeline():
        next_due_later(db, busy, found.append)
    return found[0]


def next_due_later(
    db: Db, busy: Collection[str], then: Callable[[float | None], None]
) -> None:
    """`then(next_due_at(db, busy))`, now or, inside `db.pipeline()`, when it syncs."""
    skip, params = _not_busy(busy)
    cur = db.execute(
        f"SELECT d.next_attempt_at FROM deliveries d INDEXED BY deliveries_heads "
        f"WHERE {_HEAD}{skip} ORDER BY d.next_attempt_at LIMIT 1", params
    )
    db.later(cur, lambda rows: then(None if not rows or rows[0][0] is None
                                    else float(rows[0][0])))


def record_attempt(
    db: Db,
    event_id: str,
    at: float,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    outcome: Outcome,
    next_attempt_at: float | None,
) -> None:
    """Store one attempt and move its delivery, in one transaction.

    `delivered` and `failed` end the delivery; `retry` keeps it pending until
    `next_attempt_at` (required then).
    """
    record_attempts(db, [(event_id, at, status_code, error, duration_ms, outcome,
                          next_attempt_at)])


#: (event_id, at, status_code, error, duration_ms, outcome, next_attempt_at)
Attempt = tuple[str, float, int | None, str | None, int, Outcome, float | None]


def record_attempts(db: Db, attempts: Iterable[Attempt]) -> None:
    """`record_attempt` for several, in one transaction and three statements for all (the
    attempts, their deliveries, the heads of the invoices whose delivery ended), committed
    without waiting for the disk: lost in a database crash, the callbacks are sent again
    (`Db.relaxed_commit`). Each is checked before anything is written."""
    rows = [_checked(a) for a in attempts]
    if not rows:
        return
    with transaction(db):
        db.relaxed_commit()
        for chunk in chunks(rows):
            _write_attempts(db, chunk)


def _checked(attempt: Attempt) -> Attempt:
    """The attempt as stored: a retry needs its next time; an error is cut to MAX_ERROR."""
    event_id, at, status_code, error, duration_ms, outcome, next_attempt_at = attempt
    if outcome == "retry" and next_attempt_at is None:
        raise ValueError("a retry needs next_attempt_at")
    if error is not None and len(error) > MAX_ERROR:
        error = error[: MAX_ERROR - 3] + "..."
    return event_id, at, status_code, error, duration_ms, outcome, next_attempt_at


#: one delivery's new values, for `UPDATE ... FROM (VALUES ...)`: the first row's casts
#: type the columns (PostgreSQL would read a column of NULLs as text)
_TYPED = ("(CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION), "
          "CAST(? AS BIGINT), CAST(? AS TEXT))")


def _write_attempts(db: Db, rows: Sequence[Attempt]) -> None:
    db.execute(
        "INSERT INTO attempts (event_id, at, status_code, error, duration_ms) VALUES "
        + ",".join(["(?, ?, ?, ?, ?)"] * len(rows)),
        [v for event_id, at, status, error, ms, _, _ in rows
         for v in (event_id, at, status, error, ms)],
    )
    # column1 event id, column2 state, column3 next attempt (NULL: unchanged),
    # column4 the attempt's time (delivered_at when delivered), column5 last error
    db.execute(
        "UPDATE deliveries SET state = v.column2, attempts = attempts + 1, "
        "window_attempts = window_attempts + 1, "
        "next_attempt_at = COALESCE(v.column3, next_attempt_at), "
        "delivered_at = CASE WHEN v.column2 = 'delivered' THEN v.column4 "
        "ELSE delivered_at END, last_error = v.column5 "
        f"FROM (VALUES {','.join([_TYPED] + ['(?, ?, ?, ?, ?)'] * (len(rows) - 1))}) AS v "
        "WHERE deliveries.event_id = v.column1",
        [v for event_id, at, _, error, _, outcome, next_at in rows
         for v in (event_id, "pending" if outcome == "retry" else outcome, next_at, int(at),
                   error)],
    )
    ended = [r[0] for r in rows if r[5] != "retry"]
    if ended:  # those invoices' next events (if any) may be sent now
        reset_delivery_heads(db, ended)
        db.notify()


def redeliver(db: Db, event_id: str, now: float) -> bool:
    """Queue a delivery again (whatever its state), due at `now`, with a fresh retry
    window. False if no delivery has this event id; `Gone` (410) if retention pruned the
    event's body (only a delivered event's is), so there is nothing to send."""
    with transaction(db):
        pruned = db.execute(
            "SELECT 1 FROM events WHERE id = ? AND pruned_at IS NOT NULL", [event_id]
        ).fetchone()
        if pruned is not None:
            raise Gone(
                f"event {event_id} was delivered and its body has since been pruned "
                "(retention.event_bodies): it cannot be sent again",
                field="eventId",
            )
        cur = db.execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, window_start = ?, "
            "window_attempts = 0 WHERE event_id = ?",
            [now, now, event_id],
        )
        if cur.rowcount:  # an older event queued again goes before the invoice's later ones
            reset_delivery_heads(db, [event_id])
            db.notify()
        return bool(cur.rowcount)


def queue_depth(db: Db) -> int:
    """Deliveries still pending (due now or waiting for a retry or an earlier event)."""
    found: list[int] = []
    with db.pipeline():
        queue_depth_later(db, found.append)
    return found[0]


def queue_depth_later(db: Db, then: Callable[[int], None]) -> None:
    """`then(queue_depth(db))`, now or, inside `db.pipeline()`, when it syncs."""
    cur = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")
    db.later(cur, lambda rows: then(int(rows[0][0]) if rows else 0))


def list_deliveries(db: Db, failed_only: bool, limit: int) -> list[dict[str, Any]]:
    """Deliveries, newest event first (only `failed` ones if `failed_only`)."""
    where = "WHERE state = 'failed' " if failed_only else ""
    return list(
        db.query(
            "SELECT event_id, event_seq, invoice_id, event, url, state, attempts, "
            "next_attempt_at, created_at, delivered_at, last_error "
            f"FROM deliveries {where}ORDER BY event_seq DESC LIMIT ?",
            [limit],
        )
    )


def attempts_for(db: Db, event_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The attempts of each event id, oldest first: at, status_code, error, duration_ms.
    Every requested id is a key (an empty list when it has no attempt yet)."""
    ids = list(dict.fromkeys(event_ids))
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for chunk in chunks(ids):
        for row in db.query(
            "SELECT event_id, at, status_code, error, duration_ms FROM attempts "
            f"WHERE event_id IN ({','.join('?' * len(chunk))}) ORDER BY id",
            chunk,
        ):
            out[row.pop("event_id")].append(row)
    return out
