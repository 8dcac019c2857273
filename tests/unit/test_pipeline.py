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
        db.later(put(db, "a"), lambda rows: got.extend(r[0] for r in rows))
        put(db, "b")
        assert db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0] == 2  # a read syncs
        db.later(put(db, "c"), lambda rows: got.extend(r[0] for r in rows))
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
            db.later(put(db, "a"), lambda rows: got.extend(r[0] for r in rows))
        assert got == ["a"]  # handed over at the nested block's end
        put(db, "b")
    assert names(db) == ["a", "b"]


def wait(db: Db, name: str) -> None:
    """A row that may wait to go with others (`Db.insert`)."""
    db.insert("INSERT INTO cursors (network, chain_id, updated_at) VALUES", "(?, 1, 0)", [name])


def test_waiting_rows_go_before_any_read_and_in_the_order_of_their_kinds(db: Db) -> None:
    """Rows written with `insert` are seen by the next statement (they go first); a row may
    take a value from a row of a kind that came before it (here: a block's time from a
    cursor's `chain_id`, both waiting)."""
    with db.pipeline(), transaction(db):
        wait(db, "a")
        db.insert("INSERT INTO blocks (network, number, hash, parent_hash, timestamp) VALUES",
                  "(?, 1, 'h', 'p', (SELECT chain_id FROM cursors WHERE network = ?))",
                  ["a", "a"])
        wait(db, "b")
        assert names(db) == ["a", "b"]  # the read sent them first
        wait(db, "c")
    assert names(db) == ["a", "b", "c"]
    assert db.execute("SELECT timestamp FROM blocks").fetchall()[0][0] == 1


def test_a_savepoint_rolled_back_drops_its_waiting_rows(db: Db) -> None:
    with db.pipeline(), transaction(db):
        wait(db, "a")
        with pytest.raises(ValueError), transaction(db):
            wait(db, "b")
            raise ValueError("refused")
        with transaction(db):
            wait(db, "c")
        wait(db, "d")
    assert names(db) == ["a", "c", "d"]


def test_a_waiting_row_that_fails_fails_the_transaction(db: Db) -> None:
    with db.pipeline(), transaction(db):
        wait(db, "a")
    with pytest.raises(Exception) as info, db.pipeline(), transaction(db):
        wait(db, "b")
        wait(db, "a")  # the primary key: the multi-row INSERT fails at the commit
    assert "UNIQUE" in str(info.value).upper()
    assert names(db) == ["a"] and not db.in_transaction
    wait(db, "e")  # outside a pipeline: at once
    assert names(db) == ["a", "e"]


def test_waiting_updates_go_as_one_and_the_last_of_a_key_wins(db: Db) -> None:
    def chain(name: str, chain_id: int) -> None:
        db.update("UPDATE cursors SET chain_id = v.column2 FROM (VALUES",
                  "(CAST(? AS TEXT), CAST(? AS BIGINT))", [name, chain_id],
                  ") AS v WHERE cursors.network = v.column1", name)

    with db.pipeline(), transaction(db):
        wait(db, "a")
        wait(db, "b")
        chain("a", 5)
        chain("b", 6)
        chain("a", 7)  # replaces the waiting 5: every column is written whole
    found = {r["network"]: r["chain_id"] for r in db.query("SELECT network, chain_id FROM cursors")}
    assert found == {"a": 7, "b": 6}


def test_waiting_rows_of_one_statement_keep_their_order_whatever_their_text(db: Db) -> None:
    """Rows of one prefix whose texts differ (a delivery's head written as 0 or 1) go in
    the order they came: SQLite sends each run of equal texts as one `executemany`."""
    came = [("e1", 0), ("e2", 1), ("e3", 1), ("e4", 0), ("e5", 1)]
    with db.pipeline(), transaction(db):
        for event_id, flag in came:
            db.insert("INSERT INTO events (id, invoice_id, event, status, created_at, body) "
                      "VALUES", f"(?, 'inv', 'x', NULL, {flag}, ?)", [event_id, b"{}"])
    got = [(r["id"], r["created_at"]) for r in db.query("SELECT id, created_at FROM events "
                                                        "ORDER BY seq")]
    assert got == came


def test_statements_with_many_parameters_read_back_inside_and_outside_a_pipeline(
    db: Db,
) -> None:
    """Statements past psycopg's parse cache (over 50 parameters: PostgreSQL sends them
    with `$n` through a `RawCursor`) return their rows like short ones."""
    names_in = [f"n{i:03d}" for i in range(60)]
    marks = ",".join(["(?, 1, 0)"] * len(names_in))
    got: list[str] = []
    with db.pipeline(), transaction(db):
        cur = db.execute(f"INSERT INTO cursors (network, chain_id, updated_at) VALUES {marks} "
                         "RETURNING network", names_in)
        db.later(cur, lambda rows: got.extend(r[0] for r in rows))
    assert sorted(got) == names_in
    found = db.query(f"SELECT network FROM cursors WHERE network IN "
                     f"({','.join('?' * len(names_in))}) ORDER BY network", names_in)
    assert [r["network"] for r in found] == names_in
