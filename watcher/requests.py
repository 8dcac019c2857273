"""Validation of API request bodies and query strings into ledger inputs.

Pure functions, no I/O: the HTTP API and the CLI share them, so a request means the same
thing whichever door it comes through. Every problem raises an `ApiError` whose `field`
names the request field at fault (`Invalid`, 422) or `BadRequest` (400) for a body or token
that cannot be read at all.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from watcher.addresses import checksum_address
from watcher.amounts import parse_amount
from watcher.errors import AmountError, BadRequest, Invalid
from watcher.models import Method, Status
from watcher.rates import RateProvider
from watcher.timeutil import parse_iso

if TYPE_CHECKING:  # imported where used: `invoices list` reads without the ledger
    from watcher import ledger

CREATE_FIELDS = (
    "network",
    "asset",
    "amount",
    "address",
    "expireAt",
    "ttl",
    "callbackUrl",
    "externalId",
    "payload",
    "price",
    "currency",
    "email",
    "clientId",
    "redirectUrl",
    "title",
    "description",
    "methods",
)
MAX_URL = 2048
MAX_TITLE = 200
MAX_DESCRIPTION = 1000
#: Most payment methods one invoice may offer.
MAX_METHODS = 32
#: `"address": "derive"`: take the next address derived from the configured xpub.
DERIVE = "derive"
MAX_EXTERNAL_ID = 128
MAX_CLIENT_ID = 128
MAX_PAYLOAD = 4096
MAX_CURRENCY = 16
MAX_EMAIL = 254
MAX_PRICE = 64
#: Decimal places of a price that is converted (fiat: cents, some sub-cent quotes).
MAX_PRICE_PLACES = 8
#: Longest accepted ttl: ten years (keeps every time far inside SQLite's INTEGER).
MAX_TTL = 10 * 365 * 86400
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

_HEX40 = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")


def require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def parse_json_body(raw: bytes, *, required: bool = True) -> dict[str, Any]:
    """Decode a request body; an empty body is `{}` unless `required`."""
    if not raw.strip():
        if required:
            raise BadRequest("the request body must be a JSON object")
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    return require_object(body)


def _reject_unknown(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise Invalid(f"unknown field {key!r}", field=str(key))


def _optional_str(body: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", field=name)
    if not value:
        raise Invalid(f"{name} must not be empty", field=name)
    if len(value) > limit:
        raise Invalid(f"{name} must be at most {limit} characters", field=name)
    return value


def parse_address(value: object, name: str = "address") -> str:
    """An EVM address, checksummed; mixed case must be a valid EIP-55 checksum."""
    if not isinstance(value, str) or not _HEX40.match(value):
        raise Invalid(f"{name} must be an EVM address (0x and 40 hex digits)", field=name)
    digits = value[2:]
    checksummed = checksum_address(value)
    if digits != digits.lower() and digits != digits.upper() and value != checksummed:
        raise Invalid(f"{name} has an invalid EIP-55 checksum", field=name)
    return checksummed


def _http_url(value: str | None, name: str) -> str | None:
    """An absolute http(s) URL with a host and no whitespace, as given."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not host
        or any(c.isspace() for c in value)
    ):
        raise Invalid(f"{name} must be an http or https URL", field=name)
    return value


def _amount(value: object, decimals: int) -> int:
    if value is None:
        raise Invalid("amount is required", field="amount")
    if not isinstance(value, str):
        raise Invalid("amount must be a decimal string", field="amount")
    try:
        base = parse_amount(value, decimals)
    except AmountError as exc:
        raise Invalid(f"amount {exc}", field="amount") from None
    if base <= 0:
        raise Invalid("amount must be greater than 0", field="amount")
    return base


