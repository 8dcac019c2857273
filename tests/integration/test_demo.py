"""`payment-watcher demo`, run as a user runs it: a subprocess, its output read back.

The scripted part (`--exit-after-script`) must take both invoices to COMPLETED, the one paid
in two parts through PARTIAL and WAITING_FOR_CONFIRMATIONS in between, and print every
callback with a verified signature. In the interactive part, SIGINT must stop it cleanly
and take its anvil with it. Without anvil it names `make install` and exits 2.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from watcher.devchain import ANVIL_ENV, AnvilNotFound, find_anvil

DEMO = [sys.executable, "-m", "watcher", "demo"]
RUN_TIMEOUT = 120

STATUS_LINE = re.compile(r"^\s*[\d.]+s\s+status\s+(\w{8}) (\w+)\s+(.*)$", re.M)
CALLBACK_LINE = re.compile(
    r"^\s*[\d.]+s\s+callback\s+(invoice\.\w+)\s+(\w{8}) (\w+)\s+(\w+)\s+signature (\w+)", re.M
)
STATUS_WORD = re.compile(r"\b(PENDING|WAITING_FOR_CONFIRMATIONS|COMPLETED|PARTIAL|VOIDED)\b")


@pytest.fixture(scope="module")
def anvil_binary() -> str:
    try:
        return find_anvil()
    except AnvilNotFound as exc:
        pytest.fail(str(exc))


def _env(anvil: str) -> dict[str, str]:
    return {**os.environ, ANVIL_ENV: anvil, "PYTHONUNBUFFERED": "1"}


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env
    )


def _statuses(output: str) -> dict[str, list[str]]:
    """Per (short id, asset): the statuses the status lines reached, in order."""
    out: dict[str, list[str]] = defaultdict(list)
    for short, asset, change in STATUS_LINE.findall(output):
        words = STATUS_WORD.findall(change.split("  paid")[0])
        out[f"{short} {asset}"].append(words[-1])
    return out


def test_demo_script_completes_every_invoice(anvil_binary: str) -> None:
    proc = _run("--exit-after-script", "--timeout", "90", env=_env(anvil_binary))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "scripted part done" in proc.stdout

    statuses = _statuses(proc.stdout)
    eth = [k for k in statuses if k.endswith(" ETH")]
    usdt = [k for k in statuses if k.endswith(" USDT")]
    # paid directly, by a contract, and after the customer chose ETH (having chosen USDT)
    assert len(eth) == 3 and len(usdt) == 1, statuses
    for key in eth:
        assert statuses[key][0] == "PENDING" and statuses[key][-1] == "COMPLETED", output
    two_parts = statuses[usdt[0]]
    assert two_parts[0] == "PENDING" and two_parts[-1] == "COMPLETED", output
    between = two_parts[1:-1]
    assert "PARTIAL" in between or "WAITING_FOR_CONFIRMATIONS" in between, output
    # the demo waits for PARTIAL before the second part: the whole path shows
    assert two_parts == [
        "PENDING", "WAITING_FOR_CONFIRMATIONS", "PARTIAL", "WAITING_FOR_CONFIRMATIONS",
        "COMPLETED",
    ], output  # fmt: skip

    callbacks: dict[str, set[str]] = defaultdict(set)
    for event, short, _asset, _status, signature in CALLBACK_LINE.findall(proc.stdout):
        assert signature == "ok", output
        callbacks[short].add(event)  # by invoice: one is created with no asset yet
    wanted = {"invoice.created", "invoice.waiting_for_confirmations", "invoice.completed"}
    assert all(wanted <= callbacks[key.split()[0]] for key in eth), output
    assert wanted | {"invoice.partial"} <= callbacks[usdt[0].split()[0]], output
    # the native invoice was paid to the first address derived from the xpub, which the
    # address list then shows holding the payment
    assert "(derived from the xpub, index 1000)" in proc.stdout, output
    assert "the withdrawal contract sends 0.2 ETH to 0x" in proc.stdout, output
    assert "by an internal call" in proc.stdout, output
    assert re.search(r"address\s+index 1000 0x[0-9a-fA-F]{40}: COMPLETED; holds 0.5 ETH",
                     proc.stdout), output
    # the methods invoice: created with no asset, USDT chosen, then switched to ETH
    chosen = [m for m in CALLBACK_LINE.findall(proc.stdout) if m[0] == "invoice.method_selected"]
    assert [asset for _e, _s, asset, _st, _sig in chosen] == ["USDT", "ETH"], output
    assert re.search(r"invoice.created\s+\w{8} choice PENDING", proc.stdout), output
    assert "customer's page (the method list): http://127.0.0.1:" in proc.stdout, output


def test_demo_timeout_exits_nonzero_with_the_step(anvil_binary: str) -> None:
    proc = _run("--exit-after-script", "--timeout", "2", env=_env(anvil_binary))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "error: the scripted part did not finish within 2 s (still waiting for" in proc.stderr
    assert "Traceback" not in output
    assert "stopped: daemon, receiver, anvil" in proc.stdout


def _children(pid: int) -> dict[int, str]:
    """Processes whose parent is `pid`: their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int, cmdline: str) -> bool:
    try:
        now = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return now == cmdline and state != "Z"


def test_demo_sigint_stops_everything(anvil_binary: str, tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*DEMO, "--timeout", "90"], stdout=out, stderr=subprocess.STDOUT, text=True,
            env=_env(anvil_binary),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while "Press Ctrl-C" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        curl = r"curl -s -H 'Authorization: Bearer \S+' http://127\.0\.0\.1:\d+/v1/invoices/"
        assert re.search(curl, text), text
        assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/dashboard \(sign in", text), text
        anvils = {p: c for p, c in _children(proc.pid).items() if "anvil" in c}
        assert len(anvils) == 1, _children(proc.pid)

        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert "stopped: daemon, receiver, anvil" in output
    assert not [p for p, c in anvils.items() if _alive(p, c)], anvils


def test_demo_without_anvil_names_make_install(tmp_path: Path) -> None:
    proc = _run("--exit-after-script", env={**os.environ, ANVIL_ENV: str(tmp_path / "none")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "make install" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
