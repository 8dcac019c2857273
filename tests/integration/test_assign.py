"""Assigning transfers by hand on the real daemon (`payment-watcher run`) against a real
anvil, with a real callback receiver: a late ETH payment to a cancelled invoice assigned
to it over HTTP, and a token transfer of a wrong amount to the shared address (unmatched)
assigned to the open invoice there with the CLI, next to the running daemon. Both complete
once confirmed, with their callbacks, and the events written by the assignment say
cause "assigned"."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.daemonproc import (
    Daemons,
    arun_cli,
    poll,
    wait_callbacks,
)
from tests.integration.receiver import Receiver
from watcher.devchain import DevChain

USDT = 10**6
ETH = 10**18


async def test_late_and_unmatched_transfers_assigned_over_http_and_the_cli(
    daemons: Daemons, rx: Receiver, chain: DevChain, token: str, payer: str, database: str
) -> None:
    shared = DevChain.new_account()
    tokens = [{"symbol": "USDT", "address": token, "decimals": 6, "shared_address": shared}]
    d = await daemons.start(database_url=database, callback_url=rx.url,
                            extra={"networks.anvil": {"tokens": tokens}})
    conf = str(d.config.path)

    # 1. A cancelled invoice, then ETH to its address: a late payment; assigned over HTTP
    # before it is deep enough to be announced as late.
    cancelled = await d.create("ETH", "1", DevChain.new_account())
    await d.ok("POST", f"/v1/invoices/{cancelled}/cancel")
    to = (await d.invoice(cancelled))["to"]
    late_tx = chain.send_native(payer, to, ETH)

    async def late_transfer() -> dict[str, Any] | None:
        data = (await d.ok("GET", "/v1/transfers?matched=true"))["data"]
        return next((t for t in data if t["txHash"] == late_tx), None)

    late = await poll(late_transfer, what="the late payment")
    assert (late["kind"], late["invoiceId"], late["assigned"]) == ("late", cancelled, False)
    inv = await d.ok("POST", f"/v1/transfers/{late['id']}/assign", {"invoiceId": cancelled})
    assert (inv["status"], inv["amountPaid"], inv["latePayments"]) == (
        "WAITING_FOR_CONFIRMATIONS", "1", [])
    assert inv["payments"][0]["assigned"] is True
    chain.mine(1)
    await d.wait_status(cancelled, "COMPLETED")

    # 2. A wrong amount to the shared address: unmatched; assigned with the CLI.
    open_ = (await d.ok("POST", "/v1/invoices", {"network": "anvil", "asset": "USDT",
                                                 "amount": "5"}, expect=201))["id"]
    stray_tx = chain.send_token(token, payer, shared, 6 * USDT)

    async def unmatched_listed() -> dict[str, Any] | None:
        proc = await arun_cli("transfers", "list", "--unmatched", "--json", "--config", conf)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)["data"]
        return next((t for t in data if t["txHash"] == stray_tx), None)

    stray = await poll(unmatched_listed, what="the unmatched transfer in the CLI's list")
    assert (stray["kind"], stray["amount"], stray["to"]) == ("unmatched", "6", shared)
    proc = await arun_cli("transfers", "assign", stray["id"], open_, "--config", conf)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert (shown["id"], shown["status"], shown["amountPaid"]) == (
        open_, "WAITING_FOR_CONFIRMATIONS", "6")
    chain.mine(1)  # the daemon takes it from the database and confirms it
    await d.wait_status(open_, "COMPLETED")

    await wait_callbacks(rx, {
        cancelled: ["created", "voided", "waiting_for_confirmations", "completed"],
        open_: ["created", "waiting_for_confirmations", "completed"],
    })
    for invoice_id, expected in (
        (cancelled, [None, None, "assigned", None]), (open_, [None, "assigned", None])
    ):
        history = await d.ok("GET", f"/v1/invoices/{invoice_id}/events")
        assert [e["cause"] for e in history["data"]] == expected
    assert await d.stop() == 0
