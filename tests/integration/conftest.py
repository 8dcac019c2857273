"""Fixtures for integration tests against a real local chain (anvil) and a scriptable fake
JSON-RPC server.

One anvil process serves the whole session (automine: one block per transaction). Before
the first test it gets, in this order (addresses are deterministic):

    token     TestToken "USDT", 6 decimals      (session, address str)
    token18   TestToken "DAI", 18 decimals      (session, address str)
    reverter  Reverter: every payment reverts   (session, address str)

and `PAYERS` (anvil accounts 0-3) hold 10^9 whole units of both tokens. Then the chain is
snapshotted; `chain` reverts to that state after every test, so tests are isolated and may
mine, reorg, move time or turn automine off freely.

Fixtures
    anvil         session `devchain.Anvil` (`.url`, `.port`). A missing anvil FAILS (never
                  skips), locally and in CI, naming `make install`.
    rpc_url       its HTTP URL.
    chain         `devchain.DevChain` bound to it, isolated per test (snapshot/revert;
                  automine back on afterwards). `chain.accounts[0]` is the deployer and a
                  payer; `chain.new_account()` gives a fresh empty address.
    payer         `chain.accounts[1]`: funded with ETH, `token` and `token18`.
    token, token18, reverter   see above.
    rpc           an `RpcClient("anvil", [rpc_url])` with short timeouts, closed after.
    make_rpc      factory: `make_rpc([urls], **kwargs) -> RpcClient` (fast retry defaults:
                  timeout 2 s, backoff 0.01 s), all closed after the test.
    dead_url      `http://127.0.0.1:PORT` of a free port nobody listens on.
    fake_rpc      a `FakeRpc` HTTP server on 127.0.0.1: script answers with
                  `fake_rpc.push(...)`; unscripted requests get `fake_rpc.default(request)`.
    anvil_factory factory: `anvil_factory(chain_id=..., block_time=...) -> Anvil`, a
                  separate node for the test, stopped after it.
    daemons       a `daemonproc.Daemons` pool on `rpc_url` with `token` as USDT; every
                  daemon started through it is stopped after the test.
    rx            a callback `Receiver` checking signatures with `CALLBACK_SECRET`.

A reorg deeper than the blocks a test mined removes the session snapshot; `chain` then
resets anvil and deploys the same contracts again (same addresses), which costs ~0.2 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.integration.daemonproc import CALLBACK_SECRET, Daemons
from tests.integration.receiver import Receiver
from watcher.devchain import Anvil, AnvilNotFound, DevChain, DevChainError
from watcher.rpc import RpcClient

#: Indexes of anvil accounts funded with both test tokens.
PAYERS = (0, 1, 2, 3)
#: Whole token units each payer holds.
PAYER_UNITS = 10**9
ANVIL_CHAIN_ID = 31337


@dataclass(frozen=True)
class Seed:
    token: str
    token18: str
    reverter: str


def _seed(chain: DevChain) -> Seed:
    """Deploy and fund the session contracts (always in this order: same addresses)."""
    token = chain.deploy_token("USDT", 6, name="Tether USD (test)")
    token18 = chain.deploy_token("DAI", 18, name="Dai Stablecoin (test)")
    reverter = chain.deploy_reverter()
    for i in PAYERS:
        chain.mint(token, chain.accounts[i], PAYER_UNITS * 10**6)
        chain.mint(token18, chain.accounts[i], PAYER_UNITS * 10**18)
    return Seed(token=token, token18=token18, reverter=reverter)


def _start_anvil(**kwargs: Any) -> Anvil:
    try:
        return Anvil(**kwargs).start()
    except AnvilNotFound as exc:
        where = " (CI=true: integration tests never skip)" if os.environ.get("CI") else ""
        pytest.fail(f"{exc}{where}", pytrace=False)


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    node = _start_anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rpc_url(anvil: Anvil) -> str:
    return anvil.url


class _Session:
    """The session's seeded chain and its base snapshot."""

    def __init__(self, url: str) -> None:
        self.chain = DevChain(url)
        self.seed = _seed(self.chain)
        self.snapshot = self.chain.snapshot()

    def restore(self) -> None:
        chain = self.chain
        try:
            ok = chain.revert(self.snapshot)
        except DevChainError:
            ok = False
        if not ok:  # a deep reorg removed the snapshot: start over, same addresses
            chain.rpc("anvil_reset", [])
            again = _seed(chain)
            assert again == self.seed, "re-seeding gave other contract addresses"
        chain.set_block_time(0)  # interval mining off (this also turns automine off)
        chain.set_automine(True)
        self.snapshot = chain.snapshot()


@pytest.fixture(scope="session")
def _session_chain(rpc_url: str) -> _Session:
    return _Session(rpc_url)


