"""Database trouble: locked by another process, read-only, disk full. Each gives a clear
`StoreError` (503 JSON from the API), the follower retries and resumes where it stopped
without skipping a block, nothing is half-written, and `PRAGMA integrity_check` stays ok.

Read-only and disk-full use real mounts (a tmpfs, a read-only bind mount): they need root
(CI=true without root fails, locally it skips)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.daemonproc import DaemonConfig, run_cli
from tests.integration.harness import NET, Harness
from tests.reliability.conftest import IN_CI
from watcher.devchain import DevChain
from watcher.errors import StoreError
from watcher.storage.store import Store
from watcher.web.api import ApiContext, create_app

USDT = 10**6
KEY = "k" * 40


def need_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("mount tests need root (CI=true: never skipped)", pytrace=False)
        pytest.skip("needs root to mount a tmpfs")


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    need_root()
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory`; the filler file (delete it to free space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def counts(path: Path) -> tuple[int, int, int, int | None]:
    db = sqlite3.connect(path)
    try:
        inv = db.execute("SELECT COUNT(*) FROM invoices").fetchone()[0]
        ev = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        tr = db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
        cur = db.execute("SELECT scanned_block FROM cursors").fetchone()
        return inv, ev, tr, cur[0] if cur else None
    finally:
        db.close()


@contextlib.asynccontextmanager
async def api_of(h: Harness) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(ApiContext(store=h.store, ledger=h.ledger, api_keys=[KEY]))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def create_via_api(client: TestClient[Any, Any], to: str) -> tuple[int, Any]:
    resp = await client.post(
        "/v1/invoices", json={"network": NET, "asset": "USDT", "amount": "5", "address": to},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    return resp.status, await resp.json()


def assert_503(status: int, body: Any) -> None:
    assert status == 503, body
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == "unavailable"


async def follow_through_trouble(
    h: Harness, chain: DevChain, token: str, payer: str, start_trouble: Any, end_trouble: Any,
    hold: float,
) -> str:
    """Run the follower; during trouble mine a payment and 5 blocks; end the trouble; the
    follower must complete the invoice without skipping a block. The error it noted."""
    await h.sync()
    first = h.follower.scanned
    assert first is not None
    to = chain.new_account()
    inv = await h.create("USDT", "5", to)
    before = counts(h.db_path)
    start_trouble()
    task = asyncio.create_task(h.follower.run())
    try:
        chain.send_token(token, payer, to, 5 * USDT)
        chain.mine(5)
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline and h.follower.last_error is None:
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        error = h.follower.last_error
        assert error is not None, "the follower saw no trouble"
        assert h.follower.scanned == first
        assert counts(h.db_path) == before  # nothing half-written
        end_trouble()
        head = chain.block_number()
        deadline = time.monotonic() + 20
        while h.follower.scanned != head or await h.status(inv.id) != "COMPLETED":
            assert time.monotonic() < deadline, "the follower did not resume"
            assert not task.done(), "the follower raised out"
            await asyncio.sleep(0.1)
    finally:
        h.follower.stop()
        await task
    scanned = h.metrics.registry.get_sample_value(
        "payment_watcher_blocks_scanned_total", {"network": NET}
    )
    assert scanned == head - first + 1  # the first pass scanned `first`
    assert integrity(h.db_path) == "ok"
    return error


# --------------------------------------------------------------------------- locked

_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("CREATE TABLE IF NOT EXISTS _locker (x)")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


class Locker:
    """Another process holding an exclusive lock (a write transaction) on the database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def lock(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(self.path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)


@pytest.mark.slow
async def test_locked_database(tmp_path: Path, chain: DevChain, token: str, payer: str) -> None:
    h = await Harness(tmp_path / "w.db", [chain.url], {"USDT": (token, 6)}).start()
    locker = Locker(tmp_path / "w.db")
    try:
        async with api_of(h) as client:
            locker.lock()
            try:
                status, body = await create_via_api(client, chain.new_account())
                assert_503(status, body)
                with pytest.raises(StoreError, match="locked by another process"):
                    await h.create("USDT", "1", chain.new_account())
            finally:
                locker.release()
            status, body = await create_via_api(client, chain.new_account())
            assert status == 201, body
        error = await follow_through_trouble(
            h, chain, token, payer, locker.lock, locker.release, hold=6.5
        )
        assert "locked by another process" in error
    finally:
        locker.release()
        await h.close()


# --------------------------------------------------------------------------- disk full


async def test_disk_full(tmp_path: Path, chain: DevChain, token: str, payer: str) -> None:
    with tmpfs(tmp_path / "mnt") as mnt:
        db_path = mnt / "w.db"
        h = await Harness(db_path, [chain.url], {"USDT": (token, 6)}).start()
        filler: list[Path] = []

        def full() -> None:
            # an empty WAL: every write now needs new blocks
            with sqlite3.connect(db_path) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            filler.append(fill(mnt))

        def free() -> None:
            filler.pop().unlink()

        try:
            async with api_of(h) as client:
                full()
                try:
                    before = counts(db_path)
                    status, body = await create_via_api(client, chain.new_account())
                    assert_503(status, body)
                    with pytest.raises(StoreError, match="disk is full"):
                        await h.create("USDT", "1", chain.new_account())
                    assert counts(db_path) == before
                    # reads still work
                    resp = await client.get("/v1/invoices",
                                            headers={"Authorization": f"Bearer {KEY}"})
                    assert resp.status == 200
                finally:
                    free()
                status, body = await create_via_api(client, chain.new_account())
                assert status == 201, body
            error = await follow_through_trouble(h, chain, token, payer, full, free, hold=2)
            assert "disk is full" in error
        finally:
            while filler:
                free()
            await h.close()


# --------------------------------------------------------------------------- read-only


@contextlib.contextmanager
def read_only_view(directory: Path) -> Iterator[Path]:
    """`directory` seen through a read-only bind mount (root) or with its write bits off."""
    if os.geteuid() == 0:
        view = directory.parent / (directory.name + "-ro")
        view.mkdir()
        subprocess.run(["mount", "--bind", str(directory), str(view)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
            yield view
        finally:
            subprocess.run(["umount", "-l", str(view)], check=False)
    else:
        modes = {p: p.stat().st_mode for p in [directory, *directory.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield directory
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


async def test_read_only_database(tmp_path: Path, chain: DevChain, token: str) -> None:
    data = tmp_path / "data"
    h = await Harness(data / "w.db", [chain.url], {"USDT": (token, 6)}).start()
    await h.create("USDT", "1", chain.new_account())
    await h.close()
    with read_only_view(data) as view:
        store = Store(view / "w.db")
        with pytest.raises(StoreError, match="read-only"):
            await store.open()
        await store.close()

        # the daemon refuses to start with one clear line, no traceback
        cfg = DaemonConfig(tmp_path, [chain.url], {"USDT": token},
                           extra={"": {"database": str(view / "w.db")}})
        out = run_cli("run", "--config", str(cfg.write()), timeout=60)
        text = out.stdout + out.stderr
        assert out.returncode != 0
        assert "read-only" in text, text
        assert "Traceback" not in text, text
    assert integrity(data / "w.db") == "ok"
