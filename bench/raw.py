"""The raw baseline: the least a client can do to read the same data from the node.

A bare aiohttp session and orjson, no retries, no failover, no validation: full blocks in
JSON-RPC batches with a fixed number of requests in flight, and `eth_getLogs` over the
same ranges the follower asks. Its blocks/s is the physical limit of node + loopback +
JSON decoding on this machine; the daemon's figure is reported as a fraction of it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp
import orjson

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


class RawClient:
    def __init__(self, url: str, connections: int = 16) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            headers={"Content-Type": "application/json"},
        )
        self.calls = 0

    async def close(self) -> None:
        await self._session.close()

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        body = orjson.dumps(
            [{"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": p}
             for m, p in calls]
        )
        async with self._session.post(self.url, data=body) as resp:
            items = orjson.loads(await resp.read())
        self.calls += len(calls)
        items.sort(key=lambda it: it["id"])
        return [it["result"] for it in items]

    async def call(self, method: str, params: list[Any]) -> Any:
        body = orjson.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                             "params": params})
        async with self._session.post(self.url, data=body) as resp:
            item = orjson.loads(await resp.read())
        self.calls += 1
        return item["result"]


async def full_blocks(
    url: str, first: int, last: int, *, token: str, concurrency: int = 4, batch: int = 4,
    log_range: int = 100,
) -> float:
    """Seconds to fetch blocks first..last in full and the token's Transfer logs over
    `log_range`-block ranges, `concurrency` requests in flight."""
    client = RawClient(url)
    sem = asyncio.Semaphore(concurrency)
    txs = 0

    async def blocks(lo: int, hi: int) -> None:
        nonlocal txs
        async with sem:
            got = await client.batch(
                [("eth_getBlockByNumber", [hex(n), True]) for n in range(lo, hi + 1)]
            )
        txs += sum(len(b["transactions"]) for b in got)

    async def logs(lo: int, hi: int) -> None:
        async with sem:
            await client.call("eth_getLogs", [{
                "fromBlock": hex(lo), "toBlock": hex(hi), "address": [token],
                "topics": [TRANSFER_TOPIC],
            }])

    try:
        await client.call("eth_blockNumber", [])  # open the connection before timing
        started = time.perf_counter()
        jobs = [blocks(n, min(last, n + batch - 1)) for n in range(first, last + 1, batch)]
        jobs += [logs(n, min(last, n + log_range - 1)) for n in range(first, last + 1, log_range)]
        await asyncio.gather(*jobs)
        return time.perf_counter() - started
    finally:
        await client.close()


async def logs_only(
    url: str, first: int, last: int, *, token: str, log_range: int = 1000
) -> float:
    """Seconds to read the token's Transfer logs over first..last, one range at a time."""
    client = RawClient(url)
    try:
        await client.call("eth_blockNumber", [])
        started = time.perf_counter()
        for n in range(first, last + 1, log_range):
            await client.call("eth_getLogs", [{
                "fromBlock": hex(n), "toBlock": hex(min(last, n + log_range - 1)),
                "address": [token], "topics": [TRANSFER_TOPIC],
            }])
        return time.perf_counter() - started
    finally:
        await client.close()