@pytest.fixture(scope="session")
def token(_session_chain: _Session) -> str:
    """TestToken USDT, 6 decimals (checksummed address)."""
    return _session_chain.seed.token


@pytest.fixture(scope="session")
def token18(_session_chain: _Session) -> str:
    """TestToken DAI, 18 decimals (checksummed address)."""
    return _session_chain.seed.token18


@pytest.fixture(scope="session")
def reverter(_session_chain: _Session) -> str:
    """A contract that reverts every payment (native transfers to it get status 0)."""
    return _session_chain.seed.reverter


@pytest.fixture
def chain(_session_chain: _Session) -> Iterator[DevChain]:
    """The dev chain, reset to the seeded state after the test."""
    try:
        yield _session_chain.chain
    finally:
        _session_chain.restore()


@pytest.fixture
def payer(chain: DevChain) -> str:
    return chain.accounts[1]


@pytest.fixture
async def make_rpc() -> AsyncIterator[Callable[..., RpcClient]]:
    clients: list[RpcClient] = []

    def make(urls: list[str], **kwargs: Any) -> RpcClient:
        kwargs.setdefault("timeout", 2.0)
        kwargs.setdefault("backoff", 0.01)
        kwargs.setdefault("max_backoff", 0.05)
        client = RpcClient(kwargs.pop("network", "anvil"), urls, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def rpc(rpc_url: str, make_rpc: Callable[..., RpcClient]) -> RpcClient:
    return make_rpc([rpc_url])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def dead_url() -> str:
    """A URL nothing listens on (connection refused at once)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def daemons(tmp_path: Path, rpc_url: str, token: str) -> AsyncIterator[Daemons]:
    """Daemons on the session chain with its USDT; every one stopped after the test."""
    pool = Daemons(tmp_path, [rpc_url], {"USDT": token})
    yield pool
    await pool.close()


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    """A callback receiver checking signatures with the daemons' secret."""
    async with Receiver(secret=CALLBACK_SECRET) as receiver:
        yield receiver


@pytest.fixture
def anvil_factory() -> Iterator[Callable[..., Anvil]]:
    nodes: list[Anvil] = []

    def make(**kwargs: Any) -> Anvil:
        node = _start_anvil(**kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


# --- a scriptable fake JSON-RPC server ---------------------------------------------------

Step = Callable[[Any], Awaitable[web.StreamResponse] | web.StreamResponse]


def rpc_result(request: Any, result: Any) -> web.Response:
    """A JSON-RPC success answer to `request` (a call or a batch: the same result for each)."""
    if isinstance(request, list):
        body = [{"jsonrpc": "2.0", "id": r["id"], "result": result} for r in request]
        return web.Response(body=orjson.dumps(body), content_type="application/json")
    return web.Response(
        body=orjson.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}),
        content_type="application/json",
    )


def rpc_error(request: Any, code: int, message: str, data: Any = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    if isinstance(request, list):
        body: Any = [{"jsonrpc": "2.0", "id": r["id"], "error": err} for r in request]
    else:
        body = {"jsonrpc": "2.0", "id": request["id"], "error": err}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def raw(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Step:
    """A step answering `status` with `body` as it is (e.g. truncated JSON, HTML)."""

    def step(_request: Any) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    return step


@dataclass
class FakeRpc:
    """A JSON-RPC server on 127.0.0.1 answering from a script. Each request takes the next
    step pushed (a callable `step(request_json) -> web.Response`, see `raw`, `rpc_result`,
    `rpc_error`); when the script is empty, `default(request_json)` answers (by default
    `eth_blockNumber` -> "0x10", `eth_chainId` -> anvil's, anything else -> null).
    `requests` records every request body (decoded)."""

    url: str = ""
    requests: list[Any] = field(default_factory=list)
    script: list[Step] = field(default_factory=list)
    default: Step | None = None

    def push(self, *steps: Step) -> None:
        self.script.extend(steps)

    def push_error(self, code: int, message: str, data: Any = None) -> None:
        self.push(lambda req: rpc_error(req, code, message, data))

    def push_result(self, result: Any) -> None:
        self.push(lambda req: rpc_result(req, result))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        step = self.script.pop(0) if self.script else (self.default or _default_answer)
        answer = step(body)
        if not isinstance(answer, web.StreamResponse):
            answer = await answer
        return answer


def _default_answer(request: Any) -> web.Response:
    method = request[0]["method"] if isinstance(request, list) else request["method"]
    result = {"eth_blockNumber": "0x10", "eth_chainId": hex(ANVIL_CHAIN_ID)}.get(method)
    return rpc_result(request, result)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free port of 127.0.0.1 for the block; its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake_rpc() -> AsyncIterator[FakeRpc]:
    fake = FakeRpc()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    async with serving(app) as url:
        fake.url = url
        yield fake
