"""PostgreSQL against SQLite on this machine (issue 17): the same catch-up and the same creates,
measured side by side in one run, on a real server the bench starts (Debian's package, as
the tests do); and creates with two instances on one database against one.

- catch-up, tokens only: the in-process follower (`catchup.run_follower`) over the same
  chain and the same invoices, each round on a fresh copy: a SQLite file, and a PostgreSQL
  database made from one `migrate-to-postgres` copy (`CREATE DATABASE ... TEMPLATE`).
- creates over HTTP: `payment-watcher run` on SQLite, on PostgreSQL, and two instances on
  one PostgreSQL database, each given `concurrency` requests in flight; in `rounds` rounds,
  the three cases one after the other in each, the ratios taken per round (their median).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psycopg

from tests.integration.receiver import Receiver
from tests.pgserver import PgServer, start_postgres
from watcher.storage import migrate, postgres
from watcher.storage.sqlite import connect

from .catchup import run_follower
from .live import (
    API_KEY,
    _config,
    _creates,
    _free_port,
    _wait_ready,
    busy_share,
    machine_busy,
    spawn_daemon,
)
from .workload import build_chain, copy_db, prefill, set_cursor, start_chain


def _checkpoint(server: PgServer) -> None:
    """Flush the server's dirty pages now: a round then starts on a quiet server instead
    of sharing the disk with the checkpoint an earlier round's writes would bring."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _new_database(server: PgServer, name: str, template: str | None = None) -> str:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


async def catch_up(
    server: PgServer, work: Path, *, blocks: int, invoices: int, rounds: int,
    say: Callable[[str], None],
) -> tuple[list[float], list[float], int]:
    """(SQLite blocks/s per round, PostgreSQL blocks/s per round, blocks)."""
    chain = build_chain(blocks, 10, watched=invoices // 2, paid_share=0.02)
    try:
        tok = work / "pg-tok.db"
        prefill(tok, native=0, tokens=invoices, token=chain.token)
        set_cursor(tok, chain.first - 1, chain.last)
        template = _new_database(server, "bench_tpl")
        lite, pg = connect(tok), postgres.connect(template)
        try:
            migrate.copy(lite, pg)
        finally:
            lite.close()
            pg.close()
        lite_rates: list[float] = []
        pg_rates: list[float] = []
        for i in range(rounds):
            r = await run_follower(copy_db(tok, work / "pg-run.db"), chain.url, chain.token,
                                   chain.last)
            lite_rates.append(r.rate)
            url = _new_database(server, f"bench_run{i}", template="bench_tpl")
            _checkpoint(server)  # the copy's writes are flushed before the round, not during
            r = await run_follower(url, chain.url, chain.token, chain.last)
            pg_rates.append(r.rate)
            say(f"  round {i + 1}: tokens-only catch-up SQLite {lite_rates[-1]:,.0f} blocks/s, "
                f"PostgreSQL {pg_rates[-1]:,.0f} blocks/s")
        return lite_rates, pg_rates, chain.blocks
    finally:
        chain.node.stop()


async def creates(
    server: PgServer, work: Path, *, count: int, concurrency: int, rounds: int,
    say: Callable[[str], None],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Creates/s per round, and the machine's busy CPU share meanwhile: "sqlite",
    "postgres", "postgres x2" (two instances, one database), one after the other in each
    round, each on a new database (the rate of a single run moves by +-20% here)."""
    node, _, token = start_chain(block_time=1)
    receiver = Receiver(secret="bench-secret")
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, list[float]] = {}
    busy: dict[str, list[float]] = {}
    try:
        await receiver.start()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for round_ in range(rounds):
            cases: list[tuple[str, list[str]]] = [
                ("sqlite", [str(work / f"creates-{round_}.db")]),
                ("postgres", [_new_database(server, f"bench_creates_{round_}")]),
                ("postgres x2", [_new_database(server, f"bench_creates2_{round_}")] * 2),
            ]
            for name, databases in cases:
                _checkpoint(server)
                bases = []
                for n, database in enumerate(databases):
                    port = _free_port()
                    cfg = work / f"creates-{n}.toml"
                    _config(cfg, database, port, node.url, token, receiver.url)
                    if database.startswith("postgresql://"):
                        with cfg.open("a") as f:
                            f.write(f'[cluster]\ninstance_name = "bench-{n}"\n')
                    procs.append(spawn_daemon(cfg, work / f"creates-{n}.log"))
                    bases.append(f"http://127.0.0.1:{port}")
                async with aiohttp.ClientSession(
                    headers=headers, connector=aiohttp.TCPConnector(limit=128)
                ) as http:
                    for base, proc in zip(bases, procs[-len(bases):], strict=True):
                        await _wait_ready(http, base, proc)
                    started, cpu = time.perf_counter(), machine_busy()
                    share = count // len(bases)
                    done = await asyncio.gather(*(
                        _creates(http, base, share, concurrency, offset=n * share)
                        for n, base in enumerate(bases)))
                    secs = time.perf_counter() - started
                    share_busy = busy_share(cpu, machine_busy())
                made = sum(ok for ok, _, _ in done)
                errors = sum(e for _, e, _ in done)
                out.setdefault(name, []).append(made / secs)
                busy.setdefault(name, []).append(share_busy)
                say(f"  round {round_ + 1}, creates on {name}: {made / secs:,.0f}/s "
                    f"({errors} errors, machine CPU {share_busy:.0%} busy)")
                for proc in procs[-len(bases):]:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await receiver.stop()
        node.stop()
    return out, busy


async def run_postgres(
    work: Path, *, blocks: int, invoices: int, rounds: int, count: int, concurrency: int,
    say: Callable[[str], None],
) -> tuple[tuple[list[float], list[float], int],
           tuple[dict[str, list[float]], dict[str, list[float]]]]:
    with start_postgres(durable=True) as server:  # fsync on, as in production
        cu = await catch_up(server, work, blocks=blocks, invoices=invoices, rounds=rounds,
                            say=say)
        cr = await creates(server, work, count=count, concurrency=concurrency, rounds=rounds,
                           say=say)
    return cu, cr


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
