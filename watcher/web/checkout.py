"""The hosted checkout: a public aiohttp application on its own listener.

Only public routes live here (`/pay/{id}`, `/status`, `/qr.svg`, `/ws`, `/method`,
`/static/`), never anything of `/v1`. The one write, `POST /pay/{id}/method` (the customer
chooses how to pay an invoice created with `methods`), takes JSON from the page's script or
a plain form post, and refuses a browser's post from another origin. Everything it shows
comes through `publicview.public_view`, an allow-list of the invoice's fields. Pages are
rendered with jinja2 (autoescape on, strict undefined) from `templates/`, styled and
scripted by files in `static/`; every response carries the security headers of
`security_headers`.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import aiohttp_jinja2
import jinja2
import orjson
import segno
from aiohttp import web

from watcher import __version__
from watcher.errors import ApiError, BadRequest, Invalid, PayloadTooLarge, StoreError
from watcher.ledger import Ledger, Outcome
from watcher.models import Invoice
from watcher.publicview import public_view
from watcher.storage.base import Db
from watcher.storage.rows import load_invoice
from watcher.storage.store import Store
from watcher.timeutil import now as _clock
from watcher.web.channels import CLOSE_NOT_FOUND, Sockets, serve_socket
from watcher.web.hub import Message
from watcher.web.i18n import catalogue, pick

log = logging.getLogger(__name__)


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ignore_outcome(outcome: Outcome) -> None:
    del outcome

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: Statuses after which nothing on the page changes any more.
FINAL = frozenset({"COMPLETED", "VOIDED", "REFUNDED", "REVERSED"})
#: Queued on a public socket when its network's head moved: send the newest view again
#: (confirmations count up between events).
_RECOUNT = "recount"
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
#: Largest body `POST /pay/{id}/method` reads (a network and an asset name fit many times).
MAX_METHOD_BODY = 1024
#: Longest network or asset name accepted from a choice (the config's names are shorter).
MAX_NAME = 64
STATIC = Path(str(resources.files("watcher.web").joinpath("static")))
TEMPLATES = Path(str(resources.files("watcher.web").joinpath("templates")))


@dataclass
class CheckoutContext:
    store: Store
    ledger: Ledger
    sockets: Sockets
    languages: list[str]
    #: Block explorer per network (None: no links).
    explorers: Mapping[str, str | None]
    frame_ancestors: list[str] = field(default_factory=list)
    redirect_delay: int = 5
    hsts: bool = False
    clock: Callable[[], int] = field(default=_clock)
    #: Called after a committed ledger write (a method chosen): index, hub, sender.
    on_outcome: Callable[[Outcome], None] = field(default=_ignore_outcome)
    #: The origin of `checkout.public_url`: a post from it is the page's own (besides this
    #: listener's Host).
    public_origin: str | None = None

    def view(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """The public view of an invoice object, with the network's newest head."""
        chain = self.ledger.views.get(invoice["network"])
        head = chain.head if chain is not None and chain.head else None
        return public_view(invoice, head, self.explorers.get(invoice["network"]), self.clock())


CTX: web.AppKey[CheckoutContext] = web.AppKey("checkout", CheckoutContext)


def security_headers(frame_ancestors: list[str], hsts: bool) -> dict[str, str]:
    """Strict headers for every checkout response: nothing from other hosts, no inline
    script or style, no referrer to explorers, framing only where the operator allows."""
    frames = " ".join(frame_ancestors) or "'none'"
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors {frames}"
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }
    if not frame_ancestors:
        headers["X-Frame-Options"] = "DENY"
    if hsts:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


# ---------------------------------------------------------------- middleware


def _wants_json(request: web.Request) -> bool:
    return (
        request.path.endswith("/status")
        or request.path.endswith("/ws")
        or (request.method == "POST" and request.content_type != _FORM)
    )


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "field": None}}, status=status
    )


