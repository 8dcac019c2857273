"""Runs every benchmark and prints one table: each figure with its target and PASS/MISS.
The table (with the machine, versions and date) also replaces the matching section of
bench/RESULTS.md, between `<!-- bench:MODE -->` and `<!-- /bench:MODE -->`."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watcher.devchain import find_anvil

from . import raw
from .catchup import run_follower
from .cold import ColdRound, run_cold
from .live import LiveResult, percentile, run_live
from .sockets import SocketsResult, run_sockets
from .workload import build_chain, copy_db, prefill, set_cursor

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: tokens-only catch-up runs per round (each only ~0.1-0.3 s, so noise needs more of them)
TOKEN_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    blocks: int
    per_block: int
    invoices: int
    repeats: int
    backlog: int
    creates: int
    samples: int
    paid_share: float = 0.02
    #: live sockets: blocks per catch-up round, and (without, with, with, without) cycles
    socket_backlog: int = 200
    socket_cycles: int = 1
    #: cold tokens-only catch-ups: blocks per backlog, rounds per case
    cold_blocks: int = 500
    cold_rounds: int = 1
    #: PostgreSQL against SQLite: catch-up blocks, open token invoices, rounds; creates
    pg_blocks: int = 1_000
    pg_invoices: int = 20_000
    pg_rounds: int = 3
    pg_creates: int = 2_000


SHORT = Mode("short", blocks=1000, per_block=10, invoices=100_000, repeats=3, backlog=2000,
             creates=3000, samples=30)
FULL = Mode("full", blocks=2000, per_block=10, invoices=100_000, repeats=5, backlog=5000,
            creates=20_000, samples=120, socket_backlog=250, socket_cycles=2,
            cold_blocks=2000, cold_rounds=2, pg_blocks=1000, pg_invoices=100_000, pg_rounds=3,
            pg_creates=6_000)


@dataclass(slots=True)
class Row:
    name: str
    value: str
    target: str
    ok: bool | None  # None: information only

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else ("PASS" if self.ok else "MISS")


def machine() -> dict[str, str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    try:
        anvil = subprocess.run([find_anvil(), "--version"], capture_output=True, text=True,
                               timeout=10).stdout.strip().splitlines()[0]
    except Exception as exc:
        anvil = f"? ({exc})"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "anvil": anvil,
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _say(text: str) -> None:
    print(text, flush=True)


async def catch_up(mode: Mode, work: Path, say: Callable[[str], None]) -> list[Row]:
    started = time.perf_counter()
    chain = build_chain(mode.blocks, mode.per_block, watched=mode.invoices // 2,
                        paid_share=mode.paid_share)
    say(f"chain: {chain.blocks} blocks x {mode.per_block} txs ({chain.txs} txs, paying "
        f"{chain.paid['eth']} ETH + {chain.paid['tok']} USDT invoices) in "
        f"{time.perf_counter() - started:.0f} s")
    try:
        half = mode.invoices // 2
        mixed, tok = work / "mixed.db", work / "tok.db"
        prefill(mixed, native=half, tokens=mode.invoices - half, token=chain.token)
        prefill(tok, native=0, tokens=mode.invoices, token=chain.token)
        for db in (mixed, tok):
            set_cursor(db, chain.first - 1, chain.last)
        n = chain.blocks
        raw_full: list[float] = []
        raw_logs: list[float] = []
        fol_full: list[float] = []
        fol_tok: list[float] = []
        gets: list[float] = []  # GET /v1/invoices/{id} during the full-block catch-ups
        pages: list[float] = []  # the checkout page GET /pay/{id} meanwhile
        calls = requests = 0
        for i in range(mode.repeats):
            secs = await raw.full_blocks(chain.url, chain.first, chain.last, token=chain.token)
            raw_full.append(n / secs)
            r = await run_follower(copy_db(mixed, work / "run.db"), chain.url, chain.token,
                                   chain.last)
            fol_full.append(r.rate)
            for _ in range(TOKEN_REPEATS):  # a tenth of a second each: more samples
                secs = await raw.logs_only(chain.url, chain.first, chain.last,
                                           token=chain.token)
                raw_logs.append(n / secs)
                r = await run_follower(copy_db(tok, work / "run.db"), chain.url, chain.token,
                                       chain.last)
                fol_tok.append(r.rate)
                calls, requests = r.rpc_calls, r.http_requests
            say(f"  round {i + 1}: full blocks raw {raw_full[-1]:,.0f}/s daemon "
                f"{fol_full[-1]:,.0f}/s; tokens-only raw {raw_logs[-1]:,.0f}/s daemon "
                f"{fol_tok[-1]:,.0f}/s ({calls} calls in {requests} requests)")
        # one more full-block catch-up, not in the ratios: the API on the same loop, read
        # over HTTP throughout (the probe takes CPU from the scan it measures)
        r = await run_follower(copy_db(mixed, work / "run.db"), chain.url, chain.token,
                               chain.last, probe=True)
        gets, pages = r.get_latency, r.page_latency
        say(f"  GET during a full-block catch-up ({n / r.seconds:,.0f} blocks/s): p50 "
            f"{_pct(gets, 50) * 1000:.1f} ms, p99 {_pct(gets, 99) * 1000:.1f} ms (n={len(gets)}); "
            f"checkout page p50 {_pct(pages, 50) * 1000:.1f} ms, p99 "
            f"{_pct(pages, 99) * 1000:.1f} ms (n={len(pages)})")
    finally:
        chain.node.stop()
    # each daemon run against the raw run just before it (the load of a shared machine
    # drifts between rounds); the median of those ratios
    full_ratio = statistics.median(d / r for d, r in zip(fol_full, raw_full, strict=True))
    tok_ratio = statistics.median(d / r for d, r in zip(fol_tok, raw_logs, strict=True))
    per_block = calls / n
    what = f"{n:,} blocks x {mode.per_block} txs, {mode.invoices:,} open invoices"
    return [
        Row(f"catch-up, native invoice open (full blocks): daemon / raw ({what})",
            f"{full_ratio:.2f}x (median {statistics.median(fol_full):,.0f} / "
            f"{statistics.median(raw_full):,.0f} blocks/s, best {max(fol_full):,.0f} / "
            f"{max(raw_full):,.0f})",
            ">= 0.9x", full_ratio >= 0.9),
        Row(f"catch-up, tokens only (eth_getLogs): daemon / raw ({what})",
            f"{tok_ratio:.2f}x (median {statistics.median(fol_tok):,.0f} / "
            f"{statistics.median(raw_logs):,.0f} blocks/s, best {max(fol_tok):,.0f} / "
            f"{max(raw_logs):,.0f})",
            ">= 0.8x", tok_ratio >= 0.8),
        Row("RPC calls per scanned block, tokens only (catch-up, batch elements counted)",
            f"{per_block:.4f} ({calls} calls / {n:,} blocks)", "<= 1", per_block <= 1),
        Row("GET /v1/invoices/{id} during a full-block catch-up (API on the daemon's "
            f"loop, one request at a time), p50 / p99 (n={len(gets):,})",
            f"{_pct(gets, 50) * 1000:.1f} / {_pct(gets, 99) * 1000:.1f} ms",
            "p99 <= 50 ms", bool(gets) and _pct(gets, 99) <= 0.050),
        Row("checkout page GET /pay/{id} during the same catch-up (checkout on the daemon's "
            f"loop, one request at a time), p50 / p99 (n={len(pages):,})",
            f"{_pct(pages, 50) * 1000:.1f} / {_pct(pages, 99) * 1000:.1f} ms",
            "p99 <= 50 ms", bool(pages) and _pct(pages, 99) <= 0.050),
    ]


def _pct(values: list[float], pct: int) -> float:
    """The `pct` percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def live_rows(res: LiveResult, mode: Mode) -> list[Row]:
    p50 = percentile(res.api_latency, 50)
    p99 = percentile(res.api_latency, 99)
    c50 = percentile(res.callback_latency, 50)
    c99 = percentile(res.callback_latency, 99)
    b50 = percentile(res.block_wait, 50)
    a50 = percentile(res.api_after_block, 50)
    a99 = percentile(res.api_after_block, 99)
    n = len(res.api_latency)
    return [
        Row(f"detection latency p50, tx sent -> WAITING_FOR_CONFIRMATIONS over HTTP "
            f"(1 s blocks, n={n})", f"{p50:.2f} s", "<= 0.5 s", p50 <= 0.5),
        Row("detection latency p99, same", f"{p99:.2f} s", "<= 1.5 s", p99 <= 1.5),
        Row("detection latency p50, tx sent -> callback received", f"{c50:.2f} s",
            "<= 0.5 s", c50 <= 0.5),
        Row("detection latency p99, tx sent -> callback received", f"{c99:.2f} s",
            "<= 1.5 s", c99 <= 1.5),
        Row("  of which: tx sent -> its block mined (the node's share), p50 / p99",
            f"{b50:.2f} / {percentile(res.block_wait, 99):.2f} s", "info", None),
        Row("status on the API after its block is announced by the node (newHeads), p50 / p99",
            f"{a50 * 1000:.1f} / {a99 * 1000:.1f} ms", "<= 20 / <= 60 ms",
            a50 <= 0.020 and a99 <= 0.060),
        Row("  block announced by the node -> callback received, p50 / p99",
            f"{percentile(res.after_block, 50) * 1000:.1f} / "
            f"{percentile(res.after_block, 99) * 1000:.1f} ms", "info", None),
        Row(f"RSS of `payment-watcher run` with {mode.invoices:,} open invoices",
            f"{res.rss_mb:.0f} MB (peak {res.hwm_mb:.0f} MB)", "<= 150 MB", res.rss_mb <= 150),
        Row(f"invoice creates/s over HTTP ({res.create_concurrency} in flight, n={res.creates:,})",
            f"{res.creates_per_s:,.0f}/s ({res.create_errors} errors)", ">= 2,000/s",
            res.creates_per_s >= 2000 and res.create_errors == 0),
        Row("  of which: CPU during the creates, the daemon; the whole machine (2 CPUs: "
            "daemon, bench client and receiver, anvil)",
            f"{res.creates_daemon_cores:.2f} cores; {res.creates_machine_busy:.0%} busy",
            "info", None),
        Row("invoice creates/s priced in EUR (price + currency, rate in memory) / with amount",
            f"{res.priced_per_s / max(res.creates_per_s, 1e-9):.2f}x "
            f"({res.priced_per_s:,.0f} / {res.creates_per_s:,.0f}/s, "
            f"{res.priced_errors} errors)", ">= 0.9x",
            res.priced_per_s >= 0.9 * res.creates_per_s and res.priced_errors == 0),
        Row(f"callback deliveries/s to a local receiver (backlog of {res.callbacks:,})",
            f"{res.callbacks_per_s:,.0f}/s", ">= 500/s", res.callbacks_per_s >= 500),
    ]


