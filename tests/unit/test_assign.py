"""Assigning a transfer to an invoice by hand (`Ledger.assign`, `POST /v1/transfers/{id}/
assign`, `payment-watcher transfers assign`): through the real ledger on a real SQLite file,
the real aiohttp app and the real click commands.

An unmatched or late transfer becomes a payment of the invoice and the invoice settles as
for a scanned payment (a VOIDED one too); every event the assignment writes says
cause "assigned"; a reorg under the transfer undoes it like any payment.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlite_utils import Database

from tests.unit.test_api import Env
from tests.unit.test_api import env as env  # the fixture: the API on a real store
from tests.unit.test_ledger import (
    CONFIRMATIONS,
    DEDICATED,
    NET,
    NOW,
    OTHER,
    SHARED,
    TOKEN,
    events_of,
    invoice_in,
    make_networks,
    new,
    rows,
    tx_hash,
)
from tests.unit.test_ledger import db as db  # the fixture: a started network's database
from tests.unit.test_ledger import ledger as ledger  # the fixture: the test ledger
from watcher.cli import main
from watcher.config import load_settings
from watcher.daemon import build_ledger
from watcher.errors import Conflict, Invalid, NotFound
from watcher.ledger import Ledger, NetworkInfo, Outcome, ScanBatch
from watcher.models import Asset, Invoice, Status, Transfer
from watcher.storage import sqlite
from watcher.timeutil import now as clock

USDT = 10**6
ETH = 10**18
ELSEWHERE = "elsewhere"
#: A fresh dedicated address (no other test invoice uses it).
THIRD = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def scan(
    db: Database, ledger: Ledger, transfers: list[Transfer], head: int, *,
    at: int = NOW, to_block: int | None = None,
) -> Outcome:
    """Scan up to `to_block` (default `head`) with the chain's head at `head`; `at` is the
    scanned block's time (it counts for expiry once `to_block` is confirmed)."""
    to = head if to_block is None else to_block
    return ledger.apply_scan(db, ScanBatch(NET, to, None, at, head, transfers), NOW)


def transfer(
    asset: str, to: str, amount: int, block: int, *, at: int = NOW,
    invoice: Invoice | None = None, kind: str = "unmatched",
) -> Transfer:
    return Transfer(NET, asset, tx_hash(), 0 if asset == "USDT" else None, OTHER, to, amount,
                    block, tx_hash(), at, invoice_id=invoice.id if invoice else None, kind=kind)


def stored(db: Database, t: Transfer) -> dict[str, Any]:
    (row,) = rows(db, "SELECT kind, invoice_id, assigned, announced FROM transfers WHERE id = ?",
                  [t.id])
    return row


def causes(db: Database, invoice_id: str) -> list[tuple[str, str | None]]:
    return [(r["event"].removeprefix("invoice."), r["cause"]) for r in rows(
        db, "SELECT event, cause FROM events WHERE invoice_id = ? ORDER BY seq", [invoice_id])]


def delivered(db: Database, invoice_id: str) -> list[str]:
    return [r["event"].removeprefix("invoice.") for r in rows(
        db, "SELECT event FROM deliveries WHERE invoice_id = ? ORDER BY event_seq",
        [invoice_id])]


def unmatched(db: Database, ledger: Ledger, amount: int, block: int, head: int) -> Transfer:
    """A USDT transfer to the shared address that pays no invoice (a wrong amount)."""
    t = transfer("USDT", SHARED, amount, block)
    scan(db, ledger, [t], head)
    assert stored(db, t)["kind"] == "unmatched"
    return t


# ---------------------------------------------------------------- the ledger


def test_an_unmatched_transfer_pays_a_pending_invoice_then_confirms(
    db: Database, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(amount=10 * USDT), NOW)
    t = unmatched(db, ledger, 10 * USDT + 500, block=1000, head=1000)

    got, out = ledger.assign(db, t.id, inv.id, NOW + 5)
    assert got.status == Status.WAITING_FOR_CONFIRMATIONS
    assert [(c.event, c.status, c.block_time) for c in out.changes] == [
        ("invoice.waiting_for_confirmations", Status.WAITING_FOR_CONFIRMATIONS, None)]
    assert [i.id for i in out.touched] == [inv.id]
    assert stored(db, t) == {"kind": "payment", "invoice_id": inv.id, "assigned": 1,
                             "announced": 1}
    shown = ledger.render(got)
    assert (shown["amountPaid"], shown["amountDue"], shown["txHash"]) == ("10.0005", "0",
                                                                         t.tx_hash)
    assert shown["payments"][0]["assigned"] is True and shown["updatedAt"] != shown["createdAt"]
    assert ledger.render(ledger.get(db, inv.id)) == shown  # what was committed

    # The confirmations come from the chain, as for any payment: that event has no cause.
    scan(db, ledger, [], head=1000 + CONFIRMATIONS)
    assert ledger.get(db, inv.id).status == Status.COMPLETED
    assert causes(db, inv.id) == [
        ("created", None), ("waiting_for_confirmations", "assigned"), ("completed", None)]
    assert delivered(db, inv.id) == ["created", "waiting_for_confirmations", "completed"]


