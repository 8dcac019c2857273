"""How the follower asks the node, against the chain model: receipts of native payments in
one `eth_getBlockReceipts` per block (or per transaction on a node without it), and many
watched token recipients split into several topic-filtered `eth_getLogs`."""

from __future__ import annotations

from pathlib import Path

from web3 import Web3

from tests.chainmodel import ChainModel, NativeTx, TokenTx
from tests.daemonparts import ADDRS, CONF, PAYER, T0, TOKEN, Node, running
from watcher.models import OPENS_EARLY, Status


def _now(model: ChainModel) -> int:
    return model.head.timestamp + OPENS_EARLY + 1


async def _native_payments(node: Node, model: ChainModel) -> list[str]:
    now = _now(model)
    invs = [await node.create("ETH", 10**18, a, now=now, expire_at=now + 10_000) for a in ADDRS]
    await node.catch_up(model.head.number)
    model.mine([NativeTx(PAYER, ADDRS[0], 10**18), NativeTx(PAYER, ADDRS[1], 10**18),
                NativeTx(PAYER, ADDRS[2], 10**18, success=False)])
    model.mine_empty(CONF)
    await node.catch_up(model.head.number)
    return [(await node.get(i.id)).status for i in invs]


async def test_native_receipts_come_in_one_call_per_block(tmp_path: Path) -> None:
    async with running(tmp_path) as (model, _, node):
        model.reset_calls()
        statuses = await _native_payments(node, model)
        assert statuses == [Status.COMPLETED, Status.COMPLETED, Status.PENDING]
        assert model.calls["eth_getBlockReceipts"] == 1
        assert model.calls["eth_getTransactionReceipt"] == 0


async def test_a_node_without_block_receipts_is_asked_per_transaction(tmp_path: Path) -> None:
    model = ChainModel(genesis_time=T0, block_time=12)
    model.mine_empty(2)
    del model._methods["eth_getBlockReceipts"]
    async with running(tmp_path, model) as (_, _, node):
        model.reset_calls()
        statuses = await _native_payments(node, model)
        assert statuses == [Status.COMPLETED, Status.COMPLETED, Status.PENDING]
        assert model.calls["eth_getBlockReceipts"] == 1  # refused once, never asked again
        assert model.calls["eth_getTransactionReceipt"] == 3


async def test_many_recipients_are_split_into_filtered_queries(tmp_path: Path) -> None:
    many = [Web3.to_checksum_address(f"0x{0x1000 + i:040x}") for i in range(25)]
    async with running(tmp_path, log_topic_chunk=10) as (model, _, node):
        now = _now(model)
        invs = [await node.create("USDT", 100, a, now=now, expire_at=now + 10_000)
                for a in many]
        await node.catch_up(model.head.number)
        stranger = Web3.to_checksum_address("0x" + "77" * 20)
        model.mine([TokenTx(TOKEN, PAYER, a, 100) for a in many[::6]]
                   + [TokenTx(TOKEN, PAYER, stranger, 5) for _ in range(30)])
        model.reset_calls()
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        paid = {i.id for i, a in zip(invs, many, strict=True) if a in many[::6]}
        for inv in invs:
            want = Status.COMPLETED if inv.id in paid else Status.PENDING
            assert (await node.get(inv.id)).status == want
        # three queries of at most 10 recipients per range, none unfiltered: the node never
        # sent the 30 transfers to the stranger
        filters = model.log_filters
        assert filters and all(len(f[2]) <= 10 for f in filters if len(f) > 2)
        assert all(len(f) > 2 and f[2] for f in filters)
        assert model.logs_served == len(many[::6])
