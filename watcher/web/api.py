"""The HTTP API (aiohttp): thin handlers over `ledger.py` and `store.py`.

Handlers validate through `watcher.requests`, run every database call on the store's writer
thread (`Store.run`) and render invoices with `Ledger.render`. Two middlewares wrap them:
`_errors` turns every failure into the contract's JSON error shape (and a 500 without any
traceback for the unexpected), `_auth` guards `/v1/*` with bearer keys compared in constant
time.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from watcher import ledger as ledger_mod
from watcher import requests as rq
from watcher.balances import balances_by_network
from watcher.errors import (
    ApiError,
    NotFound,
    PayloadTooLarge,
    StoreError,
    Unauthorized,
    Unavailable,
)
from watcher.models import Invoice
from watcher.outbox import redeliver
from watcher.pricing.book import RateBook
from watcher.queries import list_invoices
from watcher.render import address_json, transfer_json
from watcher.rpc import RpcClient
from watcher.storage.base import Db
from watcher.storage.rows import derived_addresses, latest_rescans, load_invoice, transfer_from_row
from watcher.storage.store import GroupCommit, Store
from watcher.timeutil import iso
from watcher.timeutil import now as _clock
from watcher.web.channels import Sockets, merchant_socket

log = logging.getLogger(__name__)

__all__ = ["ApiContext", "create_app", "redeliver"]

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ignore_outcome(outcome: ledger_mod.Outcome) -> None:
    del outcome


def _ignore_event(event_id: str) -> None:
    del event_id


def _no_status() -> list[dict[str, Any]]:
    return []


def _always_ready() -> tuple[bool, str]:
    return True, "ok"


@dataclass
class ApiContext:
    """What the API needs from the daemon. The callables default to stand-ins so the API
    runs on its own (tests, tools); the daemon passes its live versions."""

    store: Store
    ledger: ledger_mod.Ledger
    api_keys: list[str]
    metrics_handler: Handler | None = None
    metrics_require_auth: bool = False
    #: Called after every committed ledger write (index, metrics, wake the callback sender).
    on_outcome: Callable[[ledger_mod.Outcome], None] = _ignore_outcome
    #: Per network: name, chainId, headBlock, scannedBlock, lagBlocks, rpc, assets.
    networks_status: Callable[[], list[dict[str, Any]]] = _no_status
    readiness: Callable[[], tuple[bool, str]] = _always_ready
    #: Called after a delivery was queued again (wake the callback sender).
    on_redeliver: Callable[[str], None] = _ignore_event
    clock: Callable[[], int] = field(default=_clock)
    #: The merchant channels (`GET /v1/ws`); None: the route answers 404.
    sockets: Sockets | None = None
    #: The rates (`GET /v1/rates`); None: no pairs configured, an empty list.
    rates: RateBook | None = None
    #: RPC clients per network (balances of derived addresses).
    rpcs: dict[str, RpcClient] = field(default_factory=dict)
    #: Starts a rescan of (network, from, to or None) in the daemon: its row as JSON;
    #: None: the route answers 503 (no daemon to run it).
    rescan: Callable[[str, int, int | None], Awaitable[dict[str, Any]]] | None = None


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi", bytes)
Created = tuple[Invoice, bool, ledger_mod.Outcome]
CREATES: web.AppKey[GroupCommit[tuple[ledger_mod.NewInvoice, int], Created]] = web.AppKey(
    "creates", GroupCommit
)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    resp = _json({"error": {"code": code, "message": message, "field": field}}, status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="payment-watcher"'
    return resp


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


# ---------------------------------------------------------------- middlewares


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise PayloadTooLarge(f"the request body is over {MAX_BODY} bytes")
        return await handler(request)
    except ApiError as exc:
        resp = _json(exc.to_json(), exc.status)
        if exc.status == 401:  # RFC 9110: a 401 names the scheme it wants
            resp.headers["WWW-Authenticate"] = 'Bearer realm="payment-watcher"'
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return _error(413, "payload_too_large", f"the request body is over {MAX_BODY} bytes")
        if exc.status == 404:
            return _error(404, "not_found", f"no route {request.method} {request.path}")
        if exc.status == 405:
            resp = _error(405, "method_not_allowed", f"{request.method} is not allowed here")
            allow = exc.headers.get("Allow")
            if allow:
                resp.headers["Allow"] = allow
            return resp
        code = _HTTP_CODES.get(exc.status, "http_error")
        return _error(exc.status, code, exc.reason)
    except StoreError as exc:  # its message names the cause; a traceback would add noise
        log.error("database unavailable in %s %s: %s", request.method, request.path, exc)
        return _error(503, "unavailable", "the database is unavailable; try again later")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal", "internal error; the details are in the server log")


def key_matches(header: str | None, keys: list[str]) -> bool:
    """True when `header` is `Bearer <key>` for one of `keys`; compares with every key in
    constant time, whichever matches."""
    if not header or not keys:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CTX]
    guarded = request.path.startswith("/v1/") or request.path == "/v1"
    if request.path == "/metrics" and ctx.metrics_require_auth:
        guarded = True
    if guarded and not key_matches(request.headers.get("Authorization"), ctx.api_keys):
        raise Unauthorized("a valid `Authorization: Bearer <api key>` header is required")
    return await handler(request)


# ---------------------------------------------------------------- helpers


def _ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]


def _report(ctx: ApiContext, outcome: ledger_mod.Outcome) -> None:
    """Hand a committed outcome to the daemon; its failure must not fail the request."""
    try:
        ctx.on_outcome(outcome)
    except Exception:
        log.exception("on_outcome failed")


async def _body(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    return rq.parse_json_body(raw, required=required)


# ---------------------------------------------------------------- database functions


def _get_invoice(db: Db, invoice_id: str) -> Invoice:
    inv = load_invoice(db, invoice_id)
    if inv is None:
        raise NotFound(f"no invoice {invoice_id}", field="id")
    return inv



def _decimals(
    db: Db, networks: dict[str, ledger_mod.NetworkInfo]
) -> Callable[[str, str], int]:
    cache: dict[tuple[str, str], int] = {}

    def decimals(network: str, asset: str) -> int:
        key = (network, asset)
        if key not in cache:
            net = networks.get(network)
            if net is not None and asset in net.assets:
                cache[key] = net.assets[asset].decimals
            else:  # a network no longer configured: its invoices remember the decimals
                row = db.execute(
                    "SELECT decimals FROM invoices WHERE network = ? AND asset = ? LIMIT 1",
                    [network, asset],
                ).fetchone()
                cache[key] = row[0] if row else 0
        return cache[key]

    return decimals


async def address_report(
    store: Store,
    networks: dict[str, ledger_mod.NetworkInfo],
    rpcs: dict[str, RpcClient],
    q: rq.AddressQuery,
) -> dict[str, Any]:
    """`GET /v1/addresses`: derived addresses in index order with their invoices (of
    `q.network` only, when given) and, with `q.with_balance`, what each holds of every
    configured asset on each network (or `q.network`), read from the chain now."""
    rows = await store.read(derived_addresses, q.page.before, q.page.limit + 1)
    more = len(rows) > q.page.limit
    rows = rows[: q.page.limit]
    if q.network is not None:
        for row in rows:
            row["invoices"] = [i for i in row["invoices"] if i["network"] == q.network]
    out: dict[str, Any] = {"data": [], "nextCursor": None}
    if more and rows:
        out["nextCursor"] = rq.encode_cursor(rows[-1]["idx"])
    if not q.with_balance:
        out["data"] = [address_json(r) for r in rows]
        return out
    chosen = {n: i for n, i in networks.items() if q.network in (None, n)}
    assets = {n: list(i.assets.values()) for n, i in chosen.items()}
    decimals = {n: {a.symbol: a.decimals for a in i.assets.values()} for n, i in chosen.items()}
    found, errors = await balances_by_network(rpcs, assets, [r["address"] for r in rows])
    for row in rows:
        per_network = {n: b[row["address"]] for n, (_, b) in found.items()}
        out["data"].append(address_json(row, per_network, decimals))
    out["balanceBlocks"] = {n: block for n, (block, _) in found.items()}
    out["balanceErrors"] = errors
    return out


def list_transfers(
    db: Db, q: rq.TransferQuery, networks: dict[str, ledger_mod.NetworkInfo]
) -> tuple[list[dict[str, Any]], int | None]:
    """Transfers newest seen first; (JSON objects, position for the next page or None)."""
    where: list[str] = []
    params: list[Any] = []
    if q.network:
        where.append("network = ?")
        params.append(q.network)
    if q.matched is not None:
        where.append("invoice_id IS NOT NULL" if q.matched else "invoice_id IS NULL")
    if q.page.before is not None:
        where.append("rowid < ?")
        params.append(q.page.before)
    sql = " AND ".join(where) or "1 = 1"
    rows = list(
        db.query(
            f"SELECT rowid AS _pos, * FROM transfers WHERE {sql} ORDER BY rowid DESC LIMIT ?",
            [*params, q.page.limit + 1],
        )
    )
    more = len(rows) > q.page.limit
    rows = rows[: q.page.limit]
    position: int | None = rows[-1]["_pos"] if more and rows else None
    decimals = _decimals(db, networks)
    data = []
    for row in rows:
        del row["_pos"]
        t = transfer_from_row(row)
        data.append(transfer_json(t, decimals(t.network, t.asset)))
    return data, position


def _time(value: float | None) -> str | None:
    return None if value is None else iso(int(value))


def invoice_events(db: Db, invoice_id: str) -> list[dict[str, Any]] | None:
    """The invoice's events, oldest first, each with its delivery; None if no invoice."""
    if db.execute("SELECT 1 FROM invoices WHERE id = ?", [invoice_id]).fetchone() is None:
        return None
    events = list(
        db.query(
            "SELECT id, event, status, created_at, cause FROM events WHERE invoice_id = ? "
            "ORDER BY seq",
            [invoice_id],
        )
    )
    deliveries = {
        r["event_id"]: r
        for r in db.query("SELECT * FROM deliveries WHERE invoice_id = ?", [invoice_id])
    }
    attempts: dict[str, list[dict[str, Any]]] = {}
    if deliveries:
        marks = ",".join("?" * len(deliveries))
        for a in db.query(
            f"SELECT * FROM attempts WHERE event_id IN ({marks}) ORDER BY id", list(deliveries)
        ):
            attempts.setdefault(a["event_id"], []).append(
                {
                    "at": _time(a["at"]),
                    "statusCode": a["status_code"],
                    "error": a["error"],
                    "durationMs": a["duration_ms"],
                }
            )
    out = []
    for e in events:
        d = deliveries.get(e["id"])
        delivery = None
        if d is not None:
            delivery = {
                "url": d["url"],
                "state": d["state"],
                "attempts": attempts.get(e["id"], []),
                "nextAttemptAt": _time(d["next_attempt_at"]) if d["state"] == "pending" else None,
                "deliveredAt": _time(d["delivered_at"]),
                "lastError": d["last_error"],
            }
        out.append(
            {
                "id": e["id"],
                "event": e["event"],
                "status": e["status"],
                "createdAt": iso(e["created_at"]),
                "cause": e["cause"],
                "delivery": delivery,
            }
        )
    return out