#: (open USDT invoices, share of transfers paying) of each cold tokens-only case
COLD_CASES = ((20_000, (0.02, 0.10)), (1_000, (0.02,)))


async def cold_catch_up(mode: Mode, work: Path, say: Callable[[str], None]) -> list[Row]:
    rounds: list[ColdRound] = []
    for invoices, shares in COLD_CASES:
        rounds += await run_cold(work, invoices=invoices, shares=list(shares) * mode.cold_rounds,
                                 blocks=mode.cold_blocks, per_block=mode.per_block, log=say)
    rows = []
    for invoices, shares in COLD_CASES:
        for share in shares:
            case = [r for r in rounds if r.invoices == invoices and r.paid_share == share]
            ratio = statistics.median(r.ratio for r in case)
            daemon = statistics.median(r.daemon_s for r in case) * 1000
            raw_ms = statistics.median(r.raw_s for r in case) * 1000
            rows.append(Row(
                f"cold catch-up, tokens only, from the head visible: daemon / raw eth_getLogs "
                f"({mode.cold_blocks:,} blocks x {mode.per_block} USDT transfers, "
                f"{invoices:,} open invoices, {share:.0%} paying, {len(case)} round(s))",
                f"{ratio:.2f}x ({daemon:,.0f} / {raw_ms:,.0f} ms, "
                f"{case[0].payments:,} payments)", ">= 0.8x", ratio >= 0.8))
    return rows


