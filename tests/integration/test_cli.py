"""The `payment-watcher` commands as an operator runs them (`python -m watcher ...` in a
subprocess), on a real database, next to a real running daemon and a real anvil."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemonproc import (
    CALLBACK_SECRET,
    DaemonConfig,
    DaemonProc,
    Daemons,
    arun_cli,
    poll,
    run_cli,
    wait_callbacks,
)
from tests.integration.receiver import Received, Receiver, Reply
from watcher.devchain import DevChain

USDT = 10**6


def cli_json(*args: str) -> dict[str, object]:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def one_error_line(stderr: str) -> str:
    """stderr holds exactly one line, `error: ...`, and no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_invoices_create_list_show_cancel_on_the_database(
    tmp_path: Path, token: str, rpc_url: str
) -> None:
    address = DevChain.new_account()
    # A database no daemon has run on: the network's start block must be read first, and
    # with its RPC down the create is refused in one line.
    (tmp_path / "dead").mkdir()
    dead = DaemonConfig(tmp_path / "dead", rpc=["http://127.0.0.1:1"], tokens={"USDT": token})
    refused = run_cli(
        "invoices", "create", "--config", str(dead.write()), "--network", "anvil",
        "--asset", "USDT", "--amount", "1", "--address", address,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "has not started yet" in one_error_line(refused.stderr)

    cfg = DaemonConfig(tmp_path, rpc=[rpc_url], tokens={"USDT": token})
    conf = str(cfg.write())
    inv = cli_json(
        "invoices", "create", "--config", conf, "--network", "anvil", "--asset", "USDT",
        "--amount", "12.50", "--address", address.lower(), "--external-id", "cli-1",
        "--client-id", "cust-7", "--redirect-url", "https://shop.example/done",
    )  # fmt: skip
    assert (inv["status"], inv["amount"], inv["to"], inv["externalId"]) == (
        "PENDING", "12.5", address, "cli-1"
    )  # fmt: skip
    assert (inv["clientId"], inv["redirectUrl"], inv["amountDue"], inv["url"]) == (
        "cust-7", "https://shop.example/done", "12.5", None  # the checkout is off here
    )
    invoice_id = str(inv["id"])
    assert cli_json("invoices", "show", "--config", conf, invoice_id) == inv

    listed = run_cli("invoices", "list", "--config", conf)
    assert listed.returncode == 0, listed.stderr
    assert invoice_id in listed.stdout and "PENDING" in listed.stdout
    for client, shown in (("cust-7", True), ("someone-else", False)):
        listed = run_cli("invoices", "list", "--config", conf, "--client-id", client)
        assert listed.returncode == 0 and (invoice_id in listed.stdout) == shown

    cancelled = cli_json("invoices", "cancel", "--config", conf, invoice_id)
    assert cancelled["status"] == "VOIDED"
    listed = run_cli("invoices", "list", "--config", conf, "--status", "PENDING")
    assert listed.returncode == 0 and invoice_id not in listed.stdout

    again = run_cli("invoices", "cancel", "--config", conf, invoice_id)
    assert again.returncode == 2
    one_error_line(again.stderr)
    missing = run_cli("invoices", "show", "--config", conf, "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 2
    one_error_line(missing.stderr)


@pytest.mark.parametrize("amount", ["abc", "1.1234567"])
def test_invoices_create_bad_amount_exits_2_with_one_line(
    tmp_path: Path, token: str, amount: str
) -> None:
    cfg = DaemonConfig(tmp_path, rpc=["http://127.0.0.1:1"], tokens={"USDT": token})
    proc = run_cli(
        "invoices", "create", "--config", str(cfg.write()), "--network", "anvil",
        "--asset", "USDT", "--amount", amount, "--address", DevChain.new_account(),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "amount" in one_error_line(proc.stderr)
    assert proc.stdout == ""


async def _cli_create(d: DaemonProc, to: str, amount: str) -> str:
    proc = await arun_cli(
        "invoices", "create", "--config", str(d.config.path), "--network", "anvil",
        "--asset", "USDT", "--amount", amount, "--address", to,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["id"])


async def test_cli_invoice_paid_while_the_daemon_runs(
    daemons: Daemons, chain: DevChain, token: str, payer: str
) -> None:
    async with Receiver(secret=CALLBACK_SECRET) as rx:
        d = await daemons.start(callback_url=rx.url)
        to = chain.new_account()
        invoice_id = await _cli_create(d, to, "2")
        chain.send_token(token, payer, to, 2 * USDT)
        chain.mine(1)
        inv = await d.wait_status(invoice_id, "COMPLETED")
        assert inv["amountPaid"] == "2"
        await wait_callbacks(
            rx, {invoice_id: ["created", "waiting_for_confirmations", "completed"]}
        )


async def test_payment_right_after_cli_create_is_not_missed(
    daemons: Daemons, chain: DevChain, token: str, payer: str
) -> None:
    """The follower takes CLI-made invoices into its index after it reads a head and
    before it matches blocks up to it: a payment mined right after the create counts."""
    d = await daemons.start()
    for _ in range(3):
        to = chain.new_account()
        invoice_id = await _cli_create(d, to, "2")
        chain.send_token(token, payer, to, 2 * USDT)
        chain.mine(1)
        inv = await d.wait_status(invoice_id, "COMPLETED")
        assert inv["amountPaid"] == "2"


async def test_callbacks_list_failed_and_redeliver(daemons: Daemons, chain: DevChain) -> None:
    refuse = {"on": True}

    def answer(rec: Received) -> Reply | None:
        return Reply(410) if refuse["on"] else None  # 410: failed at once, no retry

    async with Receiver(secret=CALLBACK_SECRET, responder=answer) as rx:
        d = await daemons.start(callback_url=rx.url)
        conf = str(d.config.path)
        invoice_id = await d.create("ETH", "1", chain.new_account())
        await rx.wait_for(lambda r: len(r.requests) >= 1, timeout=10)
        event_id = rx.requests[0].delivery_id

        await _delivery_state(d, invoice_id, "failed")
        failed = await arun_cli("callbacks", "list", "--config", conf, "--failed")
        assert failed.returncode == 0, failed.stderr
        line = next(x for x in failed.stdout.splitlines() if event_id in x)
        assert "failed" in line and "invoice.created" in line and invoice_id in line
        everything = await arun_cli("callbacks", "list", "--config", conf)
        assert everything.returncode == 0 and event_id in everything.stdout

        refuse["on"] = False
        proc = await arun_cli("callbacks", "redeliver", "--config", conf, event_id)
        assert proc.returncode == 0 and event_id in proc.stdout, proc.stderr
        # The running daemon sends what the CLI queued (it polls the outbox).
        await rx.wait_for(lambda r: event_id in r.delivery_ids(200), timeout=15)
        assert all(r.signature_ok for r in rx.requests)
        await _delivery_state(d, invoice_id, "delivered")
        failed = await arun_cli("callbacks", "list", "--config", conf, "--failed")
        assert failed.returncode == 0 and event_id not in failed.stdout

        unknown = await arun_cli("callbacks", "redeliver", "--config", conf, "evt_nope")
        assert unknown.returncode == 2
        assert "evt_nope" in one_error_line(unknown.stderr)


async def _delivery_state(d: DaemonProc, invoice_id: str, state: str) -> None:
    """Until the invoice's first event's delivery is in `state` (through the API)."""

    async def check() -> bool:
        history = await d.ok("GET", f"/v1/invoices/{invoice_id}/events")
        return bool(history["data"][0]["delivery"]["state"] == state)

    await poll(check, 15, what=f"delivery {state}")


async def test_status_shows_networks_invoices_and_queue(daemons: Daemons, chain: DevChain) -> None:
    # A fixed port: `status` finds the running daemon at the configured address.
    d = await daemons.start(extra={"api": {"listen": f"127.0.0.1:{free_port()}"}})
    await d.create("ETH", "1", chain.new_account())
    head = chain.block_number()
    await d.wait_scanned(head)
    proc = await arun_cli("status", "--config", str(d.config.path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["network", "head", "scanned", "lag", "leader", "rpc"]
    row = next(x.split() for x in lines if x.startswith("anvil "))
    assert int(row[1]) >= head and int(row[2]) >= head and row[5].startswith("http://127.0.0.1")
    assert d.proc is not None and row[4].endswith(f"-{d.proc.pid}")  # host name and pid
    assert "ok" in row[6:]
    assert "invoices: PENDING 1" in proc.stdout
    assert any(x.startswith("callback queue: ") for x in lines)


def test_check_config_online_against_anvil(tmp_path: Path, rpc_url: str, token: str) -> None:
    good = DaemonConfig(tmp_path / "good", rpc=[rpc_url], tokens={"USDT": token})
    proc = run_cli("check-config", "--config", str(good.write()), "--online")
    assert proc.returncode == 0, proc.stderr
    assert f"online: networks.anvil.rpc.0 {rpc_url} chain id 31337 ok" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "ok"
    assert CALLBACK_SECRET not in proc.stdout + proc.stderr

    wrong = DaemonConfig(tmp_path / "wrong", rpc=[rpc_url], chain_id=1)
    proc = run_cli("check-config", "--config", str(wrong.write()), "--online")
    assert proc.returncode == 2
    assert "networks.anvil.rpc.0" in one_error_line(proc.stderr)
