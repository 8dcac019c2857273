"""What the paying customer may see of an invoice: the public view and the payment URIs.

Pure functions over the invoice object (`render.invoice_json`), so the checkout's
`/status`, its first page and its live channel (fed with the invoice objects frozen in
events) give the same answer. The merchant's fields never appear here: `PUBLIC_FIELDS` is
an allow-list, not a deny-list.
"""

from __future__ import annotations

from typing import Any

from watcher.amounts import parse_amount
from watcher.state import confirmations
from watcher.timeutil import iso, parse_iso

#: The invoice object's fields the customer sees, as they are.
PUBLIC_FIELDS = (
    "id",
    "status",
    "network",
    "chainId",
    "asset",
    "tokenAddress",
    "decimals",
    "to",
    "amount",
    "amountPaid",
    "amountDue",
    "requiredConfirmations",
    "expireAt",
    "redirectUrl",
    "price",
    "currency",
    "title",
    "description",
    "method",
)
#: What the customer sees of each payment method of a method invoice.
METHOD_FIELDS = ("network", "asset", "chainId", "tokenAddress", "decimals", "amount", "chosen")


def payment_uri(chain_id: int, to: str, token: str | None, units: int) -> str:
    """EIP-681, amounts in base units, exactly as the contract writes it: native
    `ethereum:{to}@{chainId}?value={wei}`, token
    `ethereum:{token}@{chainId}/transfer?address={to}&uint256={units}`."""
    if token is None:
        return f"ethereum:{to}@{chain_id}?value={units}"
    return f"ethereum:{token}@{chain_id}/transfer?address={to}&uint256={units}"


def invoice_uri(invoice: dict[str, Any]) -> str:
    """The payment URI for what the invoice still needs (its whole amount when nothing has
    arrived; the rest when it is PARTIAL or part paid)."""
    due = parse_amount(invoice["amountDue"], invoice["decimals"])
    if due == 0:
        due = parse_amount(invoice["amount"], invoice["decimals"])
    return payment_uri(invoice["chainId"], invoice["to"], invoice["tokenAddress"], due)


def explorer_link(explorer: str | None, kind: str, value: str) -> str | None:
    """`{explorer}/tx/{hash}` or `{explorer}/address/{addr}`; None without an explorer."""
    return None if explorer is None else f"{explorer.rstrip('/')}/{kind}/{value}"


def _head_confirmations(block: int, given: int, head: int | None) -> int:
    return given if head is None else max(given, confirmations(block, head))


def public_view(
    invoice: dict[str, Any], head: int | None, explorer: str | None, now: int
) -> dict[str, Any]:
    """The customer's view of an invoice object. `head` (the network's newest block, None
    if unknown) brings confirmations up to date; `now` is the server's clock, sent so the
    page's countdown does not depend on the customer's clock being right."""
    view = {k: invoice[k] for k in PUBLIC_FIELDS}
    payments = []
    for p in invoice["payments"]:
        payments.append(
            {
                "txHash": p["txHash"],
                "amount": p["amount"],
                "block": p["block"],
                "confirmations": _head_confirmations(p["block"], p["confirmations"], head),
                "explorer": explorer_link(explorer, "tx", p["txHash"]),
            }
        )
    latest = invoice["txBlock"]
    view["confirmations"] = (
        _head_confirmations(latest, invoice["confirmations"], head) if latest is not None else 0
    )
    view["payments"] = payments
    chosen = invoice["to"] is not None
    view["paymentUri"] = invoice_uri(invoice) if chosen else None
    view["addressExplorer"] = explorer_link(explorer, "address", invoice["to"]) if chosen else None
    view["serverTime"] = iso(now)
    methods = invoice.get("methods")
    view["methods"] = (
        [{k: m[k] for k in METHOD_FIELDS} for m in methods] if methods is not None else None
    )
    view["canChangeMethod"] = (
        methods is not None
        and invoice["status"] == "PENDING"
        and not invoice["payments"]
        and not invoice["latePayments"]
        and now < parse_iso(invoice["expireAt"])
    )
    return view
