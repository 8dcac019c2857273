"""Derived deposit addresses through the ledger and the API: the next index in the
invoice's own transaction, never twice, no gaps when a create is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from tests import hdkeys
from tests.unit.test_api import AUTH, KEY, ClientFactory, Env
from tests.unit.test_ledger import DEDICATED, NET, NOW, make_ledger, new, pay
from tests.unit.test_ledger import db as db  # the fixture: a started network's database
from watcher.derivation import Deriver
from watcher.errors import Invalid, Unavailable
from watcher.ledger import Ledger, NewInvoice
from watcher.models import Status
from watcher.requests import parse_create
from watcher.storage import rows, sqlite
from watcher.storage.store import Store
from watcher.web.api import ApiContext, create_app

DERIVER = Deriver(hdkeys.xpub())


def derived(db: Database) -> list[tuple[int, str]]:
    return [(r["idx"], r["address"]) for r in db.query(
        "SELECT idx, address FROM derived_addresses ORDER BY idx")]


@pytest.fixture
def ledger() -> Ledger:
    led = make_ledger()
    led.deriver = DERIVER
    return led


def test_creates_take_consecutive_indexes(db: Database, ledger: Ledger) -> None:
    invs = [ledger.create(db, new(asset="ETH", derive=True), NOW)[0] for _ in range(5)]
    assert [i.derivation_index for i in invs] == [0, 1, 2, 3, 4]
    for i in invs:
        assert i.to_addr == hdkeys.reference_address(f"m/44'/60'/0'/0/{i.derivation_index}")
        assert not i.shared
        assert ledger.render(i)["derivationIndex"] == i.derivation_index
        assert ledger.get(db, i.id).derivation_index == i.derivation_index
    assert derived(db) == [(i.derivation_index, i.to_addr) for i in invs]
    key = db.execute("SELECT DISTINCT key_id FROM derived_addresses").fetchall()
    assert key == [(DERIVER.key_id,)]


def test_start_index_and_one_sequence_for_all_assets(db: Database, ledger: Ledger) -> None:
    ledger.start_index = 1000
    a = ledger.create(db, new(asset="ETH", derive=True), NOW)[0]
    b = ledger.create(db, new(asset="USDT", derive=True), NOW)[0]  # USDT has a shared address
    assert (a.derivation_index, b.derivation_index) == (1000, 1001)
    assert not b.shared and b.to_addr == DERIVER.address(1001)
    ledger.start_index = 10  # lowered later: never goes back
    assert ledger.create(db, new(asset="ETH", derive=True), NOW)[0].derivation_index == 1002
    ledger.start_index = 5000  # raised later: jumps forward, as the operator asked
    assert ledger.create(db, new(asset="ETH", derive=True), NOW)[0].derivation_index == 5000


def test_refused_create_in_a_group_leaves_no_gap(db: Database, ledger: Ledger) -> None:
    priced_without_rates = new(asset="ETH", amount=None, derive=True, price="10", currency="EUR")
    results = ledger.create_many(db, [
        (new(asset="ETH", derive=True), NOW),
        (priced_without_rates, NOW),  # refused after its savepoint began
        (new(asset="ETH", derive=True), NOW),
    ])
    assert isinstance(results[1], Invalid)
    got = [r[0].derivation_index for r in results if isinstance(r, tuple)]
    assert got == [0, 1]
    assert [i for i, _ in derived(db)] == [0, 1]


def test_remainder_keeps_the_derived_address(db: Database, ledger: Ledger) -> None:
    inv = ledger.create(db, new(asset="ETH", amount=10**18, derive=True), NOW)[0]
    pay(db, ledger, inv, 4 * 10**17, deep=True, now=NOW)
    child, _ = ledger.remainder(db, inv.id, NOW)
    assert (child.to_addr, child.derivation_index) == (inv.to_addr, inv.derivation_index)
    assert [i for i, _ in derived(db)] == [0]  # no new index for the remainder


def test_an_address_already_collecting_is_passed_over(db: Database, ledger: Ledger) -> None:
    by_hand = ledger.create(db, new(asset="ETH", address=DERIVER.address(0)), NOW)[0]
    inv = ledger.create(db, new(asset="ETH", derive=True), NOW)[0]
    assert inv.derivation_index == 1 and inv.to_addr != by_hand.to_addr
    assert [i for i, _ in derived(db)] == [0, 1]  # recorded, so never handed out later
    found = rows.derived_addresses(db)
    assert [r["invoices"][0]["id"] for r in found] == [by_hand.id, inv.id]


def test_derive_without_xpub(db: Database) -> None:
    led = make_ledger()
    with pytest.raises(Invalid) as info:
        led.create(db, new(asset="ETH", derive=True), NOW)
    assert info.value.field == "address" and "xpub" in str(info.value)
    with pytest.raises(Invalid) as info:
        parse_create({"network": NET, "asset": "ETH", "amount": "1", "address": "derive"},
                     led.networks, NOW)
    assert info.value.field == "address" and "xpub" in str(info.value)
    with pytest.raises(Invalid) as info:  # ETH has no shared address: an address is needed
        parse_create({"network": NET, "asset": "ETH", "amount": "1"}, led.networks, NOW)
    assert info.value.field == "address"


def test_request_parsing(ledger: Ledger) -> None:
    def req(**kw: Any) -> Any:
        body = {"network": NET, "asset": "ETH", "amount": "1", **kw}
        return parse_create(body, ledger.networks, NOW, derivable=True)

    implicit, explicit = req(), req(address="derive")
    assert implicit.derive and explicit.derive and implicit.address is None
    assert implicit.fingerprint == explicit.fingerprint  # the same request, said two ways
    assert not req(address=DEDICATED).derive
    shared = parse_create({"network": NET, "asset": "USDT", "amount": "1"}, ledger.networks,
                          NOW, derivable=True)
    assert not shared.derive  # the asset's shared address still serves a create without one
    with pytest.raises(Invalid) as info:
        req(address="DERIVE")
    assert info.value.field == "address"


def test_network_not_started_takes_no_index(tmp_path: Path, ledger: Ledger) -> None:
    database = sqlite.connect(tmp_path / "fresh.db")
    with pytest.raises(Unavailable):
        ledger.create(database, new(asset="ETH", derive=True), NOW)
    assert derived(database) == []
    database.close()


# ---------------------------------------------------------------- API


@pytest.fixture
async def env(tmp_path: Path, aiohttp_client: ClientFactory) -> AsyncIterator[Env]:
    st = await Store(tmp_path / "watcher.db").open()
    led = make_ledger()
    led.deriver = DERIVER
    await st.run(led.start_network, NET, 1, 0)
    ctx = ApiContext(st, led, [KEY])
    client = await aiohttp_client(create_app(ctx))
    yield Env(client, st, led, ctx)
    await st.close()


async def test_api_concurrent_creates_get_unique_indexes(env: Env) -> None:
    body = {"network": NET, "asset": "ETH", "amount": "0.1", "address": "derive"}
    answers = await asyncio.gather(*(env.call("POST", "/v1/invoices", json=body)
                                     for _ in range(200)))
    assert {s for s, _ in answers} == {201}
    indexes = sorted(d["derivationIndex"] for _, d in answers)
    assert indexes == list(range(200))
    assert len({d["to"] for _, d in answers}) == 200


async def test_api_lists_addresses_with_pages(env: Env) -> None:
    body = {"network": NET, "asset": "ETH", "amount": "0.1"}
    made = [(await env.call("POST", "/v1/invoices", json=body))[1] for _ in range(3)]
    await env.call("POST", f"/v1/invoices/{made[1]['id']}/cancel")
    status, page = await env.call("GET", "/v1/addresses?limit=2")
    assert status == 200 and [a["index"] for a in page["data"]] == [0, 1]
    first = page["data"][0]
    assert first["address"] == DERIVER.address(0) and first["keyId"] == DERIVER.key_id
    assert first["invoices"] == [
        {"id": made[0]["id"], "network": NET, "asset": "ETH", "status": "PENDING"}]
    assert page["data"][1]["invoices"][0]["status"] == "VOIDED"
    assert "balances" not in first
    status, rest = await env.call("GET", f"/v1/addresses?cursor={page['nextCursor']}")
    assert [a["index"] for a in rest["data"]] == [2] and rest["nextCursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [("network=nope", "network"), ("withBalance=yes", "withBalance"), ("limit=0", "limit"),
     ("cursor=%%%", "cursor"), ("sort=index", "sort")],
)
async def test_api_addresses_bad_query(env: Env, query: str, field: str) -> None:
    status, data = await env.call("GET", f"/v1/addresses?{query}")
    assert 400 <= status < 500 and data["error"]["field"] == field


async def test_api_derive_without_xpub(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    st = await Store(tmp_path / "plain.db").open()
    led = make_ledger()
    await st.run(led.start_network, NET, 1, 0)
    client = await aiohttp_client(create_app(ApiContext(st, led, [KEY])))
    resp = await client.post("/v1/invoices", headers=AUTH, json={
        "network": NET, "asset": "ETH", "amount": "1", "address": "derive"})
    data = await resp.json()
    assert resp.status == 422 and data["error"]["field"] == "address"
    await st.close()


def test_status_is_unaffected(db: Database, ledger: Ledger) -> None:
    inv = ledger.create(db, new(asset="ETH", amount=10**18, derive=True), NOW)[0]
    pay(db, ledger, inv, 10**18, deep=True, now=NOW)
    assert ledger.get(db, inv.id).status == Status.COMPLETED


# ---------------------------------------------------------------- CLI


def _config(tmp_path: Path, xpub: str | None, start: int = 0) -> Path:
    text = (f'database = "{tmp_path / "cli.db"}"\n'
            '[networks.anvil]\nrpc = ["http://127.0.0.1:1"]\n')
    if xpub is not None:
        text += f'[addresses]\nxpub = "{xpub}"\nstart_index = {start}\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_cli_preview_shows_the_wallets_addresses(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from watcher.cli import main

    path = _config(tmp_path, hdkeys.xpub(), start=7)
    result = CliRunner().invoke(main, ["addresses", "preview", "--config", str(path),
                                       "--count", "3"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert rows == [[str(i), hdkeys.reference_address(f"m/44'/60'/0'/0/{i}"), f"xpub/0/{i}"]
                    for i in (7, 8, 9)]
    assert hdkeys.xpub() not in result.output
    assert not (tmp_path / "cli.db").exists()  # a preview hands nothing out

    plain = _config(tmp_path, None)
    result = CliRunner().invoke(main, ["addresses", "preview", "--config", str(plain)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: addresses.xpub: not set: there is nothing to derive from"]


def test_cli_list_without_balances(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from watcher.cli import main
    from watcher.config import load_settings
    from watcher.daemon import build_ledger

    path = _config(tmp_path, hdkeys.xpub(), start=100)
    led = build_ledger(load_settings(path))
    database = sqlite.connect(tmp_path / "cli.db")
    led.start_network(database, "anvil", 1, 0)
    req = NewInvoice(network="anvil", asset="ETH", amount=1, address=None, expire_at=None,
                     derive=True)
    inv = led.create(database, req, NOW)[0]
    database.close()
    result = CliRunner().invoke(main, ["addresses", "list", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["100", inv.to_addr, inv.id[:8], "PENDING", "(anvil", "ETH)"]
    result = CliRunner().invoke(main, ["addresses", "list", "--json", "--config", str(path)])
    assert '"derivationIndex"' not in result.output and '"index": 100' in result.output

    (tmp_path / "fresh").mkdir()
    plain = _config(tmp_path / "fresh", None)
    result = CliRunner().invoke(main, ["addresses", "list", "--config", str(plain)])
    assert result.exit_code == 0
    assert result.output == "no derived addresses yet (no [addresses] xpub is configured)\n"
