"""The outbox SQL on a real migrated database, with rows written by the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.receiver import create_invoices, event_ids, make_ledger
from watcher import outbox
from watcher.storage.base import Db
from watcher.storage.sqlite import connect
from watcher.storage.store import connect_database

URL = "http://127.0.0.1:9/hook"
T0 = 1_722_000_000


@pytest.fixture
def db(database: str) -> Iterator[Db]:
    """A migrated database on each engine (SQLite, PostgreSQL)."""
    connection = connect_database(database)
    yield connection
    connection.close()


def _due_ids(
    db: Db, now: float = T0, limit: int = 100, busy: set[str] | None = None
) -> list[str]:
    return [r["event_id"] for r in outbox.due(db, now, limit, busy or set())]


def test_due_gives_the_first_event_of_each_invoice_with_its_body(db: Db) -> None:
    a, b = create_invoices(db, make_ledger(), 2, URL, T0, cancel=True)
    a_created, a_voided = event_ids(db, [a])
    b_created, b_voided = event_ids(db, [b])
    rows = outbox.due(db, T0, 100, set())
    assert [r["event_id"] for r in rows] == [a_created, b_created]
    body = db.execute("SELECT body FROM events WHERE id = ?", [a_created]).fetchone()[0]
    assert rows[0]["body"] == body and isinstance(rows[0]["body"], bytes)
    assert rows[0]["event"] == "invoice.created" and rows[0]["url"] == URL
    assert rows[0]["window_start"] == T0 and rows[0]["window_attempts"] == 0
    # The second event of each invoice waits for the first.
    outbox.record_attempt(db, a_created, T0, 200, None, 3, "delivered", None)
    assert _due_ids(db) == [a_voided, b_created]
    outbox.record_attempt(db, b_created, T0, 500, "HTTP 500", 3, "retry", T0 + 10)
    assert _due_ids(db) == [a_voided]  # b's voided still waits behind the retry
    assert _due_ids(db, now=T0 + 10) == [a_voided, b_created]
    assert b_voided not in _due_ids(db, now=T0 + 10_000)


def test_several_attempts_recorded_at_once_move_each_delivery_and_head(db: Db) -> None:
    """A sender cycle records its finished attempts in three statements: each delivery
    gets its own state, time and error, and each invoice whose delivery ended has its next
    event as its head; a batch of only successes (no next time at all) works too."""
    a, b, c = create_invoices(db, make_ledger(), 3, URL, T0, cancel=True)
    (a1, a2), (b1, b2), (c1, c2) = (event_ids(db, [i]) for i in (a, b, c))
    outbox.record_attempts(db, [
        (a1, T0 + 1.5, 200, None, 3, "delivered", None),
        (b1, T0 + 2.5, 503, "HTTP 503", 4, "retry", T0 + 30.5),
        (c1, T0 + 3.5, 410, "x" * 2000, 5, "failed", None),
    ])
    got = {r["event_id"]: r for r in db.query(
        "SELECT event_id, state, attempts, next_attempt_at, delivered_at, last_error, head "
        "FROM deliveries")}
    assert (got[a1]["state"], got[a1]["delivered_at"], got[a1]["last_error"]) == (
        "delivered", T0 + 1, None)
    assert (got[b1]["state"], got[b1]["next_attempt_at"], got[b1]["head"]) == (
        "pending", T0 + 30.5, 1)
    assert got[c1]["state"] == "failed" and got[c1]["delivered_at"] is None
    assert len(got[c1]["last_error"]) == outbox.MAX_ERROR
    assert all(got[e]["attempts"] == 1 for e in (a1, b1, c1))
    assert (got[a2]["head"], got[b2]["head"], got[c2]["head"]) == (1, 0, 1)
    assert _due_ids(db, now=T0 + 5) == [a2, c2]
    outbox.record_attempts(db, [(a2, T0 + 6, 200, None, 1, "delivered", None),
                                (c2, T0 + 6, 200, None, 1, "delivered", None)])
    assert _due_ids(db, now=T0 + 31) == [b1]
    attempts = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    assert attempts == 5


def test_due_respects_next_attempt_at_limit_and_busy(db: Db) -> None:
    ids = create_invoices(db, make_ledger(), 3, URL, T0)
    first = event_ids(db)
    assert _due_ids(db, now=T0 - 1) == []
    assert _due_ids(db, limit=2) == first[:2]
    assert _due_ids(db, limit=0) == []
    assert _due_ids(db, busy={ids[0], ids[2]}) == [first[1]]


def test_failed_does_not_block_later_events(db: Db) -> None:
    (a,) = create_invoices(db, make_ledger(), 1, URL, T0, cancel=True)
    created, voided = event_ids(db, [a])
    outbox.record_attempt(db, created, T0, 400, "HTTP 400", 5, "failed", None)
    assert _due_ids(db) == [voided]


def test_record_attempt_writes_the_attempt_and_the_state(db: Db) -> None:
    create_invoices(db, make_ledger(), 1, URL, T0)
    (evt,) = event_ids(db)
    outbox.record_attempt(db, evt, T0 + 1.5, None, "x" * 2000, 10_000, "retry", T0 + 20)
    outbox.record_attempt(db, evt, T0 + 21, 204, None, 12, "delivered", None)
    (row,) = outbox.list_deliveries(db, failed_only=False, limit=10)
    assert row["state"] == "delivered" and row["attempts"] == 2
    assert row["delivered_at"] == T0 + 21 and row["next_attempt_at"] == T0 + 20
    tries = outbox.attempts_for(db, [evt, "evt_unknown"])
    assert tries["evt_unknown"] == []
    assert [(t["status_code"], t["duration_ms"]) for t in tries[evt]] == [(None, 10_000), (204, 12)]
    assert len(tries[evt][0]["error"]) == outbox.MAX_ERROR
    with pytest.raises(ValueError):
        outbox.record_attempt(db, evt, T0, 500, "e", 1, "retry", None)


def test_redeliver_requeues_with_a_fresh_window(db: Db) -> None:
    (a,) = create_invoices(db, make_ledger(), 1, URL, T0, cancel=True)
    created, voided = event_ids(db, [a])
    outbox.record_attempt(db, created, T0, 500, "HTTP 500", 1, "retry", T0 + 10)
    outbox.record_attempt(db, created, T0 + 10, 410, "HTTP 410", 1, "failed", None)
    outbox.record_attempt(db, voided, T0 + 10, 200, None, 1, "delivered", None)
    assert outbox.queue_depth(db) == 0 and outbox.next_due_at(db) is None
    assert [d["event_id"] for d in outbox.list_deliveries(db, True, 10)] == [created]

    assert outbox.redeliver(db, created, T0 + 100) is True
    assert outbox.redeliver(db, "evt_nope", T0 + 100) is False
    (row,) = outbox.due(db, T0 + 100, 10, set())
    assert row["event_id"] == created and row["window_start"] == T0 + 100
    assert row["window_attempts"] == 0 and row["attempts"] == 2  # history is kept
    assert outbox.queue_depth(db) == 1 and outbox.list_deliveries(db, True, 10) == []
    # A delivered event can be sent again too.
    assert outbox.redeliver(db, voided, T0 + 100)
    assert outbox.queue_depth(db) == 2


def test_next_due_at_counts_only_heads_not_busy(db: Db) -> None:
    assert outbox.next_due_at(db) is None
    a, b = create_invoices(db, make_ledger(), 2, URL, T0, cancel=True)
    a_created, _ = event_ids(db, [a])
    b_created, _ = event_ids(db, [b])
    outbox.record_attempt(db, a_created, T0, 503, "HTTP 503", 1, "retry", T0 + 30)
    assert outbox.next_due_at(db) == T0  # b's first event
    assert outbox.next_due_at(db, busy={b}) == T0 + 30  # a's voided waits behind T0 + 30
    outbox.record_attempt(db, b_created, T0, 503, "HTTP 503", 1, "retry", T0 + 60)
    assert outbox.next_due_at(db) == T0 + 30
    assert outbox.queue_depth(db) == 4


def test_deliveries_only_for_invoices_with_a_url(db: Db) -> None:
    ledger = make_ledger()
    create_invoices(db, ledger, 2, None, T0)
    assert outbox.queue_depth(db) == 0 and _due_ids(db) == []
    create_invoices(db, make_ledger("http://127.0.0.1:9/default"), 1, None, T0, first=5)
    (row,) = outbox.due(db, T0, 10, set())
    assert row["url"] == "http://127.0.0.1:9/default"


def _heads(db: Db) -> set[str]:
    return {r[0] for r in db.execute("SELECT event_id FROM deliveries WHERE head = 1")}


def test_one_head_per_invoice_through_every_change(db: Db) -> None:
    a, b = create_invoices(db, make_ledger(), 2, URL, T0, cancel=True)
    a_created, a_voided = event_ids(db, [a])
    b_created, b_voided = event_ids(db, [b])
    assert _heads(db) == {a_created, b_created}  # written with the events
    outbox.record_attempt(db, a_created, T0, 200, None, 3, "delivered", None)
    assert _heads(db) == {b_created, a_voided}
    outbox.record_attempt(db, b_created, T0, 500, "HTTP 500", 3, "retry", T0 + 10)
    assert _heads(db) == {b_created, a_voided}  # a retry keeps its place
    outbox.record_attempt(db, b_created, T0, 410, "HTTP 410", 3, "failed", None)
    assert _heads(db) == {a_voided, b_voided}
    # an older event queued again goes first: the later one waits behind it again
    assert outbox.redeliver(db, b_created, T0 + 20)
    assert _heads(db) == {b_created, a_voided}
    assert set(_due_ids(db, now=T0 + 20)) == {a_voided, b_created}
    outbox.record_attempt(db, a_voided, T0, 200, None, 3, "delivered", None)
    assert b_voided not in _due_ids(db, now=T0 + 30)


def test_the_due_queries_read_only_heads_from_their_index(tmp_path: Path) -> None:
    """O(due), not O(pending): while a receiver is down, events queued behind a retrying
    head are never walked (the plan reads the partial index of heads). SQLite's plan: the
    query names the index there; PostgreSQL's planner picks by its statistics."""
    db = connect(tmp_path / "plan.db")
    for sql, args in (
        (outbox.DUE_SQL.format(skip=""), [T0, 10]),
        (outbox.DUE_SQL.format(skip=" AND d.invoice_id NOT IN (?)"), [T0, "inv", 10]),
    ):
        plan = " ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "deliveries_heads" in plan and "CORRELATED" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # in index order: nothing sorted


