"""Catch-up speed of the real follower (Follower + Ledger + Store + WatchIndex + RpcClient,
in-process, wired as `watcher.daemon` wires them) over a pre-mined chain."""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from watcher.follower import Follower, FollowerConfig
from watcher.ledger import Ledger, NetworkInfo, Outcome
from watcher.matching import WatchIndex
from watcher.models import Asset
from watcher.rpc import RpcClient, _Endpoint
from watcher.store import Store, status_counts, watched_invoices

from .workload import CHAIN_ID, NET, TOKEN_DECIMALS

LATE_WINDOW = 86400


class CountingRpc(RpcClient):
    """An RpcClient counting JSON-RPC calls: each batch element counts as one call."""

    calls = 0
    requests = 0

    async def _post(
        self, ep: _Endpoint, method: str, body: bytes, ids: list[int] | None
    ) -> list[Any]:
        self.calls += 1 if ids is None else len(ids)
        self.requests += 1
        return await super()._post(ep, method, body, ids)


@dataclass(slots=True)
class CatchUp:
    blocks: int
    seconds: float
    load_seconds: float
    rpc_calls: int
    http_requests: int
    statuses: dict[str, int]

    @property
    def rate(self) -> float:
        return self.blocks / self.seconds


def assets(token: str) -> dict[str, Asset]:
    return {
        "ETH": Asset(NET, "ETH", 18),
        "USDT": Asset(NET, "USDT", TOKEN_DECIMALS, token=token),
    }


async def run_follower(
    db: Path, url: str, token: str, last: int, *, confirmations: int = 2,
    max_block_range: int = 1000, profile: Any = None,
) -> CatchUp:
    """Scan from the database's cursor up to block `last` (the chain's head)."""
    a = assets(token)
    started = time.perf_counter()
    store = await Store(db).open()
    ledger = Ledger(
        {NET: NetworkInfo(NET, CHAIN_ID, confirmations, a)},
        tolerance=Fraction(0), default_ttl=86400, late_window=LATE_WINDOW,
        default_callback_url=None,
    )
    await store.run(ledger.load_views)
    index = WatchIndex(a, LATE_WINDOW)
    for inv in await store.run(watched_invoices, NET, 0):
        index.put(inv)
    rpc = CountingRpc(NET, [url])

    def on_outcome(out: Outcome) -> None:  # what Daemon.on_outcome does for the index
        for inv in out.touched:
            index.put(inv)

    follower = Follower(
        FollowerConfig(NET, confirmations, max_block_range, 0.5),
        rpc, store, ledger, index, on_outcome,
    )
    await follower._load()
    load_seconds = time.perf_counter() - started
    first = follower.scanned
    assert first is not None
    await rpc.block_number()  # connect before timing
    rpc.calls = rpc.requests = 0
    try:
        if profile is not None:
            profile.start()
        started = time.perf_counter()
        while follower.scanned is None or follower.scanned < last:
            await follower.sync_once()
        seconds = time.perf_counter() - started
        if profile is not None:
            profile.stop()
        calls, requests = rpc.calls, rpc.requests
        statuses = await store.run(status_counts)
    finally:
        await rpc.close()
        await store.close()
    return CatchUp(last - first, seconds, load_seconds, calls, requests, statuses)
