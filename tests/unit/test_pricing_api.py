"""Invoices priced in a currency through the HTTP API (real aiohttp, real SQLite, a real
RateBook with fixed sources and one that fails)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.unit.test_ledger import NET, SHARED, make_ledger
from watcher.pricing.book import RateBook
from watcher.pricing.sources import FixedSource, SourceError
from watcher.rates import Rate
from watcher.storage.store import Store
from watcher.timeutil import now as clock
from watcher.web.api import ApiContext, create_app

KEY = "pricing-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADDRESS = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc"


class Failing:
    kind = "http"
    label = "http down.example price"

    async def fetch(self, pair: str, now: int) -> Rate:
        raise SourceError("HTTP 503")


@pytest.fixture
async def client(database: str, aiohttp_client: Any) -> AsyncIterator[TestClient[Any, Any]]:
    store = await Store(database).open()
    ledger = make_ledger()
    await store.run(ledger.start_network, NET, 1, 0)
    book = RateBook(
        {
            "ETH/USD": [FixedSource("3500")],
            "EUR/USD": [FixedSource("1.08")],
            "USDT/EUR": [Failing(), FixedSource("0.92")],
            "ETH/GBP": [Failing()],
        },
        3600,
    )
    await book.refresh(clock())
    ledger.rates = book
    c = await aiohttp_client(create_app(ApiContext(store, ledger, [KEY], rates=book)))
    yield c
    await store.close()


async def create(client: TestClient[Any, Any], **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/invoices", json={"network": NET, **body}, headers=AUTH)
    return resp.status, await resp.json()


async def test_a_price_in_euro_becomes_an_exact_amount(client: TestClient[Any, Any]) -> None:
    status, inv = await create(client, asset="ETH", price="29.99", currency="EUR",
                               address=ADDRESS)
    assert status == 201, inv
    rate = Fraction(inv["rate"])
    assert inv["rateSource"] == "ETH/USD / EUR/USD" and inv["rateAt"].endswith("Z")
    assert abs(rate - Fraction(3500) / Fraction("1.08")) < Fraction(1, 10**18)
    amount = Fraction(inv["amount"])
    assert amount * rate >= Fraction("29.99")  # never short of the price
    assert (amount - Fraction(1, 10**18)) * rate < Fraction("29.99")  # step 1 wei: tight
    assert inv["price"] == "29.99" and inv["currency"] == "EUR"
    assert inv["requestedAmount"] == inv["amount"]
    # the rate is locked: the stored invoice answers the same
    resp = await client.get(f"/v1/invoices/{inv['id']}", headers=AUTH)
    again = await resp.json()
    assert (again["amount"], again["rate"]) == (inv["amount"], inv["rate"])


async def test_a_failing_source_falls_over_and_a_shared_address_stays_unique(
    client: TestClient[Any, Any]
) -> None:
    _, first = await create(client, asset="USDT", price="500", currency="EUR")
    _, second = await create(client, asset="USDT", price="500", currency="EUR")
    assert first["rateSource"] == "fixed" and first["rate"] == "0.92"
    assert first["to"] == second["to"] == SHARED
    assert first["requestedAmount"] == second["requestedAmount"] == "543.478261"
    assert first["amount"] != second["amount"]  # the uniqueness step came after pricing


async def test_an_amount_keeps_price_informational(client: TestClient[Any, Any]) -> None:
    status, inv = await create(client, asset="ETH", amount="1", price="5", currency="XYZ",
                               address=ADDRESS)
    assert status == 201 and inv["amount"] == "1" and inv["rate"] is None
    assert inv["rateSource"] is None and inv["rateAt"] is None


@pytest.mark.parametrize(
    "body,field",
    [
        ({"asset": "ETH"}, "amount"),
        ({"asset": "ETH", "price": "10"}, "currency"),
        ({"asset": "ETH", "price": "10", "currency": "JPY"}, "currency"),
        ({"asset": "USDT", "price": "10", "currency": "USD"}, "currency"),
        ({"asset": "ETH", "price": "0", "currency": "EUR"}, "price"),
        ({"asset": "ETH", "price": "-1", "currency": "EUR"}, "price"),
        ({"asset": "ETH", "price": "1.123456789", "currency": "EUR"}, "price"),
        ({"asset": "ETH", "price": 10, "currency": "EUR"}, "price"),
        ({"asset": "ETH", "price": "1e3", "currency": "EUR"}, "price"),
    ],
)
async def test_bad_pricing_requests_are_422(
    client: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    status, data = await create(client, address=ADDRESS, **body)
    assert status == 422, data
    assert data["error"]["field"] == field
    if field == "currency" and "price" in body and "currency" in body:
        assert "ETH/USD" in data["error"]["message"]  # names the pairs that exist


async def test_no_usable_rate_is_503_and_other_pairs_keep_working(
    client: TestClient[Any, Any]
) -> None:
    status, data = await create(client, asset="ETH", price="10", currency="GBP",
                                address=ADDRESS)
    assert status == 503 and data["error"]["code"] == "rate_unavailable"
    assert data["error"]["field"] == "currency"
    status, _ = await create(client, asset="ETH", price="10", currency="EUR", address=ADDRESS)
    assert status == 201


async def test_rates_route_lists_every_pair(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/rates", headers=AUTH)
    assert resp.status == 200
    data = {r["pair"]: r for r in (await resp.json())["data"]}
    assert set(data) == {"ETH/USD", "EUR/USD", "USDT/EUR", "ETH/GBP"}
    assert data["ETH/USD"]["rate"] == "3500" and data["ETH/USD"]["fresh"]
    assert data["ETH/GBP"]["rate"] is None and "HTTP 503" in data["ETH/GBP"]["error"]
    assert data["USDT/EUR"]["source"] == "fixed 0.92"
    assert (await client.get("/v1/rates")).status == 401
