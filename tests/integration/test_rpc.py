"""RpcClient against a real anvil and a scripted fake JSON-RPC server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import ANVIL_CHAIN_ID, FakeRpc, raw, rpc_result
from watcher.devchain import Anvil, DevChain
from watcher.errors import ChainIdMismatch, RangeTooLarge, RpcFatal, RpcRetryable
from watcher.rpc import OUTCOMES, RpcClient, map_rpc_error, redact_url

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
MakeRpc = Callable[..., RpcClient]


def topic_address(address: str) -> str:
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


class Hook:
    """Records on_request calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, float]] = []

    def __call__(self, method: str, outcome: str, label: str, seconds: float) -> None:
        assert outcome in OUTCOMES
        self.calls.append((method, outcome, label, seconds))

    def outcomes(self) -> list[str]:
        return [c[1] for c in self.calls]


# --- against anvil ---------------------------------------------------------------------


async def test_block_number_and_chain_id(chain: DevChain, rpc: RpcClient) -> None:
    chain.mine(2)
    assert await rpc.block_number() == chain.block_number()
    assert await rpc.chain_id() == ANVIL_CHAIN_ID


async def test_get_block_full_and_hashes(
    chain: DevChain, rpc: RpcClient, token: str, payer: str
) -> None:
    tx = chain.send_token(token, payer, chain.new_account(), 42)
    head = chain.block_number()
    light = await rpc.get_block(head, full=False)
    full = await rpc.get_block(head, full=True)
    assert light is not None and full is not None
    assert light["number"] == hex(head) and light["hash"] == full["hash"]
    assert light["transactions"] == [tx]
    (t,) = full["transactions"]
    assert (
        t["hash"] == tx and t["to"].lower() == token.lower() and t["input"].startswith("0xa9059cbb")
    )
    latest = await rpc.get_block("latest")
    assert latest is not None and latest["hash"] == light["hash"]
    assert await rpc.get_block(head + 1000) is None


async def test_get_blocks_in_order_over_200_blocks(chain: DevChain, rpc: RpcClient) -> None:
    start = chain.block_number() + 1
    chain.mine(200)
    numbers = list(range(start, start + 200))
    for concurrency, batch_size in [(4, 7), (3, 1), (1, 200)]:
        blocks = await rpc.get_blocks(
            numbers, full=False, concurrency=concurrency, batch_size=batch_size
        )
        assert [int(b["number"], 16) for b in blocks] == numbers
    for parent, child in itertools.pairwise(blocks):
        assert child["parentHash"] == parent["hash"]
    shuffled = numbers[::-1][:50]
    blocks = await rpc.get_blocks(shuffled, full=True)
    assert [int(b["number"], 16) for b in blocks] == shuffled
    assert await rpc.get_blocks([], full=True) == []


async def test_get_blocks_beyond_head_raises_retryable(
    chain: DevChain, make_rpc: MakeRpc, rpc_url: str
) -> None:
    hook = Hook()
    rpc = make_rpc([rpc_url], max_attempts=2, on_request=hook)
    head = chain.block_number()
    with pytest.raises(RpcRetryable, match="not available"):
        await rpc.get_blocks([head, head + 1], full=False, batch_size=2)
    assert hook.outcomes() == ["ok", "ok"]  # answered: null block retried, URL stays healthy
    assert rpc.health()[0]["healthy"]


async def test_get_logs_filtered_by_token_and_topic(
    chain: DevChain, rpc: RpcClient, token: str, token18: str, payer: str
) -> None:
    start = chain.block_number() + 1
    alice, bob = chain.new_account(), chain.new_account()
    t1 = chain.send_token(token, payer, alice, 100)
    chain.send_token(token18, payer, alice, 10**18)
    t3 = chain.send_token(token, payer, bob, 300)
    end = chain.block_number()

    logs = await rpc.get_logs(start, end, [token], [TRANSFER_TOPIC])
    assert [log["transactionHash"] for log in logs] == [t1, t3]
    assert all(log["address"].lower() == token.lower() for log in logs)
    assert [int(log["data"], 16) for log in logs] == [100, 300]

    to_alice = await rpc.get_logs(
        start, end, [token, token18], [TRANSFER_TOPIC, None, topic_address(alice)]
    )
    assert len(to_alice) == 2
    assert {log["address"].lower() for log in to_alice} == {token.lower(), token18.lower()}
    assert (
        await rpc.get_logs(
            start, end, [token], [TRANSFER_TOPIC, None, topic_address(chain.new_account())]
        )
        == []
    )