def test_a_deep_transfer_passes_waiting_and_completes_in_one_assignment(
    db: Database, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(amount=10 * USDT), NOW)
    t = unmatched(db, ledger, 12 * USDT, block=1000, head=1000 + CONFIRMATIONS + 3)
    got, out = ledger.assign(db, t.id, inv.id, NOW)
    assert got.status == Status.COMPLETED and got.amount_paid == 12 * USDT
    assert [c.status for c in out.changes] == [Status.WAITING_FOR_CONFIRMATIONS,
                                               Status.COMPLETED]
    assert causes(db, inv.id) == [
        ("created", None), ("waiting_for_confirmations", "assigned"), ("completed", "assigned")]
    assert delivered(db, inv.id) == ["created", "waiting_for_confirmations", "completed"]
    body = json.loads(rows(db, "SELECT body FROM events WHERE invoice_id = ? ORDER BY seq "
                               "DESC LIMIT 1", [inv.id])[0]["body"])
    assert body["data"]["status"] == "COMPLETED" and body["data"]["payments"][0]["assigned"]


def test_a_smaller_amount_makes_it_partial(db: Database, ledger: Ledger) -> None:
    inv, _, _ = ledger.create(db, new(amount=10 * USDT), NOW)
    t = unmatched(db, ledger, 4 * USDT, block=1000, head=1000 + CONFIRMATIONS)
    got, _ = ledger.assign(db, t.id, inv.id, NOW)
    assert got.status == Status.PARTIAL
    assert ledger.render(got)["amountDue"] == "6"
    assert events_of(db, inv.id) == [
        "invoice.created", "invoice.waiting_for_confirmations", "invoice.partial"]


def test_an_unannounced_late_payment_of_an_expired_invoice_completes_it(
    db: Database, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=ETH), NOW)
    expired = inv.expire_at + 10
    # a confirmed block past expireAt voids it
    scan(db, ledger, [], head=900 + CONFIRMATIONS, to_block=900, at=expired)
    assert ledger.get(db, inv.id).status == Status.VOIDED
    late = transfer("ETH", DEDICATED, ETH, 1000, at=expired + 5, invoice=inv)
    scan(db, ledger, [late], head=1000, at=expired + 5)
    assert stored(db, late)["kind"] == "late" and stored(db, late)["announced"] == 0

    got, _ = ledger.assign(db, late.id, inv.id, NOW)
    assert got.status == Status.WAITING_FOR_CONFIRMATIONS and got.late_payments == []
    assert [p.id for p in got.payments] == [late.id]
    scan(db, ledger, [], head=1000 + CONFIRMATIONS + 1, at=expired + 5)
    final = ledger.get(db, inv.id)
    assert final.status == Status.COMPLETED and final.late_payments == []
    # never announced as late: it is a payment now
    assert causes(db, inv.id) == [("created", None), ("voided", None),
                                  ("waiting_for_confirmations", "assigned"), ("completed", None)]


def test_an_announced_late_payment_of_a_cancelled_invoice_completes_it(
    db: Database, ledger: Ledger
) -> None:
    inv, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=ETH), NOW)
    ledger.cancel(db, inv.id, NOW)
    late = transfer("ETH", DEDICATED, ETH, 1000, at=NOW + 5, invoice=inv)
    scan(db, ledger, [late], head=1000 + CONFIRMATIONS)  # deep: announced at once
    assert events_of(db, inv.id)[-1] == "invoice.late_payment"

    got, out = ledger.assign(db, late.id, inv.id, NOW + 60)
    assert got.status == Status.COMPLETED and got.late_payments == []
    assert [c.status for c in out.changes] == [Status.WAITING_FOR_CONFIRMATIONS,
                                               Status.COMPLETED]
    assert causes(db, inv.id) == [
        ("created", None), ("voided", None), ("late_payment", None),
        ("waiting_for_confirmations", "assigned"), ("completed", "assigned")]
    assert ledger.render(ledger.get(db, inv.id))["latePayments"] == []


