"""A fault-injecting JSON-RPC proxy (aiohttp) between the watcher and a real node (anvil).

Every HTTP request is forwarded to `upstream`, unless the proxy decides (with probability
`rate`, from a seeded RNG) to inject one of `kinds`:

    drop          close the connection without an answer
    http_500      HTTP 502/503 with an HTML body
    rate_limit    HTTP 429 with `Retry-After: 0` (or the configured seconds)
    timeout       answer only after `delay` seconds (longer than the client's timeout)
    truncated     the upstream answer cut in half (invalid JSON)
    batch_error   one item of a batch answers a JSON-RPC error ("internal error"); a single
                  call answers "header not found" (both transient)
    lag           `eth_blockNumber` / `eth_getBlockByNumber("latest")` answered by the block
                  `lag_blocks` (20) below the real head, as from a node behind the others

and, independently of `rate`:

    range_limit   `eth_getLogs` over more than `range_limit` blocks is refused with
                  -32005 "block range is too large (max N)" (counted as `range`)
    chain_id      `eth_chainId` answers `chain_id` instead of the node's
    lost_logs     while set, every `eth_getLogs` answers `[]` (a node that lost its log
                  index): transfers are missed, to be found by a rescan later

`kinds` may repeat a kind to weight it. `counts` tallies what was injected (and
`forwarded`), so a test can show its figures.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

KINDS = ("drop", "http_500", "rate_limit", "timeout", "truncated", "batch_error", "lag")


def _calls(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return [c for c in body if isinstance(c, dict)]
    return [body] if isinstance(body, dict) else []


def _is_head_call(call: dict[str, Any]) -> bool:
    method = call.get("method")
    params = call.get("params") or []
    return method == "eth_blockNumber" or (
        method == "eth_getBlockByNumber" and bool(params) and params[0] == "latest"
    )


class RpcProxy:
    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: Sequence[str] = KINDS,
        seed: int = 1,
        delay: float = 1.0,
        retry_after: int = 0,
        range_limit: int | None = None,
        lag_blocks: int = 20,
        chain_id: int | None = None,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.upstream = upstream
        self.rate = rate
        self.kinds = tuple(kinds)
        self.rng = random.Random(seed)
        self.delay = delay
        self.retry_after = retry_after
        self.range_limit = range_limit
        self.lag_blocks = lag_blocks
        self.chain_id = chain_id
        self.lost_logs = False
        self.counts: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> RpcProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RpcProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def faults(self) -> int:
        """Faults injected so far (every kind, `range` and `chain_id` included)."""
        return sum(n for k, n in self.counts.items() if k != "forwarded")

    # ---------------------------------------------------------------- forwarding

    async def _upstream(self, raw: bytes) -> bytes:
        assert self._session is not None
        async with self._session.post(
            self.upstream, data=raw, headers={"Content-Type": "application/json"}
        ) as resp:
            return await resp.read()

    async def _call(self, method: str, params: list[Any]) -> Any:
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        return orjson.loads(await self._upstream(body)).get("result")

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    async def _lagging(self, call: dict[str, Any]) -> Any:
        """The answer of a node `lag_blocks` behind: to a head call, or None if not one."""
        head = int(await self._call("eth_blockNumber", []), 16)
        behind = max(0, head - self.lag_blocks)
        if call.get("method") == "eth_blockNumber":
            return hex(behind)
        full = bool((call.get("params") or [None, False])[1:2] or [False])
        return await self._call("eth_getBlockByNumber", [hex(behind), full])

    def _too_wide(self, call: dict[str, Any]) -> bool:
        if self.range_limit is None or call.get("method") != "eth_getLogs":
            return False
        flt = (call.get("params") or [{}])[0]
        try:
            span = int(flt["toBlock"], 16) - int(flt["fromBlock"], 16) + 1
        except (KeyError, TypeError, ValueError):
            return False
        return span > self.range_limit

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return web.Response(status=400, text="not JSON")
        calls = _calls(body)
        batch = isinstance(body, list)

        # deterministic refusals first: they are what such a node always does
        if not batch and calls and self._too_wide(calls[0]):
            self.counts["range"] += 1
            err = {"code": -32005, "message": f"block range is too large (max {self.range_limit})"}
            return self._json({"jsonrpc": "2.0", "id": calls[0].get("id"), "error": err})
        if self.chain_id is not None and not batch and calls and (
            calls[0].get("method") == "eth_chainId"
        ):
            self.counts["chain_id"] += 1
            return self._json({"jsonrpc": "2.0", "id": calls[0].get("id"),
                               "result": hex(self.chain_id)})

        if self.lost_logs and any(c.get("method") == "eth_getLogs" for c in calls):
            self.counts["lost_logs"] += 1
            answers = [{"jsonrpc": "2.0", "id": c.get("id"), "result": []}
                       if c.get("method") == "eth_getLogs"
                       else orjson.loads(await self._upstream(orjson.dumps(c)))
                       for c in calls]
            return self._json(answers if batch else answers[0])

        kind = self.rng.choice(self.kinds) if self.rng.random() < self.rate else None
        if kind == "lag" and not (not batch and calls and _is_head_call(calls[0])):
            # only a head call can be answered from behind: another fault instead
            others = [k for k in self.kinds if k != "lag"]
            kind = self.rng.choice(others) if others else None
        if kind is not None:
            self.counts[kind] += 1
        if kind == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if kind == "http_500":
            status = self.rng.choice((500, 502, 503))
            return web.Response(status=status, text="<html>upstream error</html>",
                                content_type="text/html")
        if kind == "rate_limit":
            return web.Response(status=429, text="Too Many Requests",
                                headers={"Retry-After": str(self.retry_after)})
        if kind == "timeout":
            await asyncio.sleep(self.delay)
        if kind == "lag":
            result = await self._lagging(calls[0])
            return self._json({"jsonrpc": "2.0", "id": calls[0].get("id"), "result": result})

        answer = await self._upstream(raw)
        self.counts["forwarded"] += 1
        if kind == "truncated":
            return web.Response(body=answer[: max(1, len(answer) // 2)],
                                content_type="application/json")
        if kind == "batch_error":
            decoded = orjson.loads(answer)
            if isinstance(decoded, list) and decoded:
                i = self.rng.randrange(len(decoded))
                decoded[i] = {"jsonrpc": "2.0", "id": decoded[i].get("id"),
                              "error": {"code": -32603, "message": "internal error"}}
            elif isinstance(decoded, dict):
                decoded = {"jsonrpc": "2.0", "id": decoded.get("id"),
                           "error": {"code": -32000, "message": "header not found"}}
            return self._json(decoded)
        return web.Response(body=answer, content_type="application/json")
