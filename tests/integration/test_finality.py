"""Finality tags with the real daemon: on an anvil whose epochs are 2 slots (`safe` 2 and
`finalized` 4 blocks below the head, an anvil's `--slots-in-an-epoch`), a payment with
enough confirmations waits for the safe block; a node that refuses the tag stops the start
with the key named, and `check-config --online` says the same."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.chainmodel import ChainModel, ChainServer
from tests.integration.daemonproc import (
    NETWORK,
    DaemonConfig,
    DaemonProc,
    Daemons,
    arun_cli,
    poll,
)
from watcher.devchain import Anvil, DevChain

ETH = 10**18


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[Daemons]:
    pool = Daemons(tmp_path, [], {})
    yield pool
    await pool.close()


async def test_safe_finality_on_anvil(
    daemons: Daemons, anvil_factory: Callable[..., Anvil]
) -> None:
    node = anvil_factory(extra_args=["--slots-in-an-epoch", "2"])
    chain = DevChain(node.url)
    chain.mine(6)
    d = await daemons.start(rpc=[node.url], confirmations=1,
                            extra={f"networks.{NETWORK}": {"finality": "safe"}})
    to = chain.new_account()

    async def tags_read() -> bool:  # the first range commit writes the tags with the head
        nets = await d.ok("GET", "/v1/networks")
        return any(n["name"] == NETWORK and n["finalizedBlock"] is not None
                   for n in nets["data"])

    await poll(tags_read, 20, what="the finality tags read")
    inv = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "ETH",
                                              "amount": "1", "address": to}, expect=201)
    assert inv["finalized"] is False  # the tags are read: nothing paid is final yet
    chain.send_native(chain.accounts[1], to, ETH)
    paid = chain.block_number()
    got = await d.wait_status(inv["id"], "WAITING_FOR_CONFIRMATIONS")
    assert got["confirmations"] >= 1  # enough by count; the safe block is below it
    assert int(chain.get_block("safe")["number"], 16) < paid
    chain.mine(2)  # safe = head - 2 reaches the payment's block
    done = await d.wait_status(inv["id"], "COMPLETED")
    assert int(chain.get_block("safe")["number"], 16) >= paid
    assert done["finalized"] is False
    chain.mine(2)  # finalized = head - 4 reaches it

    async def final() -> bool:
        return bool((await d.invoice(inv["id"]))["finalized"])

    await poll(final, 20, what="finalized")
    events = await d.ok("GET", f"/v1/invoices/{inv['id']}/events")
    assert [e["event"] for e in events["data"]] == [
        "invoice.created", "invoice.waiting_for_confirmations", "invoice.completed"]


@pytest.mark.parametrize(("key", "value", "refused"), [
    ("finality", "finalized", "the 'finalized' block tag"),
    ("internal_transfers", "trace_block", "trace_block"),
    ("internal_transfers", "debug_trace", "debug_traceBlockByNumber"),
])
async def test_a_node_without_what_the_network_asks_stops_the_start(
    tmp_path: Path, key: str, value: str, refused: str
) -> None:
    model = ChainModel(chain_id=31337)  # serves no traces, and (here) no finality tags
    model.mine_empty(3)
    model.unsupported_tags = {"safe", "finalized"}
    async with ChainServer(model) as server:
        cfg = DaemonConfig(tmp_path, rpc=[server.url], extra={f"networks.{NETWORK}": {key: value}})
        d = DaemonProc(cfg)
        d.spawn()
        code = await d.wait(20)
        assert code == 2
        lines = [ln for ln in d.log_text().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, d.log_text()
        assert lines[0].startswith(f"error: networks.{NETWORK}.{key}: the node does not "
                                   f"serve {refused}")
        check = await arun_cli("check-config", "--online", "--config", str(cfg.path))
        assert check.returncode == 2
        assert f"networks.{NETWORK}.{key}: the node does not serve {refused}" in check.stderr