def test_a_late_payment_of_another_invoice_leaves_it(db: Database, ledger: Ledger) -> None:
    old, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=ETH), NOW)
    ledger.cancel(db, old.id, NOW)
    late = transfer("ETH", DEDICATED, ETH, 1000, at=NOW + 5, invoice=old)
    scan(db, ledger, [late], head=1000)  # shallow: not announced yet
    other, _, _ = ledger.create(db, new(asset="ETH", address=THIRD, amount=ETH), NOW)

    got, out = ledger.assign(db, late.id, other.id, NOW + 60)
    assert got.status == Status.WAITING_FOR_CONFIRMATIONS
    assert {i.id for i in out.touched} == {old.id, other.id}
    left = ledger.get(db, old.id)
    assert left.status == Status.VOIDED and left.late_payments == []
    assert left.updated_at == NOW + 60
    scan(db, ledger, [], head=1000 + CONFIRMATIONS + 1)
    assert ledger.get(db, other.id).status == Status.COMPLETED
    # the old owner was never told of a late payment, and nothing else happened to it
    assert events_of(db, old.id) == ["invoice.created", "invoice.voided"]


def test_an_assigned_transfer_is_undone_by_a_reorg_like_a_scanned_payment(
    db: Database, ledger: Ledger
) -> None:
    """One invoice paid by the scan, one by assignment, in the same blocks: a reorg under
    them moves both the same way (a shallow payment: back to PENDING; a confirmed one of a
    COMPLETED invoice: REVERSED)."""
    for block, deep in ((1000, False), (2000, True)):
        scanned, _, _ = ledger.create(db, new(amount=10 * USDT), NOW)
        assigned, _, _ = ledger.create(db, new(amount=10 * USDT), NOW)
        paid = transfer("USDT", SHARED, scanned.amount, block, invoice=scanned, kind="payment")
        loose = transfer("USDT", SHARED, 10 * USDT + 777, block)
        head = block + CONFIRMATIONS if deep else block
        scan(db, ledger, [paid, loose], head)
        ledger.assign(db, loose.id, assigned.id, NOW)
        settled = Status.COMPLETED if deep else Status.WAITING_FOR_CONFIRMATIONS
        assert {ledger.get(db, i.id).status for i in (scanned, assigned)} == {settled}

        out = ledger.undo_above(db, NET, block - 1, block - 1, NOW)
        assert not rows(db, "SELECT 1 FROM transfers WHERE block >= ?", [block])
        after = Status.REVERSED if deep else Status.PENDING
        assert {i.id for i in out.touched} >= {scanned.id, assigned.id}
        for inv in (scanned, assigned):
            back = ledger.get(db, inv.id)
            assert (back.status, back.payments) == (after, [])
            assert events_of(db, inv.id)[-1] == after.event
            assert causes(db, inv.id)[-1] == (after.event.removeprefix("invoice."), None)


def _other_network_ledger(db: Database) -> Ledger:
    networks = make_networks()
    networks[ELSEWHERE] = NetworkInfo(ELSEWHERE, 5, CONFIRMATIONS, {
        "USDT": Asset(ELSEWHERE, "USDT", 6, token=TOKEN, shared_address=SHARED)})
    ledger = Ledger(networks, tolerance=Fraction(0), default_ttl=3600, late_window=3600,
                    default_callback_url=None)
    ledger.start_network(db, ELSEWHERE, 1, 0)
    return ledger


