"""The twelve money-safety defects of issue 10, each driven through the daemon's real parts
(`tests/daemonparts.py`) against the scriptable chain (`tests/chainmodel.py`) with the node
behaviour that broke it. Each test fails on the code before the fix (see the note on the
issue); the chain-model property test covers the same ground at random."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.chainmodel import ChainModel, TokenTx
from tests.daemonparts import (
    ADDRS,
    CONF,
    LATE,
    NET,
    PAYER,
    SHARED,
    T0,
    TOKEN,
    Node,
    clock,
    running,
)
from watcher.config import load_settings
from watcher.daemon import Daemon, prune_index
from watcher.errors import Unavailable
from watcher.ledger import late_event_id
from watcher.models import Invoice, Status
from watcher.storage.sqlite import connect
from watcher.storage.store import transaction


async def open_invoice(
    node: Node, model: ChainModel, *, amount: int = 100, address: str | None = ADDRS[0],
    ttl: int = 10_000,
) -> Invoice:
    """A USDT invoice created now (the host's clock, past every block made)."""
    now = clock(model)
    return await node.create("USDT", amount, address, now=now, expire_at=now + ttl)


def pay(model: ChainModel, to: str, amount: int) -> TokenTx:
    tx = TokenTx(TOKEN, PAYER, to, amount)
    model.mine([tx])
    return tx


# 1 ------------------------------------------------------------------------------------


async def test_1_a_reorg_while_far_behind_is_found_on_a_token_only_network(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model)
        pay(model, ADDRS[0], 100)
        await node.catch_up(model.head.number)
        assert (await node.get(inv.id)).status == Status.WAITING_FOR_CONFIRMATIONS
        # the daemon is away: a shallow reorg drops the payment, then the chain grows far
        model.reorg(1, [[]])
        model.mine_empty(150)
        await node.catch_up(model.head.number)
        got = await node.get(inv.id)
        assert (got.status, got.payments) == (Status.PENDING, [])


# 2 ------------------------------------------------------------------------------------


async def test_2_logs_without_block_timestamp_count_with_the_header_time(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(database, max_block_range=50) as (model, _, node):
        model.omit_block_timestamp = True
        inv = await open_invoice(node, model)
        block = model.head.number + 1
        pay(model, ADDRS[0], 100)
        model.mine_empty(100)  # the payment lies inside a catch-up range
        with caplog.at_level(logging.WARNING, "watcher.follower"):
            await node.catch_up(model.head.number, passes=5)
        got = await node.get(inv.id)
        assert got.status == Status.COMPLETED
        assert got.payments[0].timestamp == model.block(block).timestamp
        assert not [r for r in caplog.records if "reorg" in r.getMessage()]


# 3 ------------------------------------------------------------------------------------


async def test_3_a_reused_dedicated_address_keeps_the_payment_with_the_first_invoice(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        a = await open_invoice(node, model, ttl=30)
        pay(model, ADDRS[0], 100)  # in time for A; the follower has not scanned it yet
        model.mine_empty(6)
        later = clock(model)
        assert later > a.expire_at
        b = await node.create("USDT", 100, ADDRS[0], now=later, expire_at=later + 10_000)
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        got_a, got_b = await node.get(a.id), await node.get(b.id)
        assert (got_a.status, len(got_a.payments)) == (Status.COMPLETED, 1)
        assert (got_b.status, got_b.payments) == (Status.PENDING, [])


async def test_3_a_reused_shared_amount_keeps_the_payment_with_the_first_invoice(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        a = await open_invoice(node, model, address=None, ttl=30)
        pay(model, SHARED, 100)
        model.mine_empty(6)
        # the follower is more than an hour behind when the amount is taken again
        later = a.expire_at + 3601
        b = await node.create("USDT", 100, None, now=later, expire_at=later + 10_000)
        assert b.amount == a.amount
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        got_a, got_b = await node.get(a.id), await node.get(b.id)
        assert (got_a.status, len(got_a.payments)) == (Status.COMPLETED, 1)
        assert (got_b.status, got_b.payments) == (Status.PENDING, [])


# 4 ------------------------------------------------------------------------------------


async def test_4_zero_transfers_never_count_nor_name_a_payer(database: str) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model)
        pay(model, ADDRS[0], 0)  # a poisoner's transferFrom of nothing
        model.mine_empty(CONF + 1)
        await node.catch_up(model.head.number)
        got = await node.get(inv.id)
        assert (got.status, got.payments, got.late_payments) == (Status.PENDING, [], [])
        rows = await node.store.run(lambda db: db.execute("SELECT * FROM transfers").fetchall())
        assert rows == []


# 5 ------------------------------------------------------------------------------------


async def test_5_a_long_outage_keeps_invoices_until_their_blocks_are_scanned(
    database: str,
) -> None:
    """Chain time here is 2023 (T0): by the host's clock every invoice expired long ago,
    as after a long outage. The payment was made in time and must still count."""
    async with running(database) as (model, server, node):
        inv = await open_invoice(node, model, ttl=30)
        pay(model, ADDRS[0], 100)
        model.mine_empty(6 + LATE // 12 + CONF)  # past expiry and the late window
        assert time.time() > inv.expire_at + LATE
        await node.stop()  # the daemon restarts after the outage
        node2 = await Node(node.db, server.url).start()
        try:
            prune_index(node2.index, node2.ledger, NET)  # housekeeping before any scan
            await node2.catch_up(model.head.number)
            got = await node2.get(inv.id)
            assert (got.status, len(got.payments)) == (Status.COMPLETED, 1)
        finally:
            await node2.stop()


# 6 ------------------------------------------------------------------------------------


async def test_6_an_empty_get_logs_from_a_lagging_backend_is_not_trusted(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model)
        await node.catch_up(model.head.number)
        pay(model, ADDRS[0], 100)
        model.mine_empty(1)
        # every eth_getLogs answered by a backend two blocks behind: `[]` for the payment
        model.stale["eth_getLogs"] = (2, 1)
        await node.sync(3)
        model.stale.clear()
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        got = await node.get(inv.id)
        assert (got.status, len(got.payments)) == (Status.COMPLETED, 1)


async def test_6_a_lagging_backend_now_and_then_costs_a_query_by_hash(database: str) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model)
        await node.catch_up(model.head.number)
        model.stale["eth_getLogs"] = (2, 2)  # every other eth_getLogs lags two blocks
        for _ in range(4):
            pay(model, ADDRS[0], 10)
            await node.sync()
        model.stale.clear()
        got = await node.get(inv.id)
        assert len(got.payments) == 4  # seen while the quirk lasted, none skipped


# 7 ------------------------------------------------------------------------------------


async def test_7_no_invoice_before_the_start_block_is_written(database: str) -> None:
    model = ChainModel(genesis_time=T0, block_time=12)
    model.mine_empty(2)
    model.http_errors.extend([(503, None)] * 10)  # the RPC is down at first start
    async with running(database, model) as (model, _, node):
        now = clock(model)
        assert node.follower.scanned is None
        with pytest.raises(Unavailable):
            await node.create("USDT", 100, ADDRS[0], now=now, expire_at=now + 10_000)
        model.http_errors.clear()
        start = model.head.number
        await node.sync()  # the follower writes the start block once the RPC answers
        assert node.follower.scanned == start
        inv = await node.create("USDT", 100, ADDRS[0], now=now, expire_at=now + 10_000)
        pay(model, ADDRS[0], 100)
        await node.catch_up(model.head.number)
        assert len((await node.get(inv.id)).payments) == 1


# 8 ------------------------------------------------------------------------------------


async def test_8_a_reorg_right_after_the_head_is_read_is_no_reorg_and_no_loop(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model)
        await node.catch_up(model.head.number)
        pay(model, ADDRS[0], 100)
        model.mine_empty(4)
        handle_one, fired = model.handle_one, []

        def reorg_after_latest(request: Any) -> dict[str, Any]:
            answer = handle_one(request)
            if not fired and request.get("params", [None])[0] == "latest":
                fired.append(1)
                model.reorg(2, [[], []])  # the two newest blocks change under the pass
            return answer

        model.handle_one = reorg_after_latest  # type: ignore[method-assign]
        model.reset_calls()
        with caplog.at_level(logging.WARNING, "watcher.follower"):
            await node.sync()
        assert fired
        assert sum(model.calls.values()) < 30
        assert not [r for r in caplog.records if "reorg" in r.getMessage()]
        await node.catch_up(model.head.number)
        assert len((await node.get(inv.id)).payments) == 1


# 9 ------------------------------------------------------------------------------------


async def test_9_a_late_payment_is_announced_once_whatever_shallow_reorgs_do(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model, ttl=30)
        model.mine_empty(6 + CONF)
        await node.catch_up(model.head.number)
        assert (await node.get(inv.id)).status == Status.VOIDED
        tx = pay(model, ADDRS[0], 100)  # late
        await node.sync()
        model.reorg(1, [[tx]])  # re-included in another block
        await node.sync()
        gone = pay(model, ADDRS[0], 55)  # late, then dropped by a reorg
        await node.sync()
        model.reorg(1, [[]])
        model.mine_empty(CONF + 1)
        await node.catch_up(model.head.number)
        late = [e for e in await node.events(inv.id) if e[1] == "invoice.late_payment"]
        got = await node.get(inv.id)
        assert [p.tx_hash for p in got.late_payments] == [tx.hash]
        assert [e[0] for e in late] == [late_event_id(inv.id, str(tx.hash), 0)]
        assert gone.hash not in str(late)


# 10 -----------------------------------------------------------------------------------


async def test_10_callback_bodies_carry_the_confirmations_of_their_own_range(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model)
        pay(model, ADDRS[0], 100)
        await node.catch_up(model.head.number)
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        bodies = {e[1]: orjson.loads(e[2]) for e in await node.events(inv.id)}
        assert bodies["invoice.waiting_for_confirmations"]["data"]["confirmations"] == 1
        assert bodies["invoice.completed"]["data"]["confirmations"] == CONF + 1


# 11 -----------------------------------------------------------------------------------


def test_11_a_write_from_another_process_between_read_and_write_waits(tmp_path: Path) -> None:
    """A writer that read first must not fail with "database is locked" because another
    process (the CLI) wrote in between: `transaction()` takes the write lock up front."""
    db = connect(tmp_path / "w.db")
    other_done: list[str] = []

    def other_process() -> None:
        conn = sqlite3.connect(tmp_path / "w.db", timeout=5, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO cursors (network, chain_id, updated_at) VALUES ('b', 1, 0)")
        conn.execute("COMMIT")
        conn.close()
        other_done.append("ok")

    with transaction(db):
        db.execute("SELECT COUNT(*) FROM cursors").fetchone()
        t = threading.Thread(target=other_process)
        t.start()
        t.join(0.3)  # it waits for our lock (with a deferred BEGIN it would commit now)
        db.execute("INSERT INTO cursors (network, chain_id, updated_at) VALUES ('a', 1, 0)")
    t.join(5)
    assert other_done == ["ok"]
    assert db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0] == 2
    db.close()


# 12 -----------------------------------------------------------------------------------


async def test_12_an_unexpected_error_does_not_stop_the_follower(database: str) -> None:
    async with running(database) as (model, _, node):
        real, failures = node.ledger.apply_scan, []

        def broken(*args: Any) -> Any:
            if not failures:
                failures.append(1)
                raise RuntimeError("a bug")
            return real(*args)

        node.ledger.apply_scan = broken  # type: ignore[method-assign]
        model.mine_empty(3)
        task = asyncio.create_task(node.follower.run())
        try:
            for _ in range(200):
                await asyncio.sleep(0.01)
                if node.follower.last_error:
                    break
            assert "RuntimeError: a bug" in str(node.follower.last_error)
            assert not task.done()
            node.follower._wake.set()
            for _ in range(200):
                await asyncio.sleep(0.01)
                if node.follower.scanned == model.head.number:
                    break
            assert node.follower.scanned == model.head.number
        finally:
            node.follower.stop()
            await task


async def test_12_the_watchdog_stops_pinging_while_a_follower_is_wedged(
    tmp_path: Path, database: str,
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[networks.anvil]\nrpc = ["http://127.0.0.1:1"]\n')
    daemon = Daemon(load_settings(cfg))
    async with running(database) as (_, _, node):
        daemon.followers = {"anvil": node.follower}
        assert daemon.healthy()
        node.follower.beat -= 3600  # its loop has not come round for an hour
        assert not daemon.healthy()


async def test_12_one_block_over_the_log_cap_is_read_from_its_receipts(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        inv = await open_invoice(node, model, amount=300)
        model.log_cap, model.cap_style = 1, "infura"
        model.mine([TokenTx(TOKEN, PAYER, ADDRS[0], 100) for _ in range(3)])
        model.mine_empty(CONF)
        await node.catch_up(model.head.number, passes=20)
        got = await node.get(inv.id)
        assert (got.status, len(got.payments)) == (Status.COMPLETED, 3)
