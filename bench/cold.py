"""Cold tokens-only catch-up of a real `payment-watcher run`, timed from the moment the new
head is visible at the node.

A daemon follows a token-only network (open USDT invoices on dedicated addresses, `ws`
newHeads configured) and sits idle at the head. It is paused (SIGSTOP), a backlog of
`blocks` x `per_block` USDT transfers is mined (a share of them paying invoices), and the
clock starts when the last block exists; the daemon is resumed at once and timed until its
scanned block in the database is that block. The raw baseline reads the same blocks right
after: `eth_blockNumber`, then `eth_getLogs` (token address + Transfer topic) over the same
ranges the daemon asks, one at a time, timed from its first request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from watcher.devchain import DevChain

from .live import _free_port, _wait_ready, spawn_daemon
from .raw import TRANSFER_TOPIC, RawClient
from .workload import Cursor, mine_blocks, start_chain
from .workload import prefill as prefill_db

RANGE = 1000  # the daemon's max_block_range, and the raw client's ranges
TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class ColdRound:
    invoices: int
    paid_share: float
    blocks: int
    payments: int
    daemon_s: float  # head visible -> the daemon's cursor at it
    raw_s: float  # the raw client's eth_blockNumber + eth_getLogs over the same blocks

    @property
    def ratio(self) -> float:
        return self.raw_s / self.daemon_s


def _config(path: Path, db: Path, port: int, url: str, token: str) -> None:
    ws = url.replace("http://", "ws://", 1)
    path.write_text(
        f'database = "{db}"\nlog_level = "warning"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\napi_keys = ["bench-key"]\n'
        f'[networks.anvil]\nrpc = ["{url}"]\nws = ["{ws}"]\nblock_time = 1\n'
        f"confirmations = 2\nmax_block_range = {RANGE}\n"
        f'tokens = [{{ symbol = "USDT", address = "{token}", decimals = 6 }}]\n'
    )


async def _raw(url: str, token: str, first: int, last: int) -> float:
    client = RawClient(url)
    try:
        await client.call("eth_chainId", [])  # connected, as the daemon is
        started = time.perf_counter()
        await client.call("eth_blockNumber", [])
        for start in range(first, last + 1, RANGE):
            end = min(last, start + RANGE - 1)
            await client.call("eth_getLogs", [{
                "fromBlock": hex(start), "toBlock": hex(end), "address": [token],
                "topics": [TRANSFER_TOPIC],
            }])
        return time.perf_counter() - started
    finally:
        await client.close()


async def _round(
    proc: subprocess.Popen[bytes], dev: DevChain, url: str, token: str, cursor: Cursor,
    *, invoices: int, blocks: int, per_block: int, paid_share: float,
    next_paid: dict[str, int], seed: int,
) -> ColdRound:
    await cursor.wait_for(dev.block_number(), 30)
    await asyncio.sleep(0.5)  # idle at the head
    first = dev.block_number() + 1
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        paid = await asyncio.to_thread(
            mine_blocks, dev, token, blocks, per_block, native_share=0.0,
            paid_share=paid_share, next_paid=next_paid, watched=invoices, seed=seed,
        )
        started = time.perf_counter()  # the last block exists
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    last = first + blocks - 1
    await cursor.wait_for(last, TIMEOUT, poll=0.002)
    daemon_s = time.perf_counter() - started
    raw_s = await _raw(url, token, first, last)
    return ColdRound(invoices, paid_share, blocks, paid["tok"], daemon_s, raw_s)


async def run_cold(
    workdir: Path, *, invoices: int, shares: list[float], blocks: int, per_block: int,
    log: object = print,
) -> list[ColdRound]:
    """One daemon with `invoices` open USDT invoices; one cold round per paid share."""
    say = log if callable(log) else print
    node, dev, token = start_chain()
    proc: subprocess.Popen[bytes] | None = None
    db = workdir / f"cold{invoices}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    rounds: list[ColdRound] = []
    try:
        prefill_db(db, native=0, tokens=invoices, token=token)
        port = _free_port()
        cfg = workdir / "cold.toml"
        _config(cfg, db, port, node.url, token)
        proc = spawn_daemon(cfg, workdir / "cold.log")
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, f"http://127.0.0.1:{port}", proc)
        cursor = Cursor(db)
        next_paid = {"eth": 0, "tok": 0}
        try:
            for i, share in enumerate(shares):
                r = await _round(proc, dev, node.url, token, cursor, invoices=invoices,
                                 blocks=blocks, per_block=per_block, paid_share=share,
                                 next_paid=next_paid, seed=100 + i)
                rounds.append(r)
                say(f"  {invoices:,} invoices, {share:.0%} paying ({r.payments} payments): "
                    f"daemon {r.daemon_s * 1000:.0f} ms, raw {r.raw_s * 1000:.0f} ms "
                    f"({r.ratio:.2f}x)")
        finally:
            cursor.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        node.stop()
    return rounds
