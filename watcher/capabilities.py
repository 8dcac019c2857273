"""What a network's settings ask of its nodes, checked against a node: the finality tag
(`eth_getBlockByNumber("safe"|"finalized")`) and the trace method of `internal_transfers`;
and, for `check-config --online`, each `ws` URL (`check_ws`).

A node that answers an error for them cannot serve the setting (a start-up error, and a
`check-config --online` problem); one that does not answer at all is only unreachable.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from watcher.errors import RpcError, RpcFatal
from watcher.rpc import RpcClient

if TYPE_CHECKING:
    import aiohttp

    from watcher.config import Settings

#: The call that proves each trace mode works, on the node's newest block.
TRACE_CALLS: dict[str, tuple[str, list[object]]] = {
    "trace_block": ("trace_block", ["latest"]),
    "debug_trace": ("debug_traceBlockByNumber", ["latest", {"tracer": "callTracer"}]),
}


@dataclass(frozen=True, slots=True)
class Needs:
    """What one network's settings need from a node."""

    network: str
    finality: str = "confirmations"
    internal_transfers: str = "off"


async def missing(rpc: RpcClient, needs: Needs) -> tuple[list[str], list[str]]:
    """(problems, unreachable): one line per feature the node refuses, each naming the
    setting's key path; and one per feature it could not be asked about."""
    checks: list[tuple[str, str, str, list[object]]] = []
    if needs.finality != "confirmations":
        checks.append((
            "finality", f"the {needs.finality!r} block tag",
            "eth_getBlockByNumber", [needs.finality, False],
        ))
    if needs.internal_transfers != "off":
        method, params = TRACE_CALLS[needs.internal_transfers]
        checks.append(("internal_transfers", method, method, params))
    problems: list[str] = []
    unreachable: list[str] = []
    for key, what, method, params in checks:
        where = f"networks.{needs.network}.{key}"
        try:
            await rpc.call(method, params)
        except RpcFatal as exc:
            problems.append(f"{where}: the node does not serve {what}: {exc}")
        except RpcError as exc:
            unreachable.append(f"{where}: could not ask the node for {what}: {exc}")
    return problems, unreachable


# ---------------------------------------------------------------- ws URLs


class WsRefused(Exception):
    """The endpoint answered, but not what the follower needs (a JSON-RPC error, a bad
    answer): a configuration problem rather than an outage."""


async def _ws_call(ws: aiohttp.ClientWebSocketResponse, call_id: int, method: str,
                   params: list[object]) -> Any:
    """One JSON-RPC call over an open socket: its `result`. Other messages (subscription
    notifications) are skipped; a JSON-RPC error raises WsRefused."""
    import aiohttp
    import orjson

    await ws.send_bytes(orjson.dumps(
        {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}))
    while True:
        msg = await ws.receive()
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            closed = f"closed the socket (code {ws.close_code})" if ws.close_code else "closed"
            raise ConnectionError(f"the server {closed} before answering {method}")
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            raise WsRefused(f"{method}: the answer is not JSON") from None
        if not isinstance(answer, dict) or answer.get("id") != call_id:
            continue
        if "error" in answer:
            error = answer["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            raise WsRefused(f"{method}: {text}")
        return answer.get("result")


async def probe_ws(session: aiohttp.ClientSession, url: str) -> int:
    """Connect to a `ws`/`wss` URL as the follower does, ask `eth_chainId`, then subscribe to
    `newHeads` (and unsubscribe): the chain id. Raises WsRefused when the node answers but
    not as needed, other exceptions when it cannot be reached."""
    async with session.ws_connect(url, max_msg_size=4 * 2**20) as ws:
        result = await _ws_call(ws, 1, "eth_chainId", [])
        if not isinstance(result, str):
            raise WsRefused(f"eth_chainId: no chain id in the answer ({result!r})")
        try:
            chain_id = int(result, 16)
        except ValueError:
            raise WsRefused(f"eth_chainId: {result!r} is not a hex number") from None
        sub = await _ws_call(ws, 2, "eth_subscribe", ["newHeads"])
        if not isinstance(sub, str) or not sub:
            raise WsRefused(f"eth_subscribe newHeads: no subscription id ({sub!r})")
        await _ws_call(ws, 3, "eth_unsubscribe", [sub])
        return chain_id


def _ws_reason(exc: BaseException, url: str, shown: str, timeout: float) -> str:
    """Why a probe failed, in words, never quoting the URL's path or query (keys)."""
    import aiohttp

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"not a WebSocket endpoint (HTTP {exc.status} {exc.message})"
    reason = str(exc) or type(exc).__name__
    for text in {url, url.split("://", 1)[-1]}:
        reason = reason.replace(text, shown)
    return reason


async def check_ws(settings: Settings, timeout: float) -> tuple[list[str], list[str]]:
    """Every `ws` URL of every enabled network, as `check-config --online` checks it:
    (report lines, problems naming each key path, e.g. `networks.polygon.ws.0`)."""
    import aiohttp

    from watcher.config import redact_url

    targets = [
        (f"networks.{name}.ws.{i}", net.chain_id, url)
        for name, net in settings.enabled_networks().items()
        for i, url in enumerate(net.ws)
    ]
    if not targets:
        return [], []

    async def one(session: aiohttp.ClientSession, url: str) -> int:
        async with asyncio.timeout(timeout):
            return await probe_ws(session, url)

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(
            *(one(session, url) for _, _, url in targets), return_exceptions=True)
    report: list[str] = []
    problems: list[str] = []
    for (key, expected, url), got in zip(targets, answers, strict=True):
        shown = redact_url(url)
        if isinstance(got, WsRefused):
            problems.append(f"{key}: {shown} does not serve the follower's calls: "
                            f"{_ws_reason(got, url, shown, timeout)}")
        elif isinstance(got, BaseException):
            problems.append(f"{key}: {shown} did not answer over WebSocket: "
                            f"{_ws_reason(got, url, shown, timeout)}")
        elif got != expected:
            problems.append(f"{key}: {shown} answers chain id {got}, configured {expected}")
        else:
            report.append(f"online: {key} {shown} chain id {got}, newHeads subscription ok")
    return report, problems