async def test_receipts(
    chain: DevChain, rpc: RpcClient, token: str, payer: str, reverter: str
) -> None:
    ok = chain.send_token(token, payer, chain.new_account(), 1)
    failed = chain.send_native(payer, reverter, 5)
    receipt = await rpc.get_receipt(ok)
    assert receipt is not None and receipt["status"] == "0x1" and len(receipt["logs"]) == 1
    unknown = "0x" + "ab" * 32
    assert await rpc.get_receipt(unknown) is None
    many = await rpc.get_receipts([failed, unknown, ok], batch_size=2)
    assert [r["status"] if r else None for r in many] == ["0x0", None, "0x1"]


async def test_batch_mixed_and_element_error(rpc: RpcClient, chain: DevChain) -> None:
    number, cid = await rpc.batch([("eth_blockNumber", []), ("eth_chainId", [])])
    assert int(number, 16) == chain.block_number() and int(cid, 16) == ANVIL_CHAIN_ID
    with pytest.raises(RpcFatal):
        await rpc.batch([("eth_blockNumber", []), ("eth_getBlockByNumber", ["nonsense"])])
    assert await rpc.batch([]) == []


async def test_fatal_error_not_retried(make_rpc: MakeRpc, rpc_url: str) -> None:
    hook = Hook()
    rpc = make_rpc([rpc_url], on_request=hook)
    with pytest.raises(RpcFatal) as info:
        await rpc.call("no_such_method", [])
    assert not isinstance(info.value, RpcRetryable)
    assert hook.outcomes() == ["rpc_error"]


async def test_check_chain_id(
    rpc_url: str, dead_url: str, make_rpc: MakeRpc, anvil_factory: Callable[..., Anvil]
) -> None:
    rows = await make_rpc([rpc_url, dead_url]).check_chain_id(ANVIL_CHAIN_ID)
    assert [(r["label"], r["chain_id"], r["ok"]) for r in rows] == [
        (redact_url(rpc_url), ANVIL_CHAIN_ID, True),
        (redact_url(dead_url), None, False),
    ]
    assert rows[1]["error"]

    with pytest.raises(ChainIdMismatch) as info:
        await make_rpc([rpc_url]).check_chain_id(1)
    assert str(ANVIL_CHAIN_ID) in str(info.value) and "expected 1" in str(info.value)

    other = anvil_factory(chain_id=999)
    with pytest.raises(ChainIdMismatch) as info:
        await make_rpc([rpc_url, other.url]).check_chain_id(ANVIL_CHAIN_ID)
    assert info.value.url == redact_url(other.url)
    assert redact_url(other.url) in str(info.value) and "999" in str(info.value)


async def test_check_chain_id_redacts_keys(fake_rpc: FakeRpc, make_rpc: MakeRpc) -> None:
    fake_rpc.push_result("0x1")
    with pytest.raises(ChainIdMismatch) as info:
        await make_rpc([fake_rpc.url + "/v3/SECRET"]).check_chain_id(ANVIL_CHAIN_ID)
    assert "SECRET" not in str(info.value) and info.value.url == fake_rpc.url


async def test_failover_from_dead_first_url(
    chain: DevChain, rpc_url: str, dead_url: str, make_rpc: MakeRpc
) -> None:
    hook = Hook()
    rpc = make_rpc([dead_url, rpc_url], on_request=hook, cooldown=60)
    assert await rpc.block_number() == chain.block_number()
    assert hook.outcomes() == ["connection_error", "ok"]
    dead, live = rpc.health()
    assert dead["label"] == redact_url(dead_url) and not dead["healthy"] and not dead["current"]
    assert dead["last_error"] and dead["failures"] == 1
    assert live["healthy"] and live["current"] and live["last_error"] is None
    # sticky: the dead URL rests during its cooldown
    await rpc.block_number()
    assert hook.outcomes() == ["connection_error", "ok", "ok"]


