"""The live hub: committed events fanned out to WebSocket connections.

The events table is the source: `pump` reads the rows committed after the last one it saw
(`seq` order, which is commit order) whenever the daemon reports a commit, and at least
every `tick` seconds, so an event written by another process (the CLI) reaches the sockets
too. A connection holds a bounded queue; one that falls behind is cut off and never slows
the writer or a follower: `publish` only ever does `put_nowait`.

Subscriptions are keyed ("invoice", id), ("client", clientId) or ("all", ""). A new
subscription may ask for the events after a given one first (`since`): while that replay
is read from the database, live events for it wait in the subscription, then follow the
replay, and none is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from watcher.errors import StoreError
from watcher.logs import Throttle
from watcher.storage.base import Db
from watcher.storage.rows import last_event_seq
from watcher.storage.store import Store

log = logging.getLogger(__name__)

Key = tuple[str, str]
#: Most specific first: an event reaches a connection once, named by the first that matches.
CHANNELS = ("invoice", "client", "all")
REPLAY_PAGE = 500
TICK = 1.0


@dataclass(slots=True)
class Message:
    """One committed event: its row position, ids, the callback body as stored (a JSON
    object, parsed only if a socket needs its fields) and its invoice's clientId."""

    seq: int
    event_id: str
    invoice_id: str
    raw: bytes
    client_id: str | None = None
    parsed: dict[str, Any] | None = None
    _encoded: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of_invoice(cls, seq: int, tag: str, invoice: dict[str, Any] | None) -> Message:
        """A message made here, not read from the events table (the checkout's first view
        and recounts): it carries the invoice object (or nothing) and is never encoded."""
        data = {} if invoice is None else {"data": invoice}
        inv_id = "" if invoice is None else str(invoice["id"])
        return cls(seq, tag, inv_id, b"", parsed=data)

    @property
    def body(self) -> dict[str, Any]:
        if self.parsed is None:
            self.parsed = orjson.loads(self.raw)
        return self.parsed

    def routes(self) -> list[Key]:
        out: list[Key] = [("invoice", self.invoice_id)]
        if self.client_id is not None:
            out.append(("client", self.client_id))
        out.append(("all", ""))
        return out

    def encoded(self, channel: str) -> bytes:
        """The stored callback body plus `"channel"`, made once per channel for every
        socket: the body is an orjson object, so the member goes before its closing brace
        without parsing it."""
        out = self._encoded.get(channel)
        if out is None:
            out = self.raw[:-1] + b',"channel":' + orjson.dumps(channel) + b"}"
            self._encoded[channel] = out
        return out


def message_from_row(row: tuple[Any, ...]) -> Message:
    seq, event_id, invoice_id, body, client_id = row
    return Message(seq, event_id, invoice_id, bytes(body), client_id)


class Connection:
    """One socket's side of the hub: what it subscribed to and what waits to be sent.

    The socket's writer drains `queue`: hub messages, raw replies (bytes), replay jobs
    (anything else the socket layer queues) and, last, None. When it overflows the client
    has fallen behind: `cut` is set and the end mark queued, so the writer closes it."""

    def __init__(self, listener: str, queue_size: int) -> None:
        self.listener = listener
        self.queue_size = queue_size
        self.queue: asyncio.Queue[Any] = asyncio.Queue(queue_size + 1)  # +1: the end mark
        self.keys: set[Key] = set()
        #: Subscriptions still replaying: live messages wait here until the replay is sent.
        self.held: dict[Key, list[Message]] = {}
        #: Per subscription, the newest event its replay (or first view) covered: an event
        #: at or below it that the hub publishes later is not sent again.
        self.floor: dict[Key, int] = {}
        self.cut = False

    def push(self, msg: Message) -> None:
        self._put(msg)

    def push_raw(self, raw: bytes) -> None:
        self._put(raw)

    def push_replay(self, job: object) -> None:
        self._put(job)

    def hold(self, key: Key, msg: Message) -> None:
        held = self.held[key]
        held.append(msg)
        if len(held) > self.queue_size:
            self._cut()

    def _put(self, item: object) -> None:
        if self.cut:
            return
        if self.queue.qsize() >= self.queue_size:
            self._cut()
            return
        self.queue.put_nowait(item)

    def _cut(self) -> None:
        if not self.cut:
            self.cut = True
            self.queue.put_nowait(None)  # the slot kept free for it


