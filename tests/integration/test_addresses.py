"""Derived deposit addresses with the real daemon on anvil: payments to them complete,
balances are read from the chain, the counter survives a restart, and a kill -9 in the
middle of a create storm leaves indexes unique and without gaps."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account

from tests import hdkeys
from tests.integration.daemonproc import API_KEY, NETWORK, DaemonProc, Daemons, run_cli
from watcher.devchain import DevChain

ETH = 10**18
USDT = 10**6


def path_of(index: int) -> str:
    return f"m/44'/60'/0'/0/{index}"


def xpub_config(start_index: int) -> dict[str, dict[str, Any]]:
    # start_index keeps clear of anvil's own funded accounts (indexes 0..9 of this mnemonic)
    return {"addresses": {"xpub": hdkeys.xpub(), "start_index": start_index}}


async def test_payments_to_derived_addresses_complete_and_show_in_balances(
    daemons: Daemons, chain: DevChain, token: str, payer: str
) -> None:
    d = await daemons.start(extra=xpub_config(1000))
    eth = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                              "amount": "0.5"}, expect=201)
    usdt = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "USDT",
                                               "amount": "15", "address": "derive"}, expect=201)
    assert (eth["derivationIndex"], usdt["derivationIndex"]) == (1000, 1001)
    assert eth["to"] == hdkeys.reference_address(path_of(1000))
    assert usdt["to"] == hdkeys.reference_address(path_of(1001))

    chain.send_native(payer, eth["to"], ETH // 2)
    chain.send_token(token, payer, usdt["to"], 15 * USDT)
    chain.mine(2)
    for inv in (eth, usdt):
        done = await d.wait_status(inv["id"], "COMPLETED")
        assert done["derivationIndex"] == inv["derivationIndex"]

    page = await d.ok("GET", "/v1/addresses?withBalance=true")
    assert page["balanceErrors"] == {} and page["balanceBlocks"][NETWORK] >= 1
    rows = {a["index"]: a for a in page["data"]}
    assert sorted(rows) == [1000, 1001]
    assert rows[1000]["balances"] == {NETWORK: {"ETH": "0.5", "USDT": "0"}}
    assert rows[1001]["balances"] == {NETWORK: {"ETH": "0", "USDT": "15"}}
    assert rows[1000]["invoices"] == [
        {"id": eth["id"], "network": NETWORK, "asset": "ETH", "status": "COMPLETED"}]

    cli = run_cli("addresses", "list", "--with-balance", "--config", str(d.config.path))
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].split()[:2] == ["1000", eth["to"]] and "COMPLETED" in lines[0]
    assert lines[1].split() == [f"{NETWORK}:", "0.5", "ETH,", "0", "USDT"]
    assert lines[3].split() == [f"{NETWORK}:", "0", "ETH,", "15", "USDT"]

    # The wallet that holds the mnemonic can sweep: a tx signed with the key of index 1000.
    key = hdkeys.reference_key(path_of(1000))
    sweep = Account.sign_transaction({
        "to": payer, "value": ETH // 10, "gas": 21_000,
        "gasPrice": int(chain.rpc("eth_gasPrice"), 16), "nonce": 0, "chainId": chain.chain_id(),
    }, key)
    tx = chain.rpc("eth_sendRawTransaction", [sweep.raw_transaction.to_0x_hex()])
    assert chain.wait_for_receipt(tx)["status"] == "0x1"
    assert chain.balance(eth["to"]) < ETH // 2 - ETH // 10


async def _storm(d: DaemonProc, n: int, parallel: int) -> tuple[dict[str, int], int]:
    """`n` derive-creates, `parallel` at a time, until the daemon dies; ({id: index},
    requests that got no answer)."""
    made: dict[str, int] = {}
    lost = 0
    queue = iter(range(n))
    body = {"network": NETWORK, "asset": "ETH", "amount": "0.01", "address": "derive"}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal lost
        for _ in queue:
            try:
                async with session.post(f"{d.base_url}/v1/invoices", json=body,
                                        headers=headers) as resp:
                    data = await resp.json()
                    assert resp.status == 201, data
                    made[data["id"]] = data["derivationIndex"]
            except (TimeoutError, aiohttp.ClientError):
                lost += 1

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(parallel)))
    return made, lost


def _indexes(db: Path) -> tuple[list[int], dict[int, int], dict[str, int]]:
    with sqlite3.connect(db) as conn:
        taken = [r[0] for r in conn.execute("SELECT idx FROM derived_addresses ORDER BY idx")]
        per_index = dict(conn.execute(
            "SELECT derivation_index, COUNT(*) FROM invoices "
            "WHERE derivation_index IS NOT NULL GROUP BY derivation_index"))
        by_id = dict(conn.execute(
            "SELECT id, derivation_index FROM invoices WHERE derivation_index IS NOT NULL"))
    return taken, per_index, by_id


async def test_concurrent_creates_and_kill_9_keep_indexes_unique_and_gapless(
    daemons: Daemons,
) -> None:
    d = await daemons.start(extra=xpub_config(2000))

    # 200 concurrent creates: 200 distinct consecutive indexes
    made, lost = await _storm(d, 200, 200)
    assert lost == 0 and sorted(made.values()) == list(range(2000, 2200))

    # a storm killed with -9 while creates are in flight
    storm = asyncio.create_task(_storm(d, 5000, 16))
    while True:
        await asyncio.sleep(0.05)
        with sqlite3.connect(d.config.database) as conn:
            if conn.execute("SELECT COUNT(*) FROM derived_addresses").fetchone()[0] > 400:
                break
    d.kill()
    stormed, lost = await storm
    assert stormed and lost > 0  # it died mid-storm
    made.update(stormed)

    await d.start()
    after = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                                "amount": "0.01"}, expect=201)
    taken, per_index, by_id = _indexes(d.config.database)
    assert taken == list(range(2000, 2000 + len(taken)))  # no gap, none twice (primary key)
    assert after["derivationIndex"] == taken[-1]  # the counter went on after the restart
    assert set(per_index) == set(taken) and set(per_index.values()) == {1}
    for invoice_id, index in made.items():  # every create that was answered was committed
        assert by_id[invoice_id] == index
    # creates that got no answer either committed whole (index and invoice) or not at all
    assert len(by_id) == len(taken) >= len(made) + 1


async def test_restart_keeps_the_counter_and_a_new_key_goes_on_from_it(
    daemons: Daemons,
) -> None:
    d = await daemons.start(extra=xpub_config(3000))
    first = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                                "amount": "1"}, expect=201)
    assert first["derivationIndex"] == 3000
    assert await d.stop() == 0
    await d.start()
    again = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                                "amount": "1"}, expect=201)
    assert again["derivationIndex"] == 3001

    # The merchant moves to another account's key: it goes on from the next index, and
    # the log says so (with the keys' fingerprints, never the keys).
    assert await d.stop() == 0
    other = hdkeys.xpub("m/44'/60'/1'")
    d.config.extra["addresses"]["xpub"] = other
    await d.start()
    moved = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                                "amount": "1"}, expect=201)
    assert moved["derivationIndex"] == 3002
    assert moved["to"] == hdkeys.reference_address("m/44'/60'/1'/0/3002")
    text = d.log_text()
    assert "is not the one that derived index 3001" in text
    assert "next index 3002" in text
    assert hdkeys.xpub() not in text and other not in text

    check = run_cli("check-config", "--config", str(d.config.path))
    assert check.returncode == 0 and "addresses: derived from key" in check.stdout
    assert other not in check.stdout

    # The CLI's create takes the next index from the same sequence, beside the daemon.
    made = run_cli("invoices", "create", "--network", NETWORK, "--asset", "ETH", "--amount",
                   "1", "--address", "derive", "--config", str(d.config.path))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["derivationIndex"] == 3003
