"""Transactions inside `Db.pipeline()` on both engines (on PostgreSQL the statements are
queued and a round trip is paid only where a result is read): they commit, roll back on a
Python error or a failed statement, keep a savepoint's rollback its own, and hand over the
values asked for with `later`. The connection is usable after every failure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from watcher.storage.base import Db
from watcher.storage.store import connect_database, transaction


@pytest.fixture
def db(database: str) -> Iterator[Db]:
    connection = connect_database(database)
    yield connection
    connection.close()


def names(db: Db) -> list[str]:
    return [r["network"] for r in db.query("SELECT network FROM cursors ORDER BY network")]


def put(db: Db, name: str) -> Any:
    return db.execute(
        "INSERT INTO cursors (network, chain_id, updated_at) VALUES (?, 1, 0) "
        "RETURNING network", [name])


def test_a_pipelined_transaction_commits_and_hands_over_later_values(db: Db) -> None:
    got: list[str] = []
    with db.pipeline(), transaction(db):
        db.later(put(db, "a"), lambda row: got.append(row[0]))
        put(db, "b")
        assert db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0] == 2  # a read syncs
        db.later(put(db, "c"), lambda row: got.append(row[0]))
    assert got == ["a", "c"]
    assert names(db) == ["a", "b", "c"]
    assert not db.in_transaction


def test_a_python_error_rolls_the_pipelined_transaction_back(db: Db) -> None:
    got: list[str] = []
    with pytest.raises(RuntimeError), db.pipeline(), transaction(db):
        db.later(put(db, "a"), got.append)
        raise RuntimeError("refused")
    assert names(db) == [] and not db.in_transaction
    if db.dialect == "postgres":
        assert got == []  # never handed over: the transaction did not commit
    with db.pipeline(), transaction(db):
        put(db, "b")
    assert names(db) == ["b"]


def test_a_failed_statement_rolls_everything_back(db: Db) -> None:
    with db.pipeline(), transaction(db):
        put(db, "a")
    with pytest.raises(Exception) as info, db.pipeline(), transaction(db):
        put(db, "b")
        put(db, "a")  # the primary key: the transaction fails (raised here or at the end)
        put(db, "c")
    assert "UNIQUE" in str(info.value).upper()
    assert names(db) == ["a"] and not db.in_transaction
    with db.pipeline(), transaction(db):  # the connection works on
        put(db, "d")
    assert names(db) == ["a", "d"]


def test_a_savepoint_rolls_back_only_its_own_work(db: Db) -> None:
    with db.pipeline(), transaction(db):
        put(db, "a")
        with pytest.raises(ValueError), transaction(db):
            put(db, "b")
            raise ValueError("this one is refused")
        with transaction(db):
            put(db, "c")
    assert names(db) == ["a", "c"]


def test_a_nested_pipeline_syncs_at_its_end(db: Db) -> None:
    got: list[str] = []
    with db.pipeline(), transaction(db):
        with db.pipeline():
            db.later(put(db, "a"), lambda row: got.append(row[0]))
        assert got == ["a"]  # handed over at the nested block's end
        put(db, "b")
    assert names(db) == ["a", "b"]
