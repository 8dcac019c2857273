"""The real daemon as a subprocess: `python -m watcher run --config PATH`, for tests.

```
cfg = DaemonConfig(tmp_path, rpc=[rpc_url], tokens={"USDT": token}, callback_url=rx.url)
async with DaemonProc(cfg) as d:              # started, /healthz answered
    status, body = await d.request("POST", "/v1/invoices", {...})
    d.log_text()                               # everything it wrote to stderr so far
code = await d.stop()                          # SIGTERM, wait, the exit code
```

The API listens on `127.0.0.1:0` (a free port chosen by the kernel, no probe-then-bind
race) unless `DaemonConfig.port` fixes one; the port is read from the daemon's own start-up
log line. stderr goes to a file (a pipe could fill and block the daemon). The same
`DaemonProc` can be started again after `kill()` (kill -9) on the same config and database;
each run appends to the one log. Nothing here blocks the event loop, so a callback
receiver served by the test's loop keeps answering while the test waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from tests.integration.receiver import Received, Receiver

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "pwk_test_api_key_0123456789abcdef"
CALLBACK_SECRET = "whsec_ZGFlbW9uLXRlc3Qtc2VjcmV0LWFiY2RlZjAxMjM0NQ=="  # Standard Webhooks form
NETWORK = "anvil"
_PORT_RE = re.compile(r"API on \S+?:(\d+)")


def _toml(value: Any) -> str:
    """A TOML value for the plain types a config needs (JSON strings are TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _key(name: str) -> str:
    """A TOML key, quoted unless bare (`"ETH/USD"`)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


@dataclass
class DaemonConfig:
    """What goes into the TOML file; `extra` adds or overrides `section.key` entries."""

    workdir: Path
    rpc: list[str]
    tokens: dict[str, str] = field(default_factory=dict)  # symbol -> address (6 decimals)
    chain_id: int = 31337
    confirmations: int = 2
    poll_interval: float = 0.25
    api_key: str = API_KEY
    callback_url: str | None = None
    callback_secret: str | None = CALLBACK_SECRET
    callback_timeout: float = 5.0
    log_format: str = "text"
    log_level: str = "info"
    port: int = 0  # 0: a free port chosen by the kernel at each start
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    database_url: str | None = None  # a postgresql:// URL instead of the SQLite file

    @property
    def database(self) -> Path:
        return self.workdir / "watcher.db"

    @property
    def path(self) -> Path:
        return self.workdir / "config.toml"

    def sections(self) -> dict[str, dict[str, Any]]:
        callbacks: dict[str, Any] = {"timeout": self.callback_timeout}
        if self.callback_url is not None:
            callbacks["url"] = self.callback_url
        if self.callback_secret is not None:
            callbacks["secret"] = self.callback_secret
        network: dict[str, Any] = {
            "chain_id": self.chain_id,
            "rpc": self.rpc,
            "confirmations": self.confirmations,
            "poll_interval": self.poll_interval,
            "block_time": 1,
            "tokens": [{"symbol": s, "address": a, "decimals": 6} for s, a in self.tokens.items()],
        }
        out: dict[str, dict[str, Any]] = {
            "": {
                "database": self.database_url or str(self.database),
                "log_format": self.log_format,
                "log_level": self.log_level,
            },
            "api": {"listen": f"127.0.0.1:{self.port}", "api_keys": [self.api_key]},
            "callbacks": callbacks,
            f"networks.{NETWORK}": network,
        }
        for section, values in self.extra.items():
            out.setdefault(section, {}).update(values)
        return out

    def write(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        for section, values in self.sections().items():
            if section:
                lines.append(f"\n[{section}]")
            lines.extend(f"{_key(k)} = {_toml(v)}" for k, v in values.items())
        self.path.write_text("\n".join(lines) + "\n")
        return self.path


def command(*args: str) -> list[str]:
    """`python -m watcher ARGS` with this interpreter."""
    return [sys.executable, "-m", "watcher", *args]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus anything that would change the daemon's behaviour
    (PAYMENT_WATCHER_* overrides, systemd variables), plus `extra`."""
    drop = ("PAYMENT_WATCHER_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "LISTEN_FDS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m watcher ARGS` to completion (text output captured)."""
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=clean_env(env), stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def arun_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`run_cli` in a worker thread: the event loop (and a receiver on it) keeps running."""
    return await asyncio.to_thread(run_cli, *args, env=env, timeout=timeout)


async def poll(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Await `check()` until it returns something truthy; that value. TimeoutError with the
    last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


class DaemonExited(RuntimeError):
    """The daemon ended while a test waited for it."""


class DaemonProc:
    """One `payment-watcher run` process. `await start()` / `await stop()`, or `async with`."""

    def __init__(self, config: DaemonConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = config.workdir / "daemon.log"
        self.starts = 0  # processes spawned so far
        self._log_offset = 0  # where this run's output begins in the log
        self._session: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the daemon is not listening")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process, without waiting for anything (again after it ended: same
        config and database, its output appended to the same log)."""
        if self.alive():
            raise RuntimeError("the daemon is already running")
        self.config.write()
        self.port = 0
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.starts += 1
            self.proc = subprocess.Popen(
                command("run", "--config", str(self.config.path)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=ROOT, env=clean_env(self.env), start_new_session=True,
            )  # fmt: skip
        return self.proc

    async def start(self, timeout: float = 30.0) -> DaemonProc:
        """Spawn and wait until /healthz answers 200."""
        await self.close_session()  # no pooled connection to an earlier run
        self.spawn()
        self.port = int(await poll(self._port, timeout, what="API port in the log"))
        await poll(self._healthy, timeout, what="/healthz 200")
        return self

    async def _port(self) -> int | None:
        m = _PORT_RE.search(self.run_log_text())
        if m:
            return int(m.group(1))
        self._check_alive()
        return None

    async def _healthy(self) -> bool:
        self._check_alive()
        try:
            status, _ = await self.request("GET", "/healthz", auth=False)
        except (aiohttp.ClientError, OSError):
            return False
        return status == 200

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DaemonExited(
                f"daemon exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """The exit code; TimeoutError if still running after `timeout` seconds."""
        assert self.proc is not None
        proc = self.proc

        async def ended() -> bool:
            return proc.poll() is not None

        await poll(ended, timeout, interval=0.05, what="daemon exit")
        return proc.returncode

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (kill after `timeout`); the exit code."""
        await self.close_session()
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """kill -9, and wait for the process to end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> DaemonProc:
        try:
            return await self.start()
        except BaseException:
            self.kill()
            await self.close_session()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                await self.stop()
        finally:
            self.kill()
            await self.close_session()

    # ---------------------------------------------------------------- looking

    def log_text(self) -> str:
        """Everything written to the log, by every run."""
        return self._read_log(0)

    def run_log_text(self) -> str:
        """What the latest run wrote to the log."""
        return self._read_log(self._log_offset)

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        key: str | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or text) of one request to the daemon's API."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        hdrs = dict(headers or {})
        if auth:
            hdrs["Authorization"] = f"Bearer {key if key is not None else self.api_key}"
        async with self._session.request(
            method,
            self.base_url + path,
            json=body if data is None else None,
            data=data,
            headers=hdrs,
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        """The JSON body of a request that must answer `expect`."""
        status, got = await self.request(method, path, body)
        assert status == expect, f"{method} {path}: {status} {got}"
        return got

    async def create(self, asset: str, amount: str, address: str, **extra: Any) -> str:
        """POST /v1/invoices on the anvil network (201, PENDING); the invoice id."""
        body = {"network": NETWORK, "asset": asset, "amount": amount, "address": address, **extra}
        inv = await self.ok("POST", "/v1/invoices", body, expect=201)
        assert inv["status"] == "PENDING", inv
        return str(inv["id"])

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        got: dict[str, Any] = await self.ok("GET", f"/v1/invoices/{invoice_id}")
        return got

    async def wait_status(
        self, invoice_id: str, status: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll the invoice until it has `status`; the invoice."""

        async def check() -> dict[str, Any] | None:
            self._check_alive()
            inv = await self.invoice(invoice_id)
            return inv if inv["status"] == status else None

        try:
            got: dict[str, Any] = await poll(check, timeout, what=f"{invoice_id} {status}")
        except TimeoutError as exc:
            inv = await self.invoice(invoice_id)
            raise TimeoutError(
                f"{exc}; invoice is {inv['status']}; log tail:\n{self.log_text()[-3000:]}"
            ) from None
        return got

    async def scanned_block(self) -> int | None:
        data = await self.ok("GET", "/v1/networks")
        for n in data["data"]:
            if n["name"] == NETWORK:
                value = n["scannedBlock"]
                return None if value is None else int(value)
        return None

    async def wait_scanned(self, block: int, timeout: float = 20.0) -> None:
        """Until the daemon has scanned `block` (or beyond)."""

        async def check() -> bool:
            self._check_alive()
            got = await self.scanned_block()
            return got is not None and got >= block

        await poll(check, timeout, what=f"scanned block {block}")


class Daemons:
    """The daemons one test starts on one chain; `close()` stops every one still running.

    ```
    @pytest.fixture
    async def daemons(tmp_path, rpc_url, token):
        pool = Daemons(tmp_path, [rpc_url], {"USDT": token})
        yield pool
        await pool.close()
    ```
    """

    def __init__(self, workdir: Path, rpc: list[str], tokens: dict[str, str]) -> None:
        self.workdir = workdir
        self.rpc = rpc
        self.tokens = tokens
        self.started: list[DaemonProc] = []

    def config(self, **kwargs: Any) -> DaemonConfig:
        """A config in a fresh folder; `kwargs` are DaemonConfig fields."""
        kwargs.setdefault("rpc", self.rpc)
        kwargs.setdefault("tokens", self.tokens)
        return DaemonConfig(self.workdir / f"d{len(self.started) + 1}", **kwargs)

    async def start(
        self,
        config: DaemonConfig | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> DaemonProc:
        d = DaemonProc(config or self.config(**kwargs), env=env)
        self.started.append(d)
        return await d.start()

    async def close(self) -> None:
        for d in self.started:
            await d.__aexit__(None, None, None)


# ---------------------------------------------------------------- callbacks seen


def events_by_invoice(rx: Receiver) -> dict[str, list[str]]:
    """Per invoice, the events of its distinct deliveries in the order they first arrived."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for r in rx.requests:
        if r.delivery_id in seen:
            continue
        seen.add(r.delivery_id)
        out.setdefault(r.invoice_id, []).append(r.event.removeprefix("invoice."))
    return out


def check_requests(requests: list[Received]) -> None:
    """Every callback is signed with the secret (both signatures), and its headers agree
    with its body."""
    for r in requests:
        assert r.signature_ok is True, r.headers
        assert r.webhook_ok is True, r.headers
        body = r.json()
        assert r.headers["x-watcher-event"] == body["event"]
        assert r.headers["x-watcher-delivery"] == body["id"] == r.headers["webhook-id"]
        assert r.headers["content-type"].startswith("application/json")


async def wait_callbacks(rx: Receiver, expected: dict[str, list[str]], timeout: float = 20) -> None:
    def done(r: Receiver) -> bool:
        got = events_by_invoice(r)
        return all(len(got.get(i, [])) >= len(e) for i, e in expected.items())

    try:
        await rx.wait_for(done, timeout)
    except TimeoutError:
        raise AssertionError(f"callbacks: {events_by_invoice(rx)} expected {expected}") from None
    got = events_by_invoice(rx)
    assert {i: got.get(i) for i in expected} == expected
    check_requests(rx.requests)
