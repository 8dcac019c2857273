"""Reads on their own connection and thread: they see the last commit and do not wait for a
write in progress."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlite_utils import Database

from watcher.storage.store import Store, transaction


async def test_a_read_does_not_wait_for_a_long_write(tmp_path: Path) -> None:
    store = await Store(tmp_path / "w.db").open()
    writing, release = threading.Event(), threading.Event()

    def slow_write(db: Database) -> None:
        with transaction(db):
            db.execute("INSERT INTO cursors (network, chain_id, updated_at) VALUES ('n', 1, 1)")
            writing.set()
            release.wait(10)  # a range commit that takes long

    def count(db: Database) -> int:
        return int(db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0])

    write = asyncio.ensure_future(store.run(slow_write))
    await asyncio.to_thread(writing.wait, 10)
    # the writer thread is busy inside its transaction: a read answers anyway, with the
    # last committed state (the insert is not committed yet)
    assert await asyncio.wait_for(store.read(count), 5) == 0
    release.set()
    await write
    assert await store.read(count) == 1  # and sees the commit once it is made
    await store.close()


async def test_the_reading_connection_cannot_write(tmp_path: Path) -> None:
    store = await Store(tmp_path / "w.db").open()

    def sneak(db: Database) -> None:
        db.execute("INSERT INTO cursors (network, chain_id, updated_at) VALUES ('n', 1, 1)")

    try:
        await store.read(sneak)
    except Exception as exc:  # StoreError: attempt to write a readonly database
        assert "readonly" in str(exc).replace("-", "").lower() or "read" in str(exc).lower()
    else:
        raise AssertionError("a write on the reading connection went through")
    await store.close()


def test_the_per_head_refresh_reads_recent_invoices_by_their_time_index(tmp_path: Path) -> None:
    """The follower asks for recently changed invoices on every new head: the plan must
    search `invoices_updated`, not walk every invoice of the network through
    `invoices_status` (which the planner prefers on its own: 50 ms at 100,000 invoices)."""
    from watcher.storage.rows import invoices_updated_since
    from watcher.storage.sqlite import connect

    db = connect(tmp_path / "r.db")
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    assert invoices_updated_since(db, 1_700_000_000, "anvil") == []
    db.conn.set_trace_callback(None)
    query = next(s for s in statements if "FROM invoices" in s)
    plan = " ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + query))
    assert "invoices_updated" in plan and "invoices_status" not in plan, plan
    db.close()


def test_the_per_head_refresh_reads_only_what_another_process_committed(tmp_path: Path) -> None:
    """The daemon's own creates reach its index with their outcome; reloading them on every
    new head cost the writer 25-65 ms per block under a stream of API creates. Its own
    commits give only ids (the follower loads those its index lacks); a commit of another
    connection (the CLI) gives the invoices themselves."""
    from tests.integration.receiver import NETWORK, create_invoices, make_ledger
    from watcher.storage.rows import invoices_by_ids, invoices_changed_elsewhere
    from watcher.storage.sqlite import connect

    now = 1_700_000_000
    daemon, cli = connect(tmp_path / "r.db"), connect(tmp_path / "r.db")
    version, found, ids = invoices_changed_elsewhere(daemon, now - 1, NETWORK, None)
    assert (found, ids) == ([], [])  # the first call reads (nothing there yet)
    own = create_invoices(daemon, make_ledger(), 3, None, now)
    version, found, ids = invoices_changed_elsewhere(daemon, now - 1, NETWORK, version)
    assert found is None and sorted(ids) == sorted(own)  # its own writes: ids only
    assert {inv.id for inv in invoices_by_ids(daemon, own[:2])} == set(own[:2])
    theirs = create_invoices(cli, make_ledger(), 2, None, now, first=10)
    version, found, ids = invoices_changed_elsewhere(daemon, now - 1, NETWORK, version)
    assert found is not None and set(theirs) <= {inv.id for inv in found}
    assert invoices_changed_elsewhere(daemon, now - 1, NETWORK, version)[1] is None
    daemon.close()
    cli.close()


async def test_wal_checkpoints_run_off_the_writer(tmp_path: Path) -> None:
    """With `checkpoints` (the daemon), a commit past SQLite's default 1,000 WAL pages does
    not checkpoint on the writer's thread; the checkpointer's own thread copies the WAL into
    the database file soon after."""
    path = tmp_path / "c.db"
    store = await Store(path, checkpoints=True).open()
    assert store.checkpointer is not None
    store.checkpointer.interval = 3600.0  # not yet: see what the writer does alone

    def big_write(db: Database) -> int:
        with transaction(db):
            db.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
            db.conn.executemany("INSERT INTO filler VALUES (?)",
                                [(b"\0" * 4000,) for _ in range(2_000)])  # ~2,000 pages
        return int(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    before = path.stat().st_size
    assert await store.run(big_write) == 10_000
    assert path.stat().st_size == before  # the commit left the WAL where it was
    await store.close()  # (stopping wakes the sleeping thread) and again, at its pace:

    store = await Store(path, checkpoints=True).open()
    assert store.checkpointer is not None
    size = path.stat().st_size
    await store.run(big_write)
    for _ in range(100):  # the checkpointer's 1 s interval (it counts a run once done)
        if path.stat().st_size > size and store.checkpointer.runs >= 1:
            break
        await asyncio.sleep(0.1)
    assert path.stat().st_size > size and store.checkpointer.runs >= 1
    await store.close()


async def test_a_read_sees_one_state_even_when_a_commit_lands_in_the_middle(
    database: str,
) -> None:
    """`Store.read` runs in one snapshot: a commit made between two of its statements (an
    invoice read, then its payments) is seen by neither, and by the next read whole."""
    store = await Store(database).open()
    first_done, written = threading.Event(), threading.Event()

    def count(db: Database) -> int:
        return int(db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0])

    def two_statements(db: Database) -> tuple[int, int]:
        before = count(db)
        first_done.set()
        written.wait(10)
        return before, count(db)

    def write(db: Database) -> None:
        with transaction(db):
            db.execute("INSERT INTO cursors (network, chain_id, updated_at) VALUES ('n', 1, 1)")

    try:
        reading = asyncio.ensure_future(store.read(two_statements))
        await asyncio.to_thread(first_done.wait, 10)
        await store.run(write)
        written.set()
        assert await reading == (0, 0)
        assert await store.read(count) == 1
    finally:
        written.set()
        await store.close()
