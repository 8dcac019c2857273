"""Retention on real SQLite files: what goes, what stays, batches, and the readers of a
pruned event (the API, the dashboard, channel replays, redeliver)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from tests.integration.receiver import create_invoices, event_ids, make_ledger
from tests.unit.test_dashboard import Env as DashEnv
from tests.unit.test_dashboard import env, signed_in  # noqa: F401  (the dashboard fixture)
from tests.unit.test_ledger import invoice_in
from tests.unit.test_ledger import make_ledger as ledger_with_hook
from watcher import outbox, retention
from watcher.config import RetentionConfig
from watcher.errors import Gone
from watcher.metrics import RETENTION_KINDS, Metrics
from watcher.models import Status, Transfer
from watcher.retention import Ages, Pass, Retention, prune_all, stub_body
from watcher.storage.base import Db
from watcher.storage.rows import transfer_row
from watcher.storage.sqlite import SqliteDatabase, connect
from watcher.storage.store import Store, connect_database
from watcher.web.api import ApiContext, create_app, invoice_events
from watcher.web.hub import Hub

URL = "http://127.0.0.1:9/hook"
DAY = 86400
NOW = 1_722_000_000
OLD = NOW - 400 * DAY  # older than every age below
NEW = NOW - 2 * DAY  # younger than every age below
AGES = Ages(attempts=90 * DAY, event_bodies=180 * DAY, unmatched_transfers=90 * DAY, batch=10)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    connection = connect(tmp_path / "retention.db")
    yield connection
    connection.close()


@pytest.fixture
def db(database: str) -> Iterator[Db]:
    """A migrated database on each engine (SQLite, PostgreSQL)."""
    connection = connect_database(database)
    yield connection
    connection.close()


def only(kind: str, batch: int = 10) -> Ages:
    """AGES with every other kind off."""
    return Ages(**{k: (AGES.age(k) if k == kind else 0) for k in retention.KINDS}, batch=batch)


def add_transfer(
    db: Db, n: int, kind: str, seen_at: int, invoice_id: str | None = None
) -> str:
    t = Transfer(
        network="local", asset="ETH", tx_hash=f"0x{n:064x}", log_index=n % 7,
        from_addr="0x" + "22" * 20, to_addr="0x" + "11" * 20, amount=1000 + n, block=100 + n,
        block_hash=f"0x{n + 1:064x}", timestamp=seen_at, invoice_id=invoice_id, kind=kind,
    )  # fmt: skip
    row = transfer_row(t, seen_at)
    db.execute(f"INSERT INTO transfers ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
               list(row.values()))
    return t.id


def transfer_ids(db: Db) -> set[str]:
    return {r[0] for r in db.execute("SELECT id FROM transfers").fetchall()}


def set_state(db: Db, event_id: str, state: str) -> None:
    db.execute("UPDATE deliveries SET state = ?, head = 0 WHERE event_id = ?", [state, event_id])


def body_of(db: Db, event_id: str) -> dict[str, Any]:
    raw = db.execute("SELECT body FROM events WHERE id = ?", [event_id]).fetchone()[0]
    data: dict[str, Any] = orjson.loads(raw)
    return data


def pruned_ids(db: Db) -> set[str]:
    rows = db.execute("SELECT id FROM events WHERE pruned_at IS NOT NULL").fetchall()
    return {r[0] for r in rows}


# ---------------------------------------------------------------- what goes, what stays


def test_attempts_older_than_the_age_go_newer_ones_stay(db: Db) -> None:
    create_invoices(db, make_ledger(), 1, URL, OLD)
    (evt,) = event_ids(db)
    times = [OLD, NOW - 91 * DAY, NOW - 90 * DAY + 1, NEW, NOW]
    for at in times:
        outbox.record_attempt(db, evt, float(at), 500, "HTTP 500", 3, "retry", float(at + 10))
    outbox.record_attempt(db, evt, float(NOW), 200, None, 3, "delivered", None)
    p = prune_all(db, only("attempts"), NOW)
    assert p.pruned == {"attempts": 2, "event_bodies": 0, "unmatched_transfers": 0}
    left = [a["at"] for a in outbox.attempts_for(db, [evt])[evt]]
    assert left == [NOW - 90 * DAY + 1, NEW, NOW, NOW]
    (d,) = outbox.list_deliveries(db, failed_only=False, limit=5)
    assert (d["state"], d["attempts"]) == ("delivered", 6)  # the delivery keeps its count


def test_unmatched_transfers_go_payments_and_late_payments_never(db: Db) -> None:
    ledger = ledger_with_hook()
    ledger.start_network(db, "testnet", 1, OLD)
    inv = invoice_in(db, ledger, Status.COMPLETED, OLD)  # a real payment, old
    payments = transfer_ids(db)
    assert len(payments) == 1
    late = add_transfer(db, 1, "late", OLD, inv.id)
    old_unmatched = [add_transfer(db, n, "unmatched", OLD - n) for n in range(10, 35)]
    edge = add_transfer(db, 40, "unmatched", NOW - 90 * DAY)  # exactly the age: stays
    new_unmatched = add_transfer(db, 41, "unmatched", NEW)
    assigned = add_transfer(db, 42, "unmatched", OLD)
    db.execute("UPDATE transfers SET kind = 'payment', invoice_id = ?, assigned = 1 "
               "WHERE id = ?", [inv.id, assigned])  # settled by hand: a payment now
    p = prune_all(db, only("unmatched_transfers"), NOW)
    assert p.pruned["unmatched_transfers"] == len(old_unmatched) == 25
    assert transfer_ids(db) == payments | {late, edge, new_unmatched, assigned}
    kinds = dict(db.execute("SELECT id, kind FROM transfers").fetchall())
    assert sorted(kinds.values()) == ["late", "payment", "payment", "unmatched", "unmatched"]
    # A second pass finds nothing more.
    assert prune_all(db, only("unmatched_transfers"), NOW).pruned["unmatched_transfers"] == 0


def test_event_bodies_of_delivered_events_and_events_without_delivery_go(db: Db) -> None:
    ids = create_invoices(db, make_ledger(), 5, URL, OLD, cancel=True)  # 10 events
    events = event_ids(db)
    delivered, pending, failed, fresh = events[0:4], events[4:6], events[6:8], events[8:10]
    for e in delivered + fresh:
        set_state(db, e, "delivered")
    for e in failed:
        set_state(db, e, "failed")
    db.execute("UPDATE events SET created_at = ? WHERE id IN (?, ?)", [NEW, *fresh])
    # Events that never had a delivery (callbacks off), old and new.
    no_url = create_invoices(db, make_ledger(), 2, None, OLD, first=10)
    bare = event_ids(db, no_url)
    db.execute("UPDATE events SET created_at = ? WHERE id = ?", [NEW, bare[1]])
    before = {r["id"]: dict(r) for r in db.query("SELECT * FROM events")}

    p = prune_all(db, only("event_bodies"), NOW)
    assert pruned_ids(db) == set(delivered) | {bare[0]}
    assert p.pruned["event_bodies"] == 5
    for e in pending + failed + fresh + [bare[1]]:  # untouched, byte for byte
        assert db.execute("SELECT body FROM events WHERE id = ?", [e]).fetchone()[0] == \
            before[e]["body"]
    for e in delivered:
        row = db.execute("SELECT * FROM events WHERE id = ?", [e]).fetchone()
        assert row is not None  # the row stays: id, name, status, time, cause
        stub = body_of(db, e)
        assert "data" not in stub and stub["pruned"] is True
        original = orjson.loads(before[e]["body"])
        assert stub["id"] == e and stub["event"] == original["event"]
        assert stub["createdAt"] == original["createdAt"]
        assert stub["invoiceId"] == original["data"]["id"] == before[e]["invoice_id"]
        assert len(stub_body(e, stub["event"], OLD, stub["invoiceId"])) < 200
    after = {r["id"]: r for r in db.query("SELECT id, event, status, created_at FROM events")}
    assert {k: (v["event"], v["status"], v["created_at"]) for k, v in after.items()} == {
        k: (v["event"], v["status"], v["created_at"]) for k, v in before.items()}
    # The sender still finds the pending events, with their whole bodies.
    due = outbox.due(db, float(NOW), 100, set())
    assert {r["event_id"] for r in due} <= set(pending)
    assert all(orjson.loads(r["body"]).get("data") for r in due)
    # The API's (and dashboard's) history of an invoice lists every event still.
    history = invoice_events(db, ids[0])
    assert history is not None
    assert [e["event"] for e in history] == ["invoice.created", "invoice.voided"]
    assert [e["delivery"]["state"] for e in history] == ["delivered", "delivered"]
    assert prune_all(db, only("event_bodies"), NOW).pruned["event_bodies"] == 0


def test_a_failed_or_pending_delivery_keeps_its_body_among_many(db: Db) -> None:
    """More kept events than a batch come first in age order: the pass goes past them."""
    create_invoices(db, make_ledger(), 30, URL, OLD)
    events = event_ids(db)
    db.execute("UPDATE events SET created_at = created_at + seq")  # a strict age order
    kept, gone = events[:25], events[25:]
    for e in kept[::2]:
        set_state(db, e, "failed")
    for e in gone:
        set_state(db, e, "delivered")
    p = prune_all(db, only("event_bodies", batch=4), NOW)
    assert pruned_ids(db) == set(gone) and p.pruned["event_bodies"] == 5
    assert p.batches == 2  # 4 + 1: the 25 kept ones cost no batch of their own


def test_off_prunes_nothing(db: Db) -> None:
    create_invoices(db, make_ledger(), 3, URL, OLD)
    for e in event_ids(db):
        outbox.record_attempt(db, e, float(OLD), 200, None, 1, "delivered", None)
    add_transfer(db, 1, "unmatched", OLD)
    off = Ages(0, 0, 0, 10)
    assert not off.enabled
    p = prune_all(db, off, NOW)
    assert p.done and p.batches == 0
    assert db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 3
    assert pruned_ids(db) == set() and len(transfer_ids(db)) == 1


# ---------------------------------------------------------------- batches


def test_each_batch_is_one_short_transaction_of_at_most_batch_rows(
    sqlite_db: SqliteDatabase,
) -> None:
    """SQLite's statement trace: one `BEGIN IMMEDIATE` ... `COMMIT` per batch."""
    db = sqlite_db
    create_invoices(db, make_ledger(), 23, URL, OLD)
    for e in event_ids(db):
        outbox.record_attempt(db, e, float(OLD), 200, None, 1, "delivered", None)
    for n in range(23):
        add_transfer(db, n, "unmatched", OLD)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    p = Pass(Ages(AGES.attempts, AGES.event_bodies, AGES.unmatched_transfers, 10), NOW)
    steps: list[tuple[str, int]] = []
    try:
        while not p.done:
            statements.clear()
            before = db.conn.total_changes
            kind, changed = p.step(db)
            steps.append((kind, changed))
            assert db.conn.total_changes - before == changed <= 10
            assert not db.in_transaction
            assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
            assert statements.count("BEGIN IMMEDIATE") == 1
            writes = [s for s in statements if s.startswith(("DELETE", "UPDATE"))]
            assert len({w.split()[:3][-1] if w.startswith("DELETE") else w.split()[1]
                        for w in writes}) == 1  # one table per batch
    finally:
        db.conn.set_trace_callback(None)
    # Round robin: each kind 10, 10, 3 rows, interleaved.
    assert [c for k, c in steps if k == "attempts"] == [10, 10, 3]
    assert [c for k, c in steps if k == "event_bodies"] == [10, 10, 3]
    assert [c for k, c in steps if k == "unmatched_transfers"] == [10, 10, 3]
    assert [k for k, _ in steps[:3]] == list(retention.KINDS)
    assert p.pruned == dict.fromkeys(retention.KINDS, 23)


