"""The live WebSocket channels on one real `payment-watcher run` subprocess (anvil, the
checkout listener on, `channels.max_connections = 5000`), with the clients in the bench
process (aiohttp `ws_connect`):

* fan-out latency: 1,000 checkout sockets (`GET /pay/{id}/ws`, 20 on each of 50
  invoices) and 200 merchant sockets (`GET /v1/ws`, each subscribed to "all"); the
  invoices are cancelled one at a time through `POST /v1/invoices/{id}/cancel` and, per
  socket, the time from the cancel's response (the change is committed) to the message
  carrying VOIDED is taken;
* RSS added per idle socket: the daemon's VmRSS before and after the 1,200 sockets open;
* catch-up with the sockets open: the daemon is paused (SIGSTOP), a backlog of blocks is
  mined (10 transfers per block, 2% paying open invoices, native invoices open so full
  blocks are read), the daemon resumed (SIGCONT) and blocks/s taken until its cursor
  reaches the head. Rounds without sockets, with, with, without (one open and one close
  of the sockets; a linear drift of the machine cancels out), `cycles` times.

The clients share the machine with the daemon and anvil: their CPU during the catch-up is
reported next to the daemon's. anvil's `evm_mine` gets slower as its chain grows (~8 ms per
block at first, ~60 ms after 1,500 blocks of 10 transfers), so the backlogs stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from watcher.devchain import DevChain

from .live import API_KEY, _free_port, _status_kb, _wait_ready, percentile, spawn_daemon
from .workload import NET, Cursor, mine_blocks, start_chain
from .workload import prefill as prefill_db

#: concurrent WebSocket handshakes while the sockets open (the listen backlog is 128)
CONNECT_CONCURRENCY = 64
#: seconds every subscriber gets to hear of one status change before it counts as missed
DELIVERY_TIMEOUT = 5.0
#: pause between two cancels (the previous fan-out has drained by then)
CANCEL_GAP = 0.05
CATCHUP_TIMEOUT = 300.0


@dataclass(slots=True)
class Round:
    with_sockets: bool
    blocks: int
    seconds: float
    daemon_cpu: float  # user + system seconds of the daemon during the catch-up
    client_cpu: float  # of the bench process (the socket clients reading)
    events: int  # events committed during the catch-up
    merchant_messages: int  # what the merchant sockets received of them

    @property
    def rate(self) -> float:
        return self.blocks / self.seconds


@dataclass(slots=True)
class SocketsResult:
    checkout_sockets: int = 0
    merchant_sockets: int = 0
    invoices: int = 0
    checkout_latency: list[float] = field(default_factory=list)
    merchant_latency: list[float] = field(default_factory=list)
    missed_checkout: int = 0
    missed_merchant: int = 0
    connect_seconds: float = 0.0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    rounds: list[Round] = field(default_factory=list)
    closed_early: int = 0  # sockets the daemon closed before the bench did

    @property
    def sockets(self) -> int:
        return self.checkout_sockets + self.merchant_sockets

    @property
    def rss_per_socket_kb(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / max(1, self.sockets)

    def rates(self, with_sockets: bool) -> list[float]:
        return [r.rate for r in self.rounds if r.with_sockets == with_sockets]

    @property
    def catchup_ratio(self) -> float:
        """Mean blocks/s with the sockets over mean blocks/s without."""
        w, wo = self.rates(True), self.rates(False)
        if not w or not wo:
            return float("nan")
        return (sum(w) / len(w)) / (sum(wo) / len(wo))


# ---------------------------------------------------------------- the clients


@dataclass(slots=True, eq=False)
class Sock:
    n: int
    kind: str  # "checkout" or "merchant"
    invoice: str | None  # the invoice a checkout socket follows
    ws: aiohttp.ClientWebSocketResponse
    messages: int = 0
    task: asyncio.Task[None] | None = None


class Fleet:
    """The open sockets and their readers. While `target` names an invoice, a reader takes
    the arrival time of the first message telling its socket that invoice is VOIDED."""

    def __init__(self) -> None:
        self.socks: list[Sock] = []
        self.target: str | None = None
        self.waiting: set[int] = set()
        self.arrivals: list[tuple[str, float]] = []
        self.done = asyncio.Event()
        self.closed_early = 0
        self.closing = False

    def by_kind(self, kind: str) -> list[Sock]:
        return [s for s in self.socks if s.kind == kind]

    def merchant_messages(self) -> int:
        return sum(s.messages for s in self.socks if s.kind == "merchant")

    def add(self, sock: Sock) -> None:
        self.socks.append(sock)
        sock.task = asyncio.create_task(self._read(sock))

    async def _read(self, s: Sock) -> None:
        async for msg in s.ws:
            now = time.perf_counter()  # first: the arrival, before any parsing
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            s.messages += 1
            target = self.target
            if target is None or s.n not in self.waiting:
                continue
            body = orjson.loads(msg.data)
            if s.kind == "merchant":
                body = body.get("data") or {}
                hit = body.get("id") == target and body.get("status") == "VOIDED"
            else:
                hit = s.invoice == target and body.get("status") == "VOIDED"
            if hit:
                self.waiting.discard(s.n)
                self.arrivals.append((s.kind, now))
                if not self.waiting:
                    self.done.set()
        if not self.closing:
            self.closed_early += 1

    def expect(self, invoice: str) -> None:
        self.arrivals = []
        self.waiting = {s.n for s in self.socks if s.kind == "merchant" or s.invoice == invoice}
        self.target = invoice
        self.done.clear()

    async def close(self) -> None:
        self.closing = True
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(s: Sock) -> None:
            async with sem:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.ws.close(), 5)
            if s.task is not None:
                s.task.cancel()
                with contextlib.suppress(BaseException):
                    await s.task

        await asyncio.gather(*(one(s) for s in self.socks))
        self.socks = []


async def _open_checkout(
    fleet: Fleet, http: aiohttp.ClientSession, urls: dict[str, str], per_invoice: int
) -> None:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    jobs = [(inv, url) for inv, url in urls.items() for _ in range(per_invoice)]

    async def one(n: int, inv: str, url: str) -> None:
        async with sem:
            ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
            first = await asyncio.wait_for(ws.receive(), 30)  # the view at connect
            if first.type is not aiohttp.WSMsgType.TEXT or "status" not in orjson.loads(
                first.data
            ):
                raise RuntimeError(f"checkout socket {url}: unexpected first message {first}")
        fleet.add(Sock(n, "checkout", inv, ws))

    base = len(fleet.socks)
    await asyncio.gather(*(one(base + i, inv, url) for i, (inv, url) in enumerate(jobs)))


async def _open_merchant(fleet: Fleet, http: aiohttp.ClientSession, url: str, count: int) -> None:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(n: int) -> None:
        async with sem:
            ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
            await ws.send_str('{"subscribe": "all"}')
            ack = await asyncio.wait_for(ws.receive(), 30)
            if ack.type is not aiohttp.WSMsgType.TEXT or orjson.loads(ack.data) != {
                "subscribed": {"channel": "all"}
            }:
                raise RuntimeError(f"merchant socket: unexpected answer to subscribe: {ack}")
        fleet.add(Sock(n, "merchant", None, ws))

    base = len(fleet.socks)
    await asyncio.gather(*(one(base + i) for i in range(count)))


async def _open_all(
    fleet: Fleet, checkout: aiohttp.ClientSession, api: aiohttp.ClientSession,
    urls: dict[str, str], per_invoice: int, merchant: int, api_base: str,
) -> float:
    started = time.perf_counter()
    await _open_checkout(fleet, checkout, urls, per_invoice)
    ws_base = api_base.replace("http://", "ws://", 1)
    await _open_merchant(fleet, api, ws_base + "/v1/ws", merchant)
    return time.perf_counter() - started


# ---------------------------------------------------------------- the daemon


def _config(path: Path, db: Path, port: int, checkout_port: int, url: str, token: str) -> None:
    ws = url.replace("http://", "ws://", 1)
    path.write_text(
        f'database = "{db}"\nlog_level = "warning"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\napi_keys = ["{API_KEY}"]\n'
        f'[checkout]\nenabled = true\nlisten = "127.0.0.1:{checkout_port}"\n'
        f"[channels]\nmax_connections = 5000\n"
        f'[networks.anvil]\nrpc = ["{url}"]\nws = ["{ws}"]\nblock_time = 1\n'
        f"confirmations = 2\n"
        f'tokens = [{{ symbol = "USDT", address = "{token}", decimals = 6 }}]\n'
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _raise_nofile(need: int) -> None:
    """Up to the hard limit (the daemon, started after, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = hard if hard != resource.RLIM_INFINITY else need
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        raise RuntimeError(f"open-file limit {target} (the hard limit) is below {need}")


def _mine(
    dev: DevChain, token: str, blocks: int, per_block: int, paid_share: float,
    next_paid: dict[str, int], seed: int,
) -> int:
    """`blocks` blocks of `per_block` transfers (half native, half USDT), as
    `workload.mine_blocks` mines them. Returns the last block."""
    mine_blocks(dev, token, blocks, per_block, native_share=0.5, paid_share=paid_share,
                next_paid=next_paid, seed=seed)
    return dev.block_number()


async def _catch_up(
    proc: subprocess.Popen[bytes], dev: DevChain, token: str, cursor: Cursor, fleet: Fleet,
    *, blocks: int, per_block: int, paid_share: float, next_paid: dict[str, int], seed: int,
) -> Round:
    """One round: daemon at the head and idle, paused, `blocks` mined, resumed, timed until
    its cursor is at the new head."""
    await cursor.wait_for(dev.block_number(), 30)
    await asyncio.sleep(0.5)  # the last commit's fan-out has been read
    events0 = cursor.max_event()
    got0 = fleet.merchant_messages()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        last = await asyncio.to_thread(
            _mine, dev, token, blocks, per_block, paid_share, next_paid, seed
        )
        cpu0, client0 = _cpu_seconds(proc.pid), time.process_time()
        started = time.perf_counter()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    await cursor.wait_for(last, CATCHUP_TIMEOUT)
    seconds = time.perf_counter() - started
    cpu, client = _cpu_seconds(proc.pid) - cpu0, time.process_time() - client0
    events = cursor.max_event() - events0
    merchants = len(fleet.by_kind("merchant"))
    deadline = time.monotonic() + 30  # every merchant socket gets every event
    while fleet.merchant_messages() - got0 < events * merchants and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return Round(bool(fleet.socks), blocks, seconds, cpu, client, events,
                 fleet.merchant_messages() - got0)


async def _create_invoices(
    http: aiohttp.ClientSession, base: str, count: int
) -> dict[str, str]:
    """`count` USDT invoices over the API: id -> its checkout socket URL."""
    out: dict[str, str] = {}
    for n in range(count):
        body = orjson.dumps({"network": NET, "asset": "USDT", "amount": "1",
                             "address": "0xd0" + f"{n:038x}", "ttl": 3600})
        async with http.post(base + "/v1/invoices", data=body,
                             headers={"Content-Type": "application/json"}) as r:
            inv = orjson.loads(await r.read())
            if r.status != 201:
                raise RuntimeError(f"invoice create answered {r.status}: {inv}")
        out[inv["id"]] = inv["url"].replace("http://", "ws://", 1).replace(
            "https://", "wss://", 1) + "/ws"
    return out


async def _fan_out(
    fleet: Fleet, http: aiohttp.ClientSession, base: str, invoices: list[str],
    res: SocketsResult,
) -> None:
    """Cancel the invoices one at a time; per socket, cancel answered -> VOIDED received."""
    for inv in invoices:
        fleet.expect(inv)
        expected = len(fleet.waiting)
        async with http.post(f"{base}/v1/invoices/{inv}/cancel") as r:
            await r.read()
            t0 = time.perf_counter()
            if r.status != 200:
                raise RuntimeError(f"cancel of {inv} answered {r.status}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.done.wait(), DELIVERY_TIMEOUT)
        fleet.target = None
        for kind, at in fleet.arrivals:
            (res.checkout_latency if kind == "checkout" else res.merchant_latency).append(at - t0)
        missing = expected - len(fleet.arrivals)
        if missing:
            checkout_left = sum(1 for s in fleet.socks
                                if s.n in fleet.waiting and s.kind == "checkout")
            res.missed_checkout += checkout_left
            res.missed_merchant += missing - checkout_left
        await asyncio.sleep(CANCEL_GAP)


async def run_sockets(
    workdir: Path, *, invoices: int = 50, per_invoice: int = 20, merchant: int = 200,
    backlog: int = 200, cycles: int = 1, per_block: int = 10, paid_share: float = 0.02,
    open_invoices: int = 10_000, log: object = print,
) -> SocketsResult:
    say = log if callable(log) else print
    res = SocketsResult(invoices=invoices)
    _raise_nofile(invoices * per_invoice + merchant + 1024)
    node, dev, token = start_chain()
    proc: subprocess.Popen[bytes] | None = None
    db = workdir / "sockets.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    cursor: Cursor | None = None
    fleet = Fleet()
    try:
        half = open_invoices // 2
        prefill_db(db, native=half, tokens=open_invoices - half, token=token)
        port, checkout_port = _free_port(), _free_port()
        cfg = workdir / "sockets.toml"
        _config(cfg, db, port, checkout_port, node.url, token)
        proc = spawn_daemon(cfg, workdir / "sockets.log")
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        next_paid = {"eth": 0, "tok": 0}
        seeds = iter(range(100, 10_000))
        async with (
            aiohttp.ClientSession(headers=headers,
                                  connector=aiohttp.TCPConnector(limit=0)) as api,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as public,
        ):
            await _wait_ready(api, base, proc)
            cursor = Cursor(db)

            async def catch_up() -> None:
                r = await _catch_up(proc, dev, token, cursor, fleet, blocks=backlog,
                                    per_block=per_block, paid_share=paid_share,
                                    next_paid=next_paid, seed=next(seeds))
                res.rounds.append(r)
                say(f"  catch-up {'with' if r.with_sockets else 'without'} sockets: "
                    f"{r.rate:,.0f} blocks/s ({r.blocks} blocks in {r.seconds:.2f} s; daemon "
                    f"CPU {r.daemon_cpu:.2f} s, clients {r.client_cpu:.2f} s; {r.events} "
                    f"events, {r.merchant_messages:,} merchant messages)")

            urls = await _create_invoices(api, base, invoices)
            for cycle in range(cycles):
                await catch_up()
                await asyncio.sleep(1.0)  # settled
                rss0 = _status_kb(proc.pid, "VmRSS")
                seconds = await _open_all(fleet, public, api, urls, per_invoice, merchant, base)
                await asyncio.sleep(1.0)
                rss1 = _status_kb(proc.pid, "VmRSS")
                if cycle == 0:
                    res.connect_seconds = seconds
                    res.rss_before_kb, res.rss_after_kb = rss0, rss1
                    res.checkout_sockets = len(fleet.by_kind("checkout"))
                    res.merchant_sockets = len(fleet.by_kind("merchant"))
                    say(f"  {len(fleet.socks):,} sockets open in {res.connect_seconds:.1f} s; "
                        f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MB "
                        f"({res.rss_per_socket_kb:.1f} KB per socket)")
                    await _fan_out(fleet, api, base, list(urls), res)
                    say(f"  fan-out: checkout p50/p99 "
                        f"{percentile(res.checkout_latency, 50) * 1000:.1f} / "
                        f"{percentile(res.checkout_latency, 99) * 1000:.1f} ms, merchant "
                        f"{percentile(res.merchant_latency, 50) * 1000:.1f} / "
                        f"{percentile(res.merchant_latency, 99) * 1000:.1f} ms "
                        f"(missed {res.missed_checkout} + {res.missed_merchant})")
                await catch_up()
                await catch_up()
                res.closed_early += fleet.closed_early
                await fleet.close()
                fleet = Fleet()
                await asyncio.sleep(1.0)  # the daemon has dropped them
                await catch_up()
    finally:
        await fleet.close()
        if cursor is not None:
            cursor.close()
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        node.stop()
    return res


if __name__ == "__main__":  # pragma: no cover - manual use
    out = asyncio.run(run_sockets(Path(os.environ.get("TMPDIR", "/tmp"))))
    print(out.rss_per_socket_kb, out.catchup_ratio)
