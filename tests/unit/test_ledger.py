"""Ledger rules through a real SQLite file: create, idempotency, unique amounts, merchant
actions, and the status event + outbox row written in the same transaction as the change.

The helpers at the top are shared with tests/unit/test_api.py.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from typing import Any

import psycopg
import pytest

from watcher.errors import Conflict, Invalid, NotFound
from watcher.ledger import Ledger, NetworkInfo, NewInvoice, Outcome, ScanBatch
from watcher.models import Asset, Invoice, Status, Transfer
from watcher.storage.base import Db
from watcher.storage.postgres import PgDatabase
from watcher.storage.store import connect_database

NET = "testnet"
TOKEN = "0x1111111111111111111111111111111111111111"
SHARED = "0x2222222222222222222222222222222222222222"
DEDICATED = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc"
OTHER = "0x41ce73496136A0072013B9187550e30841eDeD74"
HOOK = "https://shop.example.com/hooks/payment"
CONFIRMATIONS = 2


def make_networks() -> dict[str, NetworkInfo]:
    assets = {
        "ETH": Asset(NET, "ETH", 18),
        "USDT": Asset(NET, "USDT", 6, token=TOKEN, shared_address=SHARED, amount_step=1),
    }
    return {NET: NetworkInfo(NET, 31337, CONFIRMATIONS, assets)}


def make_ledger(callback_url: str | None = HOOK) -> Ledger:
    return Ledger(
        make_networks(),
        tolerance=Fraction(0),
        default_ttl=3600,
        late_window=3600,
        default_callback_url=callback_url,
    )


def new(
    amount: int = 10_000_000, asset: str = "USDT", address: str | None = None, **kw: Any
) -> NewInvoice:
    return NewInvoice(network=NET, asset=asset, amount=amount, address=address, expire_at=None,
                      **kw)


def tx_hash() -> str:
    return "0x" + uuid.uuid4().hex + uuid.uuid4().hex


def pay(
    db: Db, ledger: Ledger, inv: Invoice, amount: int, *, deep: bool, now: int
) -> Outcome:
    """Record a payment of `amount` to `inv` in a scanned block; `deep` gives it enough
    confirmations to settle, otherwise it waits for them."""
    block = 1000 + db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
    t = Transfer(NET, inv.asset, tx_hash(), 0 if inv.token_address else None, OTHER,
                 inv.to_addr, amount, block, tx_hash(), now, invoice_id=inv.id, kind="payment")
    head = block + CONFIRMATIONS + 3 if deep else block
    return ledger.apply_scan(db, ScanBatch(NET, head, None, now, head, [t]), now)


def invoice_in(
    db: Db, /, ledger: Ledger, status: Status, now: int, **kw: Any
) -> Invoice:
    """A fresh invoice brought into `status` through the ledger (REVERSED by SQL)."""
    inv, _, _ = ledger.create(db, new(address=None, **kw), now)
    if status == Status.WAITING_FOR_CONFIRMATIONS:
        pay(db, ledger, inv, inv.amount, deep=False, now=now)
    elif status in (Status.COMPLETED, Status.REFUNDED, Status.REVERSED):
        pay(db, ledger, inv, inv.amount, deep=True, now=now)
        if status == Status.REFUNDED:
            ledger.refund(db, inv.id, now, None)
        if status == Status.REVERSED:
            db.execute("UPDATE invoices SET status = 'REVERSED' WHERE id = ?", [inv.id])
    elif status == Status.PARTIAL:
        pay(db, ledger, inv, inv.amount // 4, deep=True, now=now)
    elif status == Status.VOIDED:
        ledger.cancel(db, inv.id, now)
    got = ledger.get(db, inv.id)
    assert got.status == status
    return got


def rows(db: Db, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    return list(db.query(sql, params or []))


def events_of(db: Db, invoice_id: str) -> list[str]:
    return [r["event"] for r in rows(
        db, "SELECT event FROM events WHERE invoice_id = ? ORDER BY seq", [invoice_id])]


def deliveries_of(db: Db, invoice_id: str) -> list[str]:
    return [r["event"] for r in rows(
        db, "SELECT event FROM deliveries WHERE invoice_id = ? ORDER BY event_seq", [invoice_id])]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def db(database: str) -> Iterator[Db]:
    """A migrated database on each engine (SQLite, PostgreSQL), the network started."""
    connection = connect_database(database)
    make_ledger().start_network(connection, NET, 1, 0)
    yield connection
    connection.close()


@pytest.fixture
def ledger() -> Ledger:
    return make_ledger()


NOW = int(time.time())


# ---------------------------------------------------------------- create


def test_create_dedicated_writes_invoice_event_and_delivery(db: Db, ledger: Ledger) -> None:
    inv, created, out = ledger.create(db, new(asset="ETH", address=DEDICATED,
                                               amount=10**18), NOW)
    assert created
    assert inv.status == Status.PENDING and not inv.shared
    assert inv.to_addr == DEDICATED and inv.expire_at == NOW + 3600
    assert [c.event for c in out.changes] == ["invoice.created"]
    assert events_of(db, inv.id) == ["invoice.created"]
    assert deliveries_of(db, inv.id) == ["invoice.created"]
    d = rows(db, "SELECT * FROM deliveries WHERE invoice_id = ?", [inv.id])[0]
    assert d["url"] == HOOK and d["state"] == "pending"


def test_create_without_any_callback_url_writes_event_but_no_delivery(db: Db) -> None:
    ledger = make_ledger(callback_url=None)
    inv, _, _ = ledger.create(db, new(), NOW)
    assert events_of(db, inv.id) == ["invoice.created"]
    assert deliveries_of(db, inv.id) == []
    with_url, _, _ = ledger.create(db, new(callback_url="https://a.example/cb"), NOW)
    assert deliveries_of(db, with_url.id) == ["invoice.created"]


def test_external_id_is_idempotent_by_fingerprint(db: Db, ledger: Ledger) -> None:
    first, created, _ = ledger.create(db, new(external_id="o-1", fingerprint="f1"), NOW)
    again, created_again, out = ledger.create(db, new(external_id="o-1", fingerprint="f1"), NOW)
    assert created and not created_again
    assert again.id == first.id and out.changes == []
    with pytest.raises(Conflict) as exc:
        ledger.create(db, new(external_id="o-1", fingerprint="f2"), NOW)
    assert exc.value.field == "externalId"
    assert len(rows(db, "SELECT id FROM invoices")) == 1


def test_one_open_invoice_per_dedicated_address(db: Db, ledger: Ledger) -> None:
    first, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=1), NOW)
    with pytest.raises(Conflict) as exc:
        ledger.create(db, new(asset="ETH", address=DEDICATED.lower(), amount=2), NOW)
    assert exc.value.field == "address"
    # Another asset at the same address is another slot.
    ledger.create(db, new(asset="USDT", address=DEDICATED, amount=1), NOW)
    ledger.cancel(db, first.id, NOW)
    second, created, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=2), NOW)
    assert created and second.id != first.id


def test_a_transfer_is_counted_once_in_a_batch_and_across_batches(
    db: Db, ledger: Ledger
) -> None:
    """The range's transfers go in with one multi-row insert; only the rows it inserted
    count: the same transfer twice in one range (a node repeating a log), or again in a
    later range (a re-read after a restart), adds nothing."""
    inv, _, _ = ledger.create(db, new(amount=300), NOW)
    t = Transfer(NET, "USDT", tx_hash(), 7, OTHER, inv.to_addr, 100, 1000, tx_hash(), NOW,
                 invoice_id=inv.id, kind="payment")
    other = replace(t, log_index=8)
    out = ledger.apply_scan(db, ScanBatch(NET, 1000, None, NOW, 1000, [t, replace(t), other]),
                            NOW)
    assert [x.log_index for x in out.recorded] == [7, 8]
    out = ledger.apply_scan(db, ScanBatch(NET, 1001, None, NOW, 1001, [replace(t)]), NOW)
    assert out.recorded == []
    assert sum(p.amount for p in ledger.get(db, inv.id).payments) == 200
    assert rows(db, "SELECT COUNT(*) AS n FROM transfers")[0]["n"] == 2


def test_invoices_by_ids_takes_more_ids_than_one_statement_may(db: Db, ledger: Ledger) -> None:
    """The follower's refresh may ask for thousands of ids after a burst of creates: more
    than either database takes in one statement (SQLite 32,766 parameters, PostgreSQL
    65,535) are read in chunks."""
    from watcher.storage.rows import invoices_by_ids

    made, _, _ = ledger.create(db, new(), NOW)
    ids = [str(uuid.uuid4()) for _ in range(70_000)]
    ids.insert(40_000, made.id)
    assert [i.id for i in invoices_by_ids(db, ids)] == [made.id]


def test_a_batch_of_creates_reads_open_addresses_once_and_keeps_them_one_each(
    db: Db, ledger: Ledger
) -> None:
    """`create_many` (group commit) reads the open invoices on its addresses in one query,
    and still refuses a second open invoice on an address: one open before the batch, one
    made earlier in the same batch (any spelling), but not one that expired or another
    asset's, nor a refused create's."""
    before, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=1), NOW)
    expired, _, _ = ledger.create(
        db, replace(new(asset="ETH", address=OTHER, amount=1), expire_at=NOW + 5), NOW)
    later = NOW + 10  # `expired` has expired by then (not yet voided)
    unknown = new(asset="NOPE", address=DEDICATED.replace("0x1", "0x2"))
    third = "0x" + "33" * 20
    results = ledger.create_many(db, [
        (new(asset="ETH", address=DEDICATED.lower(), amount=2), later),  # open before
        (new(asset="ETH", address=OTHER, amount=2), later),  # its invoice has expired
        (new(asset="ETH", address=OTHER.upper().replace("0X", "0x"), amount=3), later),
        (new(asset="USDT", address=DEDICATED, amount=1), later),  # another asset's slot
        (unknown, later),  # refused: no slot taken
        (new(asset="ETH", address=third, amount=1), later),
    ])
    assert isinstance(results[0], Conflict) and before.id in str(results[0])
    made = results[1]
    assert isinstance(made, tuple) and made[0].to_addr == OTHER
    assert isinstance(results[2], Conflict) and made[0].id in str(results[2])
    assert isinstance(results[3], tuple) and isinstance(results[5], tuple)
    assert isinstance(results[4], Invalid)
    assert expired.id != made[0].id
    stored = rows(db, "SELECT seq, id FROM invoices ORDER BY seq")
    assert len(stored) == 5
    assert {r[0].id: r[0].seq for r in results if isinstance(r, tuple)} == {
        row["id"]: row["seq"] for row in stored[2:]}  # each seq read back
    ledger.cancel(db, made[0].id, later)  # the batch's cache is gone: the database again
    again = ledger.create_many(db, [(new(asset="ETH", address=OTHER, amount=4), later)])
    assert isinstance(again[0], tuple)


def test_shared_address_amounts_are_unique_among_open_invoices(
    db: Db, ledger: Ledger
) -> None:
    made = [ledger.create(db, new(amount=5_000_000), NOW)[0] for _ in range(5)]
    assert [i.amount for i in made] == [5_000_000 + k for k in range(5)]
    assert all(i.requested_amount == 5_000_000 and i.shared and i.to_addr == SHARED
               for i in made)
    ledger.cancel(db, made[1].id, NOW)  # its amount is free again
    again, _, _ = ledger.create(db, new(amount=5_000_000), NOW)
    assert again.amount == 5_000_001
    other, _, _ = ledger.create(db, new(amount=7_000_000), NOW)
    assert other.amount == 7_000_000


def test_shared_mode_needs_a_shared_address(db: Db, ledger: Ledger) -> None:
    with pytest.raises(Invalid) as exc:
        ledger.create(db, new(asset="ETH"), NOW)
    assert exc.value.field == "address"


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (NewInvoice("nowhere", "USDT", 1, None, None), "network"),
        (NewInvoice(NET, "DOGE", 1, None, None), "asset"),
        (NewInvoice(NET, "USDT", 1, None, NOW - 1), "expireAt"),
    ],
)
def test_create_rejects_bad_requests(
    db: Db, ledger: Ledger, req: NewInvoice, field: str
) -> None:
    with pytest.raises(Invalid) as exc:
        ledger.create(db, req, NOW)
    assert exc.value.field == field
    assert rows(db, "SELECT id FROM invoices") == []


# ---------------------------------------------------------------- actions

ALL = list(Status)
#: action -> (statuses it is allowed from, status it leads to)
RULES = {
    "cancel": ({Status.PENDING}, Status.VOIDED),
    "accept": ({Status.PARTIAL}, Status.COMPLETED),
    "refund": ({Status.COMPLETED, Status.PARTIAL}, Status.REFUNDED),
}
REFUND_TX = "0x" + "ab" * 32


def act(db: Db, ledger: Ledger, name: str, invoice_id: str) -> tuple[Invoice, Outcome]:
    if name == "refund":
        return ledger.refund(db, invoice_id, NOW, REFUND_TX)
    action = ledger.cancel if name == "cancel" else ledger.accept
    return action(db, invoice_id, NOW)


@pytest.mark.parametrize("status", ALL)
@pytest.mark.parametrize("name", sorted(RULES))
def test_action_rules_from_every_status(
    db: Db, ledger: Ledger, name: str, status: Status
) -> None:
    allowed, target = RULES[name]
    inv = invoice_in(db, ledger, status, NOW)
    before = events_of(db, inv.id)
    if status not in allowed:
        with pytest.raises(Conflict):
            act(db, ledger, name, inv.id)
        assert events_of(db, inv.id) == before
        assert ledger.get(db, inv.id).status == status
        return
    done, out = act(db, ledger, name, inv.id)
    assert done.status == target and done.closed_at == NOW
    assert [c.event for c in out.changes] == [target.event]
    assert events_of(db, inv.id) == [*before, target.event]
    assert deliveries_of(db, inv.id) == events_of(db, inv.id)
    stored = ledger.get(db, inv.id)
    assert stored.status == target
    assert stored.refund_tx == (REFUND_TX if name == "refund" else None)


@pytest.mark.parametrize("status", ALL)
def test_remainder_only_from_partial(db: Db, ledger: Ledger, status: Status) -> None:
    inv = invoice_in(db, ledger, status, NOW, callback_url="https://a.example/cb",
                     email="a@b.example")
    if status != Status.PARTIAL:
        with pytest.raises(Conflict):
            ledger.remainder(db, inv.id, NOW)
        return
    child, out = ledger.remainder(db, inv.id, NOW)
    assert child.parent_id == inv.id and child.status == Status.PENDING
    assert child.requested_amount == inv.amount - inv.amount_paid
    assert child.shared == inv.shared and child.asset == inv.asset
    assert child.callback_url == "https://a.example/cb" and child.email == "a@b.example"
    parent = ledger.get(db, inv.id)
    assert parent.status == Status.PARTIAL and parent.closed_at == NOW
    assert events_of(db, child.id) == ["invoice.created"]
    assert {i.id for i in out.touched} == {inv.id, child.id}
    with pytest.raises(Conflict):  # the parent stopped collecting: once only
        ledger.remainder(db, inv.id, NOW)


def test_remainder_at_a_dedicated_address_reuses_the_address(
    db: Db, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=10**18), NOW)
    pay(db, ledger, inv, 4 * 10**17, deep=True, now=NOW)
    child, _ = ledger.remainder(db, inv.id, NOW)
    assert child.to_addr == DEDICATED and not child.shared
    assert child.amount == 6 * 10**17


def test_actions_on_unknown_invoice_are_not_found(db: Db, ledger: Ledger) -> None:
    for act in (ledger.cancel, ledger.accept, ledger.remainder):
        with pytest.raises(NotFound):
            act(db, "missing", NOW)
    with pytest.raises(NotFound):
        ledger.refund(db, "missing", NOW, None)


def test_every_status_change_writes_an_event_and_a_delivery(
    db: Db, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(), NOW)
    pay(db, ledger, inv, inv.amount, deep=True, now=NOW)
    ledger.refund(db, inv.id, NOW, None)
    expected = ["invoice.created", "invoice.waiting_for_confirmations", "invoice.completed",
                "invoice.refunded"]
    assert events_of(db, inv.id) == expected
    assert deliveries_of(db, inv.id) == expected
    statuses = [r["status"] for r in rows(
        db, "SELECT status FROM events WHERE invoice_id = ? ORDER BY seq", [inv.id])]
    assert statuses == ["PENDING", "WAITING_FOR_CONFIRMATIONS", "COMPLETED", "REFUNDED"]


# ---------------------------------------------------------------- one transaction


#: what an injected failure raises, on either engine
FAILED = (sqlite3.IntegrityError, psycopg.errors.RaiseException)


def _fail_on(db: Db, table: str, op: str = "INSERT") -> None:
    if isinstance(db, PgDatabase):
        db.execute("CREATE FUNCTION injected() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$")
        db.execute(f"CREATE TRIGGER fail_{table} AFTER {op} ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION injected()")
        return
    db.execute(
        f"CREATE TRIGGER fail_{table} AFTER {op} ON {table} "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )


def test_create_rolls_back_invoice_and_event_when_the_outbox_insert_fails(
    db: Db, ledger: Ledger
) -> None:
    _fail_on(db, "deliveries")
    with pytest.raises(FAILED):
        ledger.create(db, new(), NOW)
    assert rows(db, "SELECT id FROM invoices") == []
    assert rows(db, "SELECT id FROM events") == []


def test_cancel_rolls_back_event_and_delivery_when_the_status_update_fails(
    db: Db, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(), NOW)
    _fail_on(db, "invoices", "UPDATE")
    with pytest.raises(FAILED):
        ledger.cancel(db, inv.id, NOW)
    assert events_of(db, inv.id) == ["invoice.created"]
    assert deliveries_of(db, inv.id) == ["invoice.created"]
    assert ledger.get(db, inv.id).status == Status.PENDING


def test_remainder_rolls_back_parent_close_when_the_child_fails(
    db: Db, ledger: Ledger
) -> None:
    inv = invoice_in(db, ledger, Status.PARTIAL, NOW)
    _fail_on(db, "deliveries")
    with pytest.raises(FAILED):
        ledger.remainder(db, inv.id, NOW)
    assert ledger.get(db, inv.id).closed_at is None
    assert len(rows(db, "SELECT id FROM invoices")) == 1


def test_waiting_invoices_are_reloaded_only_when_they_can_move(
    db: Db, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work proportional to what changed: a range at whose head no waiting invoice's
    payment can reach its confirmations reads none of them."""
    import watcher.ledger as ledger_mod

    invs = [ledger.create(db, new(asset="ETH", address=f"0x{i + 1:040x}", amount=10**18),
                          NOW)[0] for i in range(20)]
    block = 2000
    paid = [Transfer(NET, "ETH", tx_hash(), None, OTHER, inv.to_addr, 10**18, block,
                     tx_hash(), NOW, invoice_id=inv.id, kind="payment") for inv in invs]
    ledger.apply_scan(db, ScanBatch(NET, block, None, NOW, block, paid), NOW)
    assert {ledger.get(db, i.id).status for i in invs} == {Status.WAITING_FOR_CONFIRMATIONS}
    loaded: list[int] = []
    real = ledger_mod.load_invoices

    def counting(*args: Any, **kw: Any) -> list[Invoice]:
        found = real(*args, **kw)
        loaded.append(len(found))
        return found

    monkeypatch.setattr(ledger_mod, "load_invoices", counting)

    scans: list[int] = []

    def scan_to(head: int) -> int:
        """Scan up to `head`, a few seconds later each time (invoices another process
        changed in the last second would be read again): the invoice rows it read."""
        loaded.clear()
        scans.append(head)
        later = NOW + 10 * len(scans)
        ledger.apply_scan(db, ScanBatch(NET, head, None, NOW, head, []), later)
        return sum(loaded)

    # (the first range after the payments also re-reads what changed in its second)
    scan_to(block)
    # heads at which no payment gets its confirmations yet: nothing is read
    assert scan_to(block + CONFIRMATIONS - 2) == 0
    assert {ledger.get(db, i.id).status for i in invs} == {Status.WAITING_FOR_CONFIRMATIONS}
    # the head at which they are deep: exactly those, and they complete
    assert scan_to(block + CONFIRMATIONS - 1) == len(invs)
    assert {ledger.get(db, i.id).status for i in invs} == {Status.COMPLETED}
    assert scan_to(block + CONFIRMATIONS + 5) == 0  # nobody waits any more
