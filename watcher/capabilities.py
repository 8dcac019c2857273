"""What a network's settings ask of its nodes, checked against a node: the finality tag
(`eth_getBlockByNumber("safe"|"finalized")`) and the trace method of `internal_transfers`.

A node that answers an error for them cannot serve the setting (a start-up error, and a
`check-config --online` problem); one that does not answer at all is only unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher.errors import RpcError, RpcFatal
from watcher.rpc import RpcClient

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
