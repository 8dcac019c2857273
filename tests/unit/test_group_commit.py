"""GroupCommit on a real SQLite file: concurrent writes share commits, stay independent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from watcher.errors import Conflict, StoreError
from watcher.storage.base import Db
from watcher.storage.store import GroupCommit, Store


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    s = await Store(database).open()
    await s.run(lambda db: db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    yield s
    await s.close()


def write(db: Db, keys: list[str]) -> list[str | Exception]:
    out: list[str | Exception] = []
    with db.transaction():
        for k in keys:
            if k == "boom":
                raise RuntimeError("the whole batch fails")
            try:
                with db.transaction():
                    db.execute("INSERT INTO t VALUES (?)", [k])
                    if k.startswith("bad"):
                        raise Conflict(f"{k} refused")
                out.append(k.upper())
            except Conflict as exc:
                out.append(exc)
    return out


async def test_a_burst_shares_commits_and_each_caller_gets_its_own_answer(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store, write)
    keys = [f"k{i}" for i in range(200)]
    answers = await asyncio.gather(*(gc.submit(k) for k in keys))
    assert answers == [k.upper() for k in keys]
    assert gc.batches < 20  # 200 writes, a handful of transactions
    rows = await store.run(lambda db: db.execute("SELECT COUNT(*) FROM t").fetchone()[0])
    assert rows == 200


async def test_a_refused_item_rolls_back_alone(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store, write)
    results = await asyncio.gather(
        gc.submit("a"), gc.submit("bad1"), gc.submit("b"), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], Conflict)
    keys = await store.run(lambda db: [r[0] for r in db.execute("SELECT k FROM t ORDER BY k")])
    assert keys == ["a", "b"]


async def test_a_failing_batch_fails_every_caller_and_writes_nothing(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store, write)
    first = asyncio.ensure_future(gc.submit("x"))  # written alone
    await asyncio.sleep(0)
    results = await asyncio.gather(
        gc.submit("y"), gc.submit("boom"), gc.submit("z"), return_exceptions=True
    )
    assert await first == "X"
    assert all(isinstance(r, RuntimeError | StoreError) for r in results)
    keys = await store.run(lambda db: [r[0] for r in db.execute("SELECT k FROM t ORDER BY k")])
    assert keys == ["x"]
    assert await gc.submit("after") == "AFTER"  # it keeps working
