"""Figures of a real `payment-watcher run` subprocess on anvil with a 1 s block time and a
database pre-filled with open invoices: callback deliveries/s (a backlog drained at start),
RSS, invoice creates/s over HTTP, and detection latency (tx sent -> WAITING_FOR_CONFIRMATIONS
seen over HTTP, and -> its callback received)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp
import orjson

from tests.integration.receiver import Receiver
from watcher import timeutil
from watcher.devchain import DevChain
from watcher.ledger import Ledger, NetworkInfo, NewInvoice
from watcher.models import Status
from watcher.storage.sqlite import connect

from .catchup import assets
from .raw import RawClient
from .workload import (
    CHAIN_ID,
    NATIVE_AMOUNT,
    NET,
    SENDERS,
    TOKEN_AMOUNT,
    invoice_address,
    start_chain,
)
from .workload import prefill as prefill_db

API_KEY = "bench-key"
WAITING = Status.WAITING_FOR_CONFIRMATIONS
SEEN = {Status.WAITING_FOR_CONFIRMATIONS.value, Status.COMPLETED.value}


@dataclass(slots=True)
class LiveResult:
    callbacks_per_s: float = 0.0
    callbacks: int = 0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    creates_per_s: float = 0.0
    #: during the creates: the daemon's CPU (cores) and the whole machine's busy share
    creates_daemon_cores: float = 0.0
    creates_machine_busy: float = 0.0
    creates: int = 0
    create_concurrency: int = 0
    create_errors: int = 0
    priced_per_s: float = 0.0  # creates with price + currency (USDT/EUR through USD)
    priced_errors: int = 0
    api_latency: list[float] = field(default_factory=list)
    callback_latency: list[float] = field(default_factory=list)
    block_wait: list[float] = field(default_factory=list)  # tx sent -> block seen mined
    after_block: list[float] = field(default_factory=list)  # block seen -> callback received
    #: block announced by the node (its own newHeads) -> the status seen over HTTP
    api_after_block: list[float] = field(default_factory=list)
    missed: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_busy() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (`/proc/stat`)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time spent busy between two `machine_busy()` reads."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (`/proc/PID/stat`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _config(path: Path, db: Path | str, port: int, url: str, token: str, hook: str) -> None:
    ws = url.replace("http://", "ws://", 1)
    path.write_text(
        f'database = "{db}"\nlog_level = "warning"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\napi_keys = ["{API_KEY}"]\n'
        f'[callbacks]\nurl = "{hook}"\nsecret = "bench-secret"\n'
        f'[networks.anvil]\nrpc = ["{url}"]\nws = ["{ws}"]\nblock_time = 1\n'
        f"confirmations = 2\n"
        f'tokens = [{{ symbol = "USDT", address = "{token}", decimals = 6 }}]\n'
        '[rates.pairs]\n"USDT/USD" = [{ fixed = "1" }]\n"EUR/USD" = [{ fixed = "1.08" }]\n'
    )


def spawn_daemon(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """`payment-watcher run --config cfg` of this venv, its stderr into `log`."""
    exe = Path(sys.executable).with_name("payment-watcher")
    with log.open("wb") as err:
        return subprocess.Popen(
            [str(exe), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=err
        )


def _backlog(db_path: Path, token: str, count: int, hook: str) -> None:
    """`count` invoices made through the ledger (each writes invoice.created and its
    outbox row): the callback backlog the daemon drains when it starts."""
    db = connect(db_path)
    ledger = Ledger(
        {NET: NetworkInfo(NET, CHAIN_ID, 2, assets(token))}, tolerance=Fraction(0),
        default_ttl=86400, late_window=86400, default_callback_url=None,
    )
    now = timeutil.now()
    ledger.start_network(db, NET, 1, now)  # as the daemon does before it takes invoices
    with db.atomic():
        for n in range(count):
            req = NewInvoice(NET, "ETH", NATIVE_AMOUNT, "0xb0" + f"{n:038x}", None,
                             callback_url=hook)
            ledger.create(db, req, now)
    db.close()


def _ids_by_address(db_path: Path, addresses: list[str]) -> dict[str, str]:
    conn = sqlite3.connect(db_path)
    try:
        marks = ",".join("?" * len(addresses))
        rows = conn.execute(
            f"SELECT to_lower, id FROM invoices WHERE to_lower IN ({marks})", addresses
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


async def run_live(
    workdir: Path, *, invoices: int, backlog: int, creates: int, samples: int,
    log: object = print, create_concurrency: int = 16,
) -> LiveResult:
    say = log if callable(log) else print
    res = LiveResult(create_concurrency=create_concurrency)
    node, dev, token = start_chain(block_time=1)
    receiver = Receiver(secret="bench-secret")
    proc: subprocess.Popen[bytes] | None = None
    db = workdir / "live.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    try:
        await receiver.start()
        half = invoices // 2
        prefill_db(db, native=half, tokens=invoices - half, token=token)
        _backlog(db, token, backlog, receiver.url)
        port = _free_port()
        cfg = workdir / "live.toml"
        _config(cfg, db, port, node.url, token, receiver.url)
        proc = spawn_daemon(cfg, workdir / "live.log")
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(limit=64)
        ) as http:
            await _wait_ready(http, base, proc)
            # 1. the callback backlog
            await receiver.wait_for(lambda r: len(r.delivery_ids()) >= backlog, timeout=300)
            times = sorted(r.at for r in receiver.requests)[:backlog]
            res.callbacks = backlog
            res.callbacks_per_s = (backlog - 1) / max(1e-9, times[-1] - times[0])
            say(f"  callbacks: {res.callbacks_per_s:,.0f}/s")
            # 2. RSS with the invoices open (settled: give the allocator a moment)
            await asyncio.sleep(1.0)
            res.rss_mb = _status_kb(proc.pid, "VmRSS") / 1024
            say(f"  RSS: {res.rss_mb:.0f} MB")
            # 3. creates over HTTP
            cpu, machine = cpu_seconds(proc.pid), machine_busy()
            res.creates, res.create_errors, secs = await _creates(
                http, base, creates, create_concurrency
            )
            res.creates_per_s = res.creates / secs
            res.creates_daemon_cores = (cpu_seconds(proc.pid) - cpu) / secs
            res.creates_machine_busy = busy_share(machine, machine_busy())
            say(f"  creates: {res.creates_per_s:,.0f}/s ({res.create_errors} errors)")
            # the same again priced in EUR, once the first run's callbacks have drained:
            # both runs then compete with the same (idle) callback sender
            await receiver.wait_for(
                lambda r: len(r.delivery_ids()) >= backlog + res.creates, timeout=300
            )
            priced, res.priced_errors, secs = await _creates(
                http, base, creates, create_concurrency, priced=True
            )
            res.priced_per_s = priced / secs
            say(f"  creates priced in EUR: {res.priced_per_s:,.0f}/s "
                f"({res.priced_errors} errors)")
            # their invoice.created callbacks drain first: latency is measured on a sender
            # with no backlog
            total = backlog + res.creates + priced
            await receiver.wait_for(lambda r: len(r.delivery_ids()) >= total, timeout=300)
            # 4. detection latency
            await _latency(http, base, db, dev, node.url, token, receiver, samples, res)
            res.hwm_mb = _status_kb(proc.pid, "VmHWM") / 1024
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await receiver.stop()
        node.stop()
    return res


async def _wait_ready(
    http: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"payment-watcher run exited with {proc.returncode}")
        try:
            async with http.get(base + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("payment-watcher run did not answer /healthz within 60 s")


async def _creates(
    http: aiohttp.ClientSession, base: str, count: int, concurrency: int, *,
    priced: bool = False, offset: int = 0,
) -> tuple[int, int, float]:
    """`count` creates, `concurrency` in flight, to addresses numbered from `offset`:
    (created, errors, seconds)."""
    errors = 0
    ok = 0
    queue = iter(range(offset, offset + count))

    async def worker() -> None:
        nonlocal errors, ok
        for n in queue:
            value = {"price": "5.40", "currency": "EUR"} if priced else {"amount": "5"}
            body = orjson.dumps({
                "network": NET, "asset": "USDT", **value,
                "address": ("0xc1" if priced else "0xc0") + f"{n:038x}", "ttl": 86400,
            })
            async with http.post(base + "/v1/invoices", data=body,
                                 headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status == 201:
                    ok += 1
                else:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors, time.perf_counter() - started


class Arrivals:
    """When the first callback of each (invoice, event) arrived. Each request is read once:
    the receiver parses a body on every `invoice_id`, and scanning thousands of them on
    every arrival held the bench's loop for 50-150 ms, inflating the latencies it timed."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._read = 0
        self._first: dict[tuple[str, str], float] = {}

    def first(self, invoice_id: str, event: str) -> float | None:
        requests = self.receiver.requests
        for q in requests[self._read:]:
            body = q.json()
            key = (str(body["data"]["id"]), str(body["event"]))
            self._first[key] = min(q.at, self._first.get(key, q.at))
        self._read = len(requests)
        return self._first.get((invoice_id, event))