def test_the_batches_use_their_indexes(sqlite_db: SqliteDatabase) -> None:
    """Each batch reads its candidates through an index (migration 0014), never a scan of
    the whole table (SQLite's plan: the statements name their indexes there)."""
    db = sqlite_db
    plans = {
        "attempts": "SELECT id FROM attempts INDEXED BY attempts_at WHERE at < 1 "
                    "ORDER BY at LIMIT 5",
        "events": "SELECT seq FROM events INDEXED BY events_unpruned WHERE pruned_at IS NULL "
                  "AND created_at < 1 AND (created_at, seq) > (0, 0) ORDER BY created_at, seq "
                  "LIMIT 5",
        "transfers": "SELECT rowid FROM transfers INDEXED BY transfers_unmatched_seen WHERE "
                     "kind = 'unmatched' AND invoice_id IS NULL AND seen_at < 1 "
                     "ORDER BY seen_at LIMIT 5",
    }
    for sql in plans.values():
        detail = " ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
        assert "INDEX" in detail and "TEMP B-TREE" not in detail, detail
        assert "SCAN" not in detail, detail
    # The statements that write find their rows by rowid, never through another index
    # (`transfers_kind` would visit every unmatched transfer on each batch).
    for sql, args in [
        (retention.DELETE_ATTEMPTS, [1, 2, 3]),
        (retention.SELECT_EVENTS, [1, 2, 3, 4]),
        (retention.UPDATE_EVENT, [b"{}", 1, 2, 3]),
        (retention.DELETE_UNMATCHED, [1, 2, 3]),
    ]:
        plan = [r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()]
        assert not any(p.startswith("SCAN") or "TEMP B-TREE" in p for p in plan), plan
        if not sql.startswith("SELECT"):
            assert plan[0].endswith("USING INTEGER PRIMARY KEY (rowid=?)"), plan