def socket_rows(res: SocketsResult) -> list[Row]:
    ms = 1000
    c50 = percentile(res.checkout_latency, 50) * ms
    c99 = percentile(res.checkout_latency, 99) * ms
    m50 = percentile(res.merchant_latency, 50) * ms
    m99 = percentile(res.merchant_latency, 99) * ms
    ratio = res.catchup_ratio
    with_ = [r for r in res.rounds if r.with_sockets]
    without = [r for r in res.rounds if not r.with_sockets]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    short_of = sum(r.events * res.merchant_sockets - r.merchant_messages for r in with_)
    cut = f", {res.closed_early} closed by the daemon" if res.closed_early else ""
    return [
        Row(f"checkout sockets: cancel answered -> VOIDED received, p50 / p99 "
            f"({res.checkout_sockets:,} on {res.invoices} invoices, "
            f"n={len(res.checkout_latency):,})",
            f"{c50:.1f} / {c99:.1f} ms ({res.missed_checkout} missed{cut})", "p99 <= 100 ms",
            c99 <= 100 and res.missed_checkout == 0),
        Row(f"merchant sockets (\"all\", {res.merchant_sockets} on the same daemon): same, "
            f"p50 / p99 (n={len(res.merchant_latency):,})",
            f"{m50:.1f} / {m99:.1f} ms ({res.missed_merchant} missed)", "p99 <= 100 ms",
            m99 <= 100 and res.missed_merchant == 0),
        Row(f"catch-up with those {res.sockets:,} sockets open / without "
            f"({with_[0].blocks if with_ else 0}-block backlogs, {len(res.rounds)} rounds)",
            f"{ratio:.2f}x (mean {mean(res.rates(True)):,.0f} / "
            f"{mean(res.rates(False)):,.0f} blocks/s)", ">= 0.9x", ratio >= 0.9),
        Row("  of which: CPU per round, daemon with / without sockets; the clients (bench)",
            f"{mean([r.daemon_cpu for r in with_]):.2f} / "
            f"{mean([r.daemon_cpu for r in without]):.2f} s; "
            f"{mean([r.client_cpu for r in with_]):.2f} s for "
            f"{mean([float(r.merchant_messages) for r in with_]):,.0f} merchant messages"
            + (f" ({short_of:,} not received)" if short_of else ""),
            "info", None),
        Row(f"RSS added per idle socket ({res.sockets:,} sockets)",
            f"{res.rss_per_socket_kb:.1f} KB ({res.rss_before_kb / 1024:.0f} -> "
            f"{res.rss_after_kb / 1024:.0f} MB)", "info", None),
    ]


