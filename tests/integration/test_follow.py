"""The follower against a real anvil: every rule of contract section 1 that needs a chain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Harness
from watcher.devchain import Anvil, DevChain

USDT = 10**6
ETH = 10**18


@pytest.fixture
async def w(tmp_path: Path, rpc_url: str, token: str, chain: DevChain) -> AsyncIterator[Harness]:
    h = await Harness(tmp_path / "w.db", [rpc_url], {"USDT": (token, 6)}).start()
    await h.sync()  # a fresh database starts at the head
    yield h
    await h.close()


def _chain_now(chain: DevChain) -> int:
    """A time at or after both the head's timestamp and the wall clock: expiries set from it
    are in the future for the API and reachable for the chain, however long it sat idle."""
    return max(int(chain.get_block("latest")["timestamp"], 16), int(time.time()))


@pytest.fixture
def payer(chain: DevChain, token: str) -> str:
    account = chain.accounts[1]
    chain.mint(token, account, 1_000_000 * USDT)
    return account


async def test_native_exact_payment(w: Harness, chain: DevChain, payer: str) -> None:
    to = chain.new_account()
    inv = await w.create("ETH", "1.5", to)
    tx = chain.send_native(payer, to, 15 * ETH // 10)
    await w.sync()
    got = await w.get(inv.id)
    assert got["status"] == "WAITING_FOR_CONFIRMATIONS"
    assert (got["txHash"], got["amountPaid"], got["confirmations"]) == (tx, "1.5", 1)
    assert got["from"] == payer and got["payments"][0]["logIndex"] is None
    chain.mine(1)
    await w.sync()
    got = await w.get(inv.id)
    assert got["status"] == "COMPLETED" and got["confirmations"] == 2
    assert w.history(inv.id) == ["created", "waiting_for_confirmations", "completed"]


async def test_token_partial_then_completed(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    to = chain.new_account()
    inv = await w.create("USDT", "10", to)
    chain.send_token(token, payer, to, 4 * USDT)
    chain.mine(1)
    await w.sync()
    assert await w.status(inv.id) == "PARTIAL"
    tx2 = chain.send_token(token, payer, to, 6 * USDT)
    await w.sync()
    assert await w.status(inv.id) == "WAITING_FOR_CONFIRMATIONS"
    chain.mine(1)
    await w.sync()
    got = await w.get(inv.id)
    assert (got["status"], got["amountPaid"], got["txHash"]) == ("COMPLETED", "10", tx2)
    assert [p["amount"] for p in got["payments"]] == ["4", "6"]
    assert w.history(inv.id) == [
        "created", "waiting_for_confirmations", "partial", "waiting_for_confirmations",
        "completed",
    ]


async def test_overpayment_completes_with_more_paid(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    to = chain.new_account()
    inv = await w.create("USDT", "10", to)
    chain.send_token(token, payer, to, 12_345_678)
    chain.mine(1)
    await w.sync()
    got = await w.get(inv.id)
    assert (got["status"], got["amountPaid"], got["amount"]) == ("COMPLETED", "12.345678", "10")


async def test_payment_already_deep_passes_through_waiting(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    to = chain.new_account()
    inv = await w.create("USDT", "1", to)
    chain.send_token(token, payer, to, USDT)
    chain.mine(5)
    await w.sync()
    assert w.history(inv.id) == ["created", "waiting_for_confirmations", "completed"]


async def test_expiry_voids_then_late_payment(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    to = chain.new_account()
    head_time = _chain_now(chain)
    inv = await w.create("USDT", "5", to, expire_at=head_time + 30)
    chain.set_next_timestamp(head_time + 31)
    chain.mine(1)
    await w.sync()
    assert await w.status(inv.id) == "PENDING"  # the block past expiry is not final yet
    chain.mine(1)
    await w.sync()
    assert await w.status(inv.id) == "VOIDED"
    late_tx = chain.send_token(token, payer, to, 5 * USDT)
    await w.sync()
    got = await w.get(inv.id)
    assert got["status"] == "VOIDED"
    assert [p["txHash"] for p in got["latePayments"]] == [late_tx]
    assert got["payments"] == []
    assert w.history(inv.id)[-1] == "voided"  # announced once it has the confirmations
    chain.mine(w.confirmations)
    await w.sync()
    assert w.history(inv.id)[-2:] == ["voided", "late_payment"]


async def test_payment_in_time_counts_after_expiry(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    to = chain.new_account()
    head_time = _chain_now(chain)
    inv = await w.create("USDT", "5", to, expire_at=head_time + 30)
    chain.set_next_timestamp(head_time + 10)
    chain.send_token(token, payer, to, 5 * USDT)
    chain.set_next_timestamp(head_time + 100)
    chain.mine(3)
    await w.sync()
    assert await w.status(inv.id) == "COMPLETED"


async def test_shared_address_unique_amounts_and_unmatched(
    tmp_path: Path, rpc_url: str, chain: DevChain, token: str, payer: str
) -> None:
    shared = chain.new_account()
    h = await Harness(
        tmp_path / "s.db", [rpc_url], {"USDT": (token, 6)}, shared={"USDT": shared}
    ).start()
    try:
        await h.sync()
        first = await h.create("USDT", "7")
        second = await h.create("USDT", "7")
        assert (first.amount, second.amount) == (7 * USDT, 7 * USDT + 1)
        assert second.requested_amount == 7 * USDT and second.to_addr == shared
        chain.send_token(token, payer, shared, 7 * USDT + 1)
        chain.send_token(token, payer, shared, 7_500_000)  # an inexact amount: unmatched
        chain.mine(1)
        await h.sync()
        assert await h.status(second.id) == "COMPLETED"
        assert await h.status(first.id) == "PENDING"
        unmatched = [t for t in await h.transfers() if t["kind"] == "unmatched"]
        assert [(t["amount"], t["invoice_id"]) for t in unmatched] == [("7500000", None)]
    finally:
        await h.close()


async def test_reorg_drops_payment_then_paid_again(
    w: Harness, chain: DevChain, payer: str
) -> None:
    to = chain.new_account()
    inv = await w.create("ETH", "1", to)
    snap = chain.snapshot()
    chain.send_native(payer, to, ETH)
    await w.sync()
    assert await w.status(inv.id) == "WAITING_FOR_CONFIRMATIONS"
    chain.revert(snap)
    chain.mine(2)  # a longer chain without the payment
    await w.sync()
    got = await w.get(inv.id)
    assert (got["status"], got["txHash"], got["payments"]) == ("PENDING", None, [])
    tx2 = chain.send_native(payer, to, ETH)
    chain.mine(1)
    await w.sync()
    got = await w.get(inv.id)
    assert (got["status"], got["txHash"]) == ("COMPLETED", tx2)
    assert w.history(inv.id) == [
        "created", "waiting_for_confirmations", "pending", "waiting_for_confirmations",
        "completed",
    ]
    assert w.metrics.reorgs.labels("anvil")._value.get() >= 1


async def test_same_height_reorg_is_seen_with_the_next_block(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    """A head at the scanned height with another hash may come from a backend on an old
    fork: nothing is undone on its word (that could rewind confirmed payments and send a
    false REVERSED). The next block decides: it links to one of the two. Nothing can
    complete in between, since confirmations only grow with new blocks."""
    to = chain.new_account()
    inv = await w.create("USDT", "3", to)
    chain.send_token(token, payer, to, 3 * USDT)
    await w.sync()
    assert await w.status(inv.id) == "WAITING_FOR_CONFIRMATIONS"
    chain.reorg(1, [])  # the same height, another block without the payment
    await w.sync()
    assert await w.status(inv.id) == "WAITING_FOR_CONFIRMATIONS"
    chain.mine(1)
    await w.sync()
    assert await w.status(inv.id) == "PENDING"


async def test_reorg_after_completed_is_reversed(
    w: Harness, chain: DevChain, payer: str
) -> None:
    to = chain.new_account()
    inv = await w.create("ETH", "2", to)
    snap = chain.snapshot()
    chain.send_native(payer, to, 2 * ETH)
    chain.mine(2)
    await w.sync()
    assert await w.status(inv.id) == "COMPLETED"
    chain.revert(snap)
    chain.mine(6)  # deeper than the confirmations
    await w.sync()
    got = await w.get(inv.id)
    assert (got["status"], got["payments"]) == ("REVERSED", [])
    assert w.history(inv.id)[-1] == "reversed"


async def test_restart_catches_up_without_skipping(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    addrs = [chain.new_account() for _ in range(3)]
    invs = [await w.create("USDT", "1", a) for a in addrs]
    await w.sync()
    start = w.follower.scanned
    counted = w.metrics.blocks_scanned.labels("anvil")._value.get()
    await w.close()  # the daemon is down while payments are mined, far apart
    for a in addrs:
        chain.send_token(token, payer, a, USDT)
        chain.mine(150)
    head = chain.block_number()
    await w.start()
    w.follower._range = 100  # several getLogs ranges
    for _ in range(20):
        await w.sync()
        if w.follower.scanned == head:
            break
    assert w.follower.scanned == head
    for inv in invs:
        assert await w.status(inv.id) == "COMPLETED"
    scanned = w.metrics.blocks_scanned.labels("anvil")._value.get() - counted
    assert start is not None and scanned == head - start  # every block once, none skipped


async def test_reverted_native_payment_does_not_count(
    w: Harness, chain: DevChain, payer: str
) -> None:
    reverter = chain.deploy_reverter()
    inv = await w.create("ETH", "1", reverter)
    tx = chain.send_native(payer, reverter, ETH)
    assert chain.receipt(tx)["status"] == "0x0"  # type: ignore[index]
    chain.mine(2)
    await w.sync()
    assert await w.status(inv.id) == "PENDING"
    assert await w.transfers() == []


async def test_transfer_of_unconfigured_token_is_ignored(
    w: Harness, chain: DevChain, payer: str
) -> None:
    fake = chain.deploy_token("USDT", 6)  # same symbol, another contract
    chain.mint(fake, payer, 100 * USDT)
    to = chain.new_account()
    inv = await w.create("USDT", "5", to)
    chain.send_token(fake, payer, to, 5 * USDT)
    chain.mine(2)
    await w.sync()
    assert await w.status(inv.id) == "PENDING"
    assert await w.transfers() == []


async def test_first_rpc_url_dead_fails_over(
    tmp_path: Path, dead_url: str, rpc_url: str, chain: DevChain, token: str, payer: str
) -> None:
    h = await Harness(tmp_path / "f.db", [dead_url, rpc_url], {"USDT": (token, 6)}).start()
    try:
        await h.sync()
        to = chain.new_account()
        inv = await h.create("USDT", "2", to)
        chain.send_token(token, payer, to, 2 * USDT)
        chain.mine(1)
        await h.sync()
        assert await h.status(inv.id) == "COMPLETED"
        health: list[dict[str, Any]] = h.rpc.health()
        assert [x["healthy"] for x in health] == [False, True]
        errors = h.metrics.rpc_requests.labels("anvil", "eth_getBlockByNumber", "ok")
        assert errors._value.get() > 0
    finally:
        await h.close()


async def test_same_transfer_never_counted_twice(
    w: Harness, chain: DevChain, token: str, payer: str
) -> None:
    to = chain.new_account()
    inv = await w.create("USDT", "10", to)
    chain.send_token(token, payer, to, 4 * USDT)
    chain.mine(1)
    await w.sync()
    w.follower.scanned -= 2  # as after a crash between commit and cursor write (cannot
    await w.sync()  # happen: one transaction), a rescan must not add the payment again
    got = await w.get(inv.id)
    assert (got["status"], got["amountPaid"], len(got["payments"])) == ("PARTIAL", "4", 1)


async def _wait_status(h: Harness, invoice_id: str, status: str, seconds: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    current = await h.status(invoice_id)
    while current != status and loop.time() < deadline:
        await asyncio.sleep(0.05)
        current = await h.status(invoice_id)
    return current


@pytest.mark.parametrize("ws_alive", [True, False])
async def test_websocket_heads_wake_the_follower_and_polling_remains(
    tmp_path: Path, anvil: Anvil, rpc_url: str, dead_url: str, chain: DevChain, token: str,
    payer: str, ws_alive: bool,
) -> None:
    h = await Harness(tmp_path / "ws.db", [rpc_url], {"USDT": (token, 6)}).start()
    # With a live socket the poll interval is long: only a newHeads message can wake the
    # follower in time. With a dead socket, polling alone must still find the payment.
    h.follower.cfg.ws = [anvil.ws_url if ws_alive else dead_url.replace("http", "ws")]
    h.follower.cfg.poll_interval = 30.0 if ws_alive else 0.25
    task = asyncio.create_task(h.follower.run())
    try:
        to = chain.new_account()
        inv = await h.create("USDT", "1", to)
        await asyncio.sleep(1.0)  # the subscription is set up
        chain.send_token(token, payer, to, USDT)
        assert await _wait_status(h, inv.id, "WAITING_FOR_CONFIRMATIONS", 10) == (
            "WAITING_FOR_CONFIRMATIONS"
        )
    finally:
        h.follower.stop()
        await asyncio.wait_for(task, 10)
        await h.close()
