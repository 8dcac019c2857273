"""Database size after 1M transfers, and what retention gives back.

A fresh database made by the real migrations (`watcher.storage.sqlite.connect`) gets `transfers`
synthetic transfer rows in one `executemany` (random-looking hashes and ids, as on a
chain, so the indexes grow as they would): 1 in 10 a payment of one of 100,000 invoices,
the rest unmatched, first seen evenly over the last two years. Then one retention pass
(`watcher.retention`, default batch) prunes unmatched transfers older than 365 days, each
batch its own transaction as in the daemon, and the file is measured again; its freed
pages are on SQLite's freelist (reused, the file does not shrink) until a `VACUUM INTO`
copy, whose size and time are measured too.

Standalone (`python -m bench.dbsize [transfers]`), not part of `python -m bench`: the fill
and the pass take about 2 minutes on 2 CPUs, over the runner's budget for an info row.
Figures: docs/operations.md, section 8.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watcher.retention import Ages, Pass
from watcher.storage.sqlite import connect

DAY = 86400
NET = "polygon"
ASSET = "USDT"
TOKEN_TO = "0x" + "ab" * 20


@dataclass(slots=True)
class DbSizeResult:
    transfers: int
    fill_s: float
    size: int  # bytes, after the fill (with its -wal checkpointed)
    pruned: int
    prune_s: float
    batches: int
    batch_ms: list[float] = field(default_factory=list)
    size_after_prune: int = 0
    freelist: int = 0  # bytes on the freelist after the prune
    vacuum_s: float = 0.0
    size_vacuumed: int = 0


def _rows(count: int, now: int) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    span = 2 * 365 * DAY
    for n in range(count):
        h = hashlib.sha256(n.to_bytes(8, "big")).hexdigest()
        tx = "0x" + h
        li = n % 5
        tid = "tr_" + hashlib.sha256(f"{NET}:{tx}:{li}:".encode()).hexdigest()[:24]
        seen = now - span + n * span // count  # evenly over two years, in order
        payment = n % 10 == 0
        out.append((
            tid, NET, tx, li, "", ASSET, "0x" + h[:40], TOKEN_TO if not payment else
            "0x" + h[24:64], str(1_000_000 + n % 9_000_000), 50_000_000 + n // 10,
            "0x" + h[::-1], seen - 30, f"{n % 100_000:08x}-0000-4000-8000-000000000000"
            if payment else None, "payment" if payment else "unmatched", seen, 1, 0,
        ))  # fmt: skip
    return out


def _size(path: Path) -> int:
    return path.stat().st_size


def run_dbsize(
    work: Path, transfers: int = 1_000_000, *, say: Callable[[str], None] = print
) -> DbSizeResult:
    path = work / "size.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    now = int(time.time())
    db = connect(path)
    started = time.perf_counter()
    rows = _rows(transfers, now)
    gen_s = time.perf_counter() - started
    db.execute("PRAGMA cache_size = -1000000")  # the fill only: random keys, 1 GB at most
    db.conn.execute("BEGIN")
    db.conn.executemany(
        "INSERT INTO transfers (id, network, tx_hash, log_index, trace, asset, from_addr, "
        "to_addr, amount, block, block_hash, timestamp, invoice_id, kind, seen_at, announced, "
        "assigned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.conn.execute("COMMIT")
    del rows
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA cache_size = -2000")  # back to the daemon's (SQLite's default)
    say(f"  rows made in {gen_s:.1f} s")
    res = DbSizeResult(transfers, time.perf_counter() - started, _size(path), 0, 0.0, 0)
    say(f"  {transfers:,} transfers written in {res.fill_s:.1f} s: {res.size / 1e6:,.0f} MB")

    ages = Ages(attempts=0, event_bodies=0, unmatched_transfers=365 * DAY, batch=500)
    p = Pass(ages, now)
    started = time.perf_counter()
    while not p.done:
        t0 = time.perf_counter()
        p.step(db)
        res.batch_ms.append((time.perf_counter() - t0) * 1000)
    res.prune_s = time.perf_counter() - started
    res.pruned, res.batches = p.pruned["unmatched_transfers"], p.batches
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    res.size_after_prune = _size(path)
    page = db.execute("PRAGMA page_size").fetchone()[0]
    res.freelist = db.execute("PRAGMA freelist_count").fetchone()[0] * page
    say(f"  pruned {res.pruned:,} unmatched transfers in {res.prune_s:.1f} s "
        f"({res.batches} batches): {res.size_after_prune / 1e6:,.0f} MB, "
        f"{res.freelist / 1e6:,.0f} MB free inside")
    db.close()

    copy = work / "size-vacuumed.db"
    copy.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    started = time.perf_counter()
    conn.execute("VACUUM INTO ?", [str(copy)])
    res.vacuum_s = time.perf_counter() - started
    conn.close()
    res.size_vacuumed = _size(copy)
    say(f"  VACUUM INTO a copy in {res.vacuum_s:.1f} s: {res.size_vacuumed / 1e6:,.0f} MB")
    for f in (path, copy, Path(f"{path}-wal"), Path(f"{path}-shm")):
        f.unlink(missing_ok=True)
    return res


if __name__ == "__main__":  # python -m bench.dbsize [transfers]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pw-size-") as tmp:
        r = run_dbsize(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
        ms = sorted(r.batch_ms)
        print(f"longest batch {ms[-1]:.1f} ms, p50 {ms[len(ms) // 2]:.1f} ms; "
              f"{os.cpu_count()} CPUs")
