"""Small builders for pure-logic tests."""

from __future__ import annotations

from typing import Any

from watcher.models import Invoice, Status, Transfer


def invoice(**kw: Any) -> Invoice:
    base: dict[str, Any] = dict(
        id="inv-1", seq=1, status=Status.PENDING, network="local", chain_id=31337, asset="ETH",
        token_address=None, decimals=18, to_addr="0x" + "11" * 20, shared=False, amount=1000,
        requested_amount=1000, created_at=1000, updated_at=1000, expire_at=2000,
    )
    base.update(kw)
    return Invoice(**base)


def payment(amount: int, block: int, *, ts: int = 1500, log_index: int | None = 0,
            invoice_id: str = "inv-1", tx: str | None = None) -> Transfer:
    return Transfer(
        network="local", asset="ETH", tx_hash=tx or f"0x{block:064x}", log_index=log_index,
        from_addr="0x" + "22" * 20, to_addr="0x" + "11" * 20, amount=amount, block=block,
        block_hash=f"0x{block:064x}", timestamp=ts, invoice_id=invoice_id, kind="payment",
    )
