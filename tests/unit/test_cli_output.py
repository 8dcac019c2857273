"""CLI conveniences: shell completion (click's own, through the installed entry point and a
real bash), `--json` on the listing commands, and NO_COLOR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from watcher.cli import main
from watcher.config import load_settings
from watcher.daemon import build_ledger
from watcher.ledger import NewInvoice
from watcher.storage import sqlite

ENTRY = Path(sys.executable).parent / "payment-watcher"
ANSI = "\x1b["


def _complete(shell: str, words: str, cword: int) -> str:
    env = {**os.environ, "_PAYMENT_WATCHER_COMPLETE": f"{shell}_complete",
           "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    return subprocess.run([str(ENTRY)], env=env, capture_output=True, text=True,
                          check=True).stdout


def test_completion_scripts_for_bash_zsh_fish() -> None:
    for shell, marker in (("bash", "complete -o nosort -F _payment_watcher_completion"),
                          ("zsh", "#compdef payment-watcher"),
                          ("fish", "complete --no-files --command payment-watcher")):
        env = {**os.environ, "_PAYMENT_WATCHER_COMPLETE": f"{shell}_source"}
        out = subprocess.run([str(ENTRY)], env=env, capture_output=True, text=True,
                             check=True).stdout
        assert marker in out, (shell, out[:300])


def test_completion_answers_commands_and_options() -> None:
    assert _complete("bash", "payment-watcher inv", 1).splitlines() == ["plain,invoices"]
    got = _complete("bash", "payment-watcher addresses li", 2).splitlines()
    assert got == ["plain,list"]
    options = _complete("bash", "payment-watcher invoices list --js", 3).splitlines()
    assert options == ["plain,--json"]


def test_completion_in_a_real_bash() -> None:
    script = (
        f'eval "$(_PAYMENT_WATCHER_COMPLETE=bash_source {ENTRY})"\n'
        "COMP_WORDS=(payment-watcher addr); COMP_CWORD=1\n"
        "_payment_watcher_completion payment-watcher\n"
        'echo "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{ENTRY.parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["addresses"], out.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'database = "{tmp_path / "w.db"}"\n'
                    '[api]\napi_keys = ["k-0123456789abcdef"]\nlisten = "127.0.0.1:1"\n'
                    '[networks.anvil]\nrpc = ["http://127.0.0.1:1"]\n')
    ledger = build_ledger(load_settings(path))
    db = sqlite.connect(tmp_path / "w.db")
    ledger.start_network(db, "anvil", 7, 0)
    ledger.create(db, NewInvoice(network="anvil", asset="ETH", amount=5 * 10**17,
                                 address="0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc",
                                 expire_at=None, callback_url="http://127.0.0.1:1/h?t=s3cret"),
                  2_000_000_000)
    db.close()
    return path


def run(*args: str, env: dict[str, str] | None = None, color: bool = False) -> str:
    result = CliRunner().invoke(main, list(args), env=env, color=color)
    assert result.exit_code == 0, result.output
    return result.output


def test_json_outputs(config: Path) -> None:
    invoices = json.loads(run("invoices", "list", "--json", "--config", str(config)))
    (inv,) = invoices["data"]
    assert (inv["status"], inv["amount"], invoices["nextCursor"]) == ("PENDING", "0.5", None)
    shown = json.loads(run("invoices", "show", inv["id"], "--json", "--config", str(config)))
    assert shown["id"] == inv["id"]
    deliveries = json.loads(run("callbacks", "list", "--json", "--config", str(config)))
    (d,) = deliveries["data"]
    assert (d["event"], d["invoiceId"], d["state"]) == ("invoice.created", inv["id"], "pending")
    assert "s3cret" not in json.dumps(d)  # the URL's query is redacted
    status = json.loads(run("status", "--json", "--config", str(config)))
    assert status["invoices"] == {"PENDING": 1} and status["callbackQueue"] == 1
    assert status["networks"] == [{"name": "anvil", "headBlock": 7, "scannedBlock": 6,
                                   "lagBlocks": 1, "rpc": None, "daemonReachable": False,
                                   "leader": None}]
    nets = json.loads(run("networks", "--json"))
    eth = next(n for n in nets["data"] if n["name"] == "ethereum")
    assert eth["chainId"] == 1 and "rpc" not in eth
    assert {"symbol": "USDT", "decimals": 6} .items() <= next(
        a for a in eth["assets"] if a["symbol"] == "USDT").items()


def test_colour_on_a_terminal_and_none_with_no_color(config: Path) -> None:
    args = ("invoices", "list", "--config", str(config))
    coloured = run(*args, color=True)
    assert ANSI in coloured and "PENDING" in coloured
    assert ANSI not in run(*args, env={"NO_COLOR": "1"}, color=True)
    assert ANSI not in run(*args)  # not a terminal: no colour either
    assert ANSI in run("check-config", "--config", str(config), color=True)
    assert ANSI not in run("check-config", "--config", str(config), env={"NO_COLOR": "1"},
                           color=True)
    # an empty NO_COLOR does not count (no-color.org)
    assert ANSI in run(*args, env={"NO_COLOR": ""}, color=True)


def test_the_cli_starts_without_the_heavy_libraries() -> None:
    """`--help` (and a command before it needs them) imports neither web3, aiohttp nor
    pydantic: they are imported where used, so the command line starts fast. Checked by
    module, not by time."""
    code = ("import sys, watcher.cli; heavy = [m for m in ('web3', 'aiohttp', 'pydantic', "
            "'eth_utils', 'sqlite_utils', 'asyncio') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run([str(ENTRY), "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "rescan" in help_text and "addresses" in help_text


def test_invoices_list_reads_without_the_web_stack(tmp_path: Path) -> None:
    """`invoices list` (text) opens the database and prints, importing neither aiohttp,
    web3, eth_utils (0.1 s: the xpub and token checks use `watcher.addresses`), the
    daemon nor the ledger: the read path is `watcher.queries`, not the API module; also with
    an xpub and token addresses configured. Run twice: the first creates the database."""
    from tests import hdkeys

    config = tmp_path / "c.toml"
    config.write_text(f'database = "{tmp_path / "w.db"}"\n[api]\napi_keys = ["k"]\n'
                      '[networks.anvil]\nchain_id = 31337\nrpc = ["http://127.0.0.1:9"]\n'
                      'tokens = [{ symbol = "USDT", decimals = 6, '
                      'address = "0x5FbDB2315678afecb367f032d93F642f64180aa3" }]\n'
                      f'[addresses]\nxpub = "{hdkeys.xpub()}"\n')
    heavy = ("web3", "aiohttp", "eth_account", "eth_utils", "watcher.daemon", "watcher.ledger")
    code = ("import sys; sys.argv = ['payment-watcher', 'invoices', 'list', '--config', "
            f"{str(config)!r}]\nfrom watcher.cli import main\ntry:\n    main()\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip().splitlines()[-1] == "[]", out
