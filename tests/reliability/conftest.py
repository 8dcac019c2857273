"""Reliability and security tests reuse the integration fixtures (a real anvil, the seeded
test tokens, free ports) and add a few of their own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    _session_chain,
    anvil,
    anvil_factory,
    chain,
    dead_url,
    free_port,
    make_rpc,
    payer,
    rpc_url,
    token,
    token18,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> str:
    """The path of an operator tool; a missing one fails in CI and skips locally."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (CI=true: reliability tests never skip)",
                        pytrace=False)
        pytest.skip(f"{name} is not installed")
    return path


# --- the real daemon as a subprocess -----------------------------------------------------

API_KEY = "pwk_reliability_key_9f8e7d6c5b4a3210"
CALLBACK_SECRET = "whsec_reliability_secret_0a1b2c3d4e5f"
ROOT = Path(__file__).resolve().parents[2]


def write_config(
    path: Path, *, database: Path, rpc: list[str], usdt: str | None = None,
    callback_url: str | None = None, port: int = 0, confirmations: int = 2,
) -> Path:
    """A TOML config for the `anvil` network (USDT at `usdt`), fast polling."""
    lines = [
        f"database = {json.dumps(str(database))}",
        "[api]",
        f'listen = "127.0.0.1:{port}"',
        f"api_keys = [{json.dumps(API_KEY)}]",
        "[callbacks]",
        f"secret = {json.dumps(CALLBACK_SECRET)}",
        "timeout = 5",
    ]
    if callback_url:
        lines.append(f"url = {json.dumps(callback_url)}")
    lines += [
        "[networks.anvil]",
        f"rpc = {json.dumps(rpc)}",
        f"confirmations = {confirmations}",
        "poll_interval = 0.25",
    ]
    if usdt:
        lines.append(f'tokens = [{{ symbol = "USDT", address = "{usdt}", decimals = 6 }}]')
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProc:
    """`python -m watcher run --config PATH`, its output appended to `log`."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.config = config
        self.log = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DaemonProc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PAYMENT_WATCHER_CONFIG", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )
        self.starts += 1
        return self

    def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise AssertionError(f"daemon exited: {self.log.read_text()[-2000:]}")
                try:
                    async with s.get(self.base + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("daemon not healthy in time")

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession() as s, s.request(
            method, self.base + path, json=body, headers=headers
        ) as r:
            return r.status, await r.json(content_type=None)


def new_daemon(tmp_path: Path, rpc: list[str], usdt: str | None = None,
               callback_url: str | None = None) -> DaemonProc:
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", database=tmp_path / "watcher.db", rpc=rpc,
                       usdt=usdt, callback_url=callback_url, port=port)
    return DaemonProc(cfg, tmp_path / "daemon.log", port)
