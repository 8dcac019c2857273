"""The JSON objects of the contract: invoices, payments, transfers, events."""

from __future__ import annotations

from typing import Any

from watcher.amounts import format_amount
from watcher.models import Invoice, Transfer
from watcher.state import confirmations
from watcher.timeutil import iso


def payment_json(p: Transfer, decimals: int, head: int | None) -> dict[str, Any]:
    return {
        "txHash": p.tx_hash,
        "logIndex": p.log_index,
        "from": p.from_addr,
        "amount": format_amount(p.amount, decimals),
        "block": p.block,
        "blockHash": p.block_hash,
        "timestamp": iso(p.timestamp),
        "confirmations": confirmations(p.block, head) if head is not None else 0,
        "internal": p.trace is not None,
        "traceAddress": _trace_address(p.trace),
        "assigned": p.assigned,
    }


def _trace_address(trace: str | None) -> list[int] | None:
    """"0.2" -> [0, 2] (as trace_block writes it); None for a transfer that is no call."""
    return None if trace is None else [int(i) for i in trace.split(".")]


def checkout_url(base: str | None, invoice_id: str) -> str | None:
    """The hosted checkout page of an invoice under the checkout's `public_url`."""
    return None if base is None else f"{base.rstrip('/')}/pay/{invoice_id}"


def _amount(units: int | None, decimals: int | None) -> str | None:
    return None if units is None or decimals is None else format_amount(units, decimals)


def late_json(p: Transfer, decimals: int, head: int | None) -> dict[str, Any]:
    """A late payment: a payment object with its network and asset (a late payment to a
    method the customer switched away from is in another asset than the invoice's)."""
    return {**payment_json(p, decimals, head), "network": p.network, "asset": p.asset}


#: Per (network, asset) of a method switched away from: (decimals, newest head or None)
Elsewhere = dict[tuple[str, str], tuple[int, int | None]]


def invoice_json(
    inv: Invoice,
    head: int | None,
    required: int,
    checkout: str | None = None,
    finalized: bool | None = None,
    *,
    methods: list[dict[str, Any]] | None = None,
    elsewhere: Elsewhere | None = None,
) -> dict[str, Any]:
    """The invoice object; `head` is the network's newest known block (None if unknown),
    `checkout` the checkout's public URL (None when the checkout is off). `methods`: the
    method objects of a method invoice (`method_json`); `elsewhere`: how to show late
    payments to methods it was switched away from."""
    latest = inv.latest_payment
    d = inv.decimals
    late = []
    for p in inv.late_payments:
        if (p.network, p.asset) == (inv.network, inv.asset) and d is not None:
            late.append(late_json(p, d, head))
        else:
            dec, other_head = (elsewhere or {}).get((p.network, p.asset), (0, None))
            late.append(late_json(p, dec, other_head))
    return {
        "id": inv.id,
        "parentId": inv.parent_id,
        "externalId": inv.external_id,
        "status": inv.status.value,
        "network": inv.network,
        "chainId": inv.chain_id,
        "asset": inv.asset,
        "tokenAddress": inv.token_address,
        "decimals": d,
        "to": inv.to_addr,
        "derivationIndex": inv.derivation_index,
        "from": latest.from_addr if latest else None,
        "amount": _amount(inv.amount, d),
        "requestedAmount": _amount(inv.requested_amount, d),
        "amountPaid": _amount(inv.amount_paid, d),
        "amountDue": _amount(inv.amount_due, d),
        "txHash": latest.tx_hash if latest else None,
        "txBlock": latest.block if latest else None,
        "confirmations": confirmations(latest.block, head) if latest and head is not None else 0,
        "requiredConfirmations": required,
        "finalized": finalized,
        "payments": [payment_json(p, d, head) for p in inv.payments] if d is not None else [],
        "latePayments": late,
        "price": inv.price,
        "currency": inv.currency,
        "rate": inv.rate,
        "rateSource": inv.rate_source,
        "rateAt": iso(inv.rate_at) if inv.rate_at is not None else None,
        "email": inv.email,
        "payload": inv.payload,
        "callbackUrl": inv.callback_url,
        "clientId": inv.client_id,
        "redirectUrl": inv.redirect_url,
        "url": checkout_url(checkout, inv.id),
        "refundTxHash": inv.refund_tx,
        "createdAt": iso(inv.created_at),
        "updatedAt": iso(inv.updated_at),
        "expireAt": iso(inv.expire_at),
        "title": inv.title,
        "description": inv.description,
        "method": (
            {"network": inv.network, "asset": inv.asset} if inv.network is not None else None
        ),
        "methods": methods,
    }


def method_json(
    network: str, asset: str, chain_id: int, token: str | None, decimals: int,
    units: int | None, chosen: bool,
) -> dict[str, Any]:
    """One method of a method invoice; `units` its amount now (None: no usable rate)."""
    return {
        "network": network,
        "asset": asset,
        "chainId": chain_id,
        "tokenAddress": token,
        "decimals": decimals,
        "amount": _amount(units, decimals),
        "chosen": chosen,
    }


def transfer_json(t: Transfer, decimals: int) -> dict[str, Any]:
    return {
        "id": t.id,
        "network": t.network,
        "asset": t.asset,
        "txHash": t.tx_hash,
        "logIndex": t.log_index,
        "internal": t.trace is not None,
        "traceAddress": _trace_address(t.trace),
        "from": t.from_addr,
        "to": t.to_addr,
        "amount": format_amount(t.amount, decimals),
        "block": t.block,
        "blockHash": t.block_hash,
        "timestamp": iso(t.timestamp),
        "invoiceId": t.invoice_id,
        "matched": t.invoice_id is not None,
        "kind": t.kind,
        "assigned": t.assigned,
    }


def address_json(
    row: dict[str, Any],
    balances: dict[str, dict[str, int]] | None = None,
    decimals: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """One derived address (a `store.derived_addresses` row). `balances`: per network, the
    base units per asset symbol at this address; `decimals` the same shape for formatting."""
    out: dict[str, Any] = {
        "index": row["idx"],
        "address": row["address"],
        "keyId": row["key_id"],
        "createdAt": iso(row["created_at"]),
        "invoices": row["invoices"],
    }
    if balances is not None:
        dec = decimals or {}
        out["balances"] = {
            network: {
                symbol: format_amount(units, dec.get(network, {}).get(symbol, 0))
                for symbol, units in by_symbol.items()
            }
            for network, by_symbol in balances.items()
        }
    return out