class Hub:
    """Fan-out of committed events. `run()` is the pump task; `wake()` after commits."""

    def __init__(
        self,
        store: Store,
        *,
        tick: float = TICK,
        head_source: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.store = store
        self.tick = tick
        #: The networks' newest heads (the ledger's view); checked on every wake and tick.
        self.head_source = head_source
        self._heads: dict[str, int] = {}
        self.seq: int | None = None  # newest event published (None until started)
        self._subs: dict[Key, set[Connection]] = {}
        self._wake = asyncio.Event()
        #: Per network, called with its new head (the checkout's sockets recount
        #: confirmations).
        self.head_listeners: dict[str, set[Callable[[int], None]]] = {}
        self._throttle = Throttle(60)

    # ------------------------------------------------------------------ feeding

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        """Begin after the newest event already committed: sockets get what follows."""
        self.seq = await self.store.read(last_event_seq)

    async def run(self) -> None:
        if self.seq is None:
            await self.start()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()
            try:
                await self.pump()
            except StoreError as exc:  # the database is away: publish when it is back
                self._throttle.log(log, logging.WARNING, "store", "hub: %s", exc)
                continue
            self._check_heads()

    def _check_heads(self) -> None:
        if self.head_source is None:
            return
        for network, head in self.head_source().items():
            if head and head != self._heads.get(network):
                self._heads[network] = head
                self.heads(network, head)

    async def pump(self) -> None:
        """Publish every event committed since the last pump, in commit order."""
        assert self.seq is not None, "Hub.start() first"
        while True:
            if not self._subs:  # nobody listens: only move the mark
                top = await self.store.read(last_event_seq)
                if not self._subs:  # still nobody (a subscriber may have come meanwhile)
                    self.seq = max(self.seq, top)
                    return
                continue
            rows = await self.store.read(_rows_after, self.seq, REPLAY_PAGE)
            for row in rows:
                msg = message_from_row(row)
                self.seq = msg.seq
                self.publish(msg)
            if len(rows) < REPLAY_PAGE:
                return

    def publish(self, msg: Message) -> None:
        reached: set[Connection] = set()
        for key in msg.routes():
            for conn in self._subs.get(key, ()):
                if conn in reached or msg.seq <= conn.floor.get(key, 0):
                    continue
                reached.add(conn)
                if key in conn.held:
                    conn.hold(key, msg)
                else:
                    conn.push(msg)

    def heads(self, network: str, head: int) -> None:
        """A network's head moved: tell the listeners (public views count confirmations)."""
        for listener in list(self.head_listeners.get(network, ())):
            listener(head)

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, conn: Connection, key: Key, *, hold: bool = False) -> int:
        """Add a subscription; with `hold`, live messages wait until `release`. Returns the
        newest published seq: a replay covers the events up to it."""
        if hold:
            conn.held[key] = []
        conn.keys.add(key)
        self._subs.setdefault(key, set()).add(conn)
        assert self.seq is not None, "Hub.start() first"
        return self.seq

    def release(self, conn: Connection, key: Key, after: int) -> None:
        """End a held subscription: push what waited, skipping seq <= `after` (replayed),
        and skip such events from now on too."""
        conn.floor[key] = after
        for msg in conn.held.pop(key, []):
            if msg.seq > after:
                conn.push(msg)

    async def committed_seq(self) -> int:
        """The newest event committed, whether or not the pump has published it yet."""
        assert self.seq is not None, "Hub.start() first"
        return max(await self.store.read(last_event_seq), self.seq)

    def unsubscribe(self, conn: Connection, key: Key) -> bool:
        if key not in conn.keys:
            return False
        conn.keys.discard(key)
        conn.held.pop(key, None)
        conn.floor.pop(key, None)
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._subs[key]
        return True

    def drop(self, conn: Connection) -> None:
        for key in list(conn.keys):
            self.unsubscribe(conn, key)

    async def replay(self, key: Key, since_seq: int, upto: int) -> list[Message]:
        """The events of `key` with since_seq < seq <= upto, oldest first."""
        out: list[Message] = []
        after = since_seq
        while True:
            rows = await self.store.read(_replay_rows, key, after, upto, REPLAY_PAGE)
            out.extend(message_from_row(r) for r in rows)
            if len(rows) < REPLAY_PAGE:
                return out
            after = rows[-1][0]

    async def event_seq(self, event_id: str) -> int | None:
        return await self.store.read(_event_seq, event_id)

    @property
    def subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())


# ---------------------------------------------------------------- database functions


_EVENT_ROWS = (
    "SELECT e.seq, e.id, e.invoice_id, e.body, i.client_id "
    "FROM events e LEFT JOIN invoices i ON i.id = e.invoice_id"
)


def _rows_after(db: Db, seq: int, limit: int) -> list[tuple[Any, ...]]:
    return list(
        db.execute(
            f"{_EVENT_ROWS} WHERE e.seq > ? ORDER BY e.seq LIMIT ?", [seq, limit]
        ).fetchall()
    )


def _replay_rows(
    db: Db, key: Key, after: int, upto: int, limit: int
) -> list[tuple[Any, ...]]:
    kind, value = key
    base = f"{_EVENT_ROWS} WHERE e.seq > ? AND e.seq <= ?"
    params: list[Any] = [after, upto]
    if kind == "invoice":
        base += " AND e.invoice_id = ?"
        params.append(value)
    elif kind == "client":
        base += " AND i.client_id = ?"
        params.append(value)
    return list(db.execute(base + " ORDER BY e.seq LIMIT ?", [*params, limit]).fetchall())


def _event_seq(db: Db, event_id: str) -> int | None:
    row = db.execute("SELECT seq FROM events WHERE id = ?", [event_id]).fetchone()
    return None if row is None else int(row[0])
