"""Rescan: read a past range of blocks again, beside the live follower, and add what is
missing (a node that lost data, a payment to an invoice made before a fix, ...).

Each chunk is read the way the follower reads a range (same log filters, headers, receipts,
traces and checks), against the invoices whose collecting or late window can hold the
chunk's blocks, loaded from the database; then `Ledger.apply_rescan` stores, in one
transaction with the rescan's progress, only the transfers not stored before. So a rescan
never counts a transfer twice, can be stopped at any moment and resumed from the first block
it has not done (run the same range again), and sends the callbacks of what changed. It
covers blocks the follower has already scanned; newer ones are the follower's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from watcher import timeutil
from watcher.errors import RpcError, WatcherError
from watcher.follower import (
    NATIVE_RANGE,
    ChainMoved,
    Follower,
    FollowerConfig,
    Header,
    commit,
)
from watcher.ledger import Ledger, Outcome, ScanBatch
from watcher.matching import WatchIndex
from watcher.models import Asset, Status
from watcher.rpc import RpcClient
from watcher.storage.base import Db
from watcher.storage.rows import load_invoices
from watcher.storage.store import Store

log = logging.getLogger("watcher.rescan")

#: Times a chunk is read again when the node's answers do not agree with each other.
CHUNK_ATTEMPTS = 5


class RescanError(WatcherError):
    """A rescan that cannot run as asked (a range beyond what is scanned, a block the node
    does not have); the message names the block, `field` the end of the range at fault."""

    def __init__(self, message: str, field: str = "from") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Progress:
    rescan_id: int
    start: int
    end: int
    next_block: int  # the first block not rescanned yet
    added: int  # transfers recorded so far


def candidates(
    db: Db, network: str, since: int, until: int, late_window: int
) -> list[Any]:
    """The invoices of a network a transfer in a block stamped `since..until` could reach:
    their window opened by `until` and their late window ends at or after `since`."""
    return load_invoices(
        db,
        "network = ? AND (opens_at IS NULL OR opens_at <= ?) AND expire_at + ? >= ?",
        [network, until, late_window, since],
    )


class Rescanner:
    """Rescans ranges of one network with its own RPC client, store and ledger."""

    def __init__(
        self,
        cfg: FollowerConfig,
        assets: dict[str, Asset],
        rpc: RpcClient,
        store: Store,
        ledger: Ledger,
        late_window: int,
        on_outcome: Callable[[Outcome], None] = lambda _out: None,
        *,
        fence: Callable[[Db], None] | None = None,
    ) -> None:
        self.cfg = cfg
        #: several instances: the leader's fence, run inside each chunk's commit
        self.fence = fence
        self.assets = assets
        self.rpc = rpc
        self.store = store
        self.ledger = ledger
        self.late_window = late_window
        self.on_outcome = on_outcome

    @property
    def network(self) -> str:
        return self.cfg.network

    async def check(self, start: int, end: int | None) -> tuple[int, int]:
        """The range to rescan, checked: (start, end). `end` None: up to what the follower
        has scanned. Raises RescanError naming the block for a range it cannot do."""
        cursor = await self.store.run(self.ledger.cursor, self.network)
        scanned = None if cursor is None else cursor["scanned_block"]
        if scanned is None:
            raise RescanError(f"{self.network} has not started: nothing is scanned to rescan")
        head = await self.rpc.block_number()
        last = scanned if end is None else end
        if start < 0 or last < start:
            raise RescanError(f"--from {start} must be at least 0 and not above --to {last}")
        if last > head:
            raise RescanError(f"block {last} is above the node's head {head}", "to")
        if last > scanned:
            raise RescanError(
                f"block {last} is not scanned yet (the follower has scanned up to {scanned}): "
                "newer blocks are read live; rescan up to it", "to",
            )
        first = await self.rpc.get_block(start, False)
        if first is None:
            raise RescanError(
                f"the node has no block {start} (a pruned node?): rescan from a later block "
                "or use an archive node"
            )
        return start, last

    async def run(
        self, start: int, end: int, progress: Callable[[Progress], None] | None = None
    ) -> Progress:
        """Rescan `start..end` (checked with `check`), resuming an unfinished rescan of the
        same range; its final progress. Cancelling it leaves it resumable."""
        row = await self.store.run(
            self.ledger.start_rescan, self.network, start, end, timeutil.now()
        )
        rescan_id = int(row["id"])
        at = Progress(rescan_id, start, end, int(row["next_block"]), int(row["added"]))
        log.info("%s: rescanning blocks %d..%d (from %d)", self.network, start, end,
                 at.next_block, extra={"network": self.network})
        if progress is not None:
            progress(at)
        try:
            while at.next_block <= end:
                at = await self._chunk(at)
                if progress is not None:
                    progress(at)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(rescan_id, None))
            raise
        except (RpcError, ChainMoved, WatcherError) as exc:
            await self._stop(rescan_id, f"{type(exc).__name__}: {exc}"[:300])
            raise
        log.info("%s: rescan of %d..%d done: %d transfers added", self.network, start, end,
                 at.added, extra={"network": self.network})
        return at

    async def _stop(self, rescan_id: int, error: str | None) -> None:
        await self.store.run(self.ledger.stop_rescan, rescan_id, timeutil.now(), error)

    async def _chunk(self, at: Progress) -> Progress:
        start = at.next_block
        for attempt in range(CHUNK_ATTEMPTS):
            try:
                return await self._read_and_apply(at, start)
            except ChainMoved as exc:
                if attempt == CHUNK_ATTEMPTS - 1:
                    raise
                log.debug("%s: rescan at %d: %s; reading again", self.network, start, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_and_apply(self, at: Progress, start: int) -> Progress:
        latest = await self.rpc.get_block("latest", False)
        if latest is None:
            raise ChainMoved("the node has no latest block")
        tip = Header.of(latest)
        span = self.cfg.max_block_range
        end = min(at.end, start + span - 1)
        edges = await self.rpc.get_blocks(sorted({start, end}), full=False)
        times = [int(b["timestamp"], 16) for b in edges]
        invoices = await self.store.run(
            candidates, self.network, min(times), max(times), self.late_window
        )
        index = WatchIndex(self.assets, self.late_window)
        for inv in invoices:
            # an invoice voided at expiry is routed as if collecting until then: a payment
            # made in time that the follower missed is still its payment
            index.put(replace(inv, status=Status.PENDING, closed_at=None)
                      if inv.voided_at_expiry else inv)
        if index.native_symbol is not None and index.watches_native():
            end = min(end, start + NATIVE_RANGE - 1)  # full blocks: smaller steps
        reader = Follower(self.cfg, self.rpc, self.store, self.ledger, index, self.on_outcome)
        transfers = await reader.read_range(start, end, tip) if len(index) else []
        last = transfers[-1].timestamp if transfers else max(times)
        batch = ScanBatch(self.network, end, None, last, tip.number, transfers)
        outcome = await commit(
            self.store, self.fence, self.ledger.apply_rescan, at.rescan_id, batch,
            timeutil.now(),
        )
        self.on_outcome(outcome)
        return Progress(at.rescan_id, at.start, at.end, end + 1, at.added + len(outcome.recorded))
