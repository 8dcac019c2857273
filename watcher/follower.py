"""One follower per network: tracks the head, scans every block from the cursor, finds
transfers to watched addresses, and hands them to the ledger with the cursor advance.

Per range of blocks the follower asks the node for:
- ERC-20 `Transfer` logs of the configured token contracts (`eth_getLogs`), only while some
  token address is watched, narrowed by recipient topic while few addresses are watched;
- full blocks only while a native invoice may be paid on this network;
- headers of: the range's first block (its parentHash must be the stored hash of the block
  below: every range links to what was scanned before, however far behind the follower
  is), its last block (its time decides expiry), every block within `track` of the head
  (their hashes must be their logs' `blockHash`), and every block holding a matching log
  that carries no `blockTimestamp` (optional in logs, and most nodes omit it: the header's
  timestamp is the payment's time).

What the node says is not trusted blindly (load-balanced providers answer from backends at
different heights):
- a range whose headers do not link to each other, or a log whose block hash is not the
  header's, is read again with a fresh head (`ChainMoved`), never taken for a reorg;
- a recent block whose `logsBloom` may hold a watched transfer while `eth_getLogs` returned
  nothing for it is asked again by block hash (a backend without the block answers an error
  there, not `[]`);
- a head below the cursor is a lagging backend: nothing is undone.
A reorg is a range whose first block does not link to the stored hash below it: the follower
walks the new chain back by parent hash to the newest stored block still on it, has the
ledger undo everything above, and rescans.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
from eth_bloom.bloom import BloomFilter
from eth_hash.auto import keccak

from watcher import timeutil, traces
from watcher.addresses import checksum_address
from watcher.errors import (
    NotLeader,
    RangeTooLarge,
    RpcError,
    RpcFatal,
    RpcRetryable,
    StoreError,
)
from watcher.ledger import Ledger, Outcome, ScanBatch
from watcher.logs import Throttle
from watcher.matching import Route, WatchIndex
from watcher.metrics import Metrics
from watcher.models import Transfer
from watcher.rpc import RpcClient
from watcher.storage.base import Db
from watcher.storage.rows import invoices_after_event, invoices_by_ids, invoices_changed_elsewhere
from watcher.storage.store import Store, transaction
from watcher.tuning import LOG_PARTS, Tuner

log = logging.getLogger("watcher.follower")

TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()
#: Topic-filtered `eth_getLogs` per range at most (`log_topic_chunk` recipients each); with
#: more watched recipients than that covers, every Transfer of the tokens is read instead.
MAX_TOPIC_QUERIES = 50
NATIVE_RANGE = 100  # blocks per step while full blocks are fetched


@dataclass(slots=True)
class FollowerConfig:
    network: str
    confirmations: int
    max_block_range: int
    poll_interval: float
    ws: list[str] = field(default_factory=list)
    finality: str = "confirmations"  # or "safe" / "finalized": that tag is read with the head
    start_block: int | None = None  # a new database's first block (default: the head)
    internal_transfers: str = "off"  # or "trace_block" / "debug_trace"
    log_topic_chunk: int = 200  # watched recipients per topic-filtered eth_getLogs


@dataclass(slots=True)
class Header:
    number: int
    hash: str
    parent: str
    timestamp: int
    bloom: str | None = None

    @classmethod
    def of(cls, block: dict[str, Any]) -> Header:
        return cls(
            int(block["number"], 16),
            block["hash"],
            block["parentHash"],
            int(block["timestamp"], 16),
            block.get("logsBloom"),
        )


#: what one range reads: logs, headers by number, full blocks (empty unless native)
_Read = tuple[list[dict[str, Any]], dict[int, Header], list[dict[str, Any]]]


class ReorgDetected(Exception):
    """A range's first block does not link to the stored block below it: blocks the
    follower scanned were replaced. `header` is that first block of the new chain."""

    def __init__(self, header: Header) -> None:
        super().__init__(f"reorg below block {header.number}")
        self.header = header


class ChainMoved(Exception):
    """What one pass read does not agree with itself: the node moved while it was read, or
    its backends answer from different heights. Nothing scanned is affected: read again."""


_LogFilter = tuple[tuple[str, ...], tuple[Any, ...]]


def _consume(task: asyncio.Future[Any]) -> None:
    """A read-ahead nobody awaits must not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:]


def _announced_header(data: str | bytes) -> Header | None:
    """The header a `newHeads` notification carries, if it is whole (number, hash, parent,
    timestamp and logsBloom: without it a lagging backend's empty `eth_getLogs` could not
    be caught); None for anything else."""
    try:
        head = orjson.loads(data)["params"]["result"]
        if not head.get("logsBloom"):
            return None
        return Header.of(head)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


@functools.lru_cache(maxsize=4 * 4096)
def _bloom_mask(item: str) -> int:
    """The logsBloom bits of a `0x` hex address or topic (eth_bloom's), computed once: a
    bloom may hold it when it has all of them. Checking 1,000 watched recipients against
    each recent header hashed each one again: ~10 ms per block."""
    return int(BloomFilter.from_iterable([bytes.fromhex(item[2:])]))


