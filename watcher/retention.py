"""Retention: old housekeeping rows pruned in small batches (config `[retention]`).

Three kinds, each aged by the host's clock against the row's own stored time (this is
housekeeping, never a decision about money):

- `attempts`: callback attempts, by `at`. Each delivery keeps its state, attempt count and
  last error in `deliveries`.
- `event_bodies`: the body of an event (by `created_at`) whose delivery is `delivered`, or
  that has none, is replaced by `stub_body` and `pruned_at` is set. The row, its id, name,
  status and cause stay (`GET /v1/invoices/{id}/events`, the dashboard, a channel's
  `since`); a channel replay sends the stub. The event of a pending or failed delivery
  keeps its body (it may still be sent or redelivered); a pruned one cannot be redelivered
  (`outbox.redeliver` raises `Gone`, 410).
- `unmatched_transfers`: transfers of kind `unmatched` (no invoice), by `seen_at`. Payments
  and late payments are never touched.

Each batch is one statement over at most `batch` rows of one table in a transaction of its
own, and the daemon runs each batch as its own `Store.run` call, so the writer is never
held for long: other writes queue between batches. The statements that delete or rewrite
check every condition themselves. Migration 0014 adds the indexes that find each batch
without scanning a table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from watcher.storage.base import Db
from watcher.storage.store import transaction
from watcher.timeutil import iso

if TYPE_CHECKING:
    from watcher.config import RetentionConfig
    from watcher.metrics import Metrics
    from watcher.storage.store import Store

log = logging.getLogger("watcher.retention")

KINDS = ("attempts", "event_bodies", "unmatched_transfers")
#: Longest a housekeeping tick spends on batches; a larger backlog continues at the next
#: tick (seconds later) instead of waiting for the next `interval`.
TICK_BUDGET = 2.0
#: The first pass after start waits this long (the daemon has catching up to do first).
START_DELAY = 60.0

#: Keyset position in `events_unpruned` order: (created_at, seq).
EventKey = tuple[int, int]
_FIRST_EVENT: EventKey = (-(2**62), 0)


def stub_body(event_id: str, event: str, created_at: int, invoice_id: str) -> bytes:
    """What a pruned event's body becomes: its id, name, time and invoice, and
    `"pruned": true` (no `data`)."""
    return orjson.dumps({
        "id": event_id, "event": event, "createdAt": iso(created_at),
        "invoiceId": invoice_id, "pruned": True,
    })


# ---------------------------------------------------------------- one batch each


# The statements that write. Each picks its batch through its index (migration 0014) and
# checks the conditions again on the rows it writes; the unary `+` (`|| ''` on text, which
# PostgreSQL's `+` does not take) keeps SQLite's planner from driving those checks through
# an index (which would visit every row of the kind, not the batch): the rows are found by
# rowid.

DELETE_ATTEMPTS = (
    "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts INDEXED BY attempts_at "
    "WHERE at < ? ORDER BY at LIMIT ?) AND +at < ?"
)

#: An event whose body must stay: one of its deliveries is not delivered (pending: still
#: to be sent; failed: may be redelivered).
_UNDELIVERED = (
    "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id "
    "AND d.state != 'delivered')"
)

SELECT_EVENTS = (
    "SELECT seq, id, event, created_at, invoice_id FROM events "
    "INDEXED BY events_unpruned WHERE pruned_at IS NULL AND created_at < ? "
    f"AND (created_at, seq) > (?, ?) AND NOT {_UNDELIVERED} "
    "ORDER BY created_at, seq LIMIT ?"
)

UPDATE_EVENT = (
    "UPDATE events SET body = ?, pruned_at = ? WHERE seq = ? AND +pruned_at IS NULL "
    f"AND +created_at < ? AND NOT {_UNDELIVERED}"
)

DELETE_UNMATCHED = (
    "DELETE FROM transfers WHERE rowid IN (SELECT rowid FROM transfers "
    "INDEXED BY transfers_unmatched_seen WHERE kind = 'unmatched' "
    "AND invoice_id IS NULL AND seen_at < ? ORDER BY seen_at LIMIT ?) "
    "AND kind || '' = 'unmatched' AND invoice_id || '' IS NULL AND +seen_at < ?"
)


def prune_attempts(db: Db, cutoff: float, batch: int) -> tuple[int, int]:
    """Delete up to `batch` attempts made before `cutoff` (oldest first), in one
    transaction; (rows picked, rows deleted)."""
    with transaction(db):
        cur = db.execute(DELETE_ATTEMPTS, [cutoff, batch, cutoff])
        return cur.rowcount, cur.rowcount


def prune_event_bodies(
    db: Db, cutoff: int, batch: int, now: int, after: EventKey = _FIRST_EVENT
) -> tuple[int, int, EventKey | None]:
    """Replace the bodies of up to `batch` events created before `cutoff` (oldest first,
    after `after` in (created_at, seq) order) whose deliveries are all delivered, or that
    have none, by their stub; one transaction. (rows picked, rows changed, the key of the
    last row picked: the next batch starts after it, so the events kept for their
    deliveries are passed over once per pass, not once per batch)."""
    with transaction(db):
        rows = db.execute(SELECT_EVENTS, [cutoff, after[0], after[1], batch]).fetchall()
        if not rows:
            return 0, 0, None
        cur = db.executemany(
            UPDATE_EVENT,
            [(stub_body(eid, event, created, inv), now, seq, cutoff)
             for seq, eid, event, created, inv in rows],
        )
        last = rows[-1]
        return len(rows), cur.rowcount, (int(last[3]), int(last[0]))


def prune_unmatched_transfers(db: Db, cutoff: int, batch: int) -> tuple[int, int]:
    """Delete up to `batch` unmatched transfers first seen before `cutoff` (oldest first),
    in one transaction; (rows picked, rows deleted). Only kind `unmatched` without an
    invoice: payments and late payments are never deleted."""
    with transaction(db):
        cur = db.execute(DELETE_UNMATCHED, [cutoff, batch, cutoff])
        return cur.rowcount, cur.rowcount


# ---------------------------------------------------------------- a pass


@dataclass(frozen=True, slots=True)
class Ages:
    """Seconds per kind (0: kept forever) and rows per batch."""

    attempts: int
    event_bodies: int
    unmatched_transfers: int
    batch: int

    @classmethod
    def of(cls, cfg: RetentionConfig) -> Ages:
        return cls(cfg.attempts, cfg.event_bodies, cfg.unmatched_transfers, cfg.batch)

    def age(self, kind: str) -> int:
        return int(getattr(self, kind))

    @property
    def enabled(self) -> bool:
        return any(self.age(k) > 0 for k in KINDS)


class Pass:
    """One pass over every enabled kind against a fixed `now`: `step(db)` runs one batch of
    the next kind still to do (round robin), until `done`. `pruned` counts rows per kind."""

    def __init__(self, ages: Ages, now: float) -> None:
        self.ages = ages
        self.now = now
        self.todo = [k for k in KINDS if ages.age(k) > 0]
        self.pruned = dict.fromkeys(KINDS, 0)
        self.batches = 0
        self._next = 0
        self._after = _FIRST_EVENT

    @property
    def done(self) -> bool:
        return not self.todo

    def step(self, db: Db) -> tuple[str, int]:
        """One batch of one kind: (kind, rows pruned)."""
        self._next %= len(self.todo)
        kind = self.todo[self._next]
        cutoff = self.now - self.ages.age(kind)
        batch = self.ages.batch
        if kind == "attempts":
            picked, changed = prune_attempts(db, cutoff, batch)
        elif kind == "event_bodies":
            picked, changed, last = prune_event_bodies(
                db, int(cutoff), batch, int(self.now), self._after
            )
            if last is not None:
                self._after = last
        else:
            picked, changed = prune_unmatched_transfers(db, int(cutoff), batch)
        self.batches += 1
        self.pruned[kind] += changed
        if picked < batch:
            self.todo.remove(kind)  # the next kind moves into this slot
        else:
            self._next += 1
        return kind, changed


def prune_all(db: Db, ages: Ages, now: float) -> Pass:
    """A whole pass on this thread (tools, tests, the bench); the daemon uses `Retention`."""
    p = Pass(ages, now)
    while not p.done:
        p.step(db)
    return p


def describe(pruned: dict[str, int]) -> str:
    return (f"{pruned['attempts']} attempts, {pruned['event_bodies']} event bodies, "
            f"{pruned['unmatched_transfers']} unmatched transfers")


class Retention:
    """The daemon's side: `await tick(store)` from the housekeeping loop. A pass starts
    `START_DELAY` after start and then every `interval`; each tick runs batches for at most
    `budget` seconds, each batch its own `Store.run` (other writes go in between), and a
    pass that is not done goes on at the next tick."""

    def __init__(
        self,
        cfg: RetentionConfig,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        budget: float = TICK_BUDGET,
        start_delay: float = START_DELAY,
    ) -> None:
        self.ages = Ages.of(cfg)
        self.interval = float(cfg.interval)
        self.metrics = metrics
        self.clock = clock
        self.budget = budget
        self.next_at = clock() + start_delay
        self.current: Pass | None = None
        self._started = 0.0

    async def tick(self, store: Store) -> Pass | None:
        """Run what is due; the pass when one finished in this tick, else None."""
        if not self.ages.enabled:
            return None
        if self.current is None:
            now = self.clock()
            if now < self.next_at:
                return None
            self.current = Pass(self.ages, now)
            self._started = time.monotonic()
        p = self.current
        until = time.monotonic() + self.budget
        while not p.done:  # at least one batch per tick, however small the budget
            kind, changed = await store.run(p.step)
            if changed and self.metrics is not None:
                self.metrics.retention_pruned.labels(kind=kind).inc(changed)
            if time.monotonic() >= until:
                break
        if not p.done:
            return None
        self.current = None
        self.next_at = p.now + self.interval
        seconds = time.monotonic() - self._started
        if any(p.pruned.values()):
            log.info("retention: pruned %s in %d batches, %.1f s", describe(p.pruned),
                     p.batches, seconds, extra={f"pruned_{k}": v for k, v in p.pruned.items()})
        else:
            log.debug("retention: nothing to prune")
        return p
