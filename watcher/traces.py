"""Internal native transfers out of block traces: pure, no I/O.

Two shapes are read: `trace_block` (a flat list of Parity-style traces, each with its
`traceAddress`) and `debug_traceBlockByNumber` with geth's `callTracer` (one call tree per
transaction). Both give the same `traceAddress` for the same call: the position of the call
among its parent's child calls, from the top-level call down.

A value transfer counts only if nothing undid it: the call itself, every call above it, and
the transaction did not revert. Only calls that move value (`call`, and `selfdestruct`'s
balance) count; `delegatecall`/`staticcall`/`callcode` move none to their target, and a
create pays a new contract, never a watched address. The top-level call (traceAddress `[]`)
is the transaction's own value, which the follower reads from the block: it is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class InternalValue:
    """Native value sent by a contract's call inside a successful transaction."""

    tx_hash: str
    trace: str  # traceAddress joined by ".", e.g. "0.2"
    sender: str
    to: str
    value: int


def trace_key(address: Sequence[int]) -> str:
    return ".".join(str(i) for i in address)


def _int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value:
        return int(value, 16) if value[:2] in ("0x", "0X") else int(value)
    return 0


def from_trace_block(traces: Iterable[dict[str, Any]]) -> list[InternalValue]:
    """Internal value transfers of a `trace_block` answer, in trace order."""
    rows = [t for t in traces if isinstance(t, dict)]
    failed: dict[str, set[tuple[int, ...]]] = {}
    for t in rows:
        if t.get("error") and t.get("transactionHash"):
            failed.setdefault(t["transactionHash"], set()).add(tuple(t.get("traceAddress") or ()))
    out = []
    for t in rows:
        tx = t.get("transactionHash")
        address = tuple(t.get("traceAddress") or ())
        if not tx or not address:
            continue  # block rewards, or the transaction's own call
        undone = failed.get(tx, set())
        if any(address[:i] in undone for i in range(len(address) + 1)):
            continue
        action = t.get("action") or {}
        kind = t.get("type")
        if kind == "call" and action.get("callType") == "call":
            to, value = action.get("to"), _int(action.get("value"))
        elif kind == "suicide":
            to, value = action.get("refundAddress"), _int(action.get("balance"))
        else:
            continue
        if to and value > 0:
            sender = action.get("from") or action.get("address") or ""
            out.append(InternalValue(tx, trace_key(address), sender, to, value))
    return out


def _frames(
    frame: dict[str, Any], address: tuple[int, ...], undone: bool
) -> Iterator[tuple[tuple[int, ...], dict[str, Any], bool]]:
    undone = undone or bool(frame.get("error"))
    yield address, frame, undone
    for i, child in enumerate(frame.get("calls") or []):
        if isinstance(child, dict):
            yield from _frames(child, (*address, i), undone)


def from_call_tracer(results: Iterable[dict[str, Any]]) -> list[InternalValue]:
    """Internal value transfers of a `debug_traceBlockByNumber` answer with `callTracer`
    (items `{"txHash", "result": frame}`), in transaction and call order."""
    out = []
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("result"), dict):
            continue
        tx = item.get("txHash")
        if not tx:
            continue
        for address, frame, undone in _frames(item["result"], (), False):
            if not address or undone:
                continue
            kind = str(frame.get("type", "")).upper()
            value = _int(frame.get("value"))
            if kind in ("CALL", "SELFDESTRUCT") and frame.get("to") and value > 0:
                out.append(InternalValue(tx, trace_key(address), frame.get("from") or "",
                                         frame["to"], value))
    return out


def tx_hashes_of_trace_block(traces: Iterable[dict[str, Any]]) -> set[str]:
    return {t["transactionHash"].lower() for t in traces
            if isinstance(t, dict) and t.get("transactionHash")}


def tx_hashes_of_call_tracer(results: Iterable[dict[str, Any]]) -> set[str]:
    return {r["txHash"].lower() for r in results if isinstance(r, dict) and r.get("txHash")}
