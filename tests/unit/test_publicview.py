"""The customer's view and the EIP-681 payment URIs (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_ledger import make_ledger
from watcher.amounts import format_amount
from watcher.models import Invoice, Status, Transfer
from watcher.publicview import PUBLIC_FIELDS, invoice_uri, payment_uri, public_view
from watcher.render import invoice_json

TO = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc"
TOKEN = "0xc2132D05D31c914a87C6611C10748AEb04B58e8F"


def test_native_and_token_uris_exactly_as_the_contract_writes_them() -> None:
    assert payment_uri(1, TO, None, 10**18) == f"ethereum:{TO}@1?value=1000000000000000000"
    assert payment_uri(137, TO, TOKEN, 501_723_934) == (
        f"ethereum:{TOKEN}@137/transfer?address={TO}&uint256=501723934"
    )


def invoice(status: Status, amount: int, paid: list[int], token: str | None = TOKEN) -> Invoice:
    inv = Invoice(
        id="6ef3cc15-24ae-4192-9744-a9017ed153cc", seq=1, status=status, network="polygon",
        chain_id=137, asset="USDT", token_address=token, decimals=6, to_addr=TO, shared=False,
        amount=amount, requested_amount=amount, created_at=1000, updated_at=1000,
        expire_at=5000, email="e@x.example", payload={"k": "v"}, callback_url="https://h.example",
        external_id="ext", client_id="cid",
    )
    for i, p in enumerate(paid):
        inv.payments.append(Transfer("polygon", "USDT", f"0x{i:064x}", 0, TO, TO, p, 100 + i,
                                     f"0x{i:064x}", 1100, inv.id, "payment"))
    return inv


@given(amount=st.integers(1, 10**30), part=st.integers(0, 10**30))
def test_the_uri_asks_for_what_is_due(amount: int, part: int) -> None:
    paid = min(part, amount)
    data = invoice_json(invoice(Status.PARTIAL, amount, [paid] if paid else []), 200, 3)
    due = amount - paid
    assert data["amountDue"] == format_amount(due, 6)
    units = due if due else amount
    assert invoice_uri(data).endswith(f"&uint256={units}")


def test_amount_due_is_zero_once_completed_even_within_the_tolerance() -> None:
    data = invoice_json(invoice(Status.COMPLETED, 1000, [995]), 200, 3)
    assert data["amountDue"] == "0" and data["amountPaid"] == "0.000995"


@pytest.mark.parametrize("head,expected", [(None, 0), (100, 1), (102, 3), (90, 0)])
def test_confirmations_follow_the_head(head: int | None, expected: int) -> None:
    data = invoice_json(invoice(Status.WAITING_FOR_CONFIRMATIONS, 10, [10]), None, 3)
    view = public_view(data, head, "https://polygonscan.com", 1200)
    assert view["confirmations"] == expected
    assert view["payments"][0]["confirmations"] == expected
    assert view["payments"][0]["explorer"] == f"https://polygonscan.com/tx/0x{0:064x}"
    assert view["serverTime"] == "1970-01-01T00:20:00Z"


def test_the_view_is_an_allow_list() -> None:
    data: dict[str, Any] = invoice_json(invoice(Status.PENDING, 10, []), 5, 3, "https://p.example")
    view = public_view(data, 5, None, 0)
    merchant_only = {"email", "payload", "callbackUrl", "externalId", "clientId", "url",
                     "latePayments", "parentId", "refundTxHash", "from"}
    assert not merchant_only & set(view)
    assert set(PUBLIC_FIELDS) <= set(view)
    assert view["addressExplorer"] is None


def test_invoice_object_has_the_new_fields() -> None:
    ledger = make_ledger()
    ledger.checkout_url = "https://pay.shop.example/"
    inv = invoice(Status.PENDING, 10, [])
    inv.redirect_url = "https://shop.example/thanks"
    data = ledger.render(inv)
    assert data["url"] == f"https://pay.shop.example/pay/{inv.id}"
    assert data["clientId"] == "cid" and data["redirectUrl"] == "https://shop.example/thanks"
    assert data["amountDue"] == "0.00001"
    ledger.checkout_url = None
    assert ledger.render(inv)["url"] is None
