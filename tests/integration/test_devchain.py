"""devchain: anvil process, contracts, payments, mining, time, snapshots and reorgs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from watcher.devchain import (
    ANVIL_ENV,
    Anvil,
    AnvilNotFound,
    DevChain,
    find_anvil,
    load_artifact,
)

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def test_find_anvil_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ANVIL_ENV, str(tmp_path / "nope"))
    with pytest.raises(AnvilNotFound, match="make install"):
        find_anvil()


def test_find_anvil_default() -> None:
    out = subprocess.run([find_anvil(), "--version"], capture_output=True, text=True, timeout=10)
    assert "anvil" in out.stdout.lower()


def test_anvil_process_lifecycle() -> None:
    node = Anvil(chain_id=4242)
    with node:
        assert node.running and node.port > 0
        assert node.url == f"http://127.0.0.1:{node.port}"
        assert DevChain(node.url).chain_id() == 4242
    assert not node.running
    node.stop()  # idempotent


def test_artifacts_shipped() -> None:
    token = load_artifact("TestToken")
    names = {item.get("name") for item in token["abi"]}
    assert {"mint", "transfer", "transferFrom", "approve", "batchTransfer", "Transfer"} <= names
    assert token["bytecode"].startswith("0x60")
    assert load_artifact("Reverter")["bytecode"].startswith("0x")


def test_seeded_tokens(chain: DevChain, token: str, token18: str, payer: str) -> None:
    usdt = chain.token(token)
    assert usdt.functions.decimals().call() == 6
    assert usdt.functions.symbol().call() == "USDT"
    assert chain.token(token18).functions.decimals().call() == 18
    assert chain.token_balance(token, payer) == 10**9 * 10**6


def test_deploy_mint_transfer(chain: DevChain) -> None:
    addr = chain.deploy_token("EURT", 2)
    alice, bob = chain.new_account(), chain.new_account()
    assert alice != bob
    chain.mint(addr, chain.accounts[0], 1000)
    tx = chain.send_token(addr, chain.accounts[0], alice, 250)
    receipt = chain.receipt(tx)
    assert receipt is not None and receipt["status"] == "0x1"
    (log,) = receipt["logs"]
    assert log["topics"][0] == TRANSFER_TOPIC
    assert int(log["data"], 16) == 250
    assert chain.token_balance(addr, alice) == 250
    assert chain.token_balance(addr, bob) == 0


def test_batch_transfer_emits_one_log_per_recipient(
    chain: DevChain, token: str, payer: str
) -> None:
    recipients = [chain.new_account() for _ in range(5)]
    tx = chain.batch_transfer(token, payer, recipients, [1, 2, 3, 4, 5])
    receipt = chain.receipt(tx)
    assert receipt is not None and len(receipt["logs"]) == 5
    assert [chain.token_balance(token, r) for r in recipients] == [1, 2, 3, 4, 5]


def test_native_payment_to_reverter_fails(chain: DevChain, reverter: str, payer: str) -> None:
    before = chain.balance(reverter)
    tx = chain.send_native(payer, reverter, 10**18)
    receipt = chain.receipt(tx)
    assert receipt is not None and receipt["status"] == "0x0"
    assert chain.balance(reverter) == before
    ok = chain.receipt(chain.send_native(payer, chain.new_account(), 10**18))
    assert ok is not None and ok["status"] == "0x1"


def test_reorg_drops_tx(chain: DevChain, token: str, payer: str) -> None:
    to = chain.new_account()
    tx = chain.send_token(token, payer, to, 777)
    receipt = chain.receipt(tx)
    assert receipt is not None
    head = chain.block_number()
    old_hash = chain.get_block(head)["hash"]
    chain.reorg(1)
    assert chain.block_number() == head
    assert chain.get_block(head)["hash"] != old_hash
    assert chain.receipt(tx) is None
    assert chain.token_balance(token, to) == 0


def test_reorg_with_replacement_tx(chain: DevChain, token: str, payer: str) -> None:
    to = chain.new_account()
    chain.send_token(token, payer, to, 1)
    chain.mine(2)
    head = chain.block_number()
    chain.reorg(3, [(chain.token_transfer_tx(token, payer, to, 5), 1)])
    assert chain.block_number() == head
    assert chain.token_balance(token, to) == 5


def test_deep_reorg_keeps_fixture_isolation(chain: DevChain, token: str) -> None:
    # deeper than anything this test mined: the fixture must still restore the seed
    chain.mine(1)
    chain.reorg(5)
    assert chain.token(token).functions.decimals().call() == 6


def test_snapshot_revert(chain: DevChain, token: str, payer: str) -> None:
    to = chain.new_account()
    sid = chain.snapshot()
    chain.send_token(token, payer, to, 9)
    assert chain.token_balance(token, to) == 9
    assert chain.revert(sid)
    assert chain.token_balance(token, to) == 0


def test_mine_and_time(chain: DevChain) -> None:
    head = chain.block_number()
    assert chain.mine(3) == head + 3
    ts = int(chain.get_block("latest")["timestamp"], 16)
    chain.set_next_timestamp(ts + 1000)
    chain.mine()
    assert int(chain.get_block("latest")["timestamp"], 16) == ts + 1000
    chain.increase_time(3600)
    chain.mine()
    assert int(chain.get_block("latest")["timestamp"], 16) >= ts + 4600


def test_send_many_with_automine_off(chain: DevChain, token: str, payer: str) -> None:
    chain.set_automine(False)
    head = chain.block_number()
    recipients = [chain.new_account() for _ in range(3)]
    txs = [chain.token_transfer_tx(token, payer, recipients[i % 3], 1) for i in range(30)]
    txs.append({"from": payer, "to": recipients[0], "value": 5})
    hashes = chain.send_many(txs, chunk=8)
    assert len(set(hashes)) == 31
    assert chain.block_number() == head
    assert chain.receipt(hashes[0]) is None
    chain.mine()
    block = chain.get_block("latest")
    assert len(block["transactions"]) == 31
    assert all(r is not None and r["status"] == "0x1" for r in map(chain.receipt, hashes))
    assert chain.token_balance(token, recipients[0]) == 10


def test_fixture_restores_automine(chain: DevChain) -> None:
    # runs after test_send_many_with_automine_off in file order
    assert chain.automine


async def test_async_wrappers(chain: DevChain, token: str, payer: str) -> None:
    to = chain.new_account()
    tx = await chain.aio.send_token(token, payer, to, 3)
    assert (await chain.aio.receipt(tx))["status"] == "0x1"
