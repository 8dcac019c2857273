"""`payment-watcher invoices create --method NETWORK:ASSET ...` as an operator runs it (a
subprocess, a real database, rates from the config), and `invoices show` / `list` of an
invoice whose customer has not chosen a method yet (network, asset and amount null)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import hdkeys
from tests.integration.daemonproc import NETWORK, DaemonConfig, run_cli
from tests.integration.test_cli import cli_json, one_error_line

RATES = {"ETH/USD": [{"fixed": "2500"}], "USDT/USD": [{"fixed": "1"}]}


@pytest.fixture
def conf(tmp_path: Path, rpc_url: str, token: str) -> str:
    cfg = DaemonConfig(tmp_path, rpc=[rpc_url], tokens={"USDT": token}, extra={
        "addresses": {"xpub": hdkeys.xpub()}, "rates.pairs": RATES})
    return str(cfg.write())


def test_create_with_methods_then_show_and_list(conf: str, token: str) -> None:
    inv = cli_json(
        "invoices", "create", "--config", conf, "--method", f"{NETWORK}:ETH",
        "--method", f"{NETWORK}:USDT", "--price", "25", "--currency", "USD",
        "--title", "Order #7", "--description", "Two mugs", "--external-id", "cli-m-1",
        "--ttl", "900",
    )  # fmt: skip
    assert (inv["status"], inv["method"], inv["title"], inv["description"]) == (
        "PENDING", None, "Order #7", "Two mugs")
    for key in ("network", "asset", "to", "amount", "amountPaid", "amountDue", "rate"):
        assert inv[key] is None, key
    assert [(m["network"], m["asset"], m["amount"], m["chosen"]) for m in inv["methods"]] == [
        (NETWORK, "ETH", "0.01", False), (NETWORK, "USDT", "25", False)]
    assert inv["methods"][1]["tokenAddress"] == token
    invoice_id = str(inv["id"])

    shown = cli_json("invoices", "show", "--config", conf, invoice_id)
    assert shown["id"] == invoice_id and shown["method"] is None and shown["amount"] is None
    assert [(m["asset"], m["chosen"]) for m in shown["methods"]] == [
        ("ETH", False), ("USDT", False)]

    listed = run_cli("invoices", "list", "--config", conf)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith(invoice_id))
    assert re.search(r"PENDING\s+—\s+—\s+—\s+choice pending \(2 methods, 25 USD\)", line), line
    assert "None" not in listed.stdout
    as_json = cli_json("invoices", "list", "--config", conf, "--json")
    data = as_json["data"]
    assert isinstance(data, list) and data[0]["id"] == invoice_id
    assert data[0]["network"] is None

    # the same externalId and values again: the same invoice, as the API's 200
    again = cli_json(
        "invoices", "create", "--config", conf, "--method", f"{NETWORK}:ETH",
        "--method", f"{NETWORK}:USDT", "--price", "25", "--currency", "USD",
        "--title", "Order #7", "--description", "Two mugs", "--external-id", "cli-m-1",
        "--ttl", "900",
    )  # fmt: skip
    assert again["id"] == invoice_id

    cancelled = cli_json("invoices", "cancel", "--config", conf, invoice_id)
    assert cancelled["status"] == "VOIDED" and cancelled["method"] is None


@pytest.mark.parametrize(
    "args,says",
    [
        (["--method", NETWORK, "--price", "1", "--currency", "USD"], "NETWORK:ASSET"),
        (["--method", f"{NETWORK}:", "--price", "1", "--currency", "USD"], "NETWORK:ASSET"),
        (["--method", f"{NETWORK}:DOGE", "--price", "1", "--currency", "USD"], "DOGE"),
        (["--method", f"{NETWORK}:ETH", "--method", f"{NETWORK}:ETH", "--price", "1",
          "--currency", "USD"], "listed twice"),
        (["--method", f"{NETWORK}:ETH", "--network", NETWORK, "--asset", "ETH", "--price",
          "1", "--currency", "USD"], "methods replaces network"),
        (["--method", f"{NETWORK}:ETH", "--amount", "1"], "methods replaces amount"),
        (["--method", f"{NETWORK}:ETH", "--currency", "USD"], "price"),
        (["--method", f"{NETWORK}:ETH", "--price", "1", "--currency", "JPY"], "JPY"),
        (["--method", f"{NETWORK}:ETH", "--price", "1", "--currency", "USD", "--title",
          "t" * 201], "title"),
    ],
)
def test_bad_methods_exit_2_with_one_line(conf: str, args: list[str], says: str) -> None:
    proc = run_cli("invoices", "create", "--config", conf, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in one_error_line(proc.stderr)
    assert proc.stdout == ""
    listed = run_cli("invoices", "list", "--config", conf)
    assert listed.returncode == 0 and listed.stdout == ""  # nothing was created