def fallback_networks(
    db: Db, networks: dict[str, ledger_mod.NetworkInfo]
) -> list[dict[str, Any]]:
    """Network status from the configuration and the `cursors` table, for when the daemon
    does not provide a live one."""
    cursors = {r["network"]: r for r in db.query("SELECT * FROM cursors")}
    out = []
    for net in networks.values():
        cur = cursors.get(net.name) or {}
        head, scanned = cur.get("head_block"), cur.get("scanned_block")
        out.append(
            {
                "name": net.name,
                "chainId": net.chain_id,
                "headBlock": head,
                "scannedBlock": scanned,
                "lagBlocks": head - scanned if head is not None and scanned is not None else None,
                "rpc": None,
                "assets": [
                    {
                        "symbol": a.symbol,
                        "decimals": a.decimals,
                        "tokenAddress": a.token,
                        "sharedAddress": a.shared_address,
                    }
                    for a in net.assets.values()
                ],
            }
        )
    return out


# ---------------------------------------------------------------- handlers


async def create_invoice(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await _body(request, required=True)
    now = ctx.clock()
    req = rq.parse_create(
        body, ctx.ledger.networks, now, ctx.ledger.rates,
        derivable=ctx.ledger.deriver is not None,
    )
    inv, created, outcome = await request.app[CREATES].submit((req, now))
    if created:
        _report(ctx, outcome)
    return _json(ctx.ledger.render(inv), 201 if created else 200)


async def get_invoice(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    inv = await ctx.store.read(_get_invoice, request.match_info["id"])
    return _json(ctx.ledger.render(inv))


async def list_invoices_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    q = rq.parse_invoice_query(request.query)
    invoices, position = await ctx.store.read(list_invoices, q)
    return _json(
        {
            "data": [ctx.ledger.render(i) for i in invoices],
            "nextCursor": rq.encode_cursor(position) if position is not None else None,
        }
    )


def _action(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        invoice_id = request.match_info["id"]
        now = ctx.clock()
        if name == "refund":
            tx = rq.parse_refund(await _body(request, required=False))
            inv, outcome = await ctx.store.run(ctx.ledger.refund, invoice_id, now, tx)
        else:
            await _body(request, required=False)  # a body, if any, must still be JSON
            act = getattr(ctx.ledger, name)
            inv, outcome = await ctx.store.run(act, invoice_id, now)
        _report(ctx, outcome)
        return _json(ctx.ledger.render(inv), 201 if name == "remainder" else 200)

    handler.__name__ = f"{name}_invoice"
    return handler


async def method_handler(request: web.Request) -> web.Response:
    """`POST /v1/invoices/{id}/method`: choose (or switch) a method invoice's method."""
    ctx = _ctx(request)
    network, asset = rq.parse_method(await _body(request, required=True))
    inv, outcome = await ctx.store.run(
        ctx.ledger.choose, request.match_info["id"], network, asset, ctx.clock()
    )
    _report(ctx, outcome)
    return _json(ctx.ledger.render(inv))


async def events_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    invoice_id = request.match_info["id"]
    events = await ctx.store.read(invoice_events, invoice_id)
    if events is None:
        raise NotFound(f"no invoice {invoice_id}", field="id")
    return _json({"data": events, "nextCursor": None})


async def transfers_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    q = rq.parse_transfer_query(request.query)
    data, position = await ctx.store.read(list_transfers, q, ctx.ledger.networks)
    return _json(
        {"data": data, "nextCursor": rq.encode_cursor(position) if position is not None else None}
    )


async def assign_handler(request: web.Request) -> web.Response:
    """`POST /v1/transfers/{id}/assign`: make an unmatched or late transfer a payment."""
    ctx = _ctx(request)
    invoice_id = rq.parse_assign(await _body(request, required=False))
    now = ctx.clock()
    inv, outcome = await ctx.store.run(
        ctx.ledger.assign, request.match_info["id"], invoice_id, now
    )
    _report(ctx, outcome)
    return _json(ctx.ledger.render(inv))


async def addresses_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    q = rq.parse_address_query(request.query, ctx.ledger.networks)
    return _json(await address_report(ctx.store, ctx.ledger.networks, ctx.rpcs, q))


async def networks_report(ctx: ApiContext) -> list[dict[str, Any]]:
    """Per network what `GET /v1/networks` answers (the dashboard shows the same): the
    daemon's live status (or the database's), its finality and its newest rescan."""
    status = ctx.networks_status()
    if not status:
        status = await ctx.store.read(fallback_networks, ctx.ledger.networks)
    rescans = await ctx.store.read(latest_rescans)
    for net in status:
        info = ctx.ledger.networks.get(net["name"])
        view = ctx.ledger.views.get(net["name"])
        net["finality"] = info.finality if info else None
        net["finalizedBlock"] = view.finalized_block if view else None
        net["rescan"] = rescans.get(net["name"])
    return status


async def networks_handler(request: web.Request) -> web.Response:
    return _json({"data": await networks_report(_ctx(request)), "nextCursor": None})


async def rescan_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    network = request.match_info["name"]
    if network not in ctx.ledger.networks:
        raise NotFound(f"no network {network}", field="name")
    start, end = rq.parse_rescan(await _body(request, required=True))
    if ctx.rescan is None:
        raise Unavailable("rescans run in the daemon: use `payment-watcher rescan`",
                          field=None)
    return _json(await ctx.rescan(network, start, end), 202)


async def redeliver_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    event_id = request.match_info["eventId"]
    now = ctx.clock()
    if not await ctx.store.run(redeliver, event_id, now):
        raise NotFound(f"no callback delivery for event {event_id}", field="eventId")
    try:
        ctx.on_redeliver(event_id)
    except Exception:
        log.exception("on_redeliver failed")
    return _json({"id": event_id, "state": "pending", "nextAttemptAt": iso(now)}, 202)


async def ws_handler(request: web.Request) -> web.StreamResponse:
    sockets = _ctx(request).sockets
    if sockets is None:
        raise NotFound("live channels are not enabled here")
    return await merchant_socket(request, sockets)


async def rates_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    book = ctx.rates
    data = book.status(ctx.clock()) if book is not None else []
    return _json({"data": data, "nextCursor": None})


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        ready, reason = ctx.readiness()
    except Exception:
        log.exception("readiness check failed")
        ready, reason = False, "readiness check failed"
    return _json({"ready": ready, "reason": reason}, 200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    handler = _ctx(request).metrics_handler
    if handler is None:
        raise NotFound("metrics are not enabled")
    return await handler(request)


def load_openapi() -> bytes:
    """The OpenAPI document shipped in the package (validated as JSON)."""
    raw = resources.files("watcher.web").joinpath("openapi.json").read_bytes()
    json.loads(raw)
    return raw


def openapi_document(networks: dict[str, ledger_mod.NetworkInfo]) -> bytes:
    """`GET /v1/openapi.json`: the shipped document with this daemon's configured networks
    and their asset symbols as the enums of a create request's `network` and `asset` (a
    symbol is valid on the networks that list it; another pair is refused with 422)."""
    doc = json.loads(load_openapi())
    schemas = doc["components"]["schemas"]
    names = sorted(networks)
    symbols = sorted({symbol for net in networks.values() for symbol in net.assets})
    # a create's network/asset, and a method's (in `methods` and when choosing one)
    for props in (schemas["CreateInvoice"]["properties"], schemas["MethodChoice"]["properties"]):
        if names:
            props["network"]["enum"] = names
        if symbols:
            props["asset"]["enum"] = symbols
    return json.dumps(doc, indent=2).encode()


def create_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[_errors, _auth], client_max_size=MAX_BODY)
    app[CTX] = ctx
    app[OPENAPI] = openapi_document(ctx.ledger.networks)
    if ctx.sockets is not None:
        app.on_shutdown.append(ctx.sockets.on_shutdown)
    app[CREATES] = GroupCommit(ctx.store, lambda db, items: ctx.ledger.create_many(db, items))
    r = app.router
    r.add_post("/v1/invoices", create_invoice)
    r.add_get("/v1/invoices", list_invoices_handler, allow_head=False)
    r.add_get("/v1/invoices/{id}", get_invoice, allow_head=False)
    for name in ("cancel", "accept", "remainder", "refund"):
        r.add_post(f"/v1/invoices/{{id}}/{name}", _action(name))
    r.add_post("/v1/invoices/{id}/method", method_handler)
    r.add_get("/v1/invoices/{id}/events", events_handler, allow_head=False)
    r.add_get("/v1/transfers", transfers_handler, allow_head=False)
    r.add_post("/v1/transfers/{id}/assign", assign_handler)
    r.add_get("/v1/networks", networks_handler, allow_head=False)
    r.add_get("/v1/addresses", addresses_handler, allow_head=False)
    r.add_post("/v1/networks/{name}/rescan", rescan_handler)
    r.add_post("/v1/callbacks/{eventId}/redeliver", redeliver_handler)
    r.add_get("/v1/rates", rates_handler, allow_head=False)
    r.add_get("/v1/ws", ws_handler, allow_head=False)
    r.add_get("/v1/openapi.json", openapi_handler, allow_head=False)
    r.add_get("/healthz", healthz, allow_head=False)
    r.add_get("/readyz", readyz, allow_head=False)
    r.add_get("/metrics", metrics_handler, allow_head=False)
    return app


# ---------------------------------------------------------------- shared with the dashboard

#: The dashboard (`web/dashboard.py`) makes its changes through the same ledger operations
#: and reports each committed outcome the same way the handlers above do.
report_outcome = _report
