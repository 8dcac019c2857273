"""Request validation: every field's rules, the fingerprint, list queries and cursors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_ledger import DEDICATED, HOOK, NET, make_networks
from watcher import requests as rq
from watcher.errors import ApiError, BadRequest, Invalid
from watcher.models import Status

NOW = 1_722_386_933  # 2024-07-31T00:48:53Z
NETWORKS = make_networks()


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"network": NET, "asset": "USDT", "amount": "12.5"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def invalid(data: object) -> Invalid:
    with pytest.raises(Invalid) as exc:
        rq.parse_create(data, NETWORKS, NOW)
    return exc.value


def test_minimal_request() -> None:
    req = rq.parse_create(body(), NETWORKS, NOW)
    assert (req.network, req.asset, req.amount, req.address) == (NET, "USDT", 12_500_000, None)
    assert req.expire_at is None and req.fingerprint


def test_full_request() -> None:
    req = rq.parse_create(
        body(address=DEDICATED.lower(), ttl=600, callbackUrl=HOOK, externalId="order-1",
             payload={"k": [1, 2]}, price="500.00", currency="EUR", email="a@b.example"),
        NETWORKS, NOW,
    )
    assert req.address == DEDICATED  # checksummed
    assert req.expire_at == NOW + 600
    assert (req.callback_url, req.external_id, req.payload) == (HOOK, "order-1", {"k": [1, 2]})
    assert (req.price, req.currency, req.email) == ("500.00", "EUR", "a@b.example")


@pytest.mark.parametrize("data", [[], "x", 1, None, True])
def test_body_must_be_an_object(data: object) -> None:
    with pytest.raises(BadRequest):
        rq.parse_create(data, NETWORKS, NOW)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"network": ...}, "network"),
        ({"network": "mainnet"}, "network"),
        ({"network": 1}, "network"),
        ({"asset": ...}, "asset"),
        ({"asset": "DOGE"}, "asset"),
        ({"amount": ...}, "amount"),
        ({"amount": 12.5}, "amount"),
        ({"amount": 12}, "amount"),
        ({"amount": "1e5"}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "0.0000001"}, "amount"),
        ({"amount": " 1"}, "amount"),
        ({"amount": "1,5"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"address": "0x123"}, "address"),
        ({"address": DEDICATED[2:]}, "address"),
        ({"address": DEDICATED.replace("F", "f", 1)}, "address"),
        ({"address": 5}, "address"),
        ({"asset": "ETH"}, "address"),  # no shared address for ETH: address is required
        ({"expireAt": "2030-01-01T00:00:00", "ttl": ...}, "expireAt"),
        ({"expireAt": "tomorrow"}, "expireAt"),
        ({"expireAt": "2020-01-01T00:00:00Z"}, "expireAt"),
        ({"expireAt": 1893456000}, "expireAt"),
        ({"expireAt": "2030-01-01T00:00:00Z", "ttl": 60}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": 60.0}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": 10**12}, "ttl"),
        ({"callbackUrl": "ftp://x.example/a"}, "callbackUrl"),
        ({"callbackUrl": "https://"}, "callbackUrl"),
        ({"callbackUrl": "not a url"}, "callbackUrl"),
        ({"callbackUrl": "https://x.example/" + "a" * 2048}, "callbackUrl"),
        ({"externalId": "x" * 129}, "externalId"),
        ({"externalId": 7}, "externalId"),
        ({"externalId": ""}, "externalId"),
        ({"payload": [1]}, "payload"),
        ({"payload": "x"}, "payload"),
        ({"payload": {"k": "x" * 4096}}, "payload"),
        ({"price": 500}, "price"),
        ({"price": "five"}, "price"),
        ({"currency": "X" * 17}, "currency"),
        ({"email": "nobody"}, "email"),
        ({"email": "a@" + "b" * 253}, "email"),
        ({"colour": "red"}, "colour"),
        ({"clientId": "c" * 129}, "clientId"),
        ({"clientId": ""}, "clientId"),
        ({"clientId": 5}, "clientId"),
        ({"redirectUrl": "javascript:alert(1)"}, "redirectUrl"),
        ({"redirectUrl": "//shop.example/x"}, "redirectUrl"),
        ({"redirectUrl": "data:text/html,x"}, "redirectUrl"),
        ({"redirectUrl": "https://shop.example/" + "a" * 2048}, "redirectUrl"),
    ],
)
def test_invalid_fields(changes: dict[str, Any], field: str) -> None:
    err = invalid(body(**changes))
    assert err.field == field
    assert err.status == 422
    assert err.to_json()["error"]["field"] == field  # type: ignore[index]


def test_amount_as_number_says_decimal_string() -> None:
    assert "decimal string" in invalid(body(amount=12.5)).message


def test_amount_with_too_many_decimals_names_the_limit() -> None:
    assert "6 decimal places" in invalid(body(amount="1.1234567")).message


def test_trailing_zeros_beyond_the_decimals_are_fine() -> None:
    assert rq.parse_create(body(amount="1.500000000"), NETWORKS, NOW).amount == 1_500_000


def test_expire_at_with_offset() -> None:
    req = rq.parse_create(body(expireAt="2024-08-01T02:48:53+02:00"), NETWORKS, NOW)
    assert req.expire_at == NOW + 86400


def test_null_optional_fields_are_absent() -> None:
    a = rq.parse_create(body(address=None, email=None, ttl=None), NETWORKS, NOW)
    b = rq.parse_create(body(), NETWORKS, NOW)
    assert a.fingerprint == b.fingerprint


def test_client_and_redirect() -> None:
    req = rq.parse_create(
        body(clientId="cust-9", redirectUrl="https://shop.example/thanks?o=1"), NETWORKS, NOW
    )
    assert req.client_id == "cust-9" and req.redirect_url == "https://shop.example/thanks?o=1"
    # fields added later change no fingerprint of a request made without them
    plain = rq.parse_create(body(), NETWORKS, NOW).fingerprint
    assert plain == rq.parse_create(body(clientId=None), NETWORKS, NOW).fingerprint
    assert req.fingerprint != plain
    q = rq.parse_invoice_query({"clientId": "cust-9"})
    assert q.client_id == "cust-9"


def test_fingerprint_follows_values_not_spelling() -> None:
    fp = rq.parse_create(body(amount="12.5", address=DEDICATED, ttl=60), NETWORKS, NOW)
    same = rq.parse_create(body(ttl=60, address=DEDICATED.lower(), amount="12.50"),
                           NETWORKS, NOW + 30)
    assert fp.fingerprint == same.fingerprint
    for other in (body(amount="12.6", address=DEDICATED, ttl=60),
                  body(amount="12.5", address=DEDICATED, ttl=61),
                  body(amount="12.5", address=DEDICATED, ttl=60, email="a@b.example")):
        assert rq.parse_create(other, NETWORKS, NOW).fingerprint != fp.fingerprint


@given(st.integers(min_value=1, max_value=10**30))
def test_amount_round_trips_exactly(base: int) -> None:
    whole, frac = divmod(base, 10**6)
    text = f"{whole}.{frac:06d}"
    assert rq.parse_create(body(amount=text), NETWORKS, NOW).amount == base


@given(st.floats(allow_nan=True) | st.integers() | st.booleans() | st.none())
def test_amount_is_never_a_json_number(value: object) -> None:
    assert invalid(body(amount=value)).field == "amount"


# ---------------------------------------------------------------- JSON bodies, refunds


def test_parse_json_body() -> None:
    assert rq.parse_json_body(b'{"a": 1}') == {"a": 1}
    assert rq.parse_json_body(b"", required=False) == {}
    for raw in (b"", b"{", b"[1]", b"nul"):
        with pytest.raises(BadRequest):
            rq.parse_json_body(raw)


def test_parse_refund() -> None:
    assert rq.parse_refund({}) is None
    assert rq.parse_refund({"txHash": "0x" + "AB" * 32}) == "0x" + "ab" * 32
    for bad in ({"txHash": "0x12"}, {"txHash": 1}, {"tx": "0x"}):
        with pytest.raises(Invalid):
            rq.parse_refund(bad)


# ---------------------------------------------------------------- queries and cursors


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_cursor_round_trips(position: int) -> None:
    token = rq.encode_cursor(position)
    assert token.isascii() and "=" not in token
    assert rq.decode_cursor(token) == position


@pytest.mark.parametrize("token", ["x", "!!!", rq.encode_cursor(5)[:-2] + "zz", "cHcxOi0x"])
def test_bad_cursor_is_400_on_field_cursor(token: str) -> None:
    with pytest.raises(BadRequest) as exc:
        rq.decode_cursor(token)
    assert exc.value.field == "cursor"


def test_invoice_query() -> None:
    q = rq.parse_invoice_query({"status": "pending,partial", "network": NET, "limit": "10"})
    assert q.statuses == (Status.PENDING, Status.PARTIAL)
    assert (q.network, q.page.limit, q.page.before) == (NET, 10, None)
    assert rq.parse_invoice_query({}).page.limit == rq.DEFAULT_LIMIT


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "PAID"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"state": "PENDING"}, "state"),
    ],
)
def test_invoice_query_errors(query: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as exc:
        rq.parse_invoice_query(query)
    assert exc.value.field == field and exc.value.status == 422


def test_transfer_query() -> None:
    assert rq.parse_transfer_query({"matched": "true"}).matched is True
    assert rq.parse_transfer_query({"matched": "false"}).matched is False
    assert rq.parse_transfer_query({}).matched is None
    with pytest.raises(Invalid) as exc:
        rq.parse_transfer_query({"matched": "maybe"})
    assert exc.value.field == "matched"
