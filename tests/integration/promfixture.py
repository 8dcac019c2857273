"""Run a real Prometheus against a local target, and query it.

```
with start_prometheus(target_port, tmp_path) as prom:      # scrapes 127.0.0.1:PORT every 1 s
    await prom.wait_for_value('payment_watcher_scanned_block{network="anvil"}', 1234)
```
`require_tool("prometheus")` skips a test when the binary is missing, except in CI
(`CI=true`), where it fails: `make test` installs Prometheus as root (scripts/need-tools).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import aiohttp
import pytest

JOB = "payment-watcher"


def require_tool(name: str) -> str:
    """The path of `name`; fails the test in CI when it is missing, else skips it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (required in CI; make test installs it as root)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ScrapeOptions(TypedDict, total=False):
    job: str  # job_name, default JOB (the alert rules expect it)
    interval: str  # scrape and rule evaluation interval, default "1s"
    metrics_path: str  # default "/metrics"
    rule_files: list[Path]  # alert/recording rules to load


def write_config(path: Path, target_port: int, **options: Unpack[ScrapeOptions]) -> Path:
    """A prometheus.yml scraping 127.0.0.1:`target_port` every `interval`."""
    job = options.get("job", JOB)
    interval = options.get("interval", "1s")
    metrics_path = options.get("metrics_path", "/metrics")
    rule_files = options.get("rule_files")
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": metrics_path,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


QueryResult = list[dict[str, Any]]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def _query_url(self, expr: str) -> str:
        return f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})

    @staticmethod
    def _result(body: dict[str, Any]) -> QueryResult:
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {body}")
        result: QueryResult = body["data"]["result"]
        return result

    def query(self, expr: str) -> QueryResult:
        """Instant query (blocking: only when the target does not run on this event loop)."""
        with urllib.request.urlopen(self._query_url(expr), timeout=5) as resp:
            return self._result(json.load(resp))

    async def aquery(self, expr: str) -> QueryResult:
        """Instant query without blocking the event loop (the target may be served by it)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self._query_url(expr), timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return self._result(await resp.json())

    async def wait_for(self, expr: str, timeout: float = 20.0) -> QueryResult:
        """Poll until `expr` returns at least one series; its result."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.aquery(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for {expr!r} after {timeout}s; {self.tail_log()}")
            await asyncio.sleep(0.25)

    async def wait_for_value(self, expr: str, expected: float, timeout: float = 20.0) -> None:
        """Poll until the single series of `expr` has value `expected`."""
        deadline = time.monotonic() + timeout
        last: QueryResult = []
        while time.monotonic() < deadline:
            last = await self.aquery(expr)
            if len(last) == 1 and float(last[0]["value"][1]) == expected:
                return
            await asyncio.sleep(0.25)
        raise TimeoutError(f"{expr!r} != {expected} after {timeout}s: {last}; {self.tail_log()}")

    async def targets(self) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/targets") as resp,
        ):
            body = await resp.json()
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


@contextmanager
def start_prometheus(
    target_port: int,
    workdir: Path,
    *,
    ready_timeout: float = 30.0,
    **options: Unpack[ScrapeOptions],
) -> Iterator[Prometheus]:
    """Start Prometheus scraping 127.0.0.1:`target_port`; stop it on exit.

    Files go under `workdir` (config, TSDB, log). Waiting for readiness blocks, which is
    fine even inside an async test: scrapes that fail meanwhile are simply retried.
    """
    binary = require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir / "prometheus.yml", target_port, **options)
    log_path = workdir / "prometheus.log"
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        data = workdir / f"tsdb-{attempt}"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        if _wait_ready(url, process, ready_timeout):
            break
        _stop(process)
    else:
        raise RuntimeError(f"prometheus did not start:\n{log_path.read_text()[-4000:]}")
    try:
        yield Prometheus(url=url, process=process, log_path=log_path)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `promtool ARGS` (fails/skips like `require_tool` when it is missing)."""
    return subprocess.run(
        [require_tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
