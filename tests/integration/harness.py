"""An in-process watcher for follower tests: the real store, ledger, index, RPC client and
follower, driven one `sync()` at a time so no test depends on timing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from watcher import timeutil
from watcher.amounts import parse_amount
from watcher.daemon import start_network
from watcher.follower import Follower, FollowerConfig
from watcher.ledger import Ledger, NetworkInfo, NewInvoice, Outcome
from watcher.matching import WatchIndex
from watcher.metrics import Metrics
from watcher.models import Asset, Invoice
from watcher.rpc import RpcClient
from watcher.storage.rows import index_invoices, load_invoice
from watcher.storage.store import Store

NET = "anvil"


class Harness:
    def __init__(
        self,
        db_path: Path,
        urls: list[str],
        tokens: dict[str, tuple[str, int]],  # symbol -> (address, decimals)
        *,
        confirmations: int = 2,
        shared: dict[str, str] | None = None,  # symbol -> shared address
        late_window: int = 3600,
        tolerance: Fraction = Fraction(0),
        max_block_range: int = 1000,
    ) -> None:
        shared = shared or {}
        self.assets = {"ETH": Asset(NET, "ETH", 18, shared_address=shared.get("ETH"))}
        for symbol, (address, decimals) in tokens.items():
            self.assets[symbol] = Asset(
                NET, symbol, decimals, token=address, shared_address=shared.get(symbol)
            )
        self.db_path = db_path
        self.urls = urls
        self.confirmations = confirmations
        self.late_window = late_window
        self.tolerance = tolerance
        self.max_block_range = max_block_range
        self.metrics = Metrics()
        self.events: list[tuple[str, str]] = []  # (invoice id, event)

    async def start(self) -> Harness:
        self.store = await Store(self.db_path).open()
        self.ledger = Ledger(
            {NET: NetworkInfo(NET, 31337, self.confirmations, self.assets)},
            tolerance=self.tolerance, default_ttl=3600, late_window=self.late_window,
            default_callback_url=None,
        )
        await self.store.run(self.ledger.load_views)
        self.index = WatchIndex(self.assets, self.late_window)
        for inv in await self.store.run(index_invoices, NET, self.late_window):
            self.index.put(inv)
        self.rpc = RpcClient(NET, self.urls, timeout=2, max_attempts=2, backoff=0.05,
                             on_request=self.metrics.rpc_hook(NET))
        self.follower = Follower(
            FollowerConfig(NET, self.confirmations, self.max_block_range, 0.25),
            self.rpc, self.store, self.ledger, self.index, self.apply, self.metrics,
        )
        await start_network(self.store, self.ledger, self.rpc, NET, 5)
        await self.follower._load()
        return self

    async def close(self) -> None:
        await self.rpc.close()
        await self.store.close()

    async def restart(self) -> None:
        await self.close()
        await self.start()

    def apply(self, out: Outcome) -> None:
        for inv in out.touched:
            self.index.put(inv)
        self.events += [(c.invoice.id, c.event) for c in out.changes]

    async def create(
        self, asset: str, amount: str, address: str | None = None, *, ttl: int = 3600,
        expire_at: int | None = None,
    ) -> Invoice:
        req = NewInvoice(
            NET, asset, parse_amount(amount, self.assets[asset].decimals), address,
            expire_at if expire_at is not None else timeutil.now() + ttl,
        )
        inv, _, out = await self.store.run(self.ledger.create, req, timeutil.now())
        self.apply(out)
        return inv

    async def sync(self, times: int = 1) -> None:
        for _ in range(times):
            await self.follower.sync_once()

    async def get(self, invoice_id: str) -> dict[str, Any]:
        inv = await self.store.run(load_invoice, invoice_id)
        assert inv is not None
        return self.ledger.render(inv)

    async def status(self, invoice_id: str) -> str:
        return str((await self.get(invoice_id))["status"])

    def history(self, invoice_id: str) -> list[str]:
        return [e.removeprefix("invoice.") for i, e in self.events if i == invoice_id]

    async def transfers(self) -> list[dict[str, Any]]:
        return await self.store.run(
            lambda db: list(db.query("SELECT * FROM transfers ORDER BY block, log_index"))
        )