def _bloom_may_hold_any(bloom: int, items: Iterable[str]) -> bool:
    for item in items:
        mask = _bloom_mask(item)
        if bloom & mask == mask:
            return True
    return False


def _split(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """`start..end` in at most `parts` consecutive spans of nearly equal length."""
    blocks = end - start + 1
    parts = max(1, min(parts, blocks))
    size, extra = divmod(blocks, parts)
    out = []
    a = start
    for i in range(parts):
        b = a + size - 1 + (1 if i < extra else 0)
        out.append((a, b))
        a = b + 1
    return out


def _pad(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def _log_amount(lg: dict[str, Any]) -> int:
    data = lg.get("data") or "0x"
    return int(data[:66], 16) if len(data) > 2 else 0


T = TypeVar("T")


def _fenced(db: Db, fence: Callable[[Db], None], fn: Callable[..., T], *args: Any) -> T:
    """`fn(db, *args)` in a transaction that first runs `fence` (it raises to refuse)."""
    with db.pipeline(), transaction(db):  # the fence's read shares the first round trip
        fence(db)
        return fn(db, *args)


async def commit(
    store: Store, fence: Callable[[Db], None] | None, fn: Callable[..., T], *args: Any
) -> T:
    """A chain commit on the writer: fenced when instances share the database."""
    if fence is None:
        return await store.run(fn, *args)
    return await store.run(_fenced, fence, fn, *args)


class Follower:
    """Follows one network. `run()` never returns until cancelled; RPC or store trouble, or
    any unexpected error, is logged, retried, and shown in `health`."""

    def __init__(
        self,
        cfg: FollowerConfig,
        rpc: RpcClient,
        store: Store,
        ledger: Ledger,
        index: WatchIndex,
        on_outcome: Callable[[Outcome], None],
        metrics: Metrics | None = None,
        *,
        fence: Callable[[Db], None] | None = None,
        event_seq: int | None = None,
    ) -> None:
        self.cfg = cfg
        #: several instances (PostgreSQL): run inside every chain commit's transaction
        #: first, raising `NotLeader` when this instance no longer leads the network
        self.fence = fence
        #: several instances: the newest event taken into the index (`_refresh_index`
        #: reads the invoices of the events after it); None: one instance, see there
        self._event_seq = event_seq
        self.rpc = rpc
        self.store = store
        self.ledger = ledger
        self.index = index
        self.on_outcome = on_outcome
        self.metrics = metrics
        self.head: int | None = None
        self.scanned: int | None = None
        self.last_error: str | None = None
        #: monotonic time of the last pass of the loop (done or failed): the watchdog's view
        self.beat = time.monotonic()
        self._hashes: dict[int, tuple[str, str]] = {}  # number -> (hash, parentHash)
        self._range = max(1, cfg.max_block_range)
        self._good_ranges = 0
        #: the next range read ahead while a range commits: (key, task)
        self._prefetch: tuple[tuple[Any, ...], asyncio.Future[_Read]] | None = None
        self._wake = asyncio.Event()
        #: the newest head announced over `ws` (newHeads) and not read yet: the next pass
        #: takes it as its tip instead of asking the node again
        self._announced: str | bytes | None = None
        #: notifications read since the last pass (one: the follower is keeping up)
        self._announcements = 0
        self._stopping = False
        self._throttle = Throttle(60)
        self._refreshed = 0
        self._data_version: int | None = None  # `_refresh_index`
        #: (final, finalized) block numbers read with the newest head (finality tags)
        self._tags: tuple[int | None, int | None] = (None, None)
        #: full blocks per batch and batches in flight, as the node serves them fastest
        self._tuner = Tuner()
        #: a range's eth_getLogs in how many parts read at once (one topic list only)
        self._log_tuner = Tuner(start=(1, 4), sizes=(1,), concurrencies=LOG_PARTS,
                                min_blocks=64)
        #: whether to ask `eth_getBlockReceipts` (until the node refuses it once)
        self._block_receipts = True
        #: blocks within `track` of the head have their headers read and checked (links,
        #: logsBloom) and their hashes stored: deeper than any reorg the confirmations allow
        #: for, and than a lagging backend lags; hashes are kept for `keep` blocks
        self.track = max(cfg.confirmations + 2, 12)
        self.keep = max(2 * cfg.confirmations, 64)

    # ------------------------------------------------------------------ life cycle

    @property
    def network(self) -> str:
        return self.cfg.network

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def stalled(self, limit: float) -> bool:
        """True when the loop has not come round for `limit` seconds: wedged, not merely
        failing (an RPC outage still comes round and is shown in `last_error`)."""
        return time.monotonic() - self.beat > limit

    async def run(self) -> None:
        ws_task = None
        if self.cfg.ws:
            ws_task = asyncio.create_task(self._follow_ws(), name=f"ws-{self.network}")
        try:
            await self._load()
            while not self._stopping:
                pause = self.cfg.poll_interval
                try:
                    await self.sync_once()
                    self.last_error = None
                except NotLeader:
                    raise  # another instance follows the network now
                except (RpcError, StoreError, aiohttp.ClientError, OSError) as exc:
                    self._note_error(exc)
                    pause = max(pause, 1.0)
                except Exception as exc:  # a bug must not stop the network: log, go on
                    self._cancel_prefetch()
                    self._note_error(exc, unexpected=True)
                    pause = max(pause, 5.0)
                self.beat = time.monotonic()
                await self._sleep(pause)
        finally:
            self._cancel_prefetch()
            if ws_task is not None:
                ws_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ws_task

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def _note_error(self, exc: BaseException, *, unexpected: bool = False) -> None:
        """Log an error, at most once a minute per kind of error."""
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self._throttle.log(
            log, logging.ERROR if unexpected else logging.WARNING, type(exc).__name__,
            "%s: %s%s (scanned %s, head %s)", self.network,
            "unexpected error: " if unexpected else "", self.last_error, self.scanned,
            self.head, extra={"network": self.network}, exc_info=exc if unexpected else None,
        )

    async def _load(self) -> None:
        cursor = await self.store.run(self.ledger.cursor, self.network)
        if cursor and cursor["scanned_block"] is not None:
            self.scanned = cursor["scanned_block"]
            self.head = cursor["head_block"]
        self._hashes = await self.store.run(self.ledger.recent_blocks, self.network)
        self._refreshed = timeutil.now()

    async def _commit(self, fn: Callable[..., T], *args: Any) -> T:
        return await commit(self.store, self.fence, fn, *args)

    async def _refresh_index(self) -> None:
        """Take invoices another process (the CLI) created or changed into the index, and
        those of this process not in it yet (a create's outcome reaches the index when its
        request resumes, a loop turn after the group commit this query may already see).
        Runs after the head is read and before any range up to it is matched: an invoice
        committed before this query is watched for every block up to that head, and one
        committed after it can only be paid in a later block."""
        now = timeutil.now()
        if self._event_seq is not None:
            # other instances write too: the invoices of every event committed since the
            # last look (write transactions commit one at a time, in event order, so
            # none is passed over); a missed create would be a missed payment
            self._event_seq, found = await self.store.run(
                invoices_after_event, self.network, self._event_seq
            )
            for inv in found:
                self.index.put(inv)
            return
        self._data_version, changed, ids = await self.store.run(
            invoices_changed_elsewhere, self._refreshed - 1, self.network, self._data_version
        )
        if changed is None:  # only this process wrote: what its index does not hold yet
            missing = [i for i in ids if not self.index.holds(i)]
            changed = await self.store.run(invoices_by_ids, missing) if missing else []
        self._refreshed = now
        for inv in changed:
            self.index.put(inv)

    # ------------------------------------------------------------------ one pass

    async def _head(self) -> tuple[Header, int | None, int | None]:
        """The node's head and, with a finality tag, the blocks of that tag and of
        `finalized` (None while the node has none), in one request: (tip, final,
        finalized). A tag is never taken above the head it came with. Without a tag, the
        block after the head, announced over `ws` while the follower is at the head, is the
        tip (a request saved on every block); it is checked like a polled one: the range's
        headers must link to it. Behind, after a gap, or with several notifications since
        the last pass (a backlog: not parsed), the node is asked."""
        announced, self._announced = self._announced, None
        count, self._announcements = self._announcements, 0
        if self.cfg.finality == "confirmations":
            tip = _announced_header(announced) if count == 1 and announced else None
            if (tip is not None and self.head is not None and tip.number == self.head + 1
                    and self.scanned == self.head):
                return tip, None, None
            latest = await self.rpc.get_block("latest", False)
            if latest is None:
                raise RpcError("node has no latest block")
            return Header.of(latest), None, None
        tags = ["finalized"] if self.cfg.finality == "finalized" else ["safe", "finalized"]
        answers = await self.rpc.batch(
            [("eth_getBlockByNumber", ["latest", False])]
            + [("eth_getBlockByNumber", [tag, False]) for tag in tags]
        )
        if not isinstance(answers[0], dict):
            raise RpcError("node has no latest block")
        tip = Header.of(answers[0])
        numbers = [
            min(int(a["number"], 16), tip.number) if isinstance(a, dict) else None
            for a in answers[1:]
        ]
        return tip, numbers[0], numbers[-1]

    async def sync_once(self) -> None:
        """Poll the head once and scan up to it (or as far as one pass gets)."""
        tip, final, finalized = await self._head()
        self._tags = (final, finalized)
        # before any block up to this head is read: the chain's clock for new invoices' windows
        self.ledger.note_tip(self.network, tip.timestamp)
        if self.scanned is None:
            # A fresh database: the start block is written before the API takes an invoice
            # for this network (the ledger refuses creates until then), so nothing that
            # could pay an invoice lies below it.
            start = tip.number if self.cfg.start_block is None else self.cfg.start_block
            await self._commit(self.ledger.start_network, self.network, start, timeutil.now())
            await self._load()
            log.info("%s: starting at block %s", self.network, (self.scanned or 0) + 1,
                     extra={"network": self.network})
        assert self.scanned is not None
        if tip.number <= self.scanned:
            # Nothing new, or a node behind the others (a lagging backend of a load
            # balancer), or a replacement chain not longer yet. Acting on such a head would
            # rewind good blocks; a real reorg shows once the chain passes the cursor: the
            # next range's first block no longer links to the stored one.
            log.debug("%s: node head %d is not above scanned block %d", self.network,
                      tip.number, self.scanned)
            self._observe_head()
            return
        self.head = tip.number
        self._observe_head()
        await self._refresh_index()
        deadline = time.monotonic() + 5.0
        while self.scanned < tip.number and not self._stopping:
            try:
                try:
                    await self._step(tip)
                except ReorgDetected as r:
                    await self._handle_reorg(r.header)
            except ChainMoved as exc:
                # Come back with a fresh head; not a reorg: nothing is undone or counted.
                self._cancel_prefetch()
                log.debug("%s: %s; reading again", self.network, exc)
                return
            self.beat = time.monotonic()
            if time.monotonic() > deadline:
                break  # come back for a fresh head (and let the loop breathe)

    def _observe_head(self) -> None:
        if self.metrics is not None and self.head is not None and self.scanned is not None:
            self.metrics.set_heights(self.network, self.head, self.scanned)

    async def _step(self, tip: Header) -> None:
        assert self.scanned is not None
        start = self.scanned + 1
        native = self.index.native_symbol is not None and self.index.watches_native()
        span = min(self._range, NATIVE_RANGE) if native else self._range
        end = min(tip.number, start + span - 1)
        flt = self._log_filter()
        try:
            logs, headers, blocks = await self._fetch(start, end, tip, native, flt)
        except RangeTooLarge as exc:
            self._shrink(exc, start, end)
            return
        if end < tip.number and not self._stopping:
            # read the next range while this one is checked, matched and committed
            nspan = min(self._grown(), NATIVE_RANGE) if native else self._grown()
            self._start_prefetch(end + 1, min(tip.number, end + nspan), tip, native)
        self._check_chain(start, headers)
        transfers = await self._transfers(start, end, tip, flt, logs, headers, blocks)
        last = headers[end]
        stored = [h for h in headers.values() if h.number > tip.number - self.track
                  or h.number == end]
        batch = ScanBatch(
            network=self.network,
            to_block=end,
            to_hash=last.hash,
            to_time=last.timestamp,
            head=tip.number,
            transfers=transfers,
            blocks=[(h.number, h.hash, h.parent, h.timestamp) for h in stored],
            keep_blocks=self.keep,
            final_block=self._tags[0],
            finalized_block=self._tags[1],
        )
        outcome = await self._commit(self.ledger.apply_scan, batch, timeutil.now())
        for h in stored:
            self._hashes[h.number] = (h.hash, h.parent)
        for n in [n for n in self._hashes if n < end - self.keep]:
            del self._hashes[n]
        self.scanned = end
        self._grow()
        self.on_outcome(outcome)
        self._count(start, end, outcome)

    async def _transfers(
        self,
        start: int,
        end: int,
        tip: Header,
        flt: _LogFilter | None,
        logs: list[dict[str, Any]],
        headers: dict[int, Header],
        blocks: list[dict[str, Any]],
    ) -> list[Transfer]:
        """The transfers to watched addresses in what one range read, in chain order."""
        logs = await self._complete(start, end, tip, logs, headers, flt)
        transfers = self._token_transfers(logs, headers, tip)
        if blocks:
            transfers += await self._native_transfers(blocks)
            if self.cfg.internal_transfers != "off":
                transfers += await self._internal_transfers(blocks)
        transfers.sort(key=lambda t: (t.block, -1 if t.log_index is None else t.log_index,
                                      t.trace or ""))
        return transfers

    async def read_range(self, start: int, end: int, tip: Header) -> list[Transfer]:
        """The transfers to this follower's watched addresses in blocks `start..end`, read
        and checked as a live range is, but not committed (a rescan's reading)."""
        native = self.index.native_symbol is not None and self.index.watches_native()
        flt = self._log_filter()
        logs, headers, blocks = await self._read(start, end, tip, native, flt)
        self._check_chain(start, headers)
        return await self._transfers(start, end, tip, flt, logs, headers, blocks)

    # ------------------------------------------------------------------ read-ahead

    async def _fetch(
        self, start: int, end: int, tip: Header, native: bool, flt: _LogFilter | None
    ) -> _Read:
        """The logs, headers and full blocks (if `native`) of one range: those read ahead
        if they were read for exactly this range, tip and log filter, else read now."""
        key = (start, end, tip.number, tip.hash, native, flt)
        pre, self._prefetch = self._prefetch, None
        if pre is not None:
            pkey, task = pre
            if pkey == key:
                try:
                    return await task
                except (RpcError, aiohttp.ClientError, OSError):
                    pass  # read again below: the error (if it lasts) surfaces from there
            else:
                task.cancel()
        return await self._read(start, end, tip, native, flt)

    async def _read(
        self, start: int, end: int, tip: Header, native: bool, flt: _LogFilter | None
    ) -> _Read:
        """Logs and blocks are asked at the same time; a logs error wins (as if asked
        first) and drops the blocks."""
        blocks_task = asyncio.ensure_future(self._blocks(start, end, tip, native))
        try:
            logs = await self._get_logs(start, end, flt)
        except BaseException:
            blocks_task.cancel()
            with contextlib.suppress(BaseException):
                await blocks_task
            raise
        headers, blocks = await blocks_task
        return logs, headers, blocks

    def _start_prefetch(self, start: int, end: int, tip: Header, native: bool) -> None:
        self._cancel_prefetch()
        flt = self._log_filter()
        task = asyncio.ensure_future(self._read(start, end, tip, native, flt))
        task.add_done_callback(_consume)
        self._prefetch = ((start, end, tip.number, tip.hash, native, flt), task)

    def _cancel_prefetch(self) -> None:
        pre, self._prefetch = self._prefetch, None
        if pre is not None:
            pre[1].cancel()

    def _count(self, start: int, end: int, outcome: Outcome) -> None:
        if self.metrics is None:
            return
        self.metrics.blocks_scanned.labels(self.network).inc(end - start + 1)
        self._observe_head()
        for t in outcome.recorded:
            self.metrics.transfer_seen(self.network, t.asset, t.invoice_id is not None)

    def _shrink(self, exc: RangeTooLarge, start: int, end: int) -> None:
        if exc.suggested and exc.suggested[1] >= exc.suggested[0] >= start:
            self._range = max(1, exc.suggested[1] - start + 1)
        else:
            self._range = max(1, (end - start + 1) // 2)
        self._good_ranges = 0
        log.info("%s: eth_getLogs range narrowed to %d blocks", self.network, self._range)

    def _grown(self) -> int:
        """The range `_grow()` will leave after one more good range."""
        if self._range < self.cfg.max_block_range and self._good_ranges + 1 >= 20:
            return min(self.cfg.max_block_range, self._range * 2)
        return self._range

    def _grow(self) -> None:
        if self._range < self.cfg.max_block_range:
            self._good_ranges += 1
            if self._good_ranges >= 20:
                self._range = min(self.cfg.max_block_range, self._range * 2)
                self._good_ranges = 0

    # ------------------------------------------------------------------ fetching

    def _log_filter(self) -> _LogFilter | None:
        """(token contracts, topics) of the `eth_getLogs` a range needs; None when no token
        address is watched."""
        tokens = self.index.token_addresses()
        if not tokens:
            return None
        recipients = self.index.token_recipients(self.cfg.log_topic_chunk * MAX_TOPIC_QUERIES)
        if recipients is not None and not recipients:
            return None
        topics: tuple[Any, ...] = (TRANSFER_TOPIC,)
        if recipients is not None:
            topics += (None, tuple(sorted(_pad(a) for a in recipients)))
        return tuple(tokens), topics

    def _topic_lists(self, flt: _LogFilter) -> list[list[Any]]:
        """The `topics` of each query the filter needs: one per `log_topic_chunk` watched
        recipients (providers cap the list), or one without recipients."""
        topics = flt[1]
        if len(topics) < 3:
            return [[topics[0]]]
        recipients = list(topics[2])
        size = self.cfg.log_topic_chunk
        return [[topics[0], None, recipients[i : i + size]]
                for i in range(0, len(recipients), size)]

    @staticmethod
    def _merged(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The logs of several queries in chain order, each once."""
        if len(parts) == 1:
            return parts[0]
        seen: set[tuple[str, str]] = set()
        out = []
        for lg in (lg for part in parts for lg in part):
            key = (lg["transactionHash"], lg["logIndex"])
            if key not in seen:
                seen.add(key)
                out.append(lg)
        out.sort(key=lambda lg: (int(lg["blockNumber"], 16), int(lg["logIndex"], 16)))
        return out

    async def _get_logs(
        self, start: int, end: int, flt: _LogFilter | None
    ) -> list[dict[str, Any]]:
        if flt is None:
            return []
        tokens = list(flt[0])
        topic_lists = self._topic_lists(flt)
        setting = None
        spans = [(start, end)]
        if len(topic_lists) == 1 and end - start + 1 >= self._log_tuner.min_blocks:
            # one query for a long range: read it in parts at once, as many as the node
            # serves fastest (several topic-chunked queries are in flight already)
            setting = self._log_tuner.next_setting(end - start + 1)
            spans = _split(start, end, setting[1])
        started = time.perf_counter()
        try:
            parts = await asyncio.gather(*(
                self.rpc.get_logs(a, b, tokens, topics)
                for a, b in spans for topics in topic_lists
            ), return_exceptions=True)  # every query ends before one error is raised
            for part in parts:
                if isinstance(part, BaseException):
                    raise part
            done = [p for p in parts if not isinstance(p, BaseException)]
            if setting is not None:
                self._log_tuner.observe(setting, end - start + 1, time.perf_counter() - started)
            if len(spans) == 1:
                return self._merged(done)
            return [lg for part in done for lg in part]  # one query per part, in order
        except RangeTooLarge:
            if start != end:
                raise
        except (RpcError, aiohttp.ClientError, OSError):
            if setting is not None:
                self._log_tuner.failed(setting)
            raise
        # One block alone holds more logs than the provider returns (a busy USDT block):
        # take its logs from its receipts, which have no such cap.
        return await self._logs_from_receipts(start, flt)

    async def _logs_from_receipts(self, number: int, flt: _LogFilter) -> list[dict[str, Any]]:
        receipts = await self.rpc.get_block_receipts(number)
        if receipts is None:
            raise RpcRetryable(f"no receipts for block {number} yet",
                               method="eth_getBlockReceipts")
        tokens = set(flt[0])
        out = []
        for r in receipts:
            if r.get("status") == "0x0":
                continue  # a reverted transaction leaves no logs
            for lg in r.get("logs") or []:
                topics = lg.get("topics") or []
                if lg.get("address", "").lower() in tokens and topics[:1] == [TRANSFER_TOPIC]:
                    out.append(lg)
        return out

    async def _blocks(
        self, start: int, end: int, tip: Header, native: bool
    ) -> tuple[dict[int, Header], list[dict[str, Any]]]:
        """Headers the step needs (all of them for full blocks), and the full blocks."""
        if native:
            blocks = await self._full_blocks(list(range(start, end + 1)))
            return {h.number: h for h in map(Header.of, blocks)}, blocks
        wanted = set(range(max(start, tip.number - self.track + 1), end + 1))
        wanted.update((start, end))
        headers: dict[int, Header] = {}
        if tip.number in wanted:
            headers[tip.number] = tip
            wanted.discard(tip.number)
        if wanted:
            for b in await self.rpc.get_blocks(sorted(wanted), full=False):
                h = Header.of(b)
                headers[h.number] = h
        return dict(sorted(headers.items())), []

    async def _full_blocks(self, numbers: list[int]) -> list[dict[str, Any]]:
        """Full blocks in batches and with requests in flight as the node serves them
        fastest (`tuning.Tuner`, measured on these reads)."""
        setting = self._tuner.next_setting(len(numbers))
        started = time.perf_counter()
        try:
            blocks = await self.rpc.get_blocks(
                numbers, full=True, batch_size=setting[0], concurrency=setting[1]
            )
        except (RpcError, aiohttp.ClientError, OSError):
            self._tuner.failed(setting)
            best = self._tuner.best()
            if best == setting:
                raise
            # a setting tried for the first time failed: read again at once as before
            return await self.rpc.get_blocks(
                numbers, full=True, batch_size=best[0], concurrency=best[1]
            )
        self._tuner.observe(setting, len(numbers), time.perf_counter() - started)
        return blocks

    def _check_chain(self, start: int, headers: dict[int, Header]) -> None:
        """Fetched headers must link to each other (else the node moved while it was read)
        and the first one to the stored block below it (else blocks already scanned were
        replaced: a reorg)."""
        for n, h in headers.items():
            if n - 1 in headers and headers[n - 1].hash != h.parent:
                raise ChainMoved(f"block {n} does not link to block {n - 1}")
            if h.number != n:
                raise ChainMoved(f"asked for block {n}, got {h.number}")
        prev = self._hashes.get(start - 1)
        first = headers.get(start)
        if prev is not None and first is not None and prev[0] != first.parent:
            raise ReorgDetected(first)

    async def _complete(
        self,
        start: int,
        end: int,
        tip: Header,
        logs: list[dict[str, Any]],
        headers: dict[int, Header],
        flt: _LogFilter | None,
    ) -> list[dict[str, Any]]:
        """Make the range's logs trustworthy: read the header of each block holding a
        matching log that carries no `blockTimestamp` (its timestamp decides; recent blocks
        have their headers already, and their hashes are checked against the logs), and ask
        again by block hash for each recent block whose `logsBloom` may hold a watched
        transfer that `eth_getLogs` did not return (a backend behind the head answers `[]`
        for blocks it lacks)."""
        if flt is None:
            return logs
        missing = sorted(
            {int(lg["blockNumber"], 16) for lg in logs
             if "blockTimestamp" not in lg and self._watched_transfer(lg)} - headers.keys()
        )
        if missing:
            for b in await self.rpc.get_blocks(missing, full=False):
                h = Header.of(b)
                headers[h.number] = h
        with_logs = {int(lg["blockNumber"], 16) for lg in logs}
        suspect = [
            h for n, h in headers.items()
            if start <= n <= end and n > tip.number - self.track and n not in with_logs
            and self._bloom_may_hold(h.bloom, flt)
        ]
        if not suspect:
            return logs
        more = await asyncio.gather(*(
            self.rpc.get_logs_by_hash(h.hash, list(flt[0]), topics)
            for h in suspect for topics in self._topic_lists(flt)
        ))
        found = [lg for part in more for lg in part]
        if not found:
            return logs
        log.info("%s: eth_getLogs missed %d logs in blocks %s (a backend behind the head);"
                 " taken by block hash", self.network, len(found),
                 sorted({int(lg["blockNumber"], 16) for lg in found}),
                 extra={"network": self.network})
        seen = {(lg["transactionHash"], lg["logIndex"]) for lg in logs}
        out = list(logs)
        for lg in found:
            if (lg["transactionHash"], lg["logIndex"]) not in seen:
                seen.add((lg["transactionHash"], lg["logIndex"]))
                out.append(lg)
        return out

    def _bloom_may_hold(self, bloom: str | None, flt: _LogFilter) -> bool:
        """Whether a block's logsBloom may hold a Transfer of a watched token (to a watched
        recipient, when the filter names them). No bloom: assume it may."""
        if not bloom:
            return True
        value = int(bloom, 16)
        if not _bloom_may_hold_any(value, (TRANSFER_TOPIC,)):
            return False
        if not _bloom_may_hold_any(value, flt[0]):
            return False
        topics = flt[1]
        if len(topics) < 3:
            return True
        return _bloom_may_hold_any(value, topics[2])

    def _watched_transfer(self, lg: dict[str, Any]) -> tuple[str, str, int] | None:
        """(asset symbol, recipient, amount) of a Transfer log of a configured token to a
        watched address with a non-zero amount (zero transfers never count: address
        poisoning spam); None for any other log."""
        topics = lg.get("topics") or []
        if lg.get("removed") or len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
            return None
        symbol = self.index.symbol_for_token(lg["address"])
        to = _topic_address(topics[2])
        if symbol is None or not self.index.is_watched(symbol, to):
            return None
        amount = _log_amount(lg)
        return (symbol, to, amount) if amount > 0 else None

    def _token_transfers(
        self, logs: list[dict[str, Any]], headers: dict[int, Header], tip: Header
    ) -> list[Transfer]:
        """Transfers of the matching logs. A log's time is its header's when the header was
        read (every recent block, every block whose logs lack `blockTimestamp`), else its
        `blockTimestamp`: a block deeper than `track` below the head is deeper than any
        reorg, and the range is linked to the stored chain at both ends."""
        out: list[Transfer] = []
        recent = tip.number - self.track
        for lg in logs:
            found = self._watched_transfer(lg)
            if found is None:
                continue
            symbol, to, amount = found
            block = int(lg["blockNumber"], 16)
            h = headers.get(block)
            if h is not None:
                if h.hash != lg["blockHash"]:
                    raise ChainMoved(f"a log of block {block} is from another chain")
                timestamp = h.timestamp
            elif block > recent or "blockTimestamp" not in lg:
                raise ChainMoved(f"no header for block {block} of a log")
            else:
                timestamp = int(lg["blockTimestamp"], 16)
            out.append(self._route(
                symbol, lg["transactionHash"], int(lg["logIndex"], 16),
                _topic_address(lg["topics"][1]), to, amount, block, lg["blockHash"], timestamp,
            ))
        return out

    async def _native_transfers(self, blocks: list[dict[str, Any]]) -> list[Transfer]:
        symbol = self.index.native_symbol
        assert symbol is not None
        found: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for b in blocks:
            for tx in b.get("transactions") or []:
                to = tx.get("to")
                if to and int(tx.get("value") or "0x0", 16) > 0 and self.index.is_watched(
                    symbol, to
                ):
                    found.append((b, tx))
        if not found:
            return []
        receipts = await self._receipts(found)
        out = []
        for (b, tx), receipt in zip(found, receipts, strict=True):
            if receipt is None or receipt.get("blockHash", b["hash"]) != b["hash"]:
                raise ChainMoved(f"the receipt of {tx['hash']} is not in block {b['hash']}")
            if receipt.get("status") != "0x1":
                continue  # reverted: nothing arrived
            out.append(self._route(
                symbol, tx["hash"], None, tx["from"], tx["to"], int(tx["value"], 16),
                int(b["number"], 16), b["hash"], int(b["timestamp"], 16),
            ))
        return out

    async def _internal_transfers(self, blocks: list[dict[str, Any]]) -> list[Transfer]:
        """Native value that contracts' calls sent to watched addresses, from the traces of
        the range's blocks that hold transactions. The traces must be of the blocks read:
        every traced transaction is one of the block's, and a block with transactions has
        traces (a backend without the block answers none); else the range is read again."""
        symbol = self.index.native_symbol
        assert symbol is not None
        busy = [b for b in blocks if b.get("transactions")]
        if not busy:
            return []
        mode = self.cfg.internal_transfers
        answers = await self.rpc.trace_blocks([int(b["number"], 16) for b in busy], mode)
        out = []
        for b, answer in zip(busy, answers, strict=True):
            if not isinstance(answer, list) or not answer:
                raise ChainMoved(f"no traces of block {int(b['number'], 16)} yet")
            txs = {str(tx["hash"]).lower() for tx in b["transactions"]}
            if mode == "trace_block":
                if any(isinstance(t, dict) and t.get("blockHash") not in (None, b["hash"])
                       for t in answer):
                    raise ChainMoved(f"traces of another block {int(b['number'], 16)}")
                traced = traces.tx_hashes_of_trace_block(answer)
                found = traces.from_trace_block(answer)
            else:
                traced = traces.tx_hashes_of_call_tracer(answer)
                found = traces.from_call_tracer(answer)
            if not traced <= txs:
                raise ChainMoved(f"traces of another block {int(b['number'], 16)}")
            for v in found:
                if self.index.is_watched(symbol, v.to):
                    t = self._route(symbol, v.tx_hash, None, v.sender, v.to, v.value,
                                    int(b["number"], 16), b["hash"], int(b["timestamp"], 16))
                    t.trace = v.trace
                    out.append(t)
        return out

    async def _receipts(
        self, found: list[tuple[dict[str, Any], dict[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        """The receipts of these (block, tx) pairs: one `eth_getBlockReceipts` per block
        (by hash: the block the transaction was read in) where the node has the method, else
        one `eth_getTransactionReceipt` each. A node without the method is asked that way
        from then on."""
        if self._block_receipts:
            hashes = list(dict.fromkeys(b["hash"] for b, _ in found))
            try:
                per_block = await self.rpc.get_blocks_receipts(hashes)
            except RpcFatal as exc:
                self._block_receipts = False
                log.info("%s: eth_getBlockReceipts refused (%s): receipts are asked per "
                         "transaction", self.network, exc, extra={"network": self.network})
            else:
                by_tx: dict[str, dict[str, Any]] = {}
                for block_hash, receipts in zip(hashes, per_block, strict=True):
                    if receipts is None:
                        raise ChainMoved(f"the node has no receipts of block {block_hash}")
                    for r in receipts:
                        by_tx[str(r.get("transactionHash", "")).lower()] = r
                return [by_tx.get(tx["hash"].lower()) for _, tx in found]
        return await self.rpc.get_receipts([tx["hash"] for _, tx in found])

    def _route(
        self, symbol: str, tx_hash: str, log_index: int | None, sender: str, to: str,
        amount: int, block: int, block_hash: str, timestamp: int,
    ) -> Transfer:
        route, invoice_id = self.index.route(symbol, to, amount, timestamp)
        return Transfer(
            network=self.network,
            asset=symbol,
            tx_hash=tx_hash,
            log_index=log_index,
            from_addr=checksum_address(sender),
            to_addr=checksum_address(to),
            amount=amount,
            block=block,
            block_hash=block_hash,
            timestamp=timestamp,
            invoice_id=invoice_id,
            kind=Route(route).value,
        )

    # ------------------------------------------------------------------ reorgs

    async def _find_ancestor(self, first: Header) -> int:
        """The newest stored block still on the new chain: walk `first`'s parents by hash
        (immutable, so a lagging backend cannot mislead) down to a height whose stored hash
        is that parent."""
        oldest = min(self._hashes) if self._hashes else first.number - 1
        cur = first
        while cur.number - 1 >= oldest:
            stored = self._hashes.get(cur.number - 1)
            if stored is not None and stored[0] == cur.parent:
                return cur.number - 1
            parent = await self.rpc.get_block_by_hash(cur.parent, False)
            if parent is None:
                raise ChainMoved(f"the node does not have block {cur.parent} yet")
            cur = Header.of(parent)
        log.error(
            "%s: reorg deeper than the %d blocks kept; rescanning from block %d",
            self.network, self.keep, oldest, extra={"network": self.network},
        )
        return max(0, oldest - 1)

    async def _handle_reorg(self, first: Header) -> None:
        """Undo everything above the common ancestor and let the next step rescan."""
        assert self.scanned is not None
        self._cancel_prefetch()
        ancestor = await self._find_ancestor(first)
        if ancestor >= self.scanned:
            return  # the chain below the cursor is intact after all
        depth = self.scanned - ancestor
        log.warning(
            "%s: reorg: blocks above %d replaced (depth %d)", self.network, ancestor, depth,
            extra={"network": self.network, "block": ancestor},
        )
        outcome = await self._commit(
            self.ledger.undo_above, self.network, ancestor, self.head or ancestor, timeutil.now()
        )
        for k in [k for k in self._hashes if k > ancestor]:
            del self._hashes[k]
        self.scanned = ancestor
        if self.metrics is not None:
            self.metrics.reorgs.labels(self.network).inc()
        self.on_outcome(outcome)

    # ------------------------------------------------------------------ websocket heads

    def _announce(self, data: str | bytes) -> None:
        """Keep the newest message of the socket; it is read only if it is the one
        message since the last pass (a backlog after a pause costs no parsing)."""
        self._announced = data
        self._announcements += 1

    async def _follow_ws(self) -> None:
        """Wake the poller on every `newHeads`; polling goes on if the socket drops."""
        backoff = 1.0
        while not self._stopping:
            for url in self.cfg.ws:
                try:
                    async with aiohttp.ClientSession() as session, session.ws_connect(
                        url, heartbeat=30, max_msg_size=4 * 2**20
                    ) as ws:
                        await ws.send_bytes(orjson.dumps({
                            "jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                            "params": ["newHeads"],
                        }))
                        backoff = 1.0
                        async for msg in ws:
                            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                                self._announce(msg.data)
                                self._wake.set()
                            elif msg.type == aiohttp.WSMsgType.ERROR:
                                break
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self._note_error(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