def _page_error(request: web.Request, status: int) -> web.Response:
    ctx = request.app[CTX]
    lang = _language(request, ctx)
    return aiohttp_jinja2.render_template(
        "not_found.html", request, {"t": catalogue(lang), "lang": lang}, status=status
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if _wants_json(request) or exc.status != 404:
            return _json_error(exc.status, exc.code, exc.message)
        return _page_error(request, 404)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404 and not _wants_json(request):
            return _page_error(request, 404)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return _json_error(exc.status, code, exc.reason)
    except StoreError as exc:
        log.error("database unavailable in checkout %s: %s", request.path, exc)
        return _json_error(503, "unavailable", "try again in a moment")
    except Exception:
        log.exception("unhandled error in checkout %s", request.path)
        return _json_error(500, "internal", "internal error")


def _on_prepare(headers: dict[str, str]) -> Callable[..., Awaitable[None]]:
    """Add the security headers to every response as it is sent: pages, errors, static
    files and the WebSocket upgrade alike."""

    async def on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers.update(headers)
        if request.path.startswith("/pay/"):
            resp.headers["Cache-Control"] = "no-store"

    return on_prepare


# ---------------------------------------------------------------- helpers


def _language(request: web.Request, ctx: CheckoutContext) -> str:
    return pick(request.query.get("lang"), request.headers.get("Accept-Language"), ctx.languages)


def _invoice_id(request: web.Request) -> str:
    invoice_id = request.match_info["id"].lower()
    if not _UUID.match(invoice_id):
        raise web.HTTPNotFound()
    return invoice_id


async def _load(ctx: CheckoutContext, invoice_id: str) -> dict[str, Any]:
    inv: Invoice | None = await ctx.store.read(load_invoice, invoice_id)
    if inv is None:
        raise web.HTTPNotFound()
    return ctx.ledger.render(inv)


def _invoice_and_seq(db: Db, invoice_id: str) -> tuple[Invoice | None, int]:
    """The invoice and the position of its newest event, read together."""
    row = db.execute("SELECT MAX(seq) FROM events WHERE invoice_id = ?", [invoice_id]).fetchone()
    return load_invoice(db, invoice_id), int(row[0] or 0)


def qr_svg(text: str) -> bytes:
    """A QR code as SVG (segno; error correction M, dark on white, no fixed size)."""
    out = io.BytesIO()
    segno.make(text, error="m", micro=False).save(
        out, kind="svg", scale=4, border=4, xmldecl=False, light="#fff", dark="#000",
        svgclass="qr", lineclass=None, omitsize=True,
    )
    return out.getvalue()


# ---------------------------------------------------------------- handlers


def _lang_query(request: web.Request, ctx: CheckoutContext) -> str:
    """`lang=xx` when the customer picked a language with `?lang=` (kept across a choice)."""
    lang = request.query.get("lang")
    return f"lang={quote(lang)}" if lang is not None and lang in ctx.languages else ""


def _render_page(
    request: web.Request,
    ctx: CheckoutContext,
    view: dict[str, Any],
    *,
    change: bool = False,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    lang = _language(request, ctx)
    texts = catalogue(lang)
    keep = _lang_query(request, ctx)
    action = f"/pay/{view['id']}/method" + (f"?{keep}" if keep else "")
    data = {
        "view": view,
        "texts": texts,
        "lang": lang,
        "redirectDelay": ctx.redirect_delay,
        "final": sorted(FINAL),
        "change": change,
        "action": action,
    }
    context = {
        "v": view,
        "t": texts,
        "lang": lang,
        "languages": ctx.languages,
        "data": data,
        "change": change,
        "error": error,
        "action": action,
        "lang_query": f"?{keep}" if keep else "",
        "lang_param": f"&{keep}" if keep else "",
    }
    return aiohttp_jinja2.render_template("pay.html", request, context, status=status)


async def page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    invoice_id = _invoice_id(request)
    view = ctx.view(await _load(ctx, invoice_id))
    # `?change=1`: the method list again (the "change payment method" link without script)
    return _render_page(request, ctx, view, change=request.query.get("change") == "1")


async def status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    view = ctx.view(await _load(ctx, _invoice_id(request)))
    return web.json_response(view, dumps=lambda o: orjson.dumps(o).decode())


async def qr(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    view = ctx.view(await _load(ctx, _invoice_id(request)))
    kind = request.query.get("kind", "payment")
    if kind not in ("payment", "address"):
        raise BadRequest("kind must be payment or address", field="kind")
    text = view.get("paymentUri") if kind == "payment" else view.get("to")
    if not text:  # no method chosen yet: nothing to pay to
        raise web.HTTPNotFound()
    return web.Response(body=qr_svg(text), content_type="image/svg+xml")


async def socket(request: web.Request) -> web.WebSocketResponse:
    """The public view at connect, then again on every event of the invoice and on every
    new head while confirmations are counted."""
    ctx = request.app[CTX]
    sockets = ctx.sockets
    invoice_id = request.match_info["id"].lower()
    sockets.admit()
    conn = sockets.connection()
    key = ("invoice", invoice_id)
    latest: dict[str, Any] = {}
    network: list[str] = []

    def encode(msg: Message) -> bytes | None:
        if msg.event_id == _RECOUNT:  # resolved when sent: the newest state, never older
            data = latest.get("data")
            if data is None or data["status"] in FINAL or not data["payments"]:
                return None
        else:
            data = latest["data"] = msg.body["data"]
            follow(data.get("network"))  # a method chosen or switched: its network's heads
        return orjson.dumps(ctx.view(data))

    def head_moved(_head: int) -> None:
        # Only while confirmations are counted. `latest` may be older than what is queued:
        # a queued event is sent with the current head anyway, and a recount queued behind
        # it is checked again when sent.
        data = latest.get("data")
        if data is not None and data["status"] not in FINAL and data["payments"]:
            conn.push(Message.of_invoice(0, _RECOUNT, None))

    def follow(net: str | None) -> None:
        """Listen to the heads of the invoice's current network only."""
        if network == [net] or (net is None and not network):
            return
        for old in network:
            sockets.hub.head_listeners.get(old, set()).discard(head_moved)
        network.clear()
        if net is not None:
            network.append(net)
            sockets.hub.head_listeners.setdefault(net, set()).add(head_moved)

    async def on_open(ws: web.WebSocketResponse) -> bool:
        # Subscribe first (live events wait), then read the invoice with the position of its
        # newest event: the events after it follow the first view, the ones before are in it.
        found: tuple[Invoice | None, int] = (None, 0)
        if _UUID.match(invoice_id):
            sockets.hub.subscribe(conn, key, hold=True)
            found = await ctx.store.read(_invoice_and_seq, invoice_id)
        inv, seq = found
        if inv is None:
            await ws.close(code=CLOSE_NOT_FOUND, message=b"no such invoice")
            return False
        invoice = ctx.ledger.render(inv)
        conn.push(Message.of_invoice(seq, "initial", invoice))
        sockets.hub.release(conn, key, seq)
        follow(invoice["network"])
        return True

    try:
        return await serve_socket(request, sockets, conn, encode, None, on_open)
    finally:
        for net in network:
            sockets.hub.head_listeners.get(net, set()).discard(head_moved)


def same_origin(request: web.Request, public_origin: str | None) -> bool:
    """Whether a browser's post comes from this checkout's own pages. A browser names a
    cross-site request in `Sec-Fetch-Site` and its page's origin in `Origin`; the page's
    `no-referrer` policy makes a browser send `Origin: null` on a plain form post, which
    passes only when `Sec-Fetch-Site` says `same-origin`. A post with neither header (not a
    browser: curl, a shop's backend) passes: it cannot carry a customer's browser along."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return site == "same-origin"
    allowed = {f"http://{request.host}".lower(), f"https://{request.host}".lower()}
    if public_origin:
        allowed.add(public_origin.lower())
    return origin.lower() in allowed


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or 413 when it is longer than `limit` (announced or sent)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body must be at most {limit} bytes")
    body = bytearray()
    while True:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body must be at most {limit} bytes")


def _name(value: object, name: str) -> str:
    if value is None or value == "":
        raise Invalid(f"{name} is required", field=name)
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", field=name)
    if len(value) > MAX_NAME:
        raise Invalid(f"{name} must be at most {MAX_NAME} characters", field=name)
    return value


def parse_choice(content_type: str, raw: bytes) -> tuple[str, str]:
    """(network, asset) from a JSON object or a url-encoded form."""
    if content_type == _FORM:
        try:
            fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=False, max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the form could not be read") from None
        body: dict[str, Any] = {k: v[0] for k, v in fields.items() if v}
    else:
        if not raw.strip():
            raise BadRequest("the request body must be a JSON object")
        try:
            loaded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(loaded, dict):
            raise BadRequest("the request body must be a JSON object")
        body = loaded
    return _name(body.get("network"), "network"), _name(body.get("asset"), "asset")


#: The catalogue's text for an error the customer can meet on the method list.
_ERROR_TEXTS = {409: "error_method_conflict", 422: "error_method_invalid",
                503: "error_method_rate"}


async def choose_method(request: web.Request) -> web.StreamResponse:
    """`POST /pay/{id}/method`: the customer chooses (or switches) how to pay. JSON in, the
    public view out (the page's script); or a form post, answered with 303 to the page (the
    page again with a message on an error)."""
    ctx = request.app[CTX]
    invoice_id = _invoice_id(request)
    form = request.content_type == _FORM
    try:
        if not same_origin(request, ctx.public_origin):
            log.warning("checkout: a method choice from another origin refused (%r, %r)",
                        request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"))
            raise Forbidden("a payment method can only be chosen on the payment page")
        if not form and request.content_type != _JSON:
            raise UnsupportedMediaType(f"send {_JSON} or {_FORM}")
        raw = await _read_limited(request, MAX_METHOD_BODY)
        network, asset = parse_choice(request.content_type, raw)
        inv, outcome = await ctx.store.run(
            ctx.ledger.choose, invoice_id, network, asset, ctx.clock()
        )
    except ApiError as exc:
        if exc.status == 404:
            raise
        if not form:
            return web.json_response(exc.to_json(), status=exc.status)
        view = ctx.view(await _load(ctx, invoice_id))
        texts = catalogue(_language(request, ctx))
        message = texts[_ERROR_TEXTS.get(exc.status, "error_method_other")]
        return _render_page(request, ctx, view, change=True, error=message, status=exc.status)
    try:
        ctx.on_outcome(outcome)
    except Exception:  # committed: the daemon's bookkeeping must not fail the answer
        log.exception("on_outcome failed")
    if form:
        keep = _lang_query(request, ctx)
        raise web.HTTPSeeOther(f"/pay/{invoice_id}" + (f"?{keep}" if keep else ""))
    view = ctx.view(ctx.ledger.render(inv))
    return web.json_response(view, dumps=lambda o: orjson.dumps(o).decode())


def create_checkout_app(ctx: CheckoutContext) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=4096)
    app[CTX] = ctx
    app.on_shutdown.append(ctx.sockets.on_shutdown)
    app.on_response_prepare.append(_on_prepare(security_headers(ctx.frame_ancestors, ctx.hsts)))
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.globals["version"] = __version__  # static URLs change with each release
    env.policies["json.dumps_function"] = lambda o, **kw: orjson.dumps(o).decode()
    r = app.router
    r.add_get("/pay/{id}", page)
    r.add_get("/pay/{id}/status", status)
    r.add_get("/pay/{id}/qr.svg", qr)
    r.add_get("/pay/{id}/ws", socket, allow_head=False)
    r.add_post("/pay/{id}/method", choose_method)
    r.add_static("/static/", STATIC, append_version=False)
    return app