async def postgres_rows(mode: Mode, work: Path, say: Callable[[str], None]) -> list[Row]:
    from .postgres import median_ratio, run_postgres

    (lite, pg, blocks), (creates, busy) = await run_postgres(
        work, blocks=mode.pg_blocks, invoices=mode.pg_invoices, rounds=mode.pg_rounds,
        count=mode.pg_creates, concurrency=16, say=say)
    catch = median_ratio(pg, lite)
    one = median_ratio(creates["postgres"], creates["sqlite"])
    two = median_ratio(creates["postgres x2"], creates["postgres"])
    # If every create costs the machine the same CPU, two instances can make at most
    # 1 / (the busy share of one) times one instance's creates: the machine is then full.
    ceiling = 1 / statistics.median(busy["postgres"])
    what = f"{blocks:,} blocks x 10 txs, {mode.pg_invoices:,} open token invoices"
    rounds = f"median of {mode.pg_rounds} alternated rounds"

    def rates(name: str) -> str:
        return f"{name} " + ", ".join(f"{r:,.0f}" for r in creates[name])

    return [
        Row(f"catch-up, tokens only, PostgreSQL / SQLite ({what})",
            f"{catch:.2f}x (median {statistics.median(pg):,.0f} / "
            f"{statistics.median(lite):,.0f} blocks/s)", ">= 0.7x", catch >= 0.7),
        Row(f"creates over HTTP, PostgreSQL / SQLite (16 in flight, {mode.pg_creates:,}; "
            f"{rounds})",
            f"{one:.2f}x ({rates('postgres')}; {rates('sqlite')}/s)", ">= 0.7x", one >= 0.7),
        Row("creates over HTTP, two instances on one PostgreSQL / one (16 in flight each; "
            f"{rounds})",
            f"{two:.2f}x ({rates('postgres x2')}; {rates('postgres')}/s)", ">= 1.6x",
            two >= 1.6),
        Row("  of which: the machine's CPU busy during those creates (all processes: "
            "daemons, server, bench client, anvil; medians)",
            ", ".join(f"{name} {statistics.median(share):.0%}"
                      for name, share in busy.items()), "info", None),
        Row("  of which: the most two instances could make on this machine "
            "(1 / one instance's busy share)", f"{ceiling:.2f}x", "info", None),
    ]


