"""Finality tags through the follower, ledger and store against the chain model (which
serves `safe` 32 and `finalized` 64 blocks below its head): COMPLETED waits for the tag as
well as the count, `finalized` shows on the invoice, a lagging tag never takes a decision
back, and a node without the tag completes nothing."""

from __future__ import annotations

import pytest

from tests.chainmodel import FINALIZED_DEPTH, SAFE_DEPTH, ChainModel, TokenTx
from tests.daemonparts import ADDRS, CONF, PAYER, TOKEN, Node, running
from watcher.errors import RpcFatal
from watcher.models import OPENS_EARLY, Invoice, Status


async def _invoice(node: Node, model: ChainModel) -> Invoice:
    now = model.head.timestamp + OPENS_EARLY + 1
    return await node.create("USDT", 100, ADDRS[0], now=now, expire_at=now + 100_000)


async def _paid(node: Node, model: ChainModel) -> tuple[Invoice, int]:
    """An invoice paid in full in a block just mined: (invoice, that block)."""
    await node.catch_up(model.head.number)
    inv = await _invoice(node, model)
    model.mine([TokenTx(TOKEN, PAYER, ADDRS[0], 100)])
    return inv, model.head.number


async def _at(
    node: Node, model: ChainModel, invoice_id: str, head: int
) -> tuple[Status, bool | None]:
    """Mine up to `head`, let the follower catch up: the invoice's (status, `finalized`)."""
    model.mine_empty(head - model.head.number)
    await node.catch_up(head)
    inv = await node.get(invoice_id)
    return inv.status, node.ledger.render(inv)["finalized"]


async def test_safe_waits_for_the_safe_block_and_finalized_shows(database: str) -> None:
    async with running(database, finality="safe") as (model, _, node):
        inv, paid = await _paid(node, model)
        assert await _at(node, model, inv.id, paid + CONF - 1) == (Status.WAITING_FOR_CONFIRMATIONS,
                                                          False)
        # deep enough by count, not yet at or below the safe block
        assert await _at(node, model, inv.id, paid + SAFE_DEPTH - 1) == (
            Status.WAITING_FOR_CONFIRMATIONS, False)
        assert await _at(node, model, inv.id, paid + SAFE_DEPTH) == (Status.COMPLETED, False)
        done = (Status.COMPLETED, False)
        assert await _at(node, model, inv.id, paid + FINALIZED_DEPTH - 1) == done
        assert await _at(node, model, inv.id, paid + FINALIZED_DEPTH) == (Status.COMPLETED, True)
        events = [e for _, e, _ in await node.events(inv.id)]
        assert events == ["invoice.created", "invoice.waiting_for_confirmations",
                          "invoice.completed"]


async def test_finalized_waits_for_the_finalized_block(database: str) -> None:
    async with running(database, finality="finalized") as (model, _, node):
        inv, paid = await _paid(node, model)
        status, _ = await _at(node, model, inv.id, paid + SAFE_DEPTH)
        assert status == Status.WAITING_FOR_CONFIRMATIONS
        assert await _at(node, model, inv.id, paid + FINALIZED_DEPTH - 1) == (
            Status.WAITING_FOR_CONFIRMATIONS, False)
        assert await _at(node, model, inv.id, paid + FINALIZED_DEPTH) == (Status.COMPLETED, True)


async def test_confirmations_only_has_no_finalized_field(database: str) -> None:
    async with running(database) as (model, _, node):
        inv, _ = await _paid(node, model)
        assert await _at(node, model, inv.id, model.head.number + CONF) == (Status.COMPLETED, None)
        assert node.ledger.views["model"].finalized_block is None


async def test_a_lagging_tag_never_takes_a_completion_back(database: str) -> None:
    async with running(database, finality="safe") as (model, _, node):
        inv, paid = await _paid(node, model)
        assert (await _at(node, model, inv.id, paid + SAFE_DEPTH))[0] == Status.COMPLETED
        # every other block request is answered from 40 mutations ago: its `safe` lies
        # below the payment again
        model.stale = {"eth_getBlockByNumber": (40, 2)}
        for _ in range(6):
            model.mine_empty(1)
            await node.sync()
            assert (await node.get(inv.id)).status == Status.COMPLETED
            assert node.ledger.views["model"].final_block is not None
            assert node.ledger.views["model"].final_block >= paid


async def test_a_node_without_the_tag_completes_nothing(database: str) -> None:
    model = ChainModel(genesis_time=1_700_000_000, block_time=12)
    model.mine_empty(2)
    model.unsupported_tags = {"safe", "finalized"}
    async with running(database, model, finality="safe") as (_, _, node):
        inv = await _invoice(node, model)
        model.mine([TokenTx(TOKEN, PAYER, ADDRS[0], 100)])
        model.mine_empty(SAFE_DEPTH + 5)
        with pytest.raises(RpcFatal, match="tag not supported"):
            await node.follower.sync_once()
        await node.sync(3)
        assert (await node.get(inv.id)).status == Status.PENDING
