"""kill -9 of the real daemon (`python -m watcher run`) at random moments, during a storm
of payments and callbacks to a real receiver; restarted after each kill. In the end the
database is intact, every invoice is where its payments put it (each transfer counted once)
and the receiver has seen every event's delivery id at least once."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemonproc import API_KEY, CALLBACK_SECRET, DaemonConfig, DaemonProc
from tests.integration.receiver import Receiver, Reply
from watcher.devchain import DevChain

KILLS = 20
INVOICES = 60
USDT = 10**6
ETH = 10**18

FIGURES: dict[str, Any] = {}


def _pay(chain: DevChain, token: str, p: dict[str, Any]) -> None:
    if p["asset"] == "ETH":
        chain.send_native(p["from"], p["to"], p["paid"])
    else:
        chain.send_token(token, p["from"], p["to"], p["paid"])


async def _invoices(d: DaemonProc) -> dict[str, dict[str, Any]]:
    status, body = await d.request("GET", "/v1/invoices?limit=500")
    assert status == 200, body
    return {i["id"]: i for i in body["data"]}


@pytest.mark.slow
async def test_kill_9_during_a_storm(tmp_path: Path, chain: DevChain, token: str) -> None:
    rng = random.Random(2024)
    rx = await Receiver(secret=CALLBACK_SECRET, default=Reply(200, delay=0.02)).start()
    # one port for every run: each restart after kill -9 binds it again
    d = DaemonProc(DaemonConfig(tmp_path, [chain.url], {"USDT": token}, callback_url=rx.url,
                                port=free_port()))
    try:
        await d.start()
        plan: dict[str, dict[str, Any]] = {}
        payers = chain.accounts[1:4]
        for n in range(INVOICES):
            native = n % 2 == 0
            to = chain.new_account()
            short = n % 6 == 5
            if native:
                body = {"network": "anvil", "asset": "ETH", "amount": "0.1", "address": to}
                paid = ETH // 10 - (ETH // 100 if short else 0)
            else:
                body = {"network": "anvil", "asset": "USDT", "amount": "10", "address": to}
                paid = 10 * USDT - (USDT if short else 0)
            status, inv = await d.request("POST", "/v1/invoices", body)
            assert status == 201, inv
            plan[inv["id"]] = {"asset": body["asset"], "to": to, "paid": paid,
                               "from": payers[n % 3], "want": "PARTIAL" if short else "COMPLETED",
                               "amountPaid": "0.09" if short and native else
                               ("9" if short else ("0.1" if native else "10"))}
        queue = list(plan.values())
        rng.shuffle(queue)
        per_cycle = (len(queue) + KILLS - 1) // KILLS
        kill_after: list[float] = []
        alive_at_kill = 0
        for k in range(KILLS):
            if not d.alive():
                d.spawn()
            began = time.monotonic()
            wait = rng.uniform(0.2, 3.5)  # some kills land before the API is up
            batch = queue[k * per_cycle : (k + 1) * per_cycle]
            moments = sorted(rng.uniform(0, wait) for _ in batch)
            for p, at in zip(batch, moments, strict=True):
                await asyncio.sleep(max(0.0, began + at - time.monotonic()))
                await asyncio.to_thread(_pay, chain, token, p)
            await asyncio.sleep(max(0.0, began + wait - time.monotonic()))
            alive_at_kill += d.alive()
            d.kill()
            kill_after.append(round(time.monotonic() - began, 2))
        await asyncio.to_thread(chain.mine, 3)

        await d.start()
        deadline = time.monotonic() + 90
        while True:
            got = await _invoices(d)
            done = all(got[i]["status"] == p["want"] for i, p in plan.items())
            db = sqlite3.connect(d.config.database, timeout=5)
            try:
                events = dict(db.execute("SELECT id, invoice_id FROM events").fetchall())
                pending = db.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE state != 'delivered'"
                ).fetchone()[0]
            finally:
                db.close()
            if done and not pending and set(events) <= rx.delivery_ids():
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not settled: {sum(got[i]['status'] != p['want'] for i, p in plan.items())}"
                    f" invoices off, {pending} deliveries pending, "
                    f"{len(set(events) - rx.delivery_ids())} events never received"
                )
            await asyncio.sleep(0.5)
        assert await d.stop(timeout=15) == 0

        db = sqlite3.connect(d.config.database)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
            per_invoice: dict[str, list[str]] = {}
            for inv_id, event in db.execute("SELECT invoice_id, event FROM events ORDER BY seq"):
                per_invoice.setdefault(inv_id, []).append(event)
            payments = db.execute(
                "SELECT invoice_id, COUNT(*) FROM transfers WHERE kind = 'payment' "
                "GROUP BY invoice_id"
            ).fetchall()
            event_ids = {r[0] for r in db.execute("SELECT id FROM events")}
        finally:
            db.close()
        for inv_id, p in plan.items():
            assert got[inv_id]["amountPaid"] == p["amountPaid"], (p, got[inv_id])
            last = "invoice.partial" if p["want"] == "PARTIAL" else "invoice.completed"
            # exactly once: one event per status change, whatever the kills replayed
            assert per_invoice[inv_id] == [
                "invoice.created", "invoice.waiting_for_confirmations", last
            ], per_invoice[inv_id]
        assert dict(payments) == dict.fromkeys(plan, 1)
        received = rx.attempts()
        assert event_ids <= set(received)
        assert all(r.signature_ok for r in rx.requests)
        log = d.log_text()
        assert API_KEY not in log and CALLBACK_SECRET not in log
        assert "Traceback" not in log
        FIGURES.update(
            kills=KILLS, killed_while_running=alive_at_kill, starts=d.starts,
            invoices=INVOICES, payments=len(plan), events=len(event_ids),
            callback_requests=sum(received[e] for e in event_ids),
            redelivered=sum(received[e] - 1 for e in event_ids),
            kill_after_s=(min(kill_after), max(kill_after)),
        )
        print("\ncrash figures:", FIGURES)
    finally:
        d.kill()
        await d.close_session()
        await rx.stop()