def test_refusals_change_nothing(db: Database, ledger: Ledger) -> None:
    usdt, _, _ = ledger.create(db, new(amount=10 * USDT), NOW)
    eth, _, _ = ledger.create(db, new(asset="ETH", address=DEDICATED, amount=ETH), NOW)
    t = unmatched(db, ledger, 3 * USDT, block=1000, head=1000)
    before = (rows(db, "SELECT * FROM transfers"), rows(db, "SELECT * FROM invoices"),
              rows(db, "SELECT id FROM events"), rows(db, "SELECT event_id FROM deliveries"))

    with pytest.raises(NotFound) as missing:
        ledger.assign(db, "tr_" + "0" * 24, usdt.id, NOW)
    assert missing.value.field == "id"
    with pytest.raises(Invalid) as unknown:
        ledger.assign(db, t.id, "00000000-0000-4000-8000-000000000000", NOW)
    assert unknown.value.field == "invoiceId"
    with pytest.raises(Invalid) as asset:
        ledger.assign(db, t.id, eth.id, NOW)
    assert asset.value.field == "invoiceId"
    assert "the asset differs" in asset.value.message and "USDT" in asset.value.message
    two = _other_network_ledger(db)
    elsewhere, _, _ = two.create(db, replace(new(amount=USDT), network=ELSEWHERE), NOW)
    with pytest.raises(Invalid) as network:
        two.assign(db, t.id, elsewhere.id, NOW)
    assert network.value.field == "invoiceId" and "the network differs" in network.value.message
    there = replace(transfer("USDT", SHARED, 2 * USDT, 40), network=ELSEWHERE)
    two.apply_scan(db, ScanBatch(ELSEWHERE, 40, None, NOW, 40, [there]), NOW)
    with pytest.raises(Conflict) as unconfigured:  # a network no longer in the config
        ledger.assign(db, there.id, elsewhere.id, NOW)
    assert "not configured" in unconfigured.value.message
    refunded = invoice_in(db, ledger, Status.REFUNDED, NOW)
    with pytest.raises(Conflict) as closed:
        ledger.assign(db, t.id, refunded.id, NOW)
    assert "REFUNDED" in closed.value.message
    paid = rows(db, "SELECT id FROM transfers WHERE invoice_id = ?", [refunded.id])[0]["id"]
    with pytest.raises(Conflict) as already:
        ledger.assign(db, paid, usdt.id, NOW)
    assert refunded.id in already.value.message

    assert rows(db, "SELECT * FROM transfers WHERE id = ?", [t.id]) == [
        r for r in before[0] if r["id"] == t.id]
    assert [r for r in rows(db, "SELECT * FROM invoices") if r["id"] in (usdt.id, eth.id)] == [
        r for r in before[1] if r["id"] in (usdt.id, eth.id)]

    ledger.assign(db, t.id, usdt.id, NOW)
    with pytest.raises(Conflict):  # a second time: it is a payment now
        ledger.assign(db, t.id, usdt.id, NOW)


# ---------------------------------------------------------------- the HTTP API


def _unmatched_through_api(db: Database, ledger: Ledger) -> Transfer:
    return unmatched(db, ledger, 7 * USDT, block=1000, head=1000 + CONFIRMATIONS)


async def test_post_assign_answers_the_invoice_and_reports_the_outcome(env: Env) -> None:
    _, inv = await env.call("POST", "/v1/invoices", json={
        "network": NET, "asset": "USDT", "amount": "7"})
    t = await env.store.run(_unmatched_through_api, env.ledger)
    _, listed = await env.call("GET", "/v1/transfers?matched=false")
    assert [(x["id"], x["kind"], x["assigned"]) for x in listed["data"]] == [
        (t.id, "unmatched", False)]
    env.outcomes.clear()

    status, got = await env.call("POST", f"/v1/transfers/{t.id}/assign",
                                 json={"invoiceId": inv["id"]})
    assert status == 200 and got["id"] == inv["id"] and got["status"] == "COMPLETED"
    assert got["payments"][0]["assigned"] is True and got["amountPaid"] == "7"
    (outcome,) = env.outcomes
    assert [c.event for c in outcome.changes] == [
        "invoice.waiting_for_confirmations", "invoice.completed"]
    assert [i.id for i in outcome.touched] == [inv["id"]]
    _, now_matched = await env.call("GET", "/v1/transfers?matched=true")
    assert [(x["id"], x["kind"], x["assigned"], x["invoiceId"]) for x in now_matched["data"]] == [
        (t.id, "payment", True, inv["id"])]
    _, events = await env.call("GET", f"/v1/invoices/{inv['id']}/events")
    assert [(e["event"], e["cause"]) for e in events["data"]] == [
        ("invoice.created", None), ("invoice.waiting_for_confirmations", "assigned"),
        ("invoice.completed", "assigned")]

    status, err = await env.call("POST", f"/v1/transfers/{t.id}/assign",
                                 json={"invoiceId": inv["id"]})
    assert (status, err["error"]["code"]) == (409, "conflict")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (None, 422, "invoiceId"),  # no body at all
        ({}, 422, "invoiceId"),
        ({"invoiceId": 7}, 422, "invoiceId"),
        ({"invoiceId": ""}, 422, "invoiceId"),
        ({"invoiceId": "x" * 65}, 422, "invoiceId"),
        ({"invoiceId": "00000000-0000-4000-8000-000000000000"}, 422, "invoiceId"),
        ({"invoiceId": "INVOICE", "note": "x"}, 422, "note"),
        ({"invoiceId": "INVOICE"}, 404, "id"),  # the transfer does not exist
    ],
)
async def test_post_assign_refuses_bad_requests(
    env: Env, body: dict[str, Any] | None, status: int, field: str
) -> None:
    inv = await env.make(Status.PENDING)
    t = await env.store.run(_unmatched_through_api, env.ledger)
    target = "tr_" + "f" * 24 if status == 404 else t.id
    if body is not None and body.get("invoiceId") == "INVOICE":
        body = {**body, "invoiceId": inv.id}
    kw: dict[str, Any] = {} if body is None else {"json": body}
    got, err = await env.call("POST", f"/v1/transfers/{target}/assign", **kw)
    assert (got, err["error"]["field"]) == (status, field)
    assert env.outcomes == []  # nothing committed, nothing reported
    assert (await env.store.run(stored, t))["kind"] == "unmatched"


