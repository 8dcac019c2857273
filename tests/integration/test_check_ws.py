"""`check-config --online` checks each `ws` URL as the follower uses it: connect, `eth_chainId`
(against the configured chain id), `eth_subscribe newHeads`. Against a real anvil's ws
endpoint, a dead port, a second anvil on another chain, and small aiohttp servers standing in
for endpoints that are not WebSocket, refuse subscriptions or never answer. Every problem
names its key path (`networks.anvil.ws.N`) and never the URL's path (providers put keys there).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import WSMsgType, web

from tests.integration.conftest import free_port
from tests.integration.daemonproc import NETWORK, DaemonConfig, arun_cli
from watcher.capabilities import check_ws
from watcher.config import Settings, load_settings
from watcher.devchain import Anvil

KEY_IN_PATH = "SECRETKEY0123456789"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """load_settings in this process must not see PAYMENT_WATCHER_* variables (the anvil
    binary's path is one)."""
    for key in list(os.environ):
        if key.startswith("PAYMENT_WATCHER_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)
    yield


def _settings(tmp_path: Path, rpc_url: str, ws: list[str]) -> Settings:
    cfg = DaemonConfig(tmp_path, rpc=[rpc_url], extra={f"networks.{NETWORK}": {"ws": ws}})
    return load_settings(cfg.write())


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """`await serve(handler)` -> the base `ws://127.0.0.1:PORT` of a server routing every
    path to `handler`."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"ws://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _rpc_ws(answers: dict[str, object]) -> Handler:
    """A ws JSON-RPC endpoint answering each method from `answers` (an `error` dict for
    `{"error": ...}`); a method not listed is never answered."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                break
            call = orjson.loads(msg.data)
            if call["method"] not in answers:
                continue
            answer = answers[call["method"]]
            key = "error" if isinstance(answer, dict) else "result"
            await ws.send_bytes(orjson.dumps({"jsonrpc": "2.0", "id": call["id"], key: answer}))
        return ws

    return handler


async def test_a_real_anvil_ws_endpoint_passes(
    tmp_path: Path, anvil: Anvil, rpc_url: str
) -> None:
    """End to end through the CLI: the anvil's ws endpoint (same port as HTTP) is reported ok,
    a dead port fails the check with its key path, exit 2."""
    good = DaemonConfig(tmp_path / "good", rpc=[rpc_url],
                        extra={f"networks.{NETWORK}": {"ws": [anvil.ws_url]}})
    proc = await arun_cli("check-config", "--online", "--config", str(good.write()))
    assert proc.returncode == 0, proc.stderr
    assert (f"online: networks.{NETWORK}.ws.0 {anvil.ws_url} chain id 31337, "
            "newHeads subscription ok") in proc.stdout
    assert proc.stdout.splitlines()[-1] == "ok"

    port = free_port()  # nothing listens there
    dead = f"ws://127.0.0.1:{port}/ws/{KEY_IN_PATH}"
    bad = DaemonConfig(tmp_path / "bad", rpc=[rpc_url],
                       extra={f"networks.{NETWORK}": {"ws": [anvil.ws_url, dead]}})
    proc = await arun_cli("check-config", "--online", "--config", str(bad.write()))
    assert proc.returncode == 2
    assert f"online: networks.{NETWORK}.ws.0 {anvil.ws_url} chain id 31337" in proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(
        f"error: networks.{NETWORK}.ws.1: ws://127.0.0.1:{port}/… "
        "did not answer over WebSocket: "), errors
    assert KEY_IN_PATH not in proc.stdout + proc.stderr


async def test_a_ws_url_of_another_chain(
    tmp_path: Path, rpc_url: str, anvil_factory: Callable[..., Anvil], no_overrides: None
) -> None:
    other = anvil_factory(chain_id=1337)
    report, problems = await check_ws(_settings(tmp_path, rpc_url, [other.ws_url]), 10)
    assert report == []
    assert problems == [f"networks.{NETWORK}.ws.0: {other.ws_url} answers chain id 1337, "
                        "configured 31337"]


async def test_no_ws_urls_nothing_to_check(
    tmp_path: Path, rpc_url: str, no_overrides: None
) -> None:
    assert await check_ws(_settings(tmp_path, rpc_url, []), 10) == ([], [])


async def test_an_endpoint_that_refuses_subscriptions(
    tmp_path: Path, rpc_url: str, serve: Callable[[Handler], Awaitable[str]], no_overrides: None
) -> None:
    base = await serve(_rpc_ws({
        "eth_chainId": "0x7a69",
        "eth_subscribe": {"code": -32601, "message": "the method eth_subscribe does not exist"},
    }))
    report, problems = await check_ws(
        _settings(tmp_path, rpc_url, [f"{base}/v3/{KEY_IN_PATH}"]), 10)
    assert report == []
    assert problems == [
        f"networks.{NETWORK}.ws.0: {base}/… does not serve the follower's calls: "
        "eth_subscribe: the method eth_subscribe does not exist"
    ]


async def test_an_http_only_endpoint(
    tmp_path: Path, rpc_url: str, serve: Callable[[Handler], Awaitable[str]], no_overrides: None
) -> None:
    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="not here")

    base = await serve(plain)
    _, problems = await check_ws(_settings(tmp_path, rpc_url, [base]), 10)
    assert problems == [
        f"networks.{NETWORK}.ws.0: {base} did not answer over WebSocket: "
        "not a WebSocket endpoint (HTTP 404 Invalid response status)"
    ]


async def test_an_endpoint_that_never_answers(
    tmp_path: Path, rpc_url: str, serve: Callable[[Handler], Awaitable[str]], no_overrides: None
) -> None:
    base = await serve(_rpc_ws({}))
    _, problems = await check_ws(_settings(tmp_path, rpc_url, [base]), 0.5)
    assert problems == [
        f"networks.{NETWORK}.ws.0: {base} did not answer over WebSocket: "
        "no answer within 0.5 s"
    ]