# ---------------------------------------------------------------- the daemon's side


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_retention_ticks_at_its_interval_and_counts(tmp_path: Path) -> None:
    store = await Store(tmp_path / "w.db").open()
    try:
        await store.run(create_invoices, make_ledger(), 3, URL, OLD)
        for e in await store.run(event_ids):
            await store.run(outbox.record_attempt, e, float(OLD), 200, None, 1, "delivered",
                            None)
        for n in range(7):
            await store.run(add_transfer, n, "unmatched", OLD)
        cfg = RetentionConfig(attempts="90d", event_bodies="180d", unmatched_transfers="90d",
                              batch=2, interval="1h")
        metrics = Metrics(CollectorRegistry())
        clock = FakeClock(NOW)
        r = Retention(cfg, metrics, clock=clock, budget=0.0, start_delay=60)
        assert await r.tick(store) is None  # not yet: START_DELAY
        clock.t += 60
        ticks = 0
        while (p := await r.tick(store)) is None:  # budget 0: one batch per tick
            ticks += 1
            assert ticks < 20
        assert p.pruned == {"attempts": 3, "event_bodies": 3, "unmatched_transfers": 7}
        assert ticks == p.batches - 1 > 3
        for kind, n in p.pruned.items():
            value = metrics.registry.get_sample_value(
                "payment_watcher_retention_pruned_rows_total", {"kind": kind})
            assert value == n
        assert r.next_at == NOW + 60 + 3600
        await store.run(add_transfer, 99, "unmatched", OLD)
        clock.t += 3599
        assert await r.tick(store) is None  # before the interval: nothing
        assert len(await store.run(transfer_ids)) == 1
        clock.t += 1
        while (p := await r.tick(store)) is None:
            pass
        assert p.pruned == {"attempts": 0, "event_bodies": 0, "unmatched_transfers": 1}
        off = Retention(RetentionConfig(attempts="off", event_bodies=0,
                                        unmatched_transfers="off"), clock=clock, start_delay=0)
        assert await off.tick(store) is None and off.current is None
    finally:
        await store.close()


