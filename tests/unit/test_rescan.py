"""Rescans through the daemon's real parts against the chain model: a payment the follower
missed (a node that lost its logs) is found, an invoice voided for want of it is paid after
all, nothing is counted twice, an interrupted rescan resumes where it stopped, and ranges
it cannot do are refused naming the block."""

from __future__ import annotations

import asyncio

import pytest

from tests.chainmodel import ChainModel, TokenTx
from tests.daemonparts import ADDRS, ASSETS, CONF, LATE, PAYER, TOKEN, Node, running
from watcher.models import OPENS_EARLY, Status
from watcher.rescan import Progress, RescanError, Rescanner


def scanner(node: Node) -> Rescanner:
    return Rescanner(node.follower.cfg, ASSETS, node.rpc, node.store, node.ledger, LATE,
                     node.on_outcome)


async def _missed(node: Node, model: ChainModel) -> tuple[list[str], int]:
    """Two invoices, both paid while the node answered every eth_getLogs with []: one open
    for long, one expiring right after its payment. The follower catches up and misses
    both; the second is voided. (invoice ids, the block before the payments)."""
    await node.catch_up(model.head.number)
    now = model.head.timestamp + OPENS_EARLY + 1
    long = await node.create("USDT", 100, ADDRS[0], now=now, expire_at=now + 100_000)
    short = await node.create("USDT", 50, ADDRS[1], now=now, expire_at=now + 60)
    before = model.head.number
    model.lost_logs = True
    model.mine([TokenTx(TOKEN, PAYER, ADDRS[0], 100), TokenTx(TOKEN, PAYER, ADDRS[1], 50)])
    model.mine_empty(CONF + 20)  # 12 s blocks: far past the short one's expiry
    await node.catch_up(model.head.number)
    assert [(await node.get(i)).status for i in (long.id, short.id)] == [
        Status.PENDING, Status.VOIDED]
    model.lost_logs = False
    return [long.id, short.id], before


async def test_a_rescan_finds_missed_payments_once(database: str) -> None:
    async with running(database) as (model, _, node):
        ids, before = await _missed(node, model)
        r = scanner(node)
        first, last = await r.check(before, None)
        assert last == node.follower.scanned
        seen: list[Progress] = []
        done = await r.run(first, last, seen.append)
        assert done.added == 2 and done.next_block == last + 1
        assert seen[0].next_block == first and len(seen) > 2  # several chunks, each reported
        for invoice_id in ids:
            inv = await node.get(invoice_id)
            assert inv.status == Status.COMPLETED and len(inv.payments) == 1
            events = [e for _, e, _ in await node.events(invoice_id)]
            assert events[-2:] == ["invoice.waiting_for_confirmations", "invoice.completed"]
        causes = await node.store.run(lambda db: [tuple(r) for r in db.execute(
            "SELECT DISTINCT cause FROM events WHERE event != 'invoice.created' "
            "AND event != 'invoice.voided'").fetchall()])
        assert causes == [("rescan",)]
        # the same range again: a new rescan, nothing added, nothing sent again
        events_before = [await node.events(i) for i in ids]
        again = await r.run(first, last)
        assert again.added == 0 and again.rescan_id != done.rescan_id
        assert [await node.events(i) for i in ids] == events_before


async def test_an_interrupted_rescan_resumes_where_it_stopped(database: str) -> None:
    async with running(database) as (model, _, node):
        ids, before = await _missed(node, model)
        r = scanner(node)
        first, last = await r.check(before, None)
        reached = asyncio.Event()

        def note(p: Progress) -> None:
            if p.next_block > first:
                reached.set()

        task = asyncio.create_task(r.run(first, last, note))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (state, next_block, rescan_id), = await node.store.run(
            lambda db: db.execute("SELECT state, next_block, id FROM rescans").fetchall())
        assert state == "stopped" and first < next_block <= last
        seen: list[Progress] = []
        done = await r.run(first, last, seen.append)
        assert done.rescan_id == rescan_id and seen[0].next_block == next_block
        assert done.added == 2
        assert [(await node.get(i)).status for i in ids] == [Status.COMPLETED] * 2


async def test_ranges_a_rescan_cannot_do_are_refused_naming_the_block(database: str) -> None:
    async with running(database) as (model, _, node):
        await node.catch_up(model.head.number)
        r = scanner(node)
        head = model.head.number
        with pytest.raises(RescanError, match=f"block {head + 5} is above the node's head"):
            await r.check(1, head + 5)
        model.mine_empty(3)  # the node moved on; the follower has not scanned these yet
        with pytest.raises(RescanError, match=f"block {head + 2} is not scanned yet") as info:
            await r.check(1, head + 2)
        assert info.value.field == "to"  # the end of the range at fault
        model.history_from = 2
        with pytest.raises(RescanError, match="the node has no block 1") as info:
            await r.check(1, head)
        assert info.value.field == "from"
        with pytest.raises(RescanError, match="not above --to"):
            await r.check(head, head - 1)


async def test_a_new_database_cannot_rescan(database: str) -> None:
    model = ChainModel()
    model.mine_empty(3)
    async with running(database, model) as (_, _, node):
        await node.store.run(lambda db: db.execute("DELETE FROM cursors"))
        with pytest.raises(RescanError, match="has not started"):
            await scanner(node).check(1, None)