async def test_post_assign_body_must_be_json(env: Env) -> None:
    status, err = await env.call("POST", "/v1/transfers/tr_x/assign", data=b"{nope")
    assert (status, err["error"]["code"]) == (400, "bad_request")


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_config(tmp_path: Path) -> tuple[Path, str, str]:
    """A config on the shipped `anvil` network; its database holds an ETH invoice at a
    dedicated address and an unmatched ETH transfer (to another invoice's address, after
    that invoice stopped collecting and its late window passed). (config, invoice, transfer)"""
    path = tmp_path / "config.toml"
    path.write_text(f'database = "{tmp_path / "w.db"}"\n'
                    '[api]\napi_keys = ["k-0123456789abcdef"]\nlisten = "127.0.0.1:1"\n'
                    '[invoices]\nlate_payment_window = 60\n'
                    '[networks.anvil]\nrpc = ["http://127.0.0.1:1"]\n')
    ledger = build_ledger(load_settings(path))
    db = sqlite.connect(tmp_path / "w.db")
    now = clock()
    ledger.start_network(db, "anvil", 7, now)
    gone, _, _ = ledger.create(
        db, replace(new(asset="ETH", address=DEDICATED, amount=ETH), network="anvil"), now)
    ledger.cancel(db, gone.id, now)
    open_, _, _ = ledger.create(
        db, replace(new(asset="ETH", address=THIRD, amount=ETH), network="anvil"), now)
    stray = Transfer("anvil", "ETH", tx_hash(), None, OTHER, DEDICATED, ETH // 2, 50,
                     tx_hash(), now + 3600, invoice_id=gone.id, kind="late")
    ledger.apply_scan(db, ScanBatch("anvil", 60, None, now + 3600, 60, [stray]), now)
    db.close()
    return path, open_.id, stray.id


def test_cli_lists_and_assigns(cli_config: tuple[Path, str, str]) -> None:
    config, invoice_id, transfer_id = cli_config
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(main, [*args, "--config", str(config)])
        assert result.exit_code == 0, result.output + result.stderr
        return result

    listed = json.loads(run("transfers", "list", "--unmatched", "--json").output)
    assert [(t["id"], t["kind"], t["amount"]) for t in listed["data"]] == [
        (transfer_id, "unmatched", "0.5")]
    assert listed["nextCursor"] is None
    line = run("transfers", "list", "--unmatched").output.strip()
    assert line.split()[:5] == [transfer_id, "unmatched", "anvil", "ETH", "0.5"]
    assert line.split()[-1] == "50" and DEDICATED in line
    assert run("transfers", "list", "--network", "nowhere").output == ""

    inv = json.loads(run("transfers", "assign", transfer_id, invoice_id).output)
    assert (inv["id"], inv["status"], inv["amountPaid"]) == (
        invoice_id, "PARTIAL", "0.5")  # the view from the database: 60 is deep enough
    assert json.loads(run("transfers", "list", "--unmatched", "--json").output)["data"] == []

    for args, says in (
        (("transfers", "assign", transfer_id, invoice_id), "already a payment"),
        (("transfers", "assign", "tr_" + "0" * 24, invoice_id), "no transfer"),
        (("transfers", "assign", transfer_id, ""), "invoiceId"),
        (("transfers", "list", "--limit", "0"), "limit"),
    ):
        result = runner.invoke(main, [*args, "--config", str(config)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
        assert result.stdout == ""
