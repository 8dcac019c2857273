"""The callback sender: reads the outbox, POSTs signed callbacks, records every attempt.

One long-running task (`CallbackSender.run`). It talks to the database only through
`Store.run` (outbox.py holds the SQL) and to receivers through its own aiohttp session, so
a slow or dead receiver never slows chain scanning.

- Each event's body was frozen at commit: it is POSTed byte for byte, with headers from
  `signing.headers` (a fresh timestamp and signatures per attempt: `X-Watcher-Signature` and
  the Standard Webhooks `webhook-signature`; `X-Watcher-Delivery` and `webhook-id` are the
  event id, the same on every retry).
- Success is any 2xx within `timeout`. Connection errors, timeouts, 408, 425, 429 and 5xx are
  retried on `schedule` (stored as `next_attempt_at`, so a restart keeps it), honouring
  `Retry-After`; after `max_age` seconds of retrying the delivery is `failed`. Any other
  status (other 4xx, and 3xx: redirects are not followed) fails it at once.
- Events of one invoice go out in order, one at a time; up to `concurrency` invoices are
  sent at once.
- Delivery is at least once: a crash between a receiver's 2xx and the commit of the attempt
  sends that event again after restart. Receivers dedupe on `X-Watcher-Delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from watcher import outbox, signing
from watcher.outbox import Outcome
from watcher.storage.base import Db
from watcher.storage.store import Store, transaction

log = logging.getLogger(__name__)

#: Backoff between attempts (seconds): about 10 s, 30 s, 1 m, 5 m, 10 m, 30 m, then hourly.
DEFAULT_SCHEDULE: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600)
#: HTTP statuses (besides 5xx) worth another try.
RETRY_STATUSES = frozenset({408, 425, 429})
#: Longest wait a `Retry-After` header can ask for.
MAX_RETRY_AFTER = 3600.0
#: Up to this fraction of each delay is added at random, so retries do not come in waves.
JITTER = 0.1
#: Under load, the queue depth gauge is refreshed at most this often (seconds).
DEPTH_INTERVAL = 1.0
#: How much of an error answer's body is kept in the attempt's error text.
ERROR_BODY_BYTES = 200

_DELIVERED: Outcome = "delivered"
_RETRY: Outcome = "retry"
_FAILED: Outcome = "failed"


class _Counter(Protocol):
    def labels(self, *args: str, **kwargs: str) -> Any: ...


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class CallbackMetrics(Protocol):
    """What the sender needs of `watcher.metrics.Metrics`."""

    @property
    def callbacks(self) -> _Counter: ...

    @property
    def callback_queue_depth(self) -> _Gauge: ...


@dataclass(frozen=True, slots=True)
class _Result:
    """What one HTTP attempt gave."""

    status: int | None  # None: no HTTP answer
    error: str | None = None
    retry_after: float | None = None  # seconds, from a Retry-After header
    permanent: bool = False  # no point retrying (an invalid URL)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


@dataclass(frozen=True, slots=True)
class _Done:
    """A finished attempt, waiting to be recorded."""

    row: dict[str, Any]
    at: float
    result: _Result
    duration_ms: int
    outcome: Outcome
    next_at: float | None


def _cycle(
    db: Db,
    done: Sequence[_Done],
    now: float,
    limit: int,
    busy: Collection[str],
    depth: bool,
    lease: float | None = None,
) -> tuple[list[dict[str, Any]], float | None, int | None]:
    """One trip to the writer thread: record the finished attempts (one transaction), then
    the due rows (claimed for `lease` seconds when instances share the outbox); when the
    next one is due (only if fewer than `limit` were due: otherwise a finishing send wakes
    the sender); the queue depth if asked."""
    # Pipelined (PostgreSQL): a round trip where the due rows are read and one at the end.
    # With claims (instances sharing PostgreSQL) everything is one transaction: one commit.
    found: dict[str, Any] = {"next": None, "depth": None}
    with db.pipeline(), transaction(db) if lease is not None else contextlib.nullcontext():
        if done:
            outbox.record_attempts(db, [
                (d.row["event_id"], d.at, d.result.status, d.result.error, d.duration_ms,
                 d.outcome, d.next_at) for d in done])
        rows = (outbox.claim(db, now, limit, busy, lease) if lease is not None
                else outbox.due(db, now, limit, busy))
        if len(rows) < limit:
            outbox.next_due_later(db, set(busy) | {r["invoice_id"] for r in rows},
                                  lambda at: found.update(next=at))
        if depth:
            outbox.queue_depth_later(db, lambda n: found.update(depth=n))
    return rows, found["next"], found["depth"]


class CallbackSender:
    """Delivers the outbox. `run()` is the task; `wake()` after a commit that wrote outbox
    rows; `stop()` to finish.

    An invoice holds one of the `concurrency` slots from the start of its send until the
    attempt is recorded. Finished attempts are recorded in batches, in the same trip to the
    writer thread as the next poll of the outbox.
    """

    def __init__(
        self,
        store: Store,
        *,
        secret: str | None,
        timeout: float,
        max_age: int,
        concurrency: int = 8,
        metrics: CallbackMetrics | None = None,
        clock: Callable[[], float] = time.time,
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        poll_interval: float = 2.0,
        grace: float = 3.0,
        lease: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not schedule:
            raise ValueError("schedule must not be empty")
        if secret:
            try:
                signing.webhook_key(secret)  # fail here, not at every attempt
            except ValueError as exc:
                raise ValueError(f"secret {exc}") from None
        self.store = store
        self.secret = secret or None
        self.timeout = timeout
        self.max_age = max_age
        self.concurrency = concurrency
        self.metrics = metrics
        self.clock = clock
        self.schedule = tuple(float(s) for s in schedule)
        #: Longest sleep between polls: picks up rows written by another process (the CLI).
        self.poll_interval = poll_interval
        #: How long `stop()` lets in-flight sends finish before cancelling them.
        self.grace = grace
        #: Instances sharing the outbox (PostgreSQL): how long a claimed delivery stays
        #: this instance's (`outbox.claim`); None: one instance, no claims.
        self.lease = lease
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._running = False
        self._done = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}  # invoice id -> its send
        self._finished: list[_Done] = []  # attempts not recorded yet (their invoice is busy)
        self._session: aiohttp.ClientSession | None = None
        self._depth_at = -DEPTH_INTERVAL  # monotonic time of the last queue depth update

    # ---------------------------------------------------------------- control

    def wake(self) -> None:
        """New outbox rows were committed: look for due deliveries now."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop taking work; let in-flight sends finish (cancelled after `grace`), record
        what they did, close the session."""
        self._stopping = True
        self._wakeup.set()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """Deliver until `stop()` (or cancellation)."""
        if self._running:
            raise RuntimeError("CallbackSender.run is already running")
        self._running = True
        self._done.clear()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,
        )
        try:
            while not self._stopping:
                self._wakeup.clear()
                delay = await self._step()
                if self._stopping:
                    break
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), delay)
                else:
                    await asyncio.sleep(0)
        finally:
            await self._drain()
            self._running = False
            self._done.set()

    async def _step(self, take: bool = True) -> float:
        """Record finished attempts, start sends for due deliveries (if `take`); return how
        long to sleep before looking again."""
        done, self._finished = self._finished, []
        recorded = {d.row["invoice_id"] for d in done}
        busy = [i for i in self._busy if i not in recorded]
        free = self.concurrency - len(busy) if take else 0
        now = time.monotonic()
        want_depth = self.metrics is not None and (
            free == self.concurrency or now - self._depth_at >= DEPTH_INTERVAL
        )
        try:
            rows, next_at, depth = await self.store.run(
                _cycle, done, self.clock(), free, busy, want_depth, self.lease
            )
        except Exception as exc:
            log.error("callbacks: cannot use the outbox: %s", exc)
            self._finished[:0] = done  # kept (their invoices stay busy): recorded next time
            return min(1.0, self.poll_interval)
        for d in done:
            self._busy.pop(d.row["invoice_id"], None)
            self._report(d)
        if self.metrics is not None and depth is not None:
            self.metrics.callback_queue_depth.set(depth)
            self._depth_at = now
        for row in rows:
            task = asyncio.create_task(self._deliver(row), name=f"callback-{row['event_id']}")
            self._busy[row["invoice_id"]] = task
        if len(rows) >= free or next_at is None:
            return self.poll_interval  # a finishing send or wake() ends the sleep early
        return max(0.0, min(next_at - self.clock(), self.poll_interval))

    async def _drain(self) -> None:
        tasks = [t for t in self._busy.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.grace)
            for task in pending:
                task.cancel()  # not recorded: sent again after restart (at least once)
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._finished:
            await self._step(take=False)
        self._busy.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _report(self, d: _Done) -> None:
        if self.metrics is not None:
            self.metrics.callbacks.labels(event=d.row["event"], outcome=d.outcome).inc()
        if d.outcome != _DELIVERED:
            self._log_failure(d.row, d.result, d.outcome, d.next_at, d.at)

    # ---------------------------------------------------------------- one attempt

    async def _deliver(self, row: dict[str, Any]) -> None:
        try:
            started = time.monotonic()
            result = await self._post(row)
            duration_ms = int((time.monotonic() - started) * 1000)
            at = self.clock()
            outcome, next_at = self._decide(row, result, at)
            self._finished.append(_Done(row, at, result, duration_ms, outcome, next_at))
        except asyncio.CancelledError:
            self._busy.pop(row["invoice_id"], None)
            raise
        except Exception:
            # Not recorded: the row stays pending and due. Pause before freeing the invoice
            # so that a bug here does not turn into a flood of POSTs.
            log.exception(
                "callbacks: attempt for %s failed unexpectedly", row["event_id"],
                extra={"event_id": row["event_id"], "invoice": row["invoice_id"]},
            )  # fmt: skip
            await asyncio.sleep(1.0)
            self._busy.pop(row["invoice_id"], None)
        finally:
            self._wakeup.set()

    async def _post(self, row: dict[str, Any]) -> _Result:
        assert self._session is not None
        body: bytes = row["body"]
        url: str = row["url"]
        hdrs = signing.headers(row["event"], row["event_id"], self.secret, body, int(self.clock()))
        try:
            async with self._session.post(
                url, data=body, headers=hdrs, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    # The status is the answer; reading the body lets the connection be
                    # reused, and a body that stalls does not undo the success.
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        await resp.content.read(64 * 1024)
                    return _Result(resp.status, None)
                snippet = b""
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    snippet = await resp.content.read(ERROR_BODY_BYTES)
                text = " ".join(snippet.decode("utf-8", "replace").split())
                error = f"HTTP {resp.status}" + (f": {text}" if text else "")
                if 300 <= resp.status < 400:
                    error += " (redirects are not followed)"
                return _Result(
                    resp.status,
                    error,
                    parse_retry_after(resp.headers.get("Retry-After"), self.clock()),
                )
        except TimeoutError:
            return _Result(None, f"timeout: no answer within {self.timeout:g} s")
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            return _Result(None, f"invalid URL: {exc}", permanent=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            text = str(exc).replace(url, _host(url))
            return _Result(None, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

    def _decide(
        self, row: dict[str, Any], result: _Result, now: float
    ) -> tuple[Outcome, float | None]:
        status = result.status
        if status is not None and 200 <= status < 300:
            return _DELIVERED, None
        if status is None:
            retryable = not result.permanent
        else:
            retryable = status in RETRY_STATUSES or status >= 500
        deadline = float(row["window_start"]) + self.max_age
        if not retryable or now >= deadline:
            return _FAILED, None
        step = self.schedule[min(int(row["window_attempts"]), len(self.schedule) - 1)]
        delay = step * (1 + random.uniform(0, JITTER))
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
        # The last try is made at the deadline rather than never.
        return _RETRY, min(now + delay, deadline)

    def _log_failure(
        self,
        row: dict[str, Any],
        result: _Result,
        outcome: Outcome,
        next_at: float | None,
        now: float,
    ) -> None:
        host = _host(row["url"])
        extra = {
            "event_id": row["event_id"],
            "invoice": row["invoice_id"],
            "host": host,
            "http_status": result.status,
            "outcome": outcome,
        }
        if outcome == _RETRY and next_at is not None:
            log.warning(
                "callback %s for invoice %s to %s failed (%s), retry in %.1f s",
                row["event_id"], row["invoice_id"], host, result.error, next_at - now,
                extra=extra,
            )  # fmt: skip
        else:
            log.error(
                "callback %s for invoice %s to %s failed (%s), giving up after %d attempts",
                row["event_id"], row["invoice_id"], host, result.error,
                int(row["attempts"]) + 1, extra=extra,
            )  # fmt: skip
