"""Leadership of a network on PostgreSQL (`watcher.cluster`): one session holds it; a
session that lost it, even one that connected again, never commits through the fence."""

from __future__ import annotations

import psycopg
import pytest

from tests.pgserver import PgDatabases
from watcher import cluster
from watcher.errors import NotLeader
from watcher.storage import postgres
from watcher.storage.store import transaction


def fenced_write(db: postgres.PgDatabase, network: str, value: str) -> None:
    with transaction(db):
        cluster.fence(db, network)
        db.execute("INSERT INTO leaders (network, instance, since, seen_at) "
                   "VALUES (?, ?, 0, 0)", [f"{network}-{value}", value])


def test_one_session_leads_and_a_deposed_one_never_commits(pg_databases: PgDatabases) -> None:
    url = pg_databases.new()
    a, b = postgres.connect(url), postgres.connect(url)
    try:
        assert cluster.try_lead(a, "eth", "a", 100)
        assert cluster.try_lead(a, "eth", "a", 101)  # already held: still the leader
        assert not cluster.try_lead(b, "eth", "b", 102)
        assert cluster.try_lead(b, "polygon", "b", 102)  # one lock per network
        assert cluster.leaders(a) == {
            "eth": {"instance": "a", "since": 100, "seen_at": 101},
            "polygon": {"instance": "b", "since": 102, "seen_at": 102}}
        fenced_write(a, "eth", "one")
        with pytest.raises(NotLeader):
            fenced_write(b, "eth", "two")
        # a's session is cut (its host lost the network): the server frees its lock
        with psycopg.connect(url, autocommit=True) as admin:
            pid = a.conn.info.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError):
            fenced_write(a, "eth", "three")
        assert a.broken
        assert cluster.try_lead(b, "eth", "b", 110)
        fenced_write(b, "eth", "four")
        a2 = postgres.connect(url, migrate=False)  # a, connected again: holds nothing
        try:
            assert not cluster.still_leads(a2, "eth", "a", 111)
            with pytest.raises(NotLeader):
                fenced_write(a2, "eth", "five")
            assert cluster.leaders(a2)["eth"]["instance"] == "b"
        finally:
            a2.close()
        written = {r[0] for r in b.execute("SELECT network FROM leaders")}
        assert written == {"eth", "polygon", "eth-one", "eth-four"}
        cluster.resign(b, "eth")  # a clean stop: the next one need not wait
        c = postgres.connect(url, migrate=False)
        assert cluster.try_lead(c, "eth", "c", 120)
        c.close()
    finally:
        a.close()
        b.close()


def test_commits_that_notify_reach_the_other_instances_listeners(
    pg_databases: PgDatabases,
) -> None:
    """LISTEN/NOTIFY: a commit that called `notify` (events, due deliveries) reaches
    another instance's `Listener` (its live channels and sender look at once); a rolled-back
    one, one that did not notify (a claim) and this instance's own writer's reach nobody."""
    import threading

    url = pg_databases.new()
    heard = threading.Semaphore(0)
    db = postgres.connect(url)  # its schema check commits before anyone listens
    mine = postgres.connect(url, migrate=False)
    listener = postgres.Listener(url, None, heard.release, own=lambda: mine.backend_pid)
    listener.start()
    try:
        assert heard.acquire(timeout=10)  # the first call: "look now, whatever was missed"
        with pytest.raises(RuntimeError), transaction(db):
            db.execute("INSERT INTO leaders VALUES ('x', 'x', 0, 0)")
            db.notify()
            raise RuntimeError("rolled back")
        with transaction(db):  # wrote nothing the others must hear of
            db.execute("INSERT INTO leaders VALUES ('w', 'w', 0, 0)")
        with transaction(mine):  # this instance's own writer: it wakes its parts itself
            mine.execute("INSERT INTO leaders VALUES ('z', 'z', 0, 0)")
            mine.notify()
        assert not heard.acquire(timeout=1.5)
        with transaction(db):
            db.execute("INSERT INTO leaders VALUES ('y', 'y', 0, 0)")
            db.notify()
            db.notify()  # once per transaction
        assert heard.acquire(timeout=10)
        assert not heard.acquire(timeout=1.5)
    finally:
        db.close()
        mine.close()
        listener.stop()