async def _latency(
    http: aiohttp.ClientSession, base: str, db: Path, dev: DevChain, url: str, token: str,
    receiver: Receiver, samples: int, res: LiveResult,
) -> None:
    """Pay `samples` pre-filled invoices at random moments (about two a second, so the
    send time is uniform over the block interval); per payment, the time from just before
    `eth_sendTransaction` to the status over HTTP (polled every 5 ms) and to the callback,
    and from the node's `newHeads` announcing its block to both."""
    rnd = random.Random(11)
    kinds = ["eth" if i % 2 == 0 else "tok" for i in range(samples)]
    addresses = [invoice_address(k, 1000 + i) for i, k in enumerate(kinds)]
    ids = _ids_by_address(db, addresses)
    client = RawClient(url)
    sender = dev.accounts[SENDERS]  # holds ETH and tokens; sends nothing else
    nonce = int(await client.call("eth_getTransactionCount", [sender, "pending"]), 16)
    tasks = []
    heads: dict[int, float] = {}
    subscribed = asyncio.Event()

    async def watch_heads() -> None:
        """When each block appears at the node: its own `newHeads`, on a socket of the
        bench's (the daemon listens to the same announcement)."""
        async with aiohttp.ClientSession() as session, session.ws_connect(
            url.replace("http://", "ws://", 1)
        ) as ws:
            await ws.send_bytes(orjson.dumps({
                "jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"],
            }))
            async for msg in ws:
                at = time.time()
                data = orjson.loads(msg.data)
                head = data.get("params", {}).get("result")
                if head is None:
                    subscribed.set()
                    continue
                heads.setdefault(int(head["number"], 16), at)

    arrivals = Arrivals(receiver)
    arrivals.first("", "")  # the earlier phases' callbacks: read once, before any payment
    head_task = asyncio.create_task(watch_heads())
    await asyncio.wait_for(subscribed.wait(), 10)

    async def follow(inv_id: str, sent: float, tx_hash: str) -> None:
        deadline = sent + 15
        got_api = None
        while time.time() < deadline and got_api is None:
            async with http.get(f"{base}/v1/invoices/{inv_id}") as r:
                body = orjson.loads(await r.read())
            if body.get("status") in SEEN:
                got_api = time.time()
                break
            await asyncio.sleep(0.005)
        if got_api is None:
            res.missed += 1
            return
        res.api_latency.append(got_api - sent)
        try:
            await receiver.wait_for(
                lambda r: arrivals.first(inv_id, WAITING.event) is not None, timeout=10
            )
        except TimeoutError:
            res.missed += 1
            return
        at = arrivals.first(inv_id, WAITING.event)
        assert at is not None
        res.callback_latency.append(at - sent)
        rcpt = await client.call("eth_getTransactionReceipt", [tx_hash])
        if rcpt and int(rcpt["blockNumber"], 16) in heads:
            mined = heads[int(rcpt["blockNumber"], 16)]
            res.block_wait.append(mined - sent)
            res.after_block.append(at - mined)
            res.api_after_block.append(got_api - mined)

    try:
        for kind, address in zip(kinds, addresses, strict=True):
            await asyncio.sleep(rnd.uniform(0.25, 0.75))
            if kind == "eth":
                tx = {"from": sender, "to": address, "value": hex(NATIVE_AMOUNT),
                      "gas": hex(21_000)}
            else:
                t = DevChain.token_transfer_tx(token, sender, address, TOKEN_AMOUNT)
                tx = {**t, "gas": hex(t["gas"])}
            tx["nonce"] = hex(nonce)
            nonce += 1
            sent = time.time()
            tx_hash = await client.call("eth_sendTransaction", [tx])
            tasks.append(asyncio.create_task(follow(ids[address], sent, tx_hash)))
        await asyncio.gather(*tasks)
    finally:
        head_task.cancel()
        await asyncio.gather(head_task, return_exceptions=True)
        await client.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


if __name__ == "__main__":  # pragma: no cover - manual use
    out = asyncio.run(run_live(Path(os.environ.get("TMPDIR", "/tmp")), invoices=100_000,
                               backlog=2000, creates=2000, samples=20))
    print(out)
