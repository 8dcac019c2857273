"""`payment-watcher run` as a real process against a real anvil: invoices driven through
every status over the HTTP API, callbacks to a real receiver, SIGTERM and sd_notify, a real
Prometheus scraping /metrics, readiness, start-up checks and secrets kept out of the logs.

Every wait polls with a timeout; no test asserts how long something took except as a
generous bound (`wait(timeout=10)`) that the contract itself sets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.daemonproc import (
    API_KEY,
    CALLBACK_SECRET,
    DaemonConfig,
    DaemonProc,
    Daemons,
    poll,
    run_cli,
    wait_callbacks,
)
from tests.integration.promfixture import promtool, start_prometheus
from tests.integration.receiver import Receiver, Reply
from watcher.devchain import DevChain
from watcher.timeutil import iso

USDT = 10**6
ETH = 10**18


# ---------------------------------------------------------------- 1. every status


async def test_invoices_through_every_status(
    daemons: Daemons, rx: Receiver, chain: DevChain, token: str, payer: str, database: str
) -> None:
    """On each engine: SQLite, PostgreSQL."""
    d = await daemons.start(callback_url=rx.url, database_url=database)
    addr = {k: chain.new_account() for k in ("done", "part", "cancel", "rem", "exp")}

    # PENDING -> WAITING_FOR_CONFIRMATIONS -> COMPLETED (native) -> REFUNDED
    done = await d.create("ETH", "1.5", addr["done"], externalId="order-1")
    tx = chain.send_native(payer, addr["done"], 15 * ETH // 10)
    inv = await d.wait_status(done, "WAITING_FOR_CONFIRMATIONS")
    assert (inv["txHash"], inv["amountPaid"], inv["confirmations"]) == (tx, "1.5", 1)
    chain.mine(1)
    inv = await d.wait_status(done, "COMPLETED")
    assert inv["confirmations"] >= 2 and inv["payments"][0]["logIndex"] is None
    refund_tx = "0x" + "ab" * 32
    inv = await d.ok("POST", f"/v1/invoices/{done}/refund", {"txHash": refund_tx})
    assert inv["status"] == "REFUNDED"

    # PARTIAL -> accept -> COMPLETED (token)
    part = await d.create("USDT", "10", addr["part"])
    chain.send_token(token, payer, addr["part"], 4 * USDT)
    chain.mine(1)
    inv = await d.wait_status(part, "PARTIAL")
    assert inv["amountPaid"] == "4" and inv["payments"][0]["logIndex"] is not None
    inv = await d.ok("POST", f"/v1/invoices/{part}/accept")
    assert inv["status"] == "COMPLETED"

    # cancel -> VOIDED; a second cancel is refused; a later payment is a late payment
    cancel = await d.create("USDT", "2", addr["cancel"])
    inv = await d.ok("POST", f"/v1/invoices/{cancel}/cancel")
    assert inv["status"] == "VOIDED"
    status, err = await d.request("POST", f"/v1/invoices/{cancel}/cancel")
    assert status == 409 and err["error"]["code"]
    late_tx = chain.send_token(token, payer, addr["cancel"], 2 * USDT)

    async def late_recorded() -> dict[str, Any] | None:
        got = await d.invoice(cancel)
        return got if got["latePayments"] else None

    inv = await poll(late_recorded, what="late payment")
    assert inv["status"] == "VOIDED" and inv["latePayments"][0]["txHash"] == late_tx
    assert inv["amountPaid"] == "0"

    # PARTIAL -> remainder: a child for what is missing takes the later transfers
    rem = await d.create("USDT", "10", addr["rem"])
    chain.send_token(token, payer, addr["rem"], 3 * USDT)
    chain.mine(1)
    await d.wait_status(rem, "PARTIAL")
    child = await d.ok("POST", f"/v1/invoices/{rem}/remainder", expect=201)
    assert (child["parentId"], child["amount"], child["status"]) == (rem, "7", "PENDING")
    assert child["to"] == (await d.invoice(rem))["to"]
    chain.send_token(token, payer, addr["rem"], 7 * USDT)
    await d.wait_status(child["id"], "WAITING_FOR_CONFIRMATIONS")
    chain.mine(1)
    inv = await d.wait_status(child["id"], "COMPLETED")
    assert inv["amountPaid"] == "7"
    assert (await d.invoice(rem))["amountPaid"] == "3"

    # expiry: nothing paid, a confirmed block past expireAt voids it; then a late payment
    head_time = int(chain.get_block("latest")["timestamp"], 16)
    expire_at = max(head_time, int(time.time())) + 20
    exp = await d.create("USDT", "1", addr["exp"], expireAt=iso(expire_at))
    chain.set_next_timestamp(expire_at + 1)
    chain.mine(3)
    await d.wait_status(exp, "VOIDED")
    chain.send_token(token, payer, addr["exp"], 1 * USDT)

    async def late_on_expired() -> bool:
        return bool((await d.invoice(exp))["latePayments"])

    await poll(late_on_expired, what="late payment on the expired invoice")
    assert (await d.invoice(exp))["status"] == "VOIDED"
    chain.mine(2)  # late payments are announced once they have the confirmations

    # the API's history and the receiver agree, event for event, in order
    expected = {
        done: ["created", "waiting_for_confirmations", "completed", "refunded"],
        part: ["created", "waiting_for_confirmations", "partial", "completed"],
        cancel: ["created", "voided", "late_payment"],
        rem: ["created", "waiting_for_confirmations", "partial"],
        child["id"]: ["created", "waiting_for_confirmations", "completed"],
        exp: ["created", "voided", "late_payment"],
    }
    await wait_callbacks(rx, expected)
    for invoice_id, names in expected.items():
        history = await d.ok("GET", f"/v1/invoices/{invoice_id}/events")
        assert [e["event"].removeprefix("invoice.") for e in history["data"]] == names

    async def all_delivered() -> bool:
        history = await d.ok("GET", f"/v1/invoices/{done}/events")
        return all(e["delivery"]["state"] == "delivered" for e in history["data"])

    await poll(all_delivered, what="deliveries recorded as delivered")
    refunded = next(r for r in rx.for_invoice(done) if r.event == "invoice.refunded")
    assert refunded.json()["data"]["status"] == "REFUNDED"
    listed = await d.ok("GET", "/v1/invoices?externalId=order-1")
    assert [i["id"] for i in listed["data"]] == [done]
    assert await d.stop() == 0


async def test_reorg_reverses_a_completed_invoice_and_unpays_a_waiting_one(
    daemons: Daemons, rx: Receiver, chain: DevChain, token: str, payer: str, database: str
) -> None:
    """On each engine: SQLite, PostgreSQL."""
    d = await daemons.start(callback_url=rx.url, database_url=database)
    a, b = chain.new_account(), chain.new_account()
    done = await d.create("USDT", "5", a)
    waiting = await d.create("USDT", "5", b)
    snap = chain.snapshot()
    chain.send_token(token, payer, a, 5 * USDT)
    chain.mine(1)
    await d.wait_status(done, "COMPLETED")
    chain.send_token(token, payer, b, 5 * USDT)
    await d.wait_status(waiting, "WAITING_FOR_CONFIRMATIONS")
    # Replace every block since the snapshot with a longer chain that holds no payment.
    assert chain.revert(snap)
    chain.mine(5)
    inv = await d.wait_status(done, "REVERSED")
    assert inv["payments"] == []
    inv = await d.wait_status(waiting, "PENDING")
    assert inv["amountPaid"] == "0"
    await wait_callbacks(rx, {
        done: ["created", "waiting_for_confirmations", "completed", "reversed"],
        waiting: ["created", "waiting_for_confirmations", "pending"],
    })  # fmt: skip
    metrics = await d.request("GET", "/metrics", auth=False)
    assert re.search(r'^payment_watcher_reorgs_total\{network="anvil"\} [1-9]', metrics[1], re.M)
    # one instance on its own database follows every network (on PostgreSQL: it won them)
    assert 'payment_watcher_leader{network="anvil"} 1.0' in metrics[1]


# ---------------------------------------------------------------- 2. SIGTERM and sd_notify


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """An AF_UNIX datagram socket standing in for systemd's (a short path: sun_path < 108)."""
    folder = tempfile.mkdtemp(prefix="pwn-")
    path = f"{folder}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


