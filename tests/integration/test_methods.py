"""Method invoices against the real daemon on a real anvil: the customer chooses how to pay
(section 14). A choice locks the rate and gives an address; a switch retires the previous
address, and a transfer to it later is a late payment of the invoice, never lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import hdkeys
from tests.integration.daemonproc import NETWORK, DaemonProc, Daemons, poll
from tests.integration.receiver import Receiver
from watcher.devchain import DevChain

ETH = 10**18
SHARED = "0x00000000000000000000000000000000000C0FFE"
RATES = {"ETH/USD": [{"fixed": "2500"}], "USDT/USD": [{"fixed": "1"}]}
BOTH = [{"network": NETWORK, "asset": "ETH"}, {"network": NETWORK, "asset": "USDT"}]


@pytest.fixture
async def daemons(tmp_path: Path, rpc_url: str, token: str) -> AsyncIterator[Daemons]:
    pool = Daemons(tmp_path, [rpc_url], {"USDT": token})
    yield pool
    await pool.close()


async def _create(d: DaemonProc, **extra: Any) -> dict[str, Any]:
    body = {"methods": BOTH, "price": "25", "currency": "USD", "title": "Order #7",
            "description": "Two mugs", **extra}
    got: dict[str, Any] = await d.ok("POST", "/v1/invoices", body, expect=201)
    return got


async def _events(d: DaemonProc, invoice_id: str) -> list[str]:
    got = await d.ok("GET", f"/v1/invoices/{invoice_id}/events")
    return [e["event"] for e in got["data"]]


async def test_choose_switch_and_a_late_payment_to_the_first_choice(
    daemons: Daemons, chain: DevChain, payer: str, token: str, rx: Receiver, database: str
) -> None:
    d = await daemons.start(database_url=database, callback_url=rx.url, confirmations=1, extra={
        "addresses": {"xpub": hdkeys.xpub(), "start_index": 5000}, "rates.pairs": RATES})
    inv = await _create(d)
    assert inv["status"] == "PENDING" and inv["method"] is None
    for key in ("network", "asset", "to", "amount", "chainId", "decimals", "rate",
                "derivationIndex"):
        assert inv[key] is None, key
    assert inv["title"] == "Order #7" and inv["description"] == "Two mugs"
    assert [(m["asset"], m["amount"], m["chosen"]) for m in inv["methods"]] == [
        ("ETH", "0.01", False), ("USDT", "25", False)]

    usdt = await d.ok("POST", f"/v1/invoices/{inv['id']}/method",
                      {"network": NETWORK, "asset": "USDT"})
    assert usdt["method"] == {"network": NETWORK, "asset": "USDT"}
    assert usdt["amount"] == "25" and usdt["rate"] == "1" and usdt["tokenAddress"] == token
    assert usdt["derivationIndex"] == 5000
    assert usdt["to"] == hdkeys.reference_address(f"{hdkeys.ACCOUNT_PATH}/0/5000")
    again = await d.ok("POST", f"/v1/invoices/{inv['id']}/method",
                       {"network": NETWORK, "asset": "USDT"})
    assert again["updatedAt"] == usdt["updatedAt"]  # the chosen one again: nothing changes

    eth = await d.ok("POST", f"/v1/invoices/{inv['id']}/method",
                     {"network": NETWORK, "asset": "ETH"})
    assert eth["asset"] == "ETH" and eth["amount"] == "0.01" and eth["rate"] == "2500"
    assert eth["to"] == usdt["to"]  # the invoice keeps its derived address
    assert [m["chosen"] for m in eth["methods"]] == [True, False]
    assert await _events(d, inv["id"]) == [
        "invoice.created", "invoice.method_selected", "invoice.method_selected"]

    # The customer pays the first choice anyway: a late payment of this invoice, in USDT.
    chain.mint(token, payer, 25_000_000)
    chain.send_token(token, payer, eth["to"], 25_000_000)
    chain.mine(1)

    async def late() -> dict[str, Any] | None:
        got = await d.invoice(inv["id"])
        return got if got["latePayments"] else None

    got = await poll(late, 20, what="the late payment")
    assert got["status"] == "PENDING" and got["payments"] == []
    (lp,) = got["latePayments"]
    assert (lp["network"], lp["asset"], lp["amount"]) == (NETWORK, "USDT", "25")
    # a late payment stops the switching: something was received
    status, body = await d.request("POST", f"/v1/invoices/{inv['id']}/method",
                                   {"network": NETWORK, "asset": "USDT"})
    assert status == 409, body

    chain.send_native(payer, eth["to"], ETH // 100)
    done = await d.wait_status(inv["id"], "COMPLETED")
    assert done["amountPaid"] == "0.01" and len(done["latePayments"]) == 1

    async def delivered() -> list[str] | None:
        seen = [r.event for r in rx.requests if r.invoice_id == inv["id"]]
        return seen if "invoice.completed" in seen and "invoice.late_payment" in seen else None

    seen = await poll(delivered, 20, what="callbacks")
    assert seen.count("invoice.method_selected") == 2
    selected = next(r.json() for r in rx.requests if r.event == "invoice.method_selected")
    assert selected["data"]["method"] == {"network": NETWORK, "asset": "USDT"}

    # A restart rebuilds the index from the database: a second late USDT payment still lands.
    await d.stop()
    await d.start()
    chain.mint(token, payer, 1_000_000)
    chain.send_token(token, payer, eth["to"], 1_000_000)
    chain.mine(1)

    async def second() -> bool:
        return len((await d.invoice(inv["id"]))["latePayments"]) >= 2

    await poll(second, 20, what="the second late payment")


async def test_fifty_racing_choices_end_with_one_method_at_a_shared_address(
    daemons: Daemons, chain: DevChain, payer: str, token: str, database: str
) -> None:
    d = await daemons.start(database_url=database, confirmations=1, extra={
        "rates.pairs": RATES,
        f"networks.{NETWORK}": {
            "native": {"symbol": "ETH", "decimals": 18, "shared_address": SHARED},
            "tokens": [{"symbol": "USDT", "address": token, "decimals": 6,
                        "shared_address": SHARED}],
        }})
    inv = await _create(d)
    other = await _create(d)  # holds its own amount at the shared address
    await d.ok("POST", f"/v1/invoices/{other['id']}/method", {"network": NETWORK, "asset": "ETH"})

    async def choose(i: int) -> tuple[int, Any]:
        asset = "ETH" if i % 2 else "USDT"
        return await d.request("POST", f"/v1/invoices/{inv['id']}/method",
                               {"network": NETWORK, "asset": asset})

    answers = await asyncio.gather(*(choose(i) for i in range(50)))
    assert {status for status, _ in answers} == {200}
    final = await d.invoice(inv["id"])
    assert final["method"] is not None and final["to"].lower() == SHARED.lower()
    events = await _events(d, inv["id"])
    changes = events.count("invoice.method_selected")
    assert 1 <= changes <= 50 and events[0] == "invoice.created"
    # every answer is one state the invoice really had; the last one is what it has now
    assert final["method"] in [body["method"] for _, body in answers]
    # amounts stay unique at the shared address: the other invoice's is never reused
    assert (final["asset"], final["amount"]) != (other["asset"], other["amount"])

    units = int(final["amount"].replace(".", "")) if final["asset"] == "USDT" else None
    if final["asset"] == "ETH":
        whole, _, frac = final["amount"].partition(".")
        wei = int(whole) * ETH + int(frac.ljust(18, "0"))
        chain.send_native(payer, SHARED, wei)
    else:
        assert units is not None
        whole, _, frac = final["amount"].partition(".")
        units = int(whole) * 10**6 + int(frac.ljust(6, "0"))
        chain.mint(token, payer, units)
        chain.send_token(token, payer, SHARED, units)
    await d.wait_status(inv["id"], "COMPLETED")
    status, body = await d.request("POST", f"/v1/invoices/{inv['id']}/method",
                                   {"network": NETWORK, "asset": "ETH" if final["asset"]
                                    == "USDT" else "USDT"})
    assert status == 409 and body["error"]["code"] == "conflict", body


async def test_refusals(daemons: Daemons, chain: DevChain, token: str, database: str) -> None:
    stale = chain.deploy_aggregator(8, "ETH / USD")
    chain.set_round(stale, 2500_00000000, updated_at=1)  # never fresh: no usable rate
    d = await daemons.start(database_url=database, extra={
        "addresses": {"xpub": hdkeys.xpub(), "start_index": 6000},
        "rates.pairs": {"ETH/USD": [{"chainlink": NETWORK, "feed": stale}],
                        "USDT/USD": [{"fixed": "1"}]}})
    base = {"price": "25", "currency": "USD"}
    for methods, extra in [
        ([], {}),
        (BOTH[:1] * 2, {}),
        ([{"network": "nowhere", "asset": "ETH"}], {}),
        ([{"network": NETWORK, "asset": "DOGE"}], {}),
        ([{"network": NETWORK}], {}),
        (BOTH, {"amount": "1"}),
        (BOTH, {"network": NETWORK}),
        ("ETH", {}),
    ]:
        status, body = await d.request("POST", "/v1/invoices",
                                       {**base, "methods": methods, **extra})
        assert status == 422 and body["error"]["field"] == "methods", (methods, extra, body)
    status, body = await d.request("POST", "/v1/invoices", {"methods": BOTH})
    assert status == 422 and body["error"]["field"] == "price", body
    status, body = await d.request("POST", "/v1/invoices", {"methods": BOTH, "price": "5",
                                                            "currency": "XYZ"})
    assert status == 422 and body["error"]["field"] == "currency", body
    status, body = await d.request("POST", "/v1/invoices", {**base, "methods": BOTH,
                                                            "title": "x" * 201})
    assert status == 422 and body["error"]["field"] == "title", body

    inv = await _create(d)
    assert [m["amount"] for m in inv["methods"]] == [None, "25"]  # no usable ETH rate now
    path = f"/v1/invoices/{inv['id']}/method"
    for choice, field in [({"network": "nowhere", "asset": "ETH"}, "network"),
                          ({"network": NETWORK, "asset": "DAI"}, "asset"),
                          ({"network": NETWORK}, "asset")]:
        status, body = await d.request("POST", path, choice)
        assert status == 422 and body["error"]["field"] == field, (choice, body)
    status, body = await d.request("POST", path, {"network": NETWORK, "asset": "ETH"})
    assert status == 503 and body["error"]["code"] == "rate_unavailable", body
    assert (await d.invoice(inv["id"]))["method"] is None  # unchanged
    assert await _events(d, inv["id"]) == ["invoice.created"]

    classic = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                                  "amount": "1", "address": "derive"},
                         expect=201)
    assert classic["method"] == {"network": NETWORK, "asset": "ETH"}
    assert classic["methods"] is None
    status, body = await d.request("POST", f"/v1/invoices/{classic['id']}/method",
                                   {"network": NETWORK, "asset": "ETH"})
    assert status == 409, body
    status, body = await d.request("POST", "/v1/invoices/00000000-0000-4000-8000-000000000000"
                                   "/method", {"network": NETWORK, "asset": "ETH"})
    assert status == 404, body

    await d.ok("POST", f"/v1/invoices/{inv['id']}/cancel")
    status, body = await d.request("POST", path, {"network": NETWORK, "asset": "USDT"})
    assert status == 409, body