def test_claims_keep_a_delivery_to_one_instance_until_its_lease_ends(database: str) -> None:
    """Two instances (two connections) share the outbox: what one claims, the other does
    not get, until the lease ends (the claimer died mid-send): then it is due again."""
    one, two = connect_database(database), connect_database(database)
    try:
        create_invoices(one, make_ledger(), 4, URL, T0)
        first = outbox.claim(one, T0, 2, set(), lease=30)
        second = outbox.claim(two, T0, 10, set(), lease=30)
        assert len(first) == 2 and len(second) == 2
        assert {r["event_id"] for r in first}.isdisjoint(r["event_id"] for r in second)
        assert outbox.claim(one, T0 + 29, 10, set(), lease=30) == []
        again = outbox.claim(two, T0 + 31, 10, set(), lease=30)  # nobody recorded an attempt
        assert sorted(r["event_id"] for r in again) == sorted(
            r["event_id"] for r in first + second)
        # recorded: gone from the queue whatever the lease said
        for r in again:
            outbox.record_attempt(two, r["event_id"], T0 + 31, 200, None, 1, "delivered", None)
        assert outbox.claim(one, T0 + 1_000, 10, set(), lease=30) == []
    finally:
        one.close()
        two.close()


def test_concurrent_claims_never_share_a_row(database: str) -> None:
    """Claims racing from threads, each with its own connection: every row is claimed
    exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    setup = connect_database(database)
    create_invoices(setup, make_ledger(), 40, URL, T0)
    setup.close()

    def claimer(_: int) -> list[str]:
        db = connect_database(database)
        try:
            got: list[str] = []
            while rows := outbox.claim(db, T0, 3, set(), lease=60):
                got += [r["event_id"] for r in rows]
            return got
        finally:
            db.close()

    with ThreadPoolExecutor(4) as pool:
        claimed = [e for got in pool.map(claimer, range(4)) for e in got]
    assert len(claimed) == 40 and len(set(claimed)) == 40


def test_a_delivery_written_behind_a_waiting_one_of_its_invoice_is_not_a_head(db: Db) -> None:
    """In one pipelined transaction (a range commit), an invoice's second event decides its
    delivery's head from the rows written before it, even while they wait to go together
    (SQLite: each row of an `executemany` sees those before it; PostgreSQL: it goes at
    once, after them): one head per invoice, the first event."""
    from watcher.storage.rows import load_invoice
    from watcher.storage.store import transaction

    ledger = make_ledger()
    a, b = create_invoices(db, ledger, 2, URL, T0)
    for invoice_id in (a, b):
        outbox.record_attempt(db, event_ids(db, [invoice_id])[0], T0, 200, None, 3,
                              "delivered", None)
    invoices = [load_invoice(db, a), load_invoice(db, b)]
    with db.pipeline(), transaction(db):  # no read between the writes: they all wait
        for inv in invoices:
            assert inv is not None
            ledger._emit(db, inv, "invoice.late_payment", None, T0)
            ledger._emit(db, inv, "invoice.updated", None, T0)
    a_late, a_updated = event_ids(db, [a])[1:]  # the second waits behind the first
    b_late, b_updated = event_ids(db, [b])[1:]
    assert _heads(db) == {a_late, b_late}
    assert _due_ids(db) == [a_late, b_late]
    assert {a_updated, b_updated}.isdisjoint(_due_ids(db, now=T0 + 10_000))
