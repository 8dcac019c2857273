"""A new PostgreSQL database's busiest tables get the planner's statistics as soon as they
hold rows, not a minute later from autovacuum (`postgres.analyze_new_tables`, run by the
daemon; bench/RESULTS.md finding 38)."""

from __future__ import annotations

from tests.integration.daemonproc import Daemons, poll
from tests.integration.test_cluster import cluster_config, leading
from tests.pgserver import PgDatabases
from tests.unit.test_ledger import NET, make_ledger, new
from watcher.devchain import DevChain
from watcher.storage import postgres

NOW = 1_700_000_000


def analysed(url: str) -> dict[str, bool]:
    """Table -> whether anything ran ANALYZE on it by hand (autovacuum's own runs are
    counted apart, in last_autoanalyze)."""
    db = postgres.connect(url, migrate=False)
    try:
        return {r[0]: r[1] is not None for r in db.execute(
            "SELECT relname, last_analyze FROM pg_stat_user_tables WHERE relname = ANY(?)",
            [list(postgres.FIRST_TABLES)])}
    finally:
        db.close()


def test_a_table_is_analysed_once_it_holds_enough_rows(pg_databases: PgDatabases) -> None:
    url = pg_databases.new()
    ledger = make_ledger()  # with a callback URL: each create writes a delivery too

    def create(n: int) -> None:
        db = postgres.connect(url)
        try:
            ledger.start_network(db, NET, 1, NOW)
            for _ in range(n):
                ledger.create(db, new(), NOW)
        finally:
            db.close()  # its statistics counters reach the server as the session ends

    def analyse() -> int:
        db = postgres.connect(url, migrate=False)
        try:
            return postgres.analyze_new_tables(db)
        finally:
            db.close()

    create(postgres.ANALYZE_AFTER_ROWS - 1)
    assert analyse() == len(postgres.FIRST_TABLES)  # too few rows anywhere yet
    assert not any(analysed(url).values())
    create(1)
    assert analyse() == 2  # attempts and transfers are still empty
    assert analysed(url) == {"invoices": True, "events": True, "deliveries": True,
                             "attempts": False, "transfers": False}
    db = postgres.connect(url, migrate=False)
    try:
        estimate = db.execute(
            "SELECT reltuples FROM pg_class WHERE relname = 'invoices'").fetchone()[0]
    finally:
        db.close()
    assert estimate == postgres.ANALYZE_AFTER_ROWS  # the planner knows the table's size


async def test_the_daemon_analyses_a_new_database(
    daemons: Daemons, chain: DevChain, pg_databases: PgDatabases
) -> None:
    url = pg_databases.new()
    d = await daemons.start(**cluster_config("solo", url))
    await poll(lambda: leading(d), 20, interval=0.1, what="leading")  # creates open then
    for n in range(postgres.ANALYZE_AFTER_ROWS):
        await d.create("USDT", "1", "0x" + f"{n + 1:040x}")

    async def invoices_analysed() -> bool:
        return analysed(url)["invoices"]

    await poll(invoices_analysed, 20, interval=0.5, what="invoices analysed by the daemon")