async def read_notify(
    sock: socket.socket, messages: list[str], until: str, timeout: float, count: int = 1
) -> None:
    """Collect datagram lines into `messages` until `count` lines start with `until`."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while sum(m.startswith(until) for m in messages) < count:
            data = await loop.sock_recv(sock, 4096)
            messages.extend(data.decode().splitlines())


async def test_sigterm_exits_0_and_speaks_sd_notify(daemons: Daemons) -> None:
    with notify_socket() as (sock, path):
        d = await daemons.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        messages: list[str] = []
        await read_notify(sock, messages, "READY=1", 10)
        await read_notify(sock, messages, "STATUS=", 10)
        await read_notify(sock, messages, "WATCHDOG=1", 10, count=2)  # it keeps pinging
        d.signal(signal.SIGTERM)
        code = await d.wait(timeout=10)
        assert code == 0, d.log_text()
        await read_notify(sock, messages, "STOPPING=1", 5)
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert "Traceback" not in d.log_text()


@contextlib.asynccontextmanager
async def callback_in_flight(daemons: Daemons, chain: DevChain) -> AsyncIterator[DaemonProc]:
    """A daemon whose first callback is stuck in a receiver that answers only after 60 s."""
    async with Receiver(secret=CALLBACK_SECRET, default=Reply(200, delay=60)) as slow:
        d = await daemons.start(callback_url=slow.url)
        await d.create("ETH", "1", chain.new_account())
        await slow.wait_for(lambda r: len(r.requests) >= 1, timeout=10)
        yield d


async def test_sigterm_with_a_stuck_callback_still_exits_0(
    daemons: Daemons, chain: DevChain
) -> None:
    async with callback_in_flight(daemons, chain) as d:
        d.signal(signal.SIGTERM)
        assert await d.wait(timeout=10) == 0, d.log_text()


async def test_second_sigterm_during_a_slow_stop_exits_at_once(
    daemons: Daemons, chain: DevChain
) -> None:
    async with callback_in_flight(daemons, chain) as d:
        d.signal(signal.SIGTERM)
        await poll(lambda: _logged(d, "stopping"), 5, what="stop begun")
        assert d.proc is not None and d.proc.poll() is None  # held up by the callback
        d.signal(signal.SIGTERM)
        # A graceful stop exits 0; the forced one exits 1 without waiting for the callback.
        assert await d.wait(timeout=10) == 1


async def _logged(d: DaemonProc, text: str) -> bool:
    return text in d.log_text()


# ---------------------------------------------------------------- 3. metrics


CONTRACT_METRICS = (
    "chain_head_block", "scanned_block", "scan_lag_blocks", "blocks_scanned_total",
    "rpc_requests_total", "rpc_request_duration_seconds", "transfers_total", "invoices",
    "invoice_transitions_total", "detection_latency_seconds", "callbacks_total",
    "callback_queue_depth", "reorgs_total", "build_info",
)  # fmt: skip
HISTOGRAMS = {"rpc_request_duration_seconds", "detection_latency_seconds"}
IDLIKE = re.compile(
    r"0x[0-9a-f]{6,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32,}"
    r"|evt_",
    re.I,
)


async def test_metrics_scraped_by_prometheus(
    daemons: Daemons,
    rx: Receiver,
    chain: DevChain,
    token: str,
    payer: str,
    tmp_path: Path,
) -> None:
    d = await daemons.start(callback_url=rx.url)
    to = chain.new_account()
    inv = await d.create("USDT", "3", to)
    chain.send_token(token, payer, to, 3 * USDT)
    chain.mine(1)
    await d.wait_status(inv, "COMPLETED")
    await wait_callbacks(rx, {inv: ["created", "waiting_for_confirmations", "completed"]})
    chain.mine(3)
    head = chain.block_number()
    await d.wait_scanned(head)
    status, ready = await d.request("GET", "/readyz", auth=False)
    assert (status, ready["ready"]) == (200, True)

    with start_prometheus(d.port, tmp_path / "prom") as prom:
        await prom.wait_for_value('payment_watcher_scanned_block{network="anvil"}', head)
        up = await prom.aquery('up{job="payment-watcher"}')
        assert float(up[0]["value"][1]) == 1

    status, text = await d.request("GET", "/metrics", auth=False)
    assert status == 200 and isinstance(text, str)
    lint = promtool("check", "metrics", stdin=text)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = [s for f in families.values() for s in f.samples]
    names = {s.name for s in samples}
    for name in CONTRACT_METRICS:
        full = f"payment_watcher_{name}"
        wanted = f"{full}_bucket" if name in HISTOGRAMS else full
        assert wanted in names, f"{full} missing from /metrics"
    assert not any(n.endswith("_created") for n in names)
    for s in samples:
        for label, text_value in s.labels.items():
            assert not IDLIKE.search(text_value), f"{s.name}{{{label}={text_value!r}}} is id-like"

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in samples if s.name == name and s.labels == labels)

    assert value("payment_watcher_scanned_block", network="anvil") >= head
    assert value("payment_watcher_transfers_total", network="anvil", asset="USDT",
                 matched="true") >= 1  # fmt: skip
    assert value("payment_watcher_callbacks_total", event="invoice.completed",
                 outcome="delivered") >= 1  # fmt: skip


# ---------------------------------------------------------------- 4. readiness, start-up


async def test_readyz_503_with_a_reason_when_the_only_rpc_is_dead(
    daemons: Daemons, dead_url: str
) -> None:
    d = await daemons.start(rpc=[dead_url])
    status, body = await d.request("GET", "/readyz", auth=False)
    assert status == 503 and body["ready"] is False
    assert "anvil" in body["reason"] and body["reason"] != "ok"
    assert "unreachable at start" in d.log_text()
    status, _ = await d.request("GET", "/healthz", auth=False)
    assert status == 200
    assert await d.stop() == 0


def test_chain_id_mismatch_exits_2_naming_the_key(tmp_path: Path, rpc_url: str) -> None:
    cfg = DaemonConfig(tmp_path, rpc=[rpc_url], chain_id=1)
    cfg.write()
    proc = run_cli("run", "--config", str(cfg.path), timeout=30)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "networks.anvil.rpc" in errors[0] and "31337" in errors[0], errors
    assert "Traceback" not in proc.stderr + proc.stdout


def test_listen_address_in_use_exits_2_naming_the_key(tmp_path: Path, rpc_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = DaemonConfig(tmp_path, rpc=[rpc_url], extra={"api": {"listen": f"127.0.0.1:{port}"}})
        cfg.write()
        proc = run_cli("run", "--config", str(cfg.path), timeout=30)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: api.listen: "), proc.stderr
    assert "Traceback" not in proc.stderr and "Unclosed" not in proc.stderr


# ---------------------------------------------------------------- 5. secrets stay out of logs


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_secrets_never_logged(
    daemons: Daemons,
    rpc_url: str,
    dead_url: str,
    chain: DevChain,
    log_format: str,
) -> None:
    # The dead RPC URL and the callback URL carry the secrets themselves, as real ones do.
    dead_rpc = f"{dead_url}/v3/{API_KEY}"
    hook = f"{dead_url}/hook?token={CALLBACK_SECRET}"
    d = await daemons.start(
        rpc=[dead_rpc, rpc_url], callback_url=hook, log_format=log_format, log_level="debug"
    )
    inv = await d.create("ETH", "1", chain.new_account())
    for key in ("wrong-key", CALLBACK_SECRET, API_KEY + "x"):
        status, _ = await d.request("GET", "/v1/invoices", key=key)
        assert status == 401
    status, _ = await d.request("GET", f"/v1/invoices/{API_KEY}")
    assert status == 404
    status, _ = await d.request("POST", "/v1/invoices", data=b"{not json")
    assert status == 400
    status, _ = await d.request(
        "POST", "/v1/invoices", {"network": "anvil", "asset": "ETH", "amount": CALLBACK_SECRET}
    )
    assert status == 422

    async def callback_failed() -> bool:
        history = await d.ok("GET", f"/v1/invoices/{inv}/events")
        delivery = history["data"][0]["delivery"]
        return bool(delivery["attempts"]) and delivery["state"] != "delivered"

    await poll(callback_failed, what="a failed callback attempt")
    await poll(lambda: _logged(d, "callback"), 10, what="the callback failure logged")
    assert await d.stop() == 0
    text = d.log_text()
    assert "unreachable at start" in text
    assert API_KEY not in text and CALLBACK_SECRET not in text
    if log_format == "json":
        for line in text.splitlines():
            obj = json.loads(line)
            assert {"ts", "level", "logger", "message"} <= obj.keys(), line
