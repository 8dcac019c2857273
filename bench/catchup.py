"""Catch-up speed of the real follower (Follower + Ledger + Store + WatchIndex + RpcClient,
in-process, wired as `watcher.daemon` wires them) over a pre-mined chain."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from watcher.daemon import freeze_heap
from watcher.follower import Follower, FollowerConfig
from watcher.ledger import Ledger, NetworkInfo, Outcome
from watcher.matching import WatchIndex
from watcher.models import Asset
from watcher.rpc import RpcClient, _Endpoint
from watcher.storage.rows import status_counts, watched_invoices
from watcher.storage.store import Store
from watcher.web.api import ApiContext, create_app
from watcher.web.channels import Limits, Sockets
from watcher.web.checkout import CheckoutContext, create_checkout_app
from watcher.web.hub import Hub

from .workload import CHAIN_ID, NET, TOKEN_DECIMALS

LATE_WINDOW = 86400
PROBE_KEY = "bench-probe-key"


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
    #: seconds each `GET /v1/invoices/{id}` took while the catch-up ran (with `probe`)
    get_latency: list[float] = field(default_factory=list)
    #: seconds each checkout page `GET /pay/{id}` took meanwhile (with `probe`)
    page_latency: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.blocks / self.seconds


def assets(token: str) -> dict[str, Asset]:
    return {
        "ETH": Asset(NET, "ETH", 18),
        "USDT": Asset(NET, "USDT", TOKEN_DECIMALS, token=token),
    }


async def _probe(url: str, out: list[float], stop: asyncio.Event) -> None:
    """GET `url` over HTTP, one request at a time, until `stop`: what a merchant's backend
    polling the API (or a customer's checkout page) sees while the daemon catches up."""
    headers = {"Authorization": f"Bearer {PROBE_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        while not stop.is_set():
            t = time.perf_counter()
            async with http.get(url) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            out.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)


async def run_follower(
    db: Path | str, url: str, token: str, last: int, *, confirmations: int = 2,
    max_block_range: int = 1000, profile: Any = None, probe: bool = False,
) -> CatchUp:
    """Scan from the database's cursor up to block `last` (the chain's head). `probe`: the
    daemon's API and checkout run on the same loop (as in `payment-watcher run`) and one
    invoice is read over HTTP in a loop during the scan, through the API and through its
    checkout page (reads go to the store's reading connection)."""
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
    # as `payment-watcher run` does once its indexes are filled (undone at the end, so the
    # next round's index is collectable and this process's collector is as it was)
    thresholds = gc.get_threshold()
    freeze_heap()
    load_seconds = time.perf_counter() - started
    first = follower.scanned
    assert first is not None
    await rpc.block_number()  # connect before timing
    rpc.calls = rpc.requests = 0
    latencies: list[float] = []
    pages: list[float] = []
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    probing: list[asyncio.Task[None]] = []
    try:
        if probe:
            checkout = CheckoutContext(
                store=store, ledger=ledger, languages=["en"], explorers={},
                sockets=Sockets("checkout", Hub(store), Limits(), None))
            for app in (create_app(ApiContext(store, ledger, [PROBE_KEY])),
                        create_checkout_app(checkout)):
                runners.append(web.AppRunner(app))
                await runners[-1].setup()
                await web.TCPSite(runners[-1], "127.0.0.1", 0).start()
            api, page = (f"http://127.0.0.1:{r.addresses[0][1]}" for r in runners)
            some = await store.run(lambda d: d.execute("SELECT id FROM invoices LIMIT 1")
                                   .fetchone()[0])
            probing = [asyncio.create_task(_probe(f"{api}/v1/invoices/{some}", latencies, stop)),
                       asyncio.create_task(_probe(f"{page}/pay/{some}", pages, stop))]
            await asyncio.sleep(0.2)  # connected and answering before the scan starts
            latencies.clear()
            pages.clear()
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
        stop.set()
        for task in probing:
            await task
        for runner in runners:
            await runner.cleanup()
        await rpc.close()
        await store.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return CatchUp(last - first, seconds, load_seconds, calls, requests, statuses, latencies,
                   pages)