def test_metric_kinds_are_the_retention_kinds() -> None:
    assert RETENTION_KINDS == retention.KINDS
    m = Metrics(CollectorRegistry())
    for kind in RETENTION_KINDS:
        assert m.registry.get_sample_value(
            "payment_watcher_retention_pruned_rows_total", {"kind": kind}) == 0


# ---------------------------------------------------------------- readers of a pruned event


def _delivered_and_pruned(db: Db) -> tuple[str, list[str]]:
    """An old invoice whose two events were delivered, then pruned; (invoice, events)."""
    (inv,) = create_invoices(db, make_ledger(), 1, URL, OLD, cancel=True)
    events = event_ids(db, [inv])
    for e in events:
        set_state(db, e, "delivered")
    prune_all(db, only("event_bodies"), NOW)
    assert pruned_ids(db) == set(events)
    return inv, events


def test_redeliver_of_a_pruned_event_is_gone(db: Db) -> None:
    _, events = _delivered_and_pruned(db)
    with pytest.raises(Gone, match="pruned") as info:
        outbox.redeliver(db, events[0], float(NOW))
    assert info.value.status == 410 and not db.in_transaction
    assert db.execute("SELECT state FROM deliveries WHERE event_id = ?",
                      [events[0]]).fetchone()[0] == "delivered"  # nothing queued
    (other,) = create_invoices(db, make_ledger(), 1, URL, NOW, first=5)
    (evt,) = event_ids(db, [other])
    set_state(db, evt, "failed")
    assert outbox.redeliver(db, evt, float(NOW)) is True  # a kept body: queued as before