async def test_restored_url_becomes_current_again(
    fake_rpc: FakeRpc, rpc_url: str, make_rpc: MakeRpc, caplog: pytest.LogCaptureFixture
) -> None:
    fake_rpc.push(raw(503, b"down"))
    rpc = make_rpc([fake_rpc.url, rpc_url], cooldown=0.05)
    await rpc.block_number()
    assert [h["current"] for h in rpc.health()] == [False, True]
    time.sleep(0.06)
    with caplog.at_level("INFO", logger="watcher.rpc"):
        assert await rpc.block_number() == 0x10  # the fake answers again
    assert [h["current"] for h in rpc.health()] == [True, False]
    assert "restored" in caplog.text


async def test_all_urls_dead_raises_retryable_fast(dead_url: str, make_rpc: MakeRpc) -> None:
    from tests.integration.conftest import free_port

    other = f"http://127.0.0.1:{free_port()}/v3/SECRETKEY"
    hook = Hook()
    rpc = make_rpc([dead_url, other], max_attempts=3, on_request=hook)
    started = time.monotonic()
    with pytest.raises(RpcRetryable) as info:
        await rpc.block_number()
    assert time.monotonic() - started < 2
    assert hook.outcomes() == ["connection_error"] * 3
    assert not any(h["healthy"] for h in rpc.health())
    for text in [str(info.value), repr(rpc.health()), repr(hook.calls)]:
        assert "SECRETKEY" not in text


async def test_429_retry_after_then_ok(fake_rpc: FakeRpc, make_rpc: MakeRpc) -> None:
    fake_rpc.push(raw(429, b"slow down", {"Retry-After": "1"}))
    fake_rpc.push_result("0x2a")
    hook = Hook()
    rpc = make_rpc([fake_rpc.url], on_request=hook, max_backoff=5)
    started = time.monotonic()
    assert await rpc.block_number() == 42
    assert 0.9 <= time.monotonic() - started < 3
    assert hook.outcomes() == ["rate_limited", "ok"]
    assert rpc.health()[0]["healthy"]


async def test_429_fails_over_without_waiting(
    fake_rpc: FakeRpc, rpc_url: str, make_rpc: MakeRpc, chain: DevChain
) -> None:
    fake_rpc.push(raw(429, b"", {"Retry-After": "30"}))
    rpc = make_rpc([fake_rpc.url, rpc_url])
    started = time.monotonic()
    assert await rpc.block_number() == chain.block_number()
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"jsonrpc":"2.0","id":1,"res'),  # truncated
        (200, b"<html>bad gateway</html>"),
        (502, b"<html>bad gateway</html>"),
        (500, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"boom"}}'),
        (200, b'{"unexpected": true}'),
    ],
)
async def test_broken_answer_is_retried(
    fake_rpc: FakeRpc, make_rpc: MakeRpc, status: int, body: bytes
) -> None:
    fake_rpc.push(raw(status, body))
    hook = Hook()
    rpc = make_rpc([fake_rpc.url], on_request=hook)
    assert await rpc.block_number() == 0x10
    assert len(fake_rpc.requests) == 2
    assert hook.outcomes()[0] in {"invalid_response", "http_error"}


async def test_timeout_is_retried(fake_rpc: FakeRpc, make_rpc: MakeRpc) -> None:
    import asyncio

    async def slow(request: Any) -> Any:
        await asyncio.sleep(1)
        return rpc_result(request, "0x1")

    fake_rpc.push(slow)
    hook = Hook()
    rpc = make_rpc([fake_rpc.url], on_request=hook, timeout=0.2)
    assert await rpc.block_number() == 0x10
    assert hook.outcomes() == ["timeout", "ok"]


