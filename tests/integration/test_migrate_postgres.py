"""`payment-watcher migrate-to-postgres`: everything copied, checked and usable; an
amount beyond 2^63 exact; a non-empty target refused (contract section 13)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tests.pgserver import PgDatabases
from tests.unit.test_ledger import DEDICATED, NET, invoice_in, make_ledger, new, pay
from watcher.cli import main
from watcher.models import Status
from watcher.outbox import record_attempt
from watcher.storage import postgres
from watcher.storage.sqlite import connect

NOW = 1_700_000_000
HUGE = 2**256 - 1  # no 64-bit integer holds it


def migrate(source: Path, url: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["migrate-to-postgres", "--from", str(source),
                                       "--to", url])
    return result.exit_code, result.output


def test_everything_moves_exactly_and_the_target_must_be_empty(
    tmp_path: Path, pg_databases: PgDatabases
) -> None:
    ledger = make_ledger()
    lite = connect(tmp_path / "w.db")
    ledger.start_network(lite, NET, 1, NOW)
    done = [invoice_in(lite, ledger, s, NOW) for s in (
        Status.COMPLETED, Status.PARTIAL, Status.VOIDED, Status.WAITING_FOR_CONFIRMATIONS,
        Status.REFUNDED, Status.PENDING)]
    huge, _, _ = ledger.create(lite, new(amount=HUGE, asset="ETH", address=DEDICATED), NOW)
    pay(lite, ledger, huge, HUGE, deep=True, now=NOW)
    first_event = lite.execute("SELECT id FROM events ORDER BY seq LIMIT 1").fetchone()[0]
    record_attempt(lite, first_event, NOW, 200, None, 12, "delivered", None)
    rendered = {i.id: ledger.render(ledger.get(lite, i.id)) for i in [*done, huge]}
    counts = {t: lite.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("invoices", "events", "deliveries", "attempts", "transfers", "blocks")}
    lite.close()

    url = pg_databases.new()
    code, out = migrate(tmp_path / "w.db", url)
    assert code == 0, out
    assert "counts and amount sums match" in out and "transfers.amount" in out
    pg = postgres.connect(url)
    try:
        for table, n in counts.items():
            assert pg.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == n, table
            # analysed after the copy: the planner's estimate is the count (-1: never)
            assert pg.execute("SELECT reltuples FROM pg_class WHERE relname = ?",
                              [table]).fetchone()[0] == n, table
        assert {i: ledger.render(ledger.get(pg, i)) for i in rendered} == rendered
        assert ledger.get(pg, huge.id).amount_paid == HUGE  # beyond 2^63, to the wei
        ledger.load_views(pg)
        # the numbering continues after the copied rows
        top = pg.execute("SELECT MAX(seq) FROM invoices").fetchone()[0]
        later, _, _ = ledger.create(pg, new(), NOW + 1)
        assert later.seq > top
        pay(pg, ledger, later, later.amount, deep=True, now=NOW + 1)
        assert ledger.get(pg, later.id).status == Status.COMPLETED
    finally:
        pg.close()

    code, out = migrate(tmp_path / "w.db", url)  # again: the target holds rows now
    assert code == 2 and "not empty" in out and "invoices" in out, out