@pytest.fixture
async def api(database: str, aiohttp_client: Any) -> AsyncIterator[tuple[TestClient[Any, Any],
                                                                         Store]]:
    store = await Store(database).open()
    ctx = ApiContext(store, make_ledger(), ["k"])
    client = await aiohttp_client(create_app(ctx))
    yield client, store
    await store.close()


async def test_the_api_copes_with_a_pruned_event(api: tuple[TestClient[Any, Any], Store]) -> None:
    client, store = api
    inv, events = await store.run(_delivered_and_pruned)
    auth = {"Authorization": "Bearer k"}
    resp = await client.get(f"/v1/invoices/{inv}/events", headers=auth)
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert [e["id"] for e in data] == events
    assert [e["event"] for e in data] == ["invoice.created", "invoice.voided"]
    resp = await client.post(f"/v1/callbacks/{events[0]}/redeliver", headers=auth)
    text = await resp.text()
    assert resp.status == 410 and "Traceback" not in text
    error = json.loads(text)["error"]
    assert error["code"] == "gone" and error["field"] == "eventId" and "pruned" in error["message"]


async def test_the_dashboard_copes_with_a_pruned_event(env: DashEnv) -> None:  # noqa: F811
    await signed_in(env)
    inv = await env.make(Status.COMPLETED)
    events = await env.store.run(event_ids, [inv.id])

    def prune(db: Db) -> None:
        for e in events:
            set_state(db, e, "delivered")
        db.execute("UPDATE events SET created_at = ? WHERE invoice_id = ?", [OLD, inv.id])
        prune_all(db, only("event_bodies"), NOW)

    await env.store.run(prune)
    assert await env.store.run(pruned_ids) == set(events)
    resp, page = await env.get(f"/dashboard/invoices/{inv.id}")
    assert resp.status == 200
    for event in ("invoice.created", "invoice.waiting_for_confirmations", "invoice.completed"):
        assert f"<strong>{event}</strong>" in page
    resp, page = await env.post(f"/dashboard/callbacks/{events[0]}/redeliver")
    assert resp.status == 410 and "pruned" in page
    assert env.redelivered == []


async def test_a_channel_replay_sends_the_stub(tmp_path: Path) -> None:
    store = await Store(tmp_path / "hub.db").open()
    try:
        inv, events = await store.run(_delivered_and_pruned)
        (newer,) = await store.run(create_invoices, make_ledger(), 1, URL, NOW, first=7)
        hub = Hub(store)
        upto = await store.run(lambda db: db.execute("SELECT MAX(seq) FROM events").fetchone()[0])
        msgs = await hub.replay(("all", ""), 0, upto)
        assert [m.event_id for m in msgs] == [*events, *await store.run(event_ids, [newer])]
        first = json.loads(msgs[0].encoded("all"))
        assert first == {"id": events[0], "event": "invoice.created",
                         "createdAt": first["createdAt"], "invoiceId": inv, "pruned": True,
                         "channel": "all"}
        assert "data" in json.loads(msgs[-1].encoded("all"))  # a kept body is whole
        assert await hub.event_seq(events[0]) is not None  # `since` a pruned event works
    finally:
        await store.close()