def table(rows: list[Row]) -> str:
    w0 = max(len(r.name) for r in rows)
    w1 = max(len(r.value) for r in rows)
    w2 = max(len(r.target) for r in rows)
    head = f"| {'figure':<{w0}} | {'measured':<{w1}} | {'target':<{w2}} | result |"
    sep = f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|{'-' * (w2 + 2)}|--------|"
    lines = [head, sep]
    lines += [f"| {r.name:<{w0}} | {r.value:<{w1}} | {r.target:<{w2}} | {r.verdict:<6} |"
              for r in rows]
    return "\n".join(lines)


def write_results(mode: Mode, info: dict[str, str], text: str, seconds: float) -> None:
    body = (
        f"<!-- bench:{mode.name} -->\n"
        f"### `python -m bench --{mode.name}` ({info['date']}, {seconds:.0f} s)\n\n"
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"load average at start {info['load']}; {info['anvil']}; Python {info['python']}.\n\n"
        f"{text}\n"
        f"<!-- /bench:{mode.name} -->"
    )
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"<!-- bench:{mode.name} -->.*?<!-- /bench:{mode.name} -->", re.S)
    new = pattern.sub(lambda _m: body, old) if pattern.search(old) else old + "\n" + body + "\n"
    RESULTS.write_text(new)


async def main(mode: Mode, *, write: bool = True) -> int:
    started = time.perf_counter()
    info = machine()
    _say(f"payment-watcher bench --{mode.name}: {info['nproc']} CPUs, load {info['load']}")
    with tempfile.TemporaryDirectory(prefix="pw-bench-") as tmp:
        work = Path(tmp)
        rows = await catch_up(mode, work, _say)
        _say("cold tokens-only catch-ups of a live daemon (paused while the backlog is mined):")
        rows += await cold_catch_up(mode, work, _say)
        _say("live daemon (1 s blocks):")
        res = await run_live(work, invoices=mode.invoices, backlog=mode.backlog,
                             creates=mode.creates, samples=mode.samples, log=_say)
        rows += live_rows(res, mode)
        _say("live sockets (1,000 checkout + 200 merchant on one daemon):")
        sres = await run_sockets(work, backlog=mode.socket_backlog, cycles=mode.socket_cycles,
                                 per_block=mode.per_block, paid_share=mode.paid_share, log=_say)
        rows += socket_rows(sres)
        _say("PostgreSQL against SQLite (a real server, fsync on):")
        rows += await postgres_rows(mode, work, _say)
    text = table(rows)
    seconds = time.perf_counter() - started
    _say("")
    _say(text)
    _say(f"\n{seconds:.0f} s")
    if write:
        write_results(mode, info, text, seconds)
    return 0 if all(r.ok is not False for r in rows) else 1


def run(mode: Mode, *, write: bool = True) -> int:
    return asyncio.run(main(mode, write=write))
