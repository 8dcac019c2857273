"""Method invoices, pure parts: routing to a method the customer switched away from, the
state of an invoice with no method, the create request's `methods`, and migration 0013."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from tests.unit.factories import invoice, payment
from watcher import requests as rq
from watcher import state
from watcher.errors import Invalid
from watcher.ledger import NetworkInfo
from watcher.matching import Route, WatchIndex
from watcher.models import Asset, Invoice, Leg, Method, Status
from watcher.storage import rows, schema
from watcher.storage.rows import load_invoice
from watcher.storage.sqlite import connect

OLD = "0x" + "33" * 20
NEW = "0x" + "11" * 20
SHARED = "0x" + "aa" * 20
TOKEN = "0x" + "bb" * 20
ASSETS = {
    "ETH": Asset("local", "ETH", 18),
    "USDT": Asset("local", "USDT", 6, token=TOKEN, shared_address=SHARED),
}


def switched(**kw: object) -> Invoice:
    """An invoice that was on USDT at OLD (from 1000 to the switch at 1100), now ETH at NEW."""
    leg = Leg(n=1, network="local", asset="USDT", decimals=6, to_addr=OLD, shared=False,
              amount=25_000_000, derivation_index=None, opens_at=1000, closed_at=1100)
    return invoice(to_addr=NEW, opens_at=1100, methods=[Method("local", "ETH"),
                   Method("local", "USDT")], legs=[leg], **kw)


def test_a_retired_method_takes_only_late_payments_within_the_window() -> None:
    ix = WatchIndex(ASSETS, late_window=100)
    ix.put(switched())
    assert ix.route("ETH", NEW, 5, 1500) == (Route.PAYMENT, "inv-1")
    # before the switch, after it, until the late window ends: late, never a payment
    assert ix.route("USDT", OLD, 5, 1050) == (Route.LATE, "inv-1")
    assert ix.route("USDT", OLD, 5, 1200) == (Route.LATE, "inv-1")
    assert ix.route("USDT", OLD, 5, 1201) == (Route.UNMATCHED, None)
    assert ix.route("USDT", OLD, 5, 999) == (Route.UNMATCHED, None)
    with pytest.raises(KeyError):
        ix.route("ETH", OLD, 5, 1050)  # the old address is watched for its asset only
    assert ix.prune(1201) == 1 and not ix.is_watched("USDT", OLD)
    assert ix.is_watched("ETH", NEW)


def test_a_switch_to_another_network_leaves_only_the_retired_entry() -> None:
    ix = WatchIndex(ASSETS, late_window=100)
    inv = invoice(to_addr=OLD, asset="USDT", amount=25_000_000)
    ix.put(inv)
    inv.legs = [Leg(1, "local", "USDT", 6, OLD, False, 25_000_000, None, 900, 1100)]
    inv.network, inv.asset, inv.to_addr = "elsewhere", "ETH", NEW
    ix.put(inv)
    assert ix.route("USDT", OLD, 5, 1050) == (Route.LATE, "inv-1")
    assert len(ix) == 1 and not ix.watches_native()


def test_an_amount_given_up_at_a_shared_address_is_late_not_unmatched() -> None:
    ix = WatchIndex(ASSETS, late_window=100)
    leg = Leg(1, "local", "USDT", 6, SHARED, True, 25_000_001, None, 1000, 1100)
    ix.put(invoice(asset="USDT", to_addr=SHARED, shared=True, amount=10, legs=[leg]))
    ix.put(invoice(id="inv-2", seq=2, asset="USDT", to_addr=SHARED, shared=True,
                   amount=25_000_001, opens_at=1150))
    assert ix.route("USDT", SHARED, 25_000_001, 1120) == (Route.LATE, "inv-1")
    assert ix.route("USDT", SHARED, 25_000_001, 1160) == (Route.PAYMENT, "inv-2")
    assert ix.route("USDT", SHARED, 10, 1160) == (Route.PAYMENT, "inv-1")


def test_route_transfer_tells_the_retired_method_from_the_current_one() -> None:
    inv = switched()
    old = payment(25_000_000, 5, ts=1150)
    old.asset, old.to_addr = "USDT", OLD
    assert inv.route_transfer(old, 100) == ("late", inv.legs[0])
    assert inv.route_transfer(payment(10, 6, ts=1150), 100) == ("payment", None)


def test_an_invoice_with_no_method_only_expires() -> None:
    inv = invoice(network=None, chain_id=None, asset=None, decimals=None, to_addr=None,
                  amount=None, requested_amount=None, methods=[Method("local", "ETH")])
    before = state.ChainView(head=10, scanned_time=1999, required=1)
    after = state.ChainView(head=11, scanned_time=2001, required=1)
    assert state.transitions(inv, before, Fraction(0), payments_added=False) == []
    assert state.transitions(inv, after, Fraction(0), payments_added=False) == [Status.VOIDED]
    assert inv.can_change_method and inv.amount_due == 0 and inv.networks() == set()


NETWORKS = {"local": NetworkInfo("local", 31337, 1, ASSETS)}


class Rates:
    pair_names = ("USDT/USD",)

    def can_price(self, asset: str, currency: str) -> bool:
        return asset == "USDT" and currency == "USD"


@pytest.mark.parametrize(("body", "field"), [
    ({"methods": []}, "methods"),
    ({"methods": [{"network": "local", "asset": "USDT"}] * 2}, "methods"),
    ({"methods": [{"network": "x", "asset": "USDT"}]}, "methods"),
    ({"methods": [{"network": "local", "asset": "DOGE"}]}, "methods"),
    ({"methods": [{"network": "local", "asset": "USDT", "extra": 1}]}, "methods"),
    ({"methods": [{"network": "local", "asset": "ETH"}]}, "methods"),  # no address source
    ({"methods": [{"network": "local", "asset": "USDT"}], "asset": "USDT"}, "methods"),
    ({"methods": [{"network": "local", "asset": "USDT"}], "price": None}, "price"),
    ({"methods": [{"network": "local", "asset": "USDT"}], "currency": "EUR"}, "currency"),
    ({"methods": [{"network": "local", "asset": "USDT"}], "description": "d" * 1001},
     "description"),
])
def test_methods_create_refusals(body: dict[str, object], field: str) -> None:
    full = {"price": "5", "currency": "USD", **body}
    if full.get("price") is None:
        del full["price"]
    with pytest.raises(Invalid) as err:
        rq.parse_create(full, NETWORKS, 1000, Rates())  # type: ignore[arg-type]
    assert err.value.field == field


def test_a_methods_create_is_parsed_and_fingerprinted() -> None:
    body = {"methods": [{"network": "local", "asset": "USDT"}], "price": "5",
            "currency": "USD", "title": "T"}
    req = rq.parse_create(body, NETWORKS, 1000, Rates())  # type: ignore[arg-type]
    assert req.methods == [Method("local", "USDT")] and req.network is None
    assert req.title == "T" and req.amount is None
    again = rq.parse_create(dict(body), NETWORKS, 1000, Rates())  # type: ignore[arg-type]
    other = rq.parse_create({**body, "title": "U"}, NETWORKS, 1000, Rates())  # type: ignore[arg-type]
    assert req.fingerprint == again.fingerprint != other.fingerprint


def test_0013_keeps_invoices_and_lets_the_method_columns_be_empty(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Migrations(schema.migrations.name)
    for m in schema.migrations._migrations:
        if m.name[:4] <= "0012":
            old(name=m.name)(m.fn)
    db = Database(path)
    old.apply(db)
    row = rows.invoice_row(invoice(id="keep"))
    for new in ("title", "description", "methods"):
        del row[new]
    db.table("invoices").insert(row)
    db.conn.commit()
    indexes = {r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'invoices'")}
    db.close()
    db = connect(path)
    kept = load_invoice(db, "keep")
    assert kept is not None and kept.amount == 1000 and kept.methods is None
    after = {r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'invoices'")}
    assert indexes <= after and "invoices_unchosen" in after
    rows.insert_invoice(db, invoice(id="open", network=None, chain_id=None, asset=None,
                                     decimals=None, to_addr=None, amount=None,
                                     requested_amount=None, methods=[Method("local", "ETH")]))
    got = load_invoice(db, "open")
    assert got is not None and got.methods == [Method("local", "ETH")] and got.to_addr is None
    db.close()
