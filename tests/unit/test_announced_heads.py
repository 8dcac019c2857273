"""A head announced over `ws` (newHeads) is the next pass's tip: no request for the head,
and no trust beyond what a polled head gets. Driven through the daemon's real parts
against the scriptable chain."""

from __future__ import annotations

from typing import Any

import orjson

from tests.chainmodel import Block, ChainModel, TokenTx
from tests.daemonparts import ADDRS, CONF, NET, PAYER, TOKEN, Node, clock, running
from watcher.models import Status


def _announce(node: Node, model: ChainModel, block: Block, **change: Any) -> None:
    """What the follower's socket hands on: a newHeads notification of `block`."""
    head = {**model._block_json(block, False), **change}
    head = {k: v for k, v in head.items() if v is not None}
    node.follower._announce(orjson.dumps({
        "jsonrpc": "2.0", "method": "eth_subscription",
        "params": {"subscription": "0x1", "result": head},
    }))


async def _paid_invoice(node: Node, model: ChainModel) -> str:
    now = clock(model)
    inv = await node.create("USDT", 100, ADDRS[0], now=now, expire_at=now + 10_000)
    await node.catch_up(model.head.number)
    model.mine([TokenTx(TOKEN, PAYER, ADDRS[0], 100)])
    return inv.id


def _head_requests(model: ChainModel) -> int:
    return model.calls["eth_getBlockByNumber"]


async def test_an_announced_head_is_the_tip_without_asking_for_it(database: str) -> None:
    async with running(database) as (model, _, node):
        inv = await _paid_invoice(node, model)
        _announce(node, model, model.head)
        model.reset_calls()
        await node.sync()
        assert node.follower.scanned == model.head.number
        # the tip's header came with the announcement: no block asked at all
        assert _head_requests(model) == 0, model.calls
        assert (await node.get(inv)).status == Status.WAITING_FOR_CONFIRMATIONS
        # the next pass has no announcement: it asks the node, as before
        model.mine_empty(CONF)
        model.reset_calls()
        await node.sync()
        assert _head_requests(model) >= 1
        assert (await node.get(inv)).status == Status.COMPLETED


async def test_a_header_without_logs_bloom_behind_or_after_a_gap_is_not_taken(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        await _paid_invoice(node, model)
        for bad in (None, "x"):
            await node.catch_up(model.head.number)
            model.mine_empty(1)
            if bad is None:
                _announce(node, model, model.head, logsBloom=None)
            else:
                node.follower._announce(b"not json")
            model.reset_calls()
            await node.sync()
            assert node.follower.scanned == model.head.number
            assert _head_requests(model) >= 1
        # two messages since the last pass (the subscription's answer, then a head): a
        # backlog, not read; the node is asked
        model.mine_empty(1)
        node.follower._announce(b'{"jsonrpc": "2.0", "id": 1, "result": "0x9"}')
        _announce(node, model, model.head)
        model.reset_calls()
        await node.sync()
        assert _head_requests(model) >= 1
        await node.catch_up(model.head.number)
        model.mine_empty(2)
        # a socket node behind the head already read: the pass asks the node instead
        _announce(node, model, model.block(node.follower.scanned - 1))
        model.reset_calls()
        await node.sync()
        assert node.follower.scanned == model.head.number
        assert _head_requests(model) >= 1
        # after a gap (the first of a backlog of announcements, or a skipped block): the
        # newest head is asked for, and the whole backlog scanned in one pass
        model.mine_empty(3)
        _announce(node, model, model.block(node.follower.scanned + 2))
        model.reset_calls()
        await node.sync()
        assert node.follower.scanned == model.head.number
        assert _head_requests(model) >= 1


async def test_a_head_announced_from_another_fork_is_caught_like_a_reorg(
    database: str,
) -> None:
    """The socket's node is on a sibling of the RPC node's head (same parent, other hash,
    no logs): the payment the RPC node has in that block is recorded once, and the chain
    the RPC node goes on with keeps it."""
    async with running(database) as (model, _, node):
        inv = await _paid_invoice(node, model)
        sibling = "0x" + "ab" * 32
        _announce(node, model, model.head, hash=sibling, logsBloom="0x" + "00" * 256)
        await node.sync(2)
        # a sibling of an empty block: taken as the tip, its hash is found wrong when the
        # next block does not link to it (a reorg of one block, nothing lost)
        model.mine_empty(1)
        _announce(node, model, model.head, hash="0x" + "cd" * 32)
        await node.sync()
        assert node.follower._hashes[model.head.number][0] == "0x" + "cd" * 32
        model.mine_empty(CONF + 1)
        await node.catch_up(model.head.number)
        got = await node.get(inv)
        assert (got.status, len(got.payments)) == (Status.COMPLETED, 1)
        assert [e for _, e, _ in await node.events(inv)].count(
            "invoice.waiting_for_confirmations") == 1


async def test_an_own_create_not_yet_reported_is_watched_from_the_next_pass(
    database: str,
) -> None:
    """A create's group commit answers its request a loop turn later, so the index may not
    hold the invoice when the follower's per-head refresh runs: the refresh (which skips
    reloading what its own connection wrote) loads the ids the index lacks. A payment made
    just before the create, in a block of that pass, is found."""
    from watcher import timeutil
    from watcher.ledger import NewInvoice

    async with running(database) as (model, _, node):
        await node.catch_up(model.head.number)
        await node.sync()  # the refresh has read once: from now on only data_version counts
        model.mine([TokenTx(TOKEN, PAYER, ADDRS[1], 100)])  # paid before the create ...
        now = timeutil.now()  # the host's clock, as the API's creates (the refresh reads by it)
        req = NewInvoice(NET, "USDT", 100, ADDRS[1], now + 10_000)
        inv, _, _ = await node.store.run(node.ledger.create, req, now)  # ... not reported
        assert not node.follower.index.holds(inv.id)
        await node.sync()
        assert node.follower.index.holds(inv.id)
        assert (await node.get(inv.id)).status == Status.WAITING_FOR_CONFIRMATIONS
