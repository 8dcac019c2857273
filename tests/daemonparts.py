"""The daemon's own parts for one network, wired as `daemon.py` wires them, pointed at a
`tests/chainmodel.py` server: used by the chain-model property test and the hostile-node
tests. Chain time starts at `T0`; tests pass the host's clock (`now`) explicitly."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
from web3 import Web3

from tests.chainmodel import ChainModel, ChainServer
from watcher import cluster
from watcher.daemon import prune_index, start_network
from watcher.errors import RpcError, StoreError
from watcher.follower import Follower, FollowerConfig
from watcher.ledger import Ledger, NetworkInfo, NewInvoice, Outcome
from watcher.matching import WatchIndex
from watcher.models import OPENS_EARLY, Asset, Invoice
from watcher.rpc import RpcClient
from watcher.storage.rows import index_invoices, last_event_seq, load_invoice
from watcher.storage.store import Store

NET = "model"
CONF = 3
LATE = 60  # seconds: five blocks
RANGE = 6  # max_block_range: several ranges per pass, so read-ahead and links are used
T0 = 1_700_000_000
TOKEN = Web3.to_checksum_address("0x" + "bb" * 20)
SHARED = Web3.to_checksum_address("0x" + "aa" * 20)
ADDRS = [Web3.to_checksum_address(f"0x{i + 1:040x}") for i in range(3)]
UNWATCHED = "0x" + "cc" * 20
PAYER = "0x" + "99" * 20
ASSETS = {
    "ETH": Asset(NET, "ETH", 18),
    "USDT": Asset(NET, "USDT", 6, token=TOKEN, shared_address=SHARED),
}


def clock(model: ChainModel) -> int:
    """The host's clock: past every block the node has made."""
    return model.head.timestamp + OPENS_EARLY + 1


def make_ledger(finality: str = "confirmations") -> Ledger:
    return Ledger(
        {NET: NetworkInfo(NET, 31337, CONF, ASSETS, finality)},
        tolerance=Fraction(0), default_ttl=3600, late_window=LATE, default_callback_url=None,
    )


class Node:
    """Store, ledger, watch index, RPC client and follower of one network, as
    `Daemon.start` builds them (index from `index_invoices`, start block written first)."""

    def __init__(
        self, db: Path | str, url: str, *, max_block_range: int = RANGE,
        finality: str = "confirmations", log_topic_chunk: int = 200, cluster: bool = False,
    ) -> None:
        self.db = db
        #: as the leader of several instances on PostgreSQL: it takes the network's lock,
        #: its commits are fenced, and it learns of invoices from the events others wrote
        #: (`report` then leaves the index alone: another instance made the change)
        self.cluster = cluster
        self.url = url
        self.max_block_range = max_block_range
        self.finality = finality
        self.log_topic_chunk = log_topic_chunk
        self.outcomes: list[Outcome] = []

    async def start(self, *, start_block: bool = True) -> Node:
        self.store = await Store(self.db).open()
        self.ledger = make_ledger(self.finality)
        await self.store.run(self.ledger.load_views)
        self.index = WatchIndex(ASSETS, LATE)
        seq = None
        fence = None
        if self.cluster:  # as `Daemon._follow_as_leader`
            assert await self.store.run(cluster.try_lead, NET, "model", 0)
            seq = await self.store.run(last_event_seq)
            fence = functools.partial(cluster.fence, network=NET)
        for inv in await self.store.run(index_invoices, NET, LATE):
            self.index.put(inv)
        self.rpc = RpcClient(NET, [self.url], timeout=2, max_attempts=2, backoff=0.001,
                             max_backoff=0.005, cooldown=0.001)
        self.follower = Follower(
            FollowerConfig(NET, CONF, self.max_block_range, 0.01, finality=self.finality,
                           log_topic_chunk=self.log_topic_chunk),
            self.rpc, self.store,
            self.ledger, self.index, self.on_outcome, fence=fence, event_seq=seq,
        )
        if start_block:
            await start_network(self.store, self.ledger, self.rpc, NET, 5)
        await self.follower._load()
        return self

    def on_outcome(self, out: Outcome) -> None:
        self.outcomes.append(out)
        for inv in out.touched:
            self.index.put(inv)

    def report(self, out: Outcome) -> None:
        """The outcome of a create or cancel made through the API: this process's index
        takes it, unless another instance made it (`cluster`)."""
        if self.cluster:
            self.outcomes.append(out)
        else:
            self.on_outcome(out)

    async def sync(self, passes: int = 1) -> None:
        """Follower passes as `Follower.run` makes them: RPC trouble is retried later.
        Anything else is a bug and fails the test."""
        for _ in range(passes):
            try:
                await self.follower.sync_once()
            except (RpcError, StoreError, aiohttp.ClientError, OSError):
                self.follower._cancel_prefetch()
            prune_index(self.index, self.ledger, NET)  # as the daemon's housekeeping does

    async def catch_up(self, head: int, passes: int = 50) -> None:
        for _ in range(passes):
            await self.sync()
            if self.follower.scanned == head:
                return
        raise AssertionError(f"not caught up: {self.follower.scanned} of {head}: "
                             f"{self.follower.last_error}")

    async def create(self, asset: str, amount: int, address: str | None, *, now: int,
                     expire_at: int) -> Invoice:
        req = NewInvoice(NET, asset, amount, address, expire_at)
        inv, _, out = await self.store.run(self.ledger.create, req, now)
        self.report(out)
        return inv

    async def get(self, invoice_id: str) -> Invoice:
        inv = await self.store.run(load_invoice, invoice_id)
        assert inv is not None
        return inv

    async def events(self, invoice_id: str) -> list[tuple[str, str, bytes]]:
        """(event id, event name, body) of an invoice, in order."""
        def read(db: object) -> list[tuple[str, str, bytes]]:
            return [tuple(r) for r in db.execute(  # type: ignore[attr-defined]
                "SELECT id, event, body FROM events WHERE invoice_id = ? ORDER BY seq",
                [invoice_id]).fetchall()]
        return await self.store.run(read)

    async def stop(self) -> None:
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.follower._cancel_prefetch()
        await self.rpc.close()
        await self.store.close()


@asynccontextmanager
async def running(
    where: Path | str, model: ChainModel | None = None, **kw: Any
) -> AsyncIterator[tuple[ChainModel, ChainServer, Node]]:
    """A model chain (a few blocks mined), its server, and a started node on a new
    database: `where` is a directory (a SQLite file in it) or the database itself (the
    `database` fixture: a SQLite file or a PostgreSQL URL); all stopped after."""
    model = model or ChainModel(genesis_time=T0, block_time=12)
    if model.head.number == 0:
        model.mine_empty(2)
    async with ChainServer(model) as server:
        db = where / "watcher.db" if isinstance(where, Path) else where
        node = await Node(db, server.url, **kw).start()
        try:
            yield model, server, node
        finally:
            await node.stop()
