"""A database made by an earlier version is migrated at open, its rows kept."""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from watcher import store
from watcher.store import connect, load_invoice


def test_a_0005_database_gets_client_and_redirect(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Migrations(store.migrations.name)
    for m in store.migrations._migrations:
        if m.name[:4] <= "0005":
            old(name=m.name)(m.fn)
    assert [m.name for m in old._migrations][-1] == "0005_invoice_opens_at"
    db = Database(path)
    old.apply(db)
    db.execute(
        "INSERT INTO invoices (id, status, network, chain_id, asset, decimals, to_addr, "
        "to_lower, shared, amount, requested_amount, created_at, updated_at, expire_at) "
        "VALUES ('a', 'PENDING', 'n', 1, 'ETH', 18, '0xA', '0xa', 0, '5', '5', 1, 1, 9)"
    )
    db.conn.commit()
    db.close()

    db = connect(path)
    columns = {c.name for c in db["invoices"].columns}
    assert {"client_id", "redirect_url"} <= columns
    assert "invoices_client" in {i.name for i in db["invoices"].indexes}
    inv = load_invoice(db, "a")
    assert inv is not None and inv.client_id is None and inv.redirect_url is None
    assert inv.amount_due == 5
    db.close()


def test_0007_adds_the_rate_columns(tmp_path: Path) -> None:
    db = connect(tmp_path / "new.db")
    columns = {c.name for c in db["invoices"].columns}
    assert {"rate", "rate_source", "rate_at"} <= columns
    db.close()
