"""Internal native transfers with the real daemon on anvil, read from `trace_block` and from
`debug_traceBlockByNumber` (callTracer): a contract forwarding ETH (one payout, a batch, a
payout two calls deep) pays invoices; value sent in a call that reverted, or in a transaction
that reverted, does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.daemonproc import NETWORK, Daemons
from watcher.devchain import DevChain

ETH = 10**18


@pytest.fixture
async def daemons(tmp_path: Path, rpc_url: str) -> AsyncIterator[Daemons]:
    pool = Daemons(tmp_path, [rpc_url], {})
    yield pool
    await pool.close()


@pytest.mark.parametrize("mode", ["trace_block", "debug_trace"])
async def test_internal_payouts_pay_invoices(
    daemons: Daemons, chain: DevChain, payer: str, mode: str
) -> None:
    d = await daemons.start(extra={f"networks.{NETWORK}": {"internal_transfers": mode}})
    outer, inner = chain.deploy_payout(), chain.deploy_payout()
    names = ("single", "batch1", "batch2", "nested", "reverted_tx", "reverted_call")
    to = {n: chain.new_account() for n in names}
    inv = {}
    for n in names:
        inv[n] = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                                     "amount": "0.1", "address": to[n]},
                            expect=201)
    tenth = ETH // 10
    single = chain.call_payout(outer, payer, "pay", [to["single"]], tenth)
    chain.call_payout(outer, payer, "batch", [[to["batch1"], to["batch2"]], [tenth, tenth]],
                      2 * tenth)
    chain.call_payout(outer, payer, "nested", [inner, to["nested"]], tenth)
    reverted = chain.call_payout(outer, payer, "payThenRevert", [to["reverted_tx"]], tenth)
    assert chain.receipt(reverted)["status"] == "0x0"
    chain.call_payout(outer, payer, "tryPay", [inner, to["reverted_call"]], tenth)
    chain.mine(2)
    for n in ("single", "batch1", "batch2", "nested"):
        done = await d.wait_status(inv[n]["id"], "COMPLETED")
        (p,) = done["payments"]
        assert p["internal"] is True and p["amount"] == "0.1" and p["logIndex"] is None
        assert p["traceAddress"] == {"single": [0], "batch1": [0], "batch2": [1],
                                     "nested": [0, 0]}[n]
    (p,) = (await d.invoice(inv["single"]["id"]))["payments"]
    assert p["txHash"] == single and p["from"].lower() == outer.lower()
    scanned = chain.block_number()
    await d.wait_scanned(scanned)
    for n in ("reverted_tx", "reverted_call"):
        got = await d.invoice(inv[n]["id"])
        assert (got["status"], got["payments"]) == ("PENDING", [])
    transfers = await d.ok("GET", "/v1/transfers")
    internal = [t for t in transfers["data"] if t["internal"]]
    assert len(internal) == 4 and len({t["id"] for t in internal}) == 4

    # the transaction's own value and an internal transfer in one transaction both count,
    # as two payments with different keys
    both = chain.new_account()
    two = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                              "amount": "0.2", "address": both}, expect=201)
    chain.send_native(payer, both, tenth)
    chain.call_payout(outer, payer, "pay", [both], tenth)
    chain.mine(2)
    done = await d.wait_status(two["id"], "COMPLETED")
    assert sorted(p["internal"] for p in done["payments"]) == [False, True]
