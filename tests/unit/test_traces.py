"""Internal value transfers out of both trace shapes (pure)."""

from __future__ import annotations

from typing import Any

from watcher.traces import InternalValue, from_call_tracer, from_trace_block

TX = "0x" + "ab" * 32
A, B, C, D = ("0x" + c * 40 for c in "abcd")


def parity(address: list[int], *, to: str = B, value: int = 5, kind: str = "call",
           call_type: str = "call", error: str | None = None, tx: str = TX) -> dict[str, Any]:
    action: dict[str, Any] = {"from": A, "to": to, "value": hex(value), "callType": call_type}
    if kind == "suicide":
        action = {"address": A, "refundAddress": to, "balance": hex(value)}
    t: dict[str, Any] = {"action": action, "type": kind, "traceAddress": address,
                         "transactionHash": tx, "blockHash": "0x01"}
    if error:
        t["error"] = error
    return t


def test_trace_block_successful_value_calls_only() -> None:
    traces = [
        parity([], to=A, value=9),  # the transaction's own call: read from the block
        parity([0]),
        parity([1], call_type="delegatecall"),  # moves no value to its target
        parity([2], call_type="staticcall", value=0),
        parity([3], error="Reverted"),  # reverted itself
        parity([3, 0], to=C),  # under a reverted call: undone
        parity([4], kind="create", to=D),
        parity([5], kind="suicide", to=D, value=7),  # selfdestruct's balance arrives
        parity([6, 0, 1], to=C, value=3),
        {"action": {"author": B, "value": "0x1"}, "type": "reward", "traceAddress": []},
    ]
    assert from_trace_block(traces) == [
        InternalValue(TX, "0", A, B, 5),
        InternalValue(TX, "5", A, D, 7),
        InternalValue(TX, "6.0.1", A, C, 3),
    ]


def test_trace_block_failed_transaction_counts_nothing() -> None:
    assert from_trace_block([parity([], error="Reverted"), parity([0]), parity([0, 1])]) == []


def test_call_tracer_same_addresses_and_reverts_propagate() -> None:
    tree = {"type": "CALL", "from": "0x1", "to": A, "value": "0x9", "calls": [
        {"type": "CALL", "from": A, "to": B, "value": "0x5"},
        {"type": "DELEGATECALL", "from": A, "to": C, "value": "0x5"},
        {"type": "STATICCALL", "from": A, "to": C},
        {"type": "CALL", "from": A, "to": C, "value": "0x2", "error": "execution reverted",
         "calls": [{"type": "CALL", "from": C, "to": B, "value": "0x2"}]},
        {"type": "CREATE2", "from": A, "to": D, "value": "0x1"},
        {"type": "SELFDESTRUCT", "from": A, "to": D, "value": "0x7"},
        {"type": "CALL", "from": A, "to": B, "value": "0x0", "calls": [
            {"type": "CALL", "from": B, "to": A, "value": "0x0"},
            {"type": "CALL", "from": B, "to": C, "value": "0x3"}]},
    ]}
    assert from_call_tracer([{"txHash": TX, "result": tree}]) == [
        InternalValue(TX, "0", A, B, 5),
        InternalValue(TX, "5", A, D, 7),
        InternalValue(TX, "6.1", B, C, 3),
    ]
    reverted = dict(tree, error="execution reverted")
    assert from_call_tracer([{"txHash": TX, "result": reverted}]) == []
    assert from_call_tracer([{"result": tree}, {"txHash": TX, "error": "oops"}]) == []
