"""The callback sender against a real aiohttp receiver on 127.0.0.1, with outbox rows
written by the ledger into a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlite_utils import Database

from tests.integration.receiver import (
    Received,
    Receiver,
    Reply,
    create_invoices,
    event_ids,
    make_ledger,
)
from watcher import outbox
from watcher.callbacks import CallbackSender, parse_retry_after
from watcher.metrics import Metrics
from watcher.signing import verify_signature, verify_webhook
from watcher.storage.store import Store

SECRET = "whsec_aW50ZWdyYXRpb24tc2VjcmV0LXZhbHVl"  # a Standard Webhooks secret
FAST = (0.05, 0.1, 0.2, 0.3)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    st = await Store(tmp_path / "watcher.db").open()
    yield st
    await st.close()


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as receiver:
        yield receiver


@contextlib.asynccontextmanager
async def running(store: Store, **kwargs: Any) -> AsyncIterator[CallbackSender]:
    """A sender running as a task, with a short schedule; stopped on exit."""
    options: dict[str, Any] = {
        "secret": SECRET, "timeout": 2.0, "max_age": 3600, "schedule": FAST,
        "poll_interval": 0.5, "grace": 1.0,
    }  # fmt: skip
    options.update(kwargs)
    sender = CallbackSender(store, **options)
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        await sender.stop()
        await task


async def seed(
    store: Store, count: int, url: str, *, cancel: bool = False, now: int | None = None
) -> list[str]:
    stamp = int(time.time()) if now is None else now
    return await store.run(create_invoices, make_ledger(), count, url, stamp, cancel=cancel)


def _states(db: Database) -> dict[str, str]:
    return dict(db.execute("SELECT event_id, state FROM deliveries").fetchall())


async def wait_states(
    store: Store, done: Callable[[dict[str, str]], bool], timeout: float = 10
) -> dict[str, str]:
    """Poll the deliveries until `done(event id -> state)` holds."""
    async with asyncio.timeout(timeout):
        while True:
            states = await store.run(_states)
            if done(states):
                return states
            await asyncio.sleep(0.02)


def all_in(state: str) -> Callable[[dict[str, str]], bool]:
    return lambda states: bool(states) and all(s == state for s in states.values())


async def attempts(store: Store, event_id: str) -> list[dict[str, Any]]:
    return (await store.run(outbox.attempts_for, [event_id]))[event_id]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the request itself


async def test_signed_body_and_headers(store: Store, rx: Receiver) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    await seed(store, 1, rx.url)
    (evt,) = await store.run(event_ids)
    async with running(store, metrics=metrics):
        await wait_states(store, all_in("delivered"))
    (req,) = rx.requests
    body = (await store.run(lambda db: db.execute("SELECT body FROM events").fetchone()))[0]
    assert req.method == "POST" and req.path == "/hook"
    assert req.body == body  # the frozen body, byte for byte
    assert req.signature_ok is True and req.webhook_ok is True
    assert verify_signature(SECRET, req.headers, req.body)
    assert verify_webhook(SECRET, req.headers, req.body)
    assert req.headers["x-watcher-delivery"] == evt == req.json()["id"] == req.headers["webhook-id"]
    assert req.headers["webhook-timestamp"] == req.headers["x-watcher-timestamp"]
    assert req.headers["x-watcher-event"] == "invoice.created" == req.event
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("payment-watcher/")
    assert abs(int(req.headers["x-watcher-timestamp"]) - time.time()) < 5
    (attempt,) = await attempts(store, evt)
    assert attempt["status_code"] == 200 and attempt["error"] is None
    sample = registry.get_sample_value
    labels = {"event": "invoice.created", "outcome": "delivered"}
    assert sample("payment_watcher_callbacks_total", labels) == 1
    assert sample("payment_watcher_callback_queue_depth") == 0


async def test_no_signature_without_secret(store: Store) -> None:
    async with Receiver() as plain:
        await seed(store, 1, plain.url)
        async with running(store, secret=None):
            await wait_states(store, all_in("delivered"))
    (req,) = plain.requests
    assert "x-watcher-signature" not in req.headers and "webhook-signature" not in req.headers
    assert "x-watcher-timestamp" in req.headers and "webhook-timestamp" in req.headers


# ------------------------------------------------------------------ retries and failures


async def test_500_twice_then_200(
    store: Store, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    rx.script(500, Reply(503, body="down for maintenance"))
    (invoice,) = await seed(store, 1, rx.url + "?token=do-not-log")
    (evt,) = await store.run(event_ids)
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="watcher.callbacks"):
        async with running(store, metrics=Metrics(registry)):
            await wait_states(store, all_in("delivered"))
    for outcome, count in [("retry", 2), ("delivered", 1), ("failed", 0)]:
        labels = {"event": "invoice.created", "outcome": outcome}
        assert (registry.get_sample_value("payment_watcher_callbacks_total", labels) or 0) == count
    assert [r.status for r in rx.requests] == [500, 503, 200]
    assert {r.delivery_id for r in rx.requests} == {evt}
    assert {r.headers["webhook-id"] for r in rx.requests} == {evt}  # the same on every retry
    assert all(r.signature_ok and r.webhook_ok for r in rx.requests)
    tries = await attempts(store, evt)
    assert [t["status_code"] for t in tries] == [500, 503, 200]
    assert tries[1]["error"] == "HTTP 503: down for maintenance"
    assert all(t["duration_ms"] >= 0 for t in tries)
    # Backoff: the second retry waited longer than the first (0.05 s, then 0.1 s).
    gaps = [b.at - a.at for a, b in zip(rx.requests, rx.requests[1:], strict=False)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all(evt in line and invoice in line and "127.0.0.1" in line for line in lines)
    assert not any("do-not-log" in line or SECRET in line for line in lines)
    (row,) = await store.run(outbox.list_deliveries, False, 10)
    assert row["attempts"] == 3 and row["delivered_at"] is not None


async def test_400_fails_at_once_then_redeliver(store: Store, rx: Receiver) -> None:
    rx.script(400)
    await seed(store, 1, rx.url)
    (evt,) = await store.run(event_ids)
    async with running(store) as sender:
        await wait_states(store, all_in("failed"))
        await asyncio.sleep(0.3)  # longer than the whole schedule: no retry comes
        assert len(rx.requests) == 1
        failed = await store.run(outbox.list_deliveries, True, 10)
        assert [d["event_id"] for d in failed] == [evt]
        assert failed[0]["last_error"] == "HTTP 400"
        assert await store.run(outbox.redeliver, evt, time.time())
        sender.wake()
        await wait_states(store, all_in("delivered"))
    assert [r.status for r in rx.requests] == [400, 200]
    assert rx.delivery_ids() == {evt}


@pytest.mark.parametrize("status", [301, 302, 307, 401, 404, 410, 422])
async def test_redirects_and_other_4xx_fail_at_once(
    store: Store, rx: Receiver, status: int
) -> None:
    rx.script(Reply(status, headers={"Location": rx.url + "/elsewhere"}))
    await seed(store, 1, rx.url)
    async with running(store):
        await wait_states(store, all_in("failed"))
        await asyncio.sleep(0.2)
    assert [(r.path, r.status) for r in rx.requests] == [("/hook", status)]


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 504])
async def test_retryable_statuses(store: Store, rx: Receiver, status: int) -> None:
    rx.script(status)
    await seed(store, 1, rx.url)
    async with running(store):
        await wait_states(store, all_in("delivered"))
    assert [r.status for r in rx.requests] == [status, 200]


async def test_retry_after_is_honoured(store: Store, rx: Receiver) -> None:
    rx.script(Reply(429, headers={"Retry-After": "1"}))
    await seed(store, 1, rx.url)
    async with running(store):
        await wait_states(store, all_in("delivered"))
    first, second = rx.requests
    assert second.at - first.at >= 0.95


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("soon", 0) is None
    now = 1_722_386_968.0  # Wed, 31 Jul 2024 00:49:28 GMT
    assert parse_retry_after("Wed, 31 Jul 2024 00:50:28 GMT", now) == pytest.approx(60)
    assert parse_retry_after("Wed, 31 Jul 2024 00:40:28 GMT", now) == 0


async def test_slow_receiver_times_out_and_is_retried(store: Store, rx: Receiver) -> None:
    rx.script(Reply(200, delay=1.0))
    await seed(store, 1, rx.url)
    (evt,) = await store.run(event_ids)
    async with running(store, timeout=0.3):
        await wait_states(store, all_in("delivered"))
    assert len(rx.requests) == 2 and rx.delivery_ids() == {evt}
    first, second = await attempts(store, evt)
    assert first["status_code"] is None and "timeout" in first["error"]
    assert 250 <= first["duration_ms"] < 2000
    assert second["status_code"] == 200


async def test_gives_up_after_max_age(store: Store, rx: Receiver) -> None:
    rx.default = Reply(503)
    await seed(store, 1, rx.url, now=int(time.time()) - 120)
    async with running(store, max_age=60):
        await wait_states(store, all_in("failed"))
    assert len(rx.requests) == 1  # tried once (the daemon may have been down), then given up


async def test_last_try_at_max_age(store: Store, rx: Receiver) -> None:
    rx.default = Reply(503)
    await seed(store, 1, rx.url)
    (evt,) = await store.run(event_ids)
    async with running(store, max_age=2, schedule=(0.5,)):
        await wait_states(store, all_in("failed"), timeout=5)
    tries = await attempts(store, evt)
    assert 2 <= len(tries) <= 6
    created = (await store.run(outbox.list_deliveries, False, 1))[0]["created_at"]
    assert tries[-1]["at"] >= created + 2  # the last one is made at the deadline
    assert tries[-2]["at"] < created + 2


@pytest.mark.parametrize("url", ["http://[::1/hook", "ftp://127.0.0.1/hook", "/relative"])
async def test_invalid_url_fails_at_once(store: Store, url: str) -> None:
    await seed(store, 1, url)
    async with running(store):
        await wait_states(store, all_in("failed"))
    (row,) = await store.run(outbox.list_deliveries, True, 10)
    assert row["attempts"] == 1 and "URL" in row["last_error"]


# ------------------------------------------------------------------ waking up


async def test_wake_sends_at_once(store: Store, rx: Receiver) -> None:
    async with running(store, poll_interval=30) as sender:
        await asyncio.sleep(0.1)  # idle, asleep for up to 30 s
        await seed(store, 1, rx.url)
        started = time.monotonic()
        sender.wake()  # what the daemon does after a commit that wrote outbox rows
        await rx.wait_for(lambda r: len(r.requests) == 1, timeout=5)
    assert time.monotonic() - started < 1


async def test_rows_from_another_process_are_found_by_polling(
    store: Store, rx: Receiver
) -> None:
    async with running(store, poll_interval=0.2):
        await asyncio.sleep(0.1)
        await seed(store, 1, rx.url)  # e.g. the CLI: nobody calls wake()
        await rx.wait_for(lambda r: len(r.requests) == 1, timeout=5)


# ------------------------------------------------------------------ order and restart


async def test_per_invoice_order(store: Store, rx: Receiver) -> None:
    a, b = await seed(store, 2, rx.url, cancel=True)
    a_created, a_voided = await store.run(event_ids, [a])

    def fail_a_first(rec: Received) -> Reply | None:
        if rec.delivery_id == a_created and rx.attempts()[a_created] <= 4:
            return Reply(500)
        return None

    rx.responder = fail_a_first
    async with running(store):
        await wait_states(store, all_in("delivered"))
    order = [(r.invoice_id, r.event, r.status) for r in rx.requests]
    a_seen = [(e, s) for i, e, s in order if i == a]
    assert a_seen == [("invoice.created", 500)] * 4 + [
        ("invoice.created", 200), ("invoice.voided", 200),
    ]  # fmt: skip
    # b flowed while a was held back: both of b's events came before a's first success.
    a_ok = order.index((a, "invoice.created", 200))
    assert [(e, s) for i, e, s in order[:a_ok] if i == b] == [
        ("invoice.created", 200), ("invoice.voided", 200),
    ]  # fmt: skip
    assert a_voided in rx.delivery_ids()


async def test_failed_event_does_not_block_the_next(store: Store, rx: Receiver) -> None:
    (a,) = await seed(store, 1, rx.url, cancel=True)
    rx.script(404)
    async with running(store):
        states = await wait_states(store, lambda s: "pending" not in s.values())
    created, voided = await store.run(event_ids, [a])
    assert states == {created: "failed", voided: "delivered"}


async def test_restart_keeps_the_schedule(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "watcher.db"
    first = await Store(path).open()
    (invoice,) = await seed(first, 1, f"http://127.0.0.1:{port}/hook")
    (evt,) = await first.run(event_ids)
    async with running(first):  # the receiver is down
        async with asyncio.timeout(5):
            while len(await attempts(first, evt)) < 2:
                await asyncio.sleep(0.02)
    await first.close()  # the daemon stops

    second = await Store(path).open()  # ...and starts again
    tries = await attempts(second, evt)
    assert len(tries) >= 2 and all(t["status_code"] is None for t in tries)
    assert "Connect" in tries[0]["error"]
    async with Receiver(secret=SECRET, port=port) as receiver, running(second):
        await wait_states(second, all_in("delivered"))
    assert receiver.delivery_ids() == {evt}
    assert receiver.requests[0].invoice_id == invoice
    assert [t["status_code"] for t in await attempts(second, evt)][-1] == 200
    await second.close()


async def test_stop_cancels_a_stuck_send_after_grace(store: Store, rx: Receiver) -> None:
    rx.script(Reply(200, delay=5))
    await seed(store, 1, rx.url)
    async with running(store, timeout=10, grace=0.2):
        await rx.wait_for(lambda r: len(r.requests) == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 1.5
    assert await store.run(_states) == {rx.requests[0].delivery_id: "pending"}
    async with running(store):  # not recorded: sent again (at least once)
        await wait_states(store, all_in("delivered"))
    assert len(rx.requests) == 2


# ------------------------------------------------------------------ volume and crash


async def test_thousand_events(store: Store, rx: Receiver) -> None:
    invoices = await seed(store, 500, rx.url, cancel=True)
    ids = set(await store.run(event_ids))
    assert len(ids) == 1000
    started = time.perf_counter()
    async with running(store, concurrency=8):
        await wait_states(store, all_in("delivered"), timeout=60)
        elapsed = time.perf_counter() - started
    assert rx.delivery_ids() == ids and len(rx.requests) == 1000
    assert all(r.signature_ok for r in rx.requests)
    first_seen: dict[str, str] = {}
    for r in rx.requests:
        first_seen.setdefault(r.invoice_id, r.event)
    assert set(first_seen) == set(invoices)
    assert set(first_seen.values()) == {"invoice.created"}  # order held for every invoice
    print(f"\n1000 callbacks delivered in {elapsed:.2f} s: {1000 / elapsed:.0f} deliveries/s")


CRASH_SENDER = """
import asyncio, sys
from watcher.callbacks import CallbackSender
from watcher.storage.store import Store

async def main() -> None:
    store = await Store(sys.argv[1]).open()
    sender = CallbackSender(store, secret=sys.argv[2], timeout=5, max_age=3600,
                            concurrency=4, schedule=[0.05])
    await sender.run()

asyncio.run(main())
"""


async def test_at_least_once_across_kill_9(store: Store, rx: Receiver) -> None:
    total = 300
    rx.default = Reply(200, delay=0.01)
    await seed(store, total // 2, rx.url, cancel=True)
    ids = set(await store.run(event_ids))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_SENDER, str(store.path), SECRET,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        await rx.wait_for(lambda r: len(r.requests) >= 60, timeout=30)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    seen_before = len(rx.delivery_ids())
    assert seen_before < total  # killed mid-stream
    states = await store.run(_states)
    assert "pending" in states.values()
    async with running(store):  # the daemon restarted
        await wait_states(store, all_in("delivered"), timeout=30)
    assert rx.delivery_ids() == ids  # every delivery id at least once
    assert all(r.signature_ok for r in rx.requests)