def _expiry(body: Mapping[str, Any], now: int) -> tuple[int | None, int | None, int | None]:
    """(expire_at, expireAt as given in unix seconds, ttl as given)."""
    raw_at, raw_ttl = body.get("expireAt"), body.get("ttl")
    if raw_at is not None and raw_ttl is not None:
        raise Invalid("give either expireAt or ttl, not both", field="ttl")
    if raw_ttl is not None:
        if isinstance(raw_ttl, bool) or not isinstance(raw_ttl, int):
            raise Invalid("ttl must be an integer number of seconds", field="ttl")
        if raw_ttl <= 0 or raw_ttl > MAX_TTL:
            raise Invalid(f"ttl must be between 1 and {MAX_TTL} seconds", field="ttl")
        return now + raw_ttl, None, raw_ttl
    if raw_at is not None:
        if not isinstance(raw_at, str):
            raise Invalid("expireAt must be an ISO 8601 time string", field="expireAt")
        try:
            at = parse_iso(raw_at)
        except (ValueError, OverflowError) as exc:
            raise Invalid(f"expireAt {exc}", field="expireAt") from None
        if at <= now:
            raise Invalid("expireAt must be in the future", field="expireAt")
        return at, at, None
    return None, None, None


def _payload(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid("payload must be a JSON object", field="payload")
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        raise Invalid("payload must be plain JSON", field="payload") from None
    if size > MAX_PAYLOAD:
        raise Invalid(f"payload must be at most {MAX_PAYLOAD} bytes of JSON", field="payload")
    return value


def _price(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DECIMAL.match(value) or len(value) > MAX_PRICE:
        raise Invalid('price must be a decimal string like "500.00"', field="price")
    return value


def _email(value: str | None) -> str | None:
    if value is not None and ("@" not in value or any(c.isspace() for c in value)):
        raise Invalid("email must be an e-mail address", field="email")
    return value


def _priced(
    data: Mapping[str, Any], asset: str, rates: RateProvider | None
) -> tuple[str, str]:
    """(price, currency) of a create without `amount`: priced in a currency."""
    raw_price, currency = data.get("price"), _optional_str(data, "currency", MAX_CURRENCY)
    if raw_price is None:
        raise Invalid("amount is required (or price and currency)", field="amount")
    if not isinstance(raw_price, str) or not _DECIMAL.match(raw_price) or (
        len(raw_price) > MAX_PRICE
    ):
        raise Invalid('price must be a decimal string like "29.99"', field="price")
    _, _, places = raw_price.partition(".")
    if len(places.rstrip("0")) > MAX_PRICE_PLACES:
        raise Invalid(f"price has more than {MAX_PRICE_PLACES} decimal places", field="price")
    if Fraction(raw_price) <= 0:
        raise Invalid("price must be greater than 0", field="price")
    if currency is None:
        raise Invalid("currency is required with price", field="currency")
    if rates is None or not rates.can_price(asset, currency):
        pairs = ", ".join(rates.pair_names) if rates is not None else ""
        raise Invalid(
            f"currency {currency!r}: no rate prices {asset} in it (configured pairs: "
            f"{pairs or 'none'}; a pair is also derived through USD when both legs exist)",
            field="currency",
        )
    return raw_price, currency


def parse_create(
    body: object,
    networks: Mapping[str, ledger.NetworkInfo],
    now: int,
    rates: RateProvider | None = None,
    *,
    derivable: bool = False,
) -> ledger.NewInvoice:
    """Validate a create request into a `NewInvoice` (with its idempotency fingerprint).
    Without `amount`, `price` + `currency` must be priceable by `rates`. `derivable`: an
    xpub is configured, so `"address": "derive"` (or no address where the asset has no
    shared address) takes the next derived address."""
    from watcher import ledger

    data = require_object(body)
    _reject_unknown(data, CREATE_FIELDS)
    if data.get("methods") is not None:
        return _parse_methods_create(data, networks, now, rates, derivable=derivable)

    network = data.get("network")
    if network is None:
        raise Invalid("network is required", field="network")
    if not isinstance(network, str) or network not in networks:
        known = ", ".join(sorted(networks)) or "none"
        raise Invalid(f"unknown network {network!r} (known: {known})", field="network")
    net = networks[network]

    symbol = data.get("asset")
    if symbol is None:
        raise Invalid("asset is required", field="asset")
    if not isinstance(symbol, str) or symbol not in net.assets:
        known = ", ".join(sorted(net.assets)) or "none"
        raise Invalid(
            f"unknown asset {symbol!r} on {network} (known: {known})", field="asset"
        )
    asset = net.assets[symbol]

    amount: int | None = None
    price: str | None
    currency: str | None
    if data.get("amount") is None and data.get("price") is not None:
        price, currency = _priced(data, symbol, rates)
    else:
        amount = _amount(data.get("amount"), asset.decimals)
        price = _price(data.get("price"))
        currency = _optional_str(data, "currency", MAX_CURRENCY)
    raw_address = data.get("address")
    derive = raw_address == DERIVE
    if derive and not derivable:
        raise Invalid(
            'address "derive" needs an xpub: set [addresses] xpub in the config',
            field="address",
        )
    address = None if raw_address is None or derive else parse_address(raw_address)
    if address is None and asset.shared_address is None and not derivable:
        raise Invalid(
            f"address is required: {symbol} on {network} has no shared address "
            "(and no [addresses] xpub is configured to derive one)",
            field="address",
        )
    derive = derive or (address is None and asset.shared_address is None)
    expire_at, expire_given, ttl = _expiry(data, now)
    callback_url, redirect_url, client_id, external_id, payload, email = _references(data)

    normalized = {
        "network": network,
        "asset": symbol,
        "amount": str(amount) if amount is not None else None,
        "address": DERIVE if derive else address.lower() if address else None,
        "expireAt": expire_given,
        "ttl": ttl,
        "callbackUrl": callback_url,
        "externalId": external_id,
        "payload": payload,
        "price": price,
        "currency": currency,
        "email": email,
    }
    # Fields added later enter the fingerprint only when given, so a retry of a request
    # made before they existed still matches the invoice it created.
    if client_id is not None:
        normalized["clientId"] = client_id
    if redirect_url is not None:
        normalized["redirectUrl"] = redirect_url
    title, description = _texts(data)
    if title is not None:
        normalized["title"] = title
    if description is not None:
        normalized["description"] = description
    return ledger.NewInvoice(
        network=network,
        asset=symbol,
        amount=amount,
        address=address,
        derive=derive,
        expire_at=expire_at,
        callback_url=callback_url,
        external_id=external_id,
        payload=payload,
        price=price,
        currency=currency,
        email=email,
        client_id=client_id,
        redirect_url=redirect_url,
        title=title,
        description=description,
        fingerprint=ledger.request_fingerprint(normalized),
    )


def _references(
    data: Mapping[str, Any],
) -> tuple[str | None, str | None, str | None, str | None, dict[str, Any] | None, str | None]:
    """The optional fields every create takes, checked in this order: callbackUrl,
    redirectUrl, clientId, externalId, payload, email."""
    return (
        _http_url(_optional_str(data, "callbackUrl", MAX_URL), "callbackUrl"),
        _http_url(_optional_str(data, "redirectUrl", MAX_URL), "redirectUrl"),
        _optional_str(data, "clientId", MAX_CLIENT_ID),
        _optional_str(data, "externalId", MAX_EXTERNAL_ID),
        _payload(data.get("payload")),
        _email(_optional_str(data, "email", MAX_EMAIL)),
    )


def _texts(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The optional `title` and `description` shown to the customer."""
    return (_optional_str(data, "title", MAX_TITLE),
            _optional_str(data, "description", MAX_DESCRIPTION))


def _methods(
    raw: object, networks: Mapping[str, ledger.NetworkInfo], *, derivable: bool
) -> list[Method]:
    """The `methods` of a create: a non-empty list of distinct, configured
    `{"network", "asset"}`, each with a way to give an address (an xpub, or the asset's
    shared address)."""
    if not isinstance(raw, list) or not raw:
        raise Invalid('methods must be a non-empty list of {"network", "asset"}',
                      field="methods")
    if len(raw) > MAX_METHODS:
        raise Invalid(f"methods has more than {MAX_METHODS} entries", field="methods")
    found: list[Method] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"network", "asset"} or not all(
            isinstance(v, str) for v in item.values()
        ):
            raise Invalid(f'methods[{i}] must be {{"network": "...", "asset": "..."}}',
                          field="methods")
        net = networks.get(item["network"])
        if net is None:
            known = ", ".join(sorted(networks)) or "none"
            raise Invalid(f"methods[{i}]: unknown network {item['network']!r} (known: "
                          f"{known})", field="methods")
        asset = net.assets.get(item["asset"])
        if asset is None:
            known = ", ".join(sorted(net.assets)) or "none"
            raise Invalid(f"methods[{i}]: unknown asset {item['asset']!r} on {net.name} "
                          f"(known: {known})", field="methods")
        method = Method(net.name, asset.symbol)
        if method in found:
            raise Invalid(f"methods[{i}]: {asset.symbol} on {net.name} is listed twice",
                          field="methods")
        if not derivable and asset.shared_address is None:
            raise Invalid(
                f"methods[{i}]: {asset.symbol} on {net.name} has no shared address and no "
                "[addresses] xpub is configured: no address could be given", field="methods")
        found.append(method)
    return found


def _parse_methods_create(
    data: Mapping[str, Any],
    networks: Mapping[str, ledger.NetworkInfo],
    now: int,
    rates: RateProvider | None,
    *,
    derivable: bool,
) -> ledger.NewInvoice:
    """A create with `methods`: the customer chooses how to pay a price in a currency."""
    from watcher import ledger

    mixed = [k for k in ("network", "asset", "amount", "address") if data.get(k) is not None]
    if mixed:
        raise Invalid(f"methods replaces {', '.join(mixed)}: give either methods or "
                      "network and asset", field="methods")
    methods = _methods(data["methods"], networks, derivable=derivable)
    if data.get("price") is None:
        raise Invalid("price and currency are required with methods", field="price")
    wanted = _optional_str(data, "currency", MAX_CURRENCY)
    # An unknown currency is the currency's problem; one method no rate prices, the methods'
    probe = next((m.asset for m in methods
                  if rates is not None and wanted and rates.can_price(m.asset, wanted)),
                 methods[0].asset)
    price, currency = _priced(data, probe, rates)
    assert rates is not None  # `_priced` refuses a create no rate prices
    for i, m in enumerate(methods):
        if not rates.can_price(m.asset, currency):
            raise Invalid(f"methods[{i}]: no rate prices {m.asset} in {currency} "
                          f"(configured pairs: {', '.join(rates.pair_names) or 'none'})",
                          field="methods")
    expire_at, expire_given, ttl = _expiry(data, now)
    callback_url, redirect_url, client_id, external_id, payload, email = _references(data)
    title, description = _texts(data)
    normalized = {
        "methods": [[m.network, m.asset] for m in methods], "price": price,
        "currency": currency, "expireAt": expire_given, "ttl": ttl,
        "callbackUrl": callback_url, "externalId": external_id, "payload": payload,
        "email": email, "clientId": client_id, "redirectUrl": redirect_url,
        "title": title, "description": description,
    }
    return ledger.NewInvoice(
        network=None, asset=None, amount=None, address=None, expire_at=expire_at,
        methods=methods, title=title, description=description,
        callback_url=callback_url, external_id=external_id, payload=payload, price=price,
        currency=currency, email=email, client_id=client_id, redirect_url=redirect_url,
        fingerprint=ledger.request_fingerprint(normalized),
    )


def parse_method(body: object) -> tuple[str, str]:
    """`{"network", "asset"}` of a method choice."""
    data = require_object(body)
    _reject_unknown(data, ("network", "asset"))
    found = []
    for key in ("network", "asset"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise Invalid(f"{key} is required (a string)", field=key)
        found.append(value)
    return found[0], found[1]


def parse_refund(body: object) -> str | None:
    """The optional `txHash` of a refund request."""
    data = require_object(body)
    _reject_unknown(data, ("txHash",))
    tx = data.get("txHash")
    if tx is None:
        return None
    if not isinstance(tx, str) or not _TX_HASH.match(tx):
        raise Invalid("txHash must be 0x and 64 hex digits", field="txHash")
    return tx.lower()


#: Longest invoice id an assign request may name (the daemon's ids are 36-character UUIDs).
MAX_INVOICE_ID = 64


def parse_assign(body: object) -> str:
    """The `invoiceId` of a `POST /v1/transfers/{id}/assign` request."""
    data = require_object(body)
    _reject_unknown(data, ("invoiceId",))
    value = data.get("invoiceId")
    if value is None:
        raise Invalid("invoiceId is required", field="invoiceId")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_INVOICE_ID:
        raise Invalid(
            f"invoiceId must be an invoice id (a string of at most {MAX_INVOICE_ID} "
            "characters)",
            field="invoiceId",
        )
    return value


# ---------------------------------------------------------------- list queries


def encode_cursor(position: int) -> str:
    """An opaque page token for the row position `position` (exclusive)."""
    return base64.urlsafe_b64encode(f"pw1:{position}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor is not a valid page token", field="cursor") from None
    prefix, _, number = text.partition(":")
    if prefix != "pw1" or not number.isdigit() or len(number) > 18:
        raise BadRequest("cursor is not a valid page token", field="cursor")
    return int(number)


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    before: int | None  # exclusive upper bound of the row position, from the cursor


def _page(query: Mapping[str, str]) -> Page:
    raw = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise Invalid(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
        limit = int(raw)
    token = query.get("cursor")
    return Page(limit, decode_cursor(token) if token else None)


def _reject_unknown_params(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for key in query:
        if key not in allowed:
            raise Invalid(f"unknown query parameter {key!r}", field=key)


@dataclass(frozen=True, slots=True)
class InvoiceQuery:
    statuses: tuple[Status, ...]
    network: str | None
    external_id: str | None
    page: Page
    client_id: str | None = None


def parse_invoice_query(query: Mapping[str, str]) -> InvoiceQuery:
    """`status` (one or several, comma separated), `network`, `externalId`, `clientId`,
    `limit`, `cursor`."""
    _reject_unknown_params(
        query, ("status", "network", "externalId", "clientId", "limit", "cursor")
    )
    statuses: list[Status] = []
    for part in (query.get("status") or "").split(","):
        if not part.strip():
            continue
        try:
            statuses.append(Status(part.strip().upper()))
        except ValueError:
            known = ", ".join(s.value for s in Status)
            raise Invalid(f"unknown status {part!r} (known: {known})", field="status") from None
    return InvoiceQuery(
        statuses=tuple(statuses),
        network=query.get("network") or None,
        external_id=query.get("externalId") or None,
        page=_page(query),
        client_id=query.get("clientId") or None,
    )


@dataclass(frozen=True, slots=True)
class TransferQuery:
    network: str | None
    matched: bool | None
    page: Page


def parse_transfer_query(query: Mapping[str, str]) -> TransferQuery:
    """`network`, `matched` (true/false), `limit`, `cursor`."""
    _reject_unknown_params(query, ("network", "matched", "limit", "cursor"))
    raw = query.get("matched")
    matched: bool | None = None
    if raw:
        if raw.lower() not in ("true", "false"):
            raise Invalid("matched must be true or false", field="matched")
        matched = raw.lower() == "true"
    return TransferQuery(network=query.get("network") or None, matched=matched, page=_page(query))


@dataclass(frozen=True, slots=True)
class AddressQuery:
    network: str | None
    with_balance: bool
    page: Page  # `before` is used as "after this index" (ascending order)


def parse_address_query(query: Mapping[str, str], networks: Iterable[str]) -> AddressQuery:
    """`network`, `withBalance` (true/false), `limit`, `cursor`."""
    _reject_unknown_params(query, ("network", "withBalance", "limit", "cursor"))
    network = query.get("network") or None
    known = sorted(networks)
    if network is not None and network not in known:
        raise Invalid(
            f"unknown network {network!r} (known: {', '.join(known) or 'none'})", field="network"
        )
    raw = (query.get("withBalance") or "false").lower()
    if raw not in ("true", "false"):
        raise Invalid("withBalance must be true or false", field="withBalance")
    return AddressQuery(network=network, with_balance=raw == "true", page=_page(query))


def parse_rescan(body: object) -> tuple[int, int | None]:
    """`{"from": block, "to": block?}` of a rescan request."""
    data = require_object(body)
    _reject_unknown(data, ("from", "to"))
    out: list[int | None] = []
    for key in ("from", "to"):
        value = data.get(key)
        if value is None and key == "to":
            out.append(None)
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Invalid(f"{key} must be a block number (an integer >= 0)", field=key)
        out.append(value)
    start, end = out
    assert start is not None
    if end is not None and end < start:
        raise Invalid("to must not be below from", field="to")
    return start, end