@pytest.mark.parametrize(
    ("code", "message", "data", "suggested"),
    [
        (
            -32005,
            "query returned more than 10000 results. Try with this block range [0x10, 0x20].",
            None,
            (16, 32),
        ),
        (
            -32602,
            "Log response size exceeded. You can make eth_getLogs requests with up to a "
            "2K block range and no limit on the response size, or you can request any block "
            "range with a cap of 10K logs in the response. Based on your parameters, this block "
            "range should work: [0x64, 0x1f3]",
            None,
            (100, 499),
        ),
        (
            -32005,
            "query returned more than 10000 results",
            {"from": "0x64", "to": "0x70"},
            (100, 112),
        ),
        (-32000, "exceed maximum block range: 50", None, (100, 149)),
        (-32600, "eth_getLogs is limited to a 100 block range", None, (100, 199)),
        (-32005, "limit exceeded", None, None),
        (-32000, "block range is too wide", None, None),
    ],
)
async def test_get_logs_range_too_large(
    fake_rpc: FakeRpc,
    make_rpc: MakeRpc,
    code: int,
    message: str,
    data: Any,
    suggested: tuple[int, int] | None,
) -> None:
    fake_rpc.push_error(code, message, data)
    rpc = make_rpc([fake_rpc.url])
    with pytest.raises(RangeTooLarge) as info:
        await rpc.get_logs(100, 1100, ["0x" + "11" * 20], [TRANSFER_TOPIC])
    assert info.value.suggested == suggested
    assert len(fake_rpc.requests) == 1  # not retried
    assert rpc.health()[0]["healthy"]


async def test_rate_limit_rpc_error_is_retried(fake_rpc: FakeRpc, make_rpc: MakeRpc) -> None:
    fake_rpc.push_error(-32005, "daily request count exceeded, request rate limited")
    fake_rpc.push_error(-32000, "header not found")
    hook = Hook()
    rpc = make_rpc([fake_rpc.url], on_request=hook)
    assert await rpc.block_number() == 0x10
    assert hook.outcomes() == ["rpc_error", "rpc_error", "ok"]


async def test_batch_answer_out_of_order_and_missing(fake_rpc: FakeRpc, make_rpc: MakeRpc) -> None:
    import orjson
    from aiohttp import web

    def reversed_answer(request: Any) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                [
                    {"jsonrpc": "2.0", "id": r["id"], "result": hex(i)}
                    for i, r in enumerate(request)
                ][::-1]
            )
        )

    def missing_one(request: Any) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                [{"jsonrpc": "2.0", "id": r["id"], "result": "0x0"} for r in request[1:]]
            )
        )

    fake_rpc.push(missing_one, reversed_answer)
    rpc = make_rpc([fake_rpc.url])
    assert await rpc.batch([("a", []), ("b", []), ("c", [])]) == ["0x0", "0x1", "0x2"]
    assert len(fake_rpc.requests) == 2


async def test_hook_failure_does_not_break_calls(fake_rpc: FakeRpc, make_rpc: MakeRpc) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("metrics bug")

    rpc = make_rpc([fake_rpc.url], on_request=broken)
    assert await rpc.block_number() == 0x10


# --- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("https://mainnet.infura.io/v3/0123456789abcdef", "https://mainnet.infura.io"),
        ("https://user:pass@rpc.example:8443/key?x=1", "https://rpc.example:8443"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://[::1]:8545/", "http://[::1]:8545"),
    ],
)
def test_redact_url(url: str, label: str) -> None:
    assert redact_url(url) == label


def test_duplicate_labels_are_numbered() -> None:
    rpc = RpcClient("eth", ["https://x.infura.io/v3/A", "https://x.infura.io/v3/B"])
    assert rpc.labels == ["https://x.infura.io", "https://x.infura.io#2"]


@pytest.mark.parametrize(
    ("method", "error", "kind"),
    [
        ("eth_call", {"code": -32000, "message": "execution reverted"}, RpcFatal),
        (
            "eth_getLogs",
            {"code": -32005, "message": "query returned more than 10000 results"},
            RangeTooLarge,
        ),
        ("eth_blockNumber", {"code": -32005, "message": "limit exceeded"}, RpcRetryable),
        ("eth_getLogs", {"code": 429, "message": "Too Many Requests"}, RpcRetryable),
        ("eth_getBlockByNumber", {"code": -32000, "message": "header not found"}, RpcRetryable),
        ("eth_foo", {"code": -32601, "message": "Method not found"}, RpcFatal),
        ("eth_getBlockByNumber", {"code": -32602, "message": "invalid argument 0"}, RpcFatal),
        ("eth_chainId", {"code": -32603, "message": "internal error"}, RpcRetryable),
    ],
)
def test_map_rpc_error(method: str, error: dict[str, Any], kind: type[Exception]) -> None:
    err = map_rpc_error(error, method=method)
    assert type(err) is kind
