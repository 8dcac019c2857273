"""Pure helpers of the merchant dashboard: HTML form values into API request bodies, list
filters from query strings, page links, safe redirect targets, explorer links.

No I/O. The request bodies made here go through the API's own parsing
(`watcher.requests`), so a form and a JSON request mean the same thing and are refused with
the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from watcher import requests as rq
from watcher.errors import BadRequest
from watcher.models import Status

#: Where the dashboard lives on its listener.
PREFIX = "/dashboard"
#: Invoices per page of the list.
PAGE_SIZE = 25
#: Fields of the create form that go to the request as they are (when not empty).
_TEXT_FIELDS = ("title", "description", "callbackUrl", "redirectUrl", "externalId", "clientId",
                "email")
ADDRESS_MODES = ("shared", "dedicated", "derive")
PRICING_MODES = ("amount", "price")
#: Merchant actions on one invoice, each with a confirmation step.
ACTIONS = ("cancel", "accept", "remainder", "refund")
#: A status as a person reads it (the API's value stays in `data-status`).
STATUS_LABELS = {
    "PENDING": "Pending",
    "WAITING_FOR_CONFIRMATIONS": "Confirming",
    "COMPLETED": "Completed",
    "PARTIAL": "Partial",
    "VOIDED": "Voided",
    "REVERSED": "Reversed",
    "REFUNDED": "Refunded",
}

_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


# ---------------------------------------------------------------- the create form


def method_value(network: str, asset: str) -> str:
    """A method as the form's checkbox (and the CLI's `--method`) names it."""
    return f"{network}:{asset}"


def parse_method(value: str) -> dict[str, str] | None:
    """`NETWORK:ASSET` (a form's box, the CLI's `--method`) as the API's method object;
    None when it is not of that form."""
    network, sep, asset = value.strip().partition(":")
    if not sep or not network.strip() or not asset.strip():
        return None
    return {"network": network.strip(), "asset": asset.strip()}


def create_body(
    form: Mapping[str, str], methods: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """The `POST /v1/invoices` body a create form stands for, and the problems found before
    the API's parsing (only what a form adds: JSON in the payload box, a method box that
    does not name `NETWORK:ASSET`), by field. `methods`: the ticked method boxes (the form
    field `method`, several values).

    Empty inputs are left out, as a JSON client would leave them out, except the address
    in "dedicated" mode: left out it would mean the shared address, so it is sent as
    given and the API says what is wrong with it. With `kind` "methods" (else: one network
    and asset) the body has `methods` (empty when none is ticked: the API refuses that too,
    the form says it in its own words), `price` and `currency`, and no network, asset,
    amount or address: each method's address is given when the customer chooses it."""
    body: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if form.get("kind", "one") == "methods":
        chosen = []
        for value in methods:
            method = parse_method(value)
            if method is None:
                errors.setdefault("methods", f"a method is NETWORK:ASSET, not {value!r}")
            elif method not in chosen:
                chosen.append(method)
        body["methods"] = chosen
        if not methods:  # the API would say "a non-empty list": say it as the form asks it
            errors["methods"] = "Tick at least one method the customer may choose."
        for name in ("price", "currency"):
            value = form.get(name, "").strip()
            if value:
                body[name] = value
    else:
        for name in ("network", "asset"):
            value = form.get(name, "").strip()
            if value:
                body[name] = value
        if form.get("pricing", "amount") == "price":
            for name in ("price", "currency"):
                value = form.get(name, "").strip()
                if value:
                    body[name] = value
        else:
            value = form.get("amount", "").strip()
            if value:
                body["amount"] = value
        mode = form.get("address_mode", "shared")
        if mode == "dedicated":
            body["address"] = form.get("address", "").strip()
        elif mode == "derive":
            body["address"] = rq.DERIVE
    ttl = form.get("ttl", "").strip()
    if ttl:
        body["ttl"] = int(ttl) if ttl.isdigit() and len(ttl) < 19 else ttl
    for name in _TEXT_FIELDS:
        value = form.get(name, "").strip()
        if value:
            body[name] = value
    payload = form.get("payload", "").strip()
    if payload:
        try:
            body["payload"] = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            errors["payload"] = f"payload is not valid JSON: {exc}"
    return body, errors


def refund_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The `POST /v1/invoices/{id}/refund` body of the refund form."""
    tx = form.get("txHash", "").strip()
    return {"txHash": tx} if tx else {}


# ---------------------------------------------------------------- the invoice list


@dataclass(frozen=True, slots=True)
class Filters:
    """The invoice list's filters and search, as the query string gives them."""

    status: str = ""
    network: str = ""
    asset: str = ""
    created_from: str = ""  # YYYY-MM-DD (UTC), inclusive
    created_to: str = ""  # YYYY-MM-DD (UTC), inclusive
    q: str = ""
    cursor: str = ""

    def query(self, **changes: str) -> str:
        """The query string of these filters (with `changes`), empty values left out."""
        f = replace(self, **changes)
        pairs = [
            ("status", f.status), ("network", f.network), ("asset", f.asset),
            ("from", f.created_from), ("to", f.created_to), ("q", f.q), ("cursor", f.cursor),
        ]  # fmt: skip
        return urlencode([(k, v) for k, v in pairs if v])

    @property
    def active(self) -> bool:
        return any((self.status, self.network, self.asset, self.created_from, self.created_to,
                    self.q))


