"""A database made by an earlier version is migrated at open, its rows kept."""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from watcher.storage import schema
from watcher.storage.rows import load_invoice
from watcher.storage.sqlite import connect


def test_a_0005_database_gets_client_and_redirect(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Migrations(schema.migrations.name)
    for m in schema.migrations._migrations:
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


def test_a_0008_database_keeps_its_transfers_with_ids(tmp_path: Path) -> None:
    from watcher.models import transfer_id
    from watcher.storage.rows import load_transfers_by_id

    path = tmp_path / "old.db"
    old = Migrations(schema.migrations.name)
    for m in schema.migrations._migrations:
        if m.name[:4] <= "0008":
            old(name=m.name)(m.fn)
    db = Database(path)
    old.apply(db)
    for tx, li, kind, announced in (("0xaa", -1, "payment", 1), ("0xbb", 3, "late", 0)):
        db.execute(
            "INSERT INTO transfers (network, tx_hash, log_index, asset, from_addr, to_addr, "
            "amount, block, block_hash, timestamp, invoice_id, kind, seen_at, announced) "
            "VALUES ('n', ?, ?, 'ETH', '0xF', '0xT', '7', 5, '0xh', 100, 'a', ?, 1, ?)",
            [tx, li, kind, announced],
        )
    db.conn.commit()
    db.close()

    db = connect(path)
    rows = {r["tx_hash"]: r for r in db.query("SELECT * FROM transfers")}
    assert rows["0xaa"]["id"] == transfer_id("n", "0xaa", -1, "")
    assert (rows["0xbb"]["announced"], rows["0xbb"]["trace"], rows["0xbb"]["assigned"]) == (
        0, "", 0)
    assert [r["tx_hash"] for r in db.query("SELECT tx_hash FROM payments")] == ["0xaa"]
    indexes = {i.name for i in db["transfers"].indexes}
    assert {"transfers_invoice", "transfers_block", "transfers_kind",
            "transfers_unannounced"} <= indexes
    assert "cause" in {c.name for c in db["events"].columns}
    found = load_transfers_by_id(db, [rows["0xbb"]["id"]])
    assert [t.tx_hash for t in found] == ["0xbb"]
    db.close()


def test_0012_marks_the_head_of_each_invoices_pending_deliveries(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Migrations(schema.migrations.name)
    for m in schema.migrations._migrations:
        if m.name[:4] <= "0010":
            old(name=m.name)(m.fn)
    db = Database(path)
    old.apply(db)
    for seq, invoice, state in ((1, "a", "delivered"), (2, "a", "pending"), (3, "a", "pending"),
                                (4, "b", "failed"), (5, "c", "pending")):
        db.execute(
            "INSERT INTO deliveries (event_id, event_seq, invoice_id, event, url, state, "
            "next_attempt_at, created_at) VALUES (?, ?, ?, 'e', 'http://x', ?, 0, 0)",
            [f"e{seq}", seq, invoice, state],
        )
    db.conn.commit()
    db.close()
    db = connect(path)
    heads = [r[0] for r in db.execute("SELECT event_id FROM deliveries WHERE head = 1 "
                                      "ORDER BY event_seq")]
    assert heads == ["e2", "e5"]
    db.close()
