"""The chain model (tests/chainmodel.py) seen through the project's real `RpcClient`."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from eth_bloom.bloom import BloomFilter

from tests.chainmodel import (
    TRANSFER_TOPIC,
    ZERO_BLOOM,
    ChainModel,
    ChainServer,
    NativeTx,
    TokenTx,
    pad_address,
)
from watcher.errors import RangeTooLarge, RpcError, RpcRetryable
from watcher.rpc import RpcClient

TOKEN = "0x" + "a1" * 20
TOKEN2 = "0x" + "a2" * 20
ALICE = "0x" + "b1" * 20
BOB = "0xC1c1C1c1c1C1C1C1c1c1C1c1c1c1C1c1C1C1c1c1"  # mixed case on purpose
CAROL = "0x" + "c2" * 20


@pytest.fixture
def model() -> ChainModel:
    return ChainModel()


@pytest.fixture
async def server(model: ChainModel) -> AsyncIterator[ChainServer]:
    async with ChainServer(model) as srv:
        yield srv


@pytest.fixture
async def rpc(server: ChainServer) -> AsyncIterator[RpcClient]:
    client = RpcClient(
        "model", [server.url], timeout=2.0, max_attempts=2, cooldown=0.01, backoff=0.01,
        max_backoff=0.02,
    )
    async with client:
        yield client


async def test_blocks_link_and_tags(model: ChainModel, rpc: RpcClient) -> None:
    model.mine_empty(70)
    blocks = await rpc.get_blocks(list(range(71)))
    assert [int(b["number"], 16) for b in blocks] == list(range(71))
    for prev, b in itertools.pairwise(blocks):
        assert b["parentHash"] == prev["hash"]
        assert int(b["timestamp"], 16) == int(prev["timestamp"], 16) + 12
    assert blocks[0]["timestamp"] == hex(1_700_000_000)
    assert len({b["hash"] for b in blocks}) == 71
    assert blocks[5]["hash"] == model.block(5).hash
    assert blocks[5]["logsBloom"] == ZERO_BLOOM
    for tag, number in [
        ("latest", 70), ("pending", 70), ("earliest", 0), ("safe", 38), ("finalized", 6)
    ]:
        tagged = await rpc.get_block(tag)
        assert tagged is not None and int(tagged["number"], 16) == number, tag
    assert await rpc.get_block(71) is None
    assert await rpc.chain_id() == 31337
    assert await rpc.block_number() == 70
    assert await rpc.call("net_version") == "31337"
    by_hash = await rpc.call("eth_getBlockByHash", [model.block(5).hash, False])
    assert by_hash == blocks[5]
    assert await rpc.call("eth_getBlockByHash", ["0x" + "ee" * 32, False]) is None


async def test_full_blocks_and_receipts(model: ChainModel, rpc: RpcClient) -> None:
    paid = NativeTx(ALICE, BOB, 5 * 10**18)
    reverted = NativeTx(ALICE, CAROL, 7, success=False)
    token = TokenTx(TOKEN, ALICE, BOB, 0)
    b = model.mine([paid, reverted, token])
    full = (await rpc.get_blocks([b.number], full=True))[0]
    txs = full["transactions"]
    assert [t["hash"] for t in txs] == [paid.hash, reverted.hash, token.hash]
    assert txs[0]["to"] == BOB.lower() and txs[0]["value"] == hex(5 * 10**18)
    assert txs[1]["value"] == "0x7" and txs[1]["input"] == "0x"
    assert txs[2]["to"] == TOKEN and txs[2]["value"] == "0x0"
    assert txs[2]["input"].startswith("0xa9059cbb") and len(txs[2]["input"]) == 2 + 8 + 128
    assert [t["nonce"] for t in txs] == ["0x0", "0x1", "0x2"]
    assert all(t["blockHash"] == b.hash for t in txs)
    receipts = await rpc.get_receipts([paid.hash or "", reverted.hash or "", "0x" + "ee" * 32])
    assert receipts[0] is not None and receipts[0]["status"] == "0x1"
    assert receipts[1] is not None and receipts[1]["status"] == "0x0"
    assert receipts[2] is None
    block_receipts = await rpc.call("eth_getBlockReceipts", [hex(b.number)])
    assert [r["status"] for r in block_receipts] == ["0x1", "0x0", "0x1"]
    assert block_receipts[2]["logs"][0]["data"] == "0x" + "00" * 32
    assert await rpc.call("eth_getBlockReceipts", ["0x99"]) is None


async def test_reorg_changes_hashes_and_keeps_tx_hashes(
    model: ChainModel, rpc: RpcClient
) -> None:
    tx = TokenTx(TOKEN, ALICE, BOB, 10)
    native = NativeTx(ALICE, CAROL, 5)
    model.mine_empty(2)
    old3 = model.mine([tx, native])
    model.mine()
    old = [b.hash for b in model.blocks]
    assert tx.hash is not None and native.hash is not None
    tx_hash, native_hash = tx.hash, native.hash

    made = model.reorg(2, [[], [], [native, tx]])
    assert [b.number for b in made] == [3, 4, 5] and model.head.number == 5
    assert model.block(2).hash == old[2]
    assert model.block(3).hash != old[3] and model.block(4).hash != old[4]
    assert (tx.hash, native.hash) == (tx_hash, native_hash)
    assert model.head.tx_hashes == (native_hash, tx_hash)
    blocks = await rpc.get_blocks([2, 3, 4, 5])
    for prev, b in itertools.pairwise(blocks):
        assert b["parentHash"] == prev["hash"]
    assert blocks[3]["transactions"] == [native_hash, tx_hash]
    receipts = await rpc.get_receipts([tx_hash, native_hash])
    assert all(r is not None and r["blockHash"] == model.head.hash for r in receipts)
    assert await rpc.call("eth_getBlockByHash", [old3.hash, False]) is None
    logs = await rpc.get_logs(0, 5)
    assert [(lg["blockNumber"], lg["transactionHash"]) for lg in logs] == [("0x5", tx_hash)]

    # the same contents again: a new block hash, the same tx hashes
    again = model.reorg(1, [[native, tx]])[0]
    assert again.hash != made[2].hash and again.tx_hashes == (native_hash, tx_hash)
    with pytest.raises(ValueError, match="already in the canonical chain"):
        model.mine([tx])
    assert len(model.history) == 1 + 4 + 1 + 1  # genesis, 4 mines, 2 reorgs


async def test_logs_filtering(model: ChainModel, rpc: RpcClient) -> None:
    b1 = model.mine([
        TokenTx(TOKEN, ALICE, BOB, 1),
        TokenTx(TOKEN2, ALICE, BOB, 2),
        NativeTx(ALICE, BOB, 99),
        TokenTx(TOKEN, ALICE, CAROL, 3),
        TokenTx(TOKEN, BOB, CAROL, 0),
    ])
    b2 = model.mine([TokenTx(TOKEN, CAROL, BOB, 5)])
    logs = await rpc.get_logs(0, 2)
    assert len(logs) == 5
    first = logs[:4]
    assert [lg["logIndex"] for lg in first] == ["0x0", "0x1", "0x2", "0x3"]
    assert [lg["transactionIndex"] for lg in first] == ["0x0", "0x1", "0x3", "0x4"]
    lg = logs[0]
    assert lg["address"] == TOKEN and lg["blockHash"] == b1.hash and lg["removed"] is False
    assert lg["topics"] == [TRANSFER_TOPIC, pad_address(ALICE), pad_address(BOB)]
    assert lg["data"] == "0x" + "00" * 31 + "01"
    assert lg["blockTimestamp"] == hex(b1.timestamp)

    def amounts(found: list[dict[str, Any]]) -> list[int]:
        return [int(x["data"], 16) for x in found]

    assert amounts(await rpc.get_logs(0, 2, [TOKEN.upper().replace("0X", "0x")])) == [1, 3, 0, 5]
    assert amounts(await rpc.get_logs(0, 2, [TOKEN2, TOKEN])) == [1, 2, 3, 0, 5]
    to_bob = [TRANSFER_TOPIC, None, [pad_address(BOB), pad_address("0x" + "99" * 20)]]
    assert amounts(await rpc.get_logs(0, 2, None, to_bob)) == [1, 2, 5]
    assert amounts(await rpc.get_logs(0, 2, [TOKEN], [None, pad_address(BOB)])) == [0]
    assert amounts(await rpc.get_logs(2, 2)) == [5]
    assert amounts(await rpc.get_logs(2, 1000)) == [5]  # above the head: what exists
    assert await rpc.get_logs(2, 1) == []
    by_hash = await rpc.call("eth_getLogs", [{"blockHash": b2.hash}])
    assert amounts(by_hash) == [5]
    with pytest.raises(RpcRetryable, match="unknown block"):
        await rpc.call("eth_getLogs", [{"blockHash": "0x" + "ee" * 32}])

    model.omit_block_timestamp = True
    logs = await rpc.get_logs(1, 2)
    assert logs and all("blockTimestamp" not in x for x in logs)
    receipt = await rpc.get_receipt(logs[0]["transactionHash"])
    assert receipt is not None and "blockTimestamp" not in receipt["logs"][0]


async def test_stale_backend(model: ChainModel, rpc: RpcClient) -> None:
    model.mine_empty(3)
    model.stale["eth_getLogs"] = (1, 1)
    b = model.mine([TokenTx(TOKEN, ALICE, BOB, 7)])
    assert await rpc.get_logs(b.number, b.number) == []  # "a block it does not have yet"
    del model.stale["eth_getLogs"]
    assert len(await rpc.get_logs(b.number, b.number)) == 1

    model.stale["eth_blockNumber"] = (2, 2)  # every 2nd call two blocks behind
    assert [await rpc.block_number() for _ in range(4)] == [4, 2, 4, 2]

    # a lagging backend still serves the fork that was reorged away
    model.reorg(1, [[], []])
    model.stale["eth_getBlockByNumber"] = (1, 1)
    lagging = await rpc.get_block(4)
    assert lagging is not None and lagging["hash"] == b.hash
    latest = await rpc.get_block("latest")
    assert latest is not None and latest["number"] == "0x4"
    assert await rpc.get_block(5) is None
    model.stale.clear()
    fresh = await rpc.get_block(4)
    assert fresh is not None and fresh["hash"] == model.block(4).hash != b.hash


async def test_null_announced(model: ChainModel, rpc: RpcClient) -> None:
    model.mine_empty(5)
    model.null_announced = 2
    assert await rpc.get_block(5) is None
    again = await rpc.get_block(5)
    assert again is not None and again["number"] == "0x5"
    latest = await rpc.get_block("latest")
    assert latest is not None and latest["number"] == "0x5"
    assert await rpc.get_block(3) is not None  # older than the newest 2
    model.reset_calls()
    blocks = await rpc.get_blocks([4])  # null first, RpcClient retries
    assert blocks[0]["number"] == "0x4"
    assert model.calls["eth_getBlockByNumber"] == 2

    b = model.mine([TokenTx(TOKEN, ALICE, BOB, 1)])
    model.reset_calls()
    logs = await rpc.call("eth_getLogs", [{"blockHash": b.hash}])  # "unknown block", retried
    assert len(logs) == 1 and model.calls["eth_getLogs"] == 2
    model.null_times = 3
    c = model.mine()
    for _ in range(3):
        assert await rpc.call("eth_getBlockReceipts", [hex(c.number)]) is None
    assert await rpc.call("eth_getBlockReceipts", [hex(c.number)]) == []


def _busy_chain(model: ChainModel, blocks: int = 3, per_block: int = 2) -> None:
    for _ in range(blocks):
        model.mine([TokenTx(TOKEN, ALICE, BOB, i) for i in range(per_block)])


@pytest.mark.parametrize(
    ("style", "suggested"),
    [
        ("infura", (1, 2)),
        ("alchemy", (1, 2)),
        ("geth", None),
        ("http413", None),
    ],
)
async def test_log_cap_styles_map_to_range_too_large(
    model: ChainModel, rpc: RpcClient, style: str, suggested: tuple[int, int] | None
) -> None:
    _busy_chain(model)
    model.log_cap = 5
    model.cap_style = style
    assert len(await rpc.get_logs(1, 2)) == 4  # under the cap
    with pytest.raises(RangeTooLarge) as info:
        await rpc.get_logs(1, 3)
    assert info.value.suggested == suggested


@pytest.mark.parametrize("style", ["infura", "alchemy"])
async def test_one_block_over_the_cap(model: ChainModel, rpc: RpcClient, style: str) -> None:
    _busy_chain(model, blocks=2, per_block=3)
    model.log_cap = 2
    model.cap_style = style
    with pytest.raises(RangeTooLarge) as info:
        await rpc.get_logs(2, 2)
    assert info.value.suggested == (2, 2)
    assert await rpc.get_logs(2, 2, [TOKEN2]) == []  # a narrower filter fits


async def test_cap_shapes_verbatim(model: ChainModel, server: ChainServer) -> None:
    _busy_chain(model)
    model.log_cap = 1
    flt = {"fromBlock": "0x1", "toBlock": "0x3"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [flt]}
    async with aiohttp.ClientSession() as session:
        for style, code, text in [
            ("infura", -32005, "query returned more than 10000 results"),
            ("alchemy", -32602, "this block range should work: [0x1, 0x1]"),
            ("geth", -32000, "query limit exceeded"),
        ]:
            model.cap_style = style
            async with session.post(server.url, json=body) as resp:
                answer = await resp.json()
            assert answer["error"]["code"] == code and text in answer["error"]["message"]
        model.cap_style = "http413"
        async with session.post(server.url, json=body) as resp:
            assert resp.status == 413
            assert "Too Large" in await resp.text()


async def test_max_range(model: ChainModel, rpc: RpcClient) -> None:
    model.mine_empty(10)
    model.max_range = 4
    assert await rpc.get_logs(1, 4) == []
    with pytest.raises(RangeTooLarge, match="range: 10, max: 4") as info:
        await rpc.get_logs(1, 10)
    assert info.value.suggested == (1, 4)


async def test_bloom(model: ChainModel, rpc: RpcClient) -> None:
    model.mine([NativeTx(ALICE, BOB, 1)])
    model.mine([TokenTx(TOKEN, ALICE, BOB, 1)])
    empty, native_only, token = await rpc.get_blocks([0, 1, 2])
    assert int(empty["logsBloom"], 16) == 0 and int(native_only["logsBloom"], 16) == 0
    assert len(token["logsBloom"]) == 2 + 512
    bloom = BloomFilter(int(token["logsBloom"], 16))
    assert bytes.fromhex(TOKEN[2:]) in bloom
    assert bytes.fromhex(pad_address(BOB)[2:]) in bloom
    assert bytes.fromhex(pad_address(ALICE)[2:]) in bloom
    assert bytes.fromhex(TRANSFER_TOPIC[2:]) in bloom
    assert bytes.fromhex(TOKEN2[2:]) not in bloom
    assert bytes.fromhex(pad_address(CAROL)[2:]) not in bloom


async def test_pause_resume(model: ChainModel, server: ChainServer, rpc: RpcClient) -> None:
    server.pause()
    task = asyncio.create_task(rpc.block_number())
    for _ in range(100):
        if server.waiting:
            break
        await asyncio.sleep(0.01)
    assert server.waiting == 1 and not task.done()
    model.mine()  # answered from the chain as it is when resumed
    server.resume()
    assert await asyncio.wait_for(task, 2) == 1
    assert not server.paused and server.waiting == 0


async def test_http_errors(model: ChainModel, server: ChainServer) -> None:
    model.http_errors.extend([(429, 0), (503, None)])
    client = RpcClient(
        "model", [server.url], timeout=2.0, max_attempts=3, cooldown=0.01, backoff=0.01,
        max_backoff=0.02,
    )
    async with client:
        assert await client.block_number() == 0
    assert server.requests == 3 and not model.http_errors
    async with aiohttp.ClientSession() as session:
        model.http_errors.append((429, 1.5))
        async with session.post(server.url, json={"id": 1, "method": "eth_chainId"}) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1.5"
    model.http_errors.append((503, None))
    client = RpcClient("model", [server.url], timeout=2.0, max_attempts=1)
    async with client:
        with pytest.raises(RpcError, match="HTTP 503"):
            await client.block_number()


async def test_batches_and_errors(model: ChainModel, server: ChainServer) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_nope", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBlockByNumber", "params": ["zz", False]},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_blockNumber"},
    ]
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url, json=batch) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            answer = await resp.json()
        async with session.post(server.url, data=b"{nope") as resp:
            parse = await resp.json()
    assert [a["id"] for a in answer] == [1, 2, 3, 4]
    assert answer[0]["result"] == hex(31337)
    assert answer[1]["error"] == {
        "code": -32601, "message": "the method eth_nope does not exist/is not available"
    }
    assert answer[2]["error"]["code"] == -32602
    assert answer[3]["result"] == "0x0"
    assert parse["error"]["code"] == -32700
    assert model.calls["eth_chainId"] == 1 and model.calls["eth_nope"] == 1
    model.reset_calls()
    assert not model.calls


async def test_calls_counted_per_batch_element(model: ChainModel, rpc: RpcClient) -> None:
    model.mine_empty(8)
    await rpc.get_blocks(list(range(1, 9)))
    assert model.calls["eth_getBlockByNumber"] == 8