@dataclass(frozen=True, slots=True)
class Where:
    """The SQL of a filtered list: a WHERE clause and its parameters."""

    sql: str
    params: list[Any]


def parse_filters(query: Mapping[str, str]) -> tuple[Filters, dict[str, str]]:
    """Filters from the list's query string, and the problems by field (a problem's
    filter is dropped, the others still apply)."""
    errors: dict[str, str] = {}
    status = query.get("status", "").strip().upper()
    if status and status not in STATUS_LABELS:
        errors["status"] = f"unknown status {status!r}"
        status = ""
    days = {}
    for name in ("from", "to"):
        value = query.get(name, "").strip()
        if value and day_start(value) is None:
            errors[name] = f"{name} must be a date like 2024-07-31"
            value = ""
        days[name] = value
    cursor = query.get("cursor", "").strip()
    if cursor:
        try:
            rq.decode_cursor(cursor)
        except BadRequest as exc:
            errors["cursor"] = exc.message
            cursor = ""
    return (
        Filters(
            status=status,
            network=query.get("network", "").strip()[:64],
            asset=query.get("asset", "").strip()[:32],
            created_from=days["from"],
            created_to=days["to"],
            q=query.get("q", "").strip()[:200],
            cursor=cursor,
        ),
        errors,
    )


def day_start(day: str) -> int | None:
    """Unix seconds of 00:00 UTC of a `YYYY-MM-DD` day; None if it is not one."""
    if not _DAY.match(day):
        return None
    try:
        return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def invoice_where(f: Filters) -> Where:
    """The WHERE clause of the invoice list for `f` (the cursor included). The search
    finds an invoice by its id, externalId or clientId; a transaction hash finds the
    invoices it paid (late payments too) or refunded; an address finds the invoices paid
    to it or from it."""
    where: list[str] = []
    params: list[Any] = []
    if f.status:
        where.append("status = ?")
        params.append(f.status)
    if f.network:
        where.append("network = ?")
        params.append(f.network)
    if f.asset:
        where.append("asset = ?")
        params.append(f.asset)
    start = day_start(f.created_from) if f.created_from else None
    if start is not None:
        where.append("created_at >= ?")
        params.append(start)
    end = day_start(f.created_to) if f.created_to else None
    if end is not None:
        where.append("created_at < ?")
        params.append(end + 86400)
    q = f.q
    if q:
        if _HEX.match(q) and len(q) == 66:  # a transaction hash
            where.append(
                "(id IN (SELECT invoice_id FROM transfers WHERE lower(tx_hash) = ? "
                "AND invoice_id IS NOT NULL) OR lower(refund_tx) = ?)"
            )
            params += [q.lower(), q.lower()]
        elif _HEX.match(q) and len(q) == 42:  # an address
            where.append(
                "(to_lower = ? OR id IN (SELECT invoice_id FROM transfers "
                "WHERE lower(from_addr) = ? AND invoice_id IS NOT NULL))"
            )
            params += [q.lower(), q.lower()]
        else:
            where.append("(id = ? OR external_id = ? OR client_id = ?)")
            params += [q.lower(), q, q]
    if f.cursor:
        where.append("seq < ?")
        params.append(rq.decode_cursor(f.cursor))
    return Where(" AND ".join(where) or "1 = 1", params)


def next_link(f: Filters, position: int | None) -> str | None:
    """The list's next page (the same filters, a cursor after `position`); None on the
    last page."""
    if position is None:
        return None
    return f"{PREFIX}/invoices?{f.query(cursor=rq.encode_cursor(position))}"


def first_link(f: Filters) -> str | None:
    """The list's first page with the same filters; None when this is the first page."""
    if not f.cursor:
        return None
    query = f.query(cursor="")
    return f"{PREFIX}/invoices" + (f"?{query}" if query else "")


# ---------------------------------------------------------------- links and redirects


def safe_next(value: object, default: str = f"{PREFIX}/invoices") -> str:
    """A redirect target inside the dashboard: a local path under /dashboard/, never
    another host (`//host`, `/\\host`, a scheme) or anything with control characters."""
    if not isinstance(value, str) or len(value) > 2000:
        return default
    if not value.startswith(f"{PREFIX}/") or "\\" in value or "//" in value:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return default
    return value


def explorer(base: str | None, kind: str, value: str | None) -> str | None:
    """`{explorer}/tx/{hash}` or `{explorer}/address/{address}`; None without either."""
    if not base or not value:
        return None
    return f"{base.rstrip('/')}/{kind}/{value}"


def short(value: str | None, head: int = 10, tail: int = 6) -> str:
    """A long hash or address shortened for a table cell (the whole one is its title)."""
    if not value:
        return ""
    if len(value) <= head + tail + 1:
        return value
    return f"{value[:head]}…{value[-tail:]}"


def statuses() -> list[str]:
    return [s.value for s in Status]
