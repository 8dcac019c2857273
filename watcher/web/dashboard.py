"""The merchant dashboard: `/dashboard` on the API listener (or a listener of its own).

Server-rendered pages (jinja2, autoescape, strict undefined) over the API's own ledger and
store functions: every action the dashboard offers is the API's action with a form in
front of it. A create goes through `requests.parse_create` and the API's group commit, an
action through `Ledger.cancel/accept/remainder/refund/assign`, a redelivery through
`outbox.redeliver`, and each committed outcome is reported with the API's
`report_outcome`. So a form and a JSON request follow one set of rules, and a refusal
reads the same (the API's message, beside the field it names).

Sign-in with an API key opens a server-side session (`web/sessions.py`); every page but
the sign-in page needs it, every form carries its CSRF token, and every response carries
strict security headers and `Cache-Control: no-store`. Live status updates come from the
hub over a session-checked socket (`/dashboard/ws`), with `/dashboard/live.json` for
browsers that cannot keep one open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web

from watcher import __version__, state
from watcher import requests as rq
from watcher.errors import ApiError, BadRequest, Invalid, StoreError
from watcher.ledger import Ledger, NewInvoice, Outcome
from watcher.models import Invoice
from watcher.outbox import redeliver
from watcher.storage.base import Db
from watcher.storage.rows import load_invoice
from watcher.storage.store import GroupCommit, Store
from watcher.web import dashboard_forms as forms
from watcher.web import dashboard_queries as queries
from watcher.web.api import ApiContext, invoice_events, networks_report, report_outcome
from watcher.web.channels import Sockets, serve_socket
from watcher.web.checkout import qr_svg
from watcher.web.hub import Message
from watcher.web.sessions import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    TOUCH_EVERY,
    Policy,
    Session,
    SignInLimiter,
    close_session,
    key_fingerprint,
    load_session,
    matching_key,
    new_token,
    open_session,
    put_flash,
    same_token,
    take_flash,
    token_hash,
    touch_session,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Created = tuple[Invoice, bool, Outcome]

PREFIX = forms.PREFIX
STATIC = Path(str(resources.files("watcher.web").joinpath("static")))
TEMPLATES = Path(str(resources.files("watcher.web").joinpath("templates"))) / "dashboard"
#: Pages anyone may open: the sign-in page and the static files.
OPEN_PATHS = frozenset({f"{PREFIX}/signin"})
STATIC_PREFIX = f"{PREFIX}/static/"
#: Requests the page's script makes by itself: they do not keep a session from idling out.
QUIET_PATHS = frozenset({f"{PREFIX}/live.json", f"{PREFIX}/ws"})
#: Close code of a dashboard socket whose session is over (4000-4999: application codes).
CLOSE_SESSION_OVER = 4401
#: The create form's fields; an API error naming another field is shown above the form.
FORM_FIELDS = frozenset({
    "network", "asset", "amount", "price", "currency", "address", "ttl", "callbackUrl",
    "redirectUrl", "externalId", "clientId", "email", "payload", "methods", "title",
    "description",
})
#: Each action's confirmation page: its title, what the action does, its button.
ACTION_TEXTS = {
    "cancel": ("Cancel this invoice", "It becomes VOIDED and stops collecting: a payment "
               "that arrives later is recorded as a late payment, not counted.",
               "Yes, cancel it"),
    "accept": ("Accept this invoice as paid", "It becomes COMPLETED with what was received "
               "and stops collecting.", "Yes, accept it as paid"),
    "remainder": ("Ask for the rest", "A new invoice (its child) asks for the missing "
                  "amount on the same network, asset and address mode; this one stops "
                  "collecting and later transfers count for the child.",
                  "Yes, create the remainder invoice"),
    "refund": ("Mark this invoice refunded", "It becomes REFUNDED. The daemon only watches: "
               "send the refund yourself and give its transaction hash here.",
               "Yes, mark it refunded"),
}
#: Where the guard leaves the request's session for the handlers (a typed key where aiohttp
#: has them, 3.13 on).
SESSION_KEY: Any = (web.RequestKey("dashboard.session", Session)
                    if hasattr(web, "RequestKey") else "dashboard.session")


@dataclass
class DashboardContext:
    """What the dashboard needs: the API's context (the same store, ledger, keys and
    outcome reporting), the API's group commit for creates, and its own settings."""

    api: ApiContext
    creates: GroupCommit[tuple[NewInvoice, int], Created]
    policy: Policy
    limiter: SignInLimiter
    #: The dashboard's socket limits and gauge; None: no live socket (polling only).
    sockets: Sockets | None = None
    explorers: Mapping[str, str | None] = field(default_factory=dict)
    #: `dashboard.public_url` is https: Secure cookies and HSTS.
    secure: bool = False
    #: The origin of `dashboard.public_url` (accepted on forms and sockets besides the
    #: request's own host).
    public_origin: str | None = None
    #: Seconds between checks that a socket's session is still alive.
    socket_check: float = 30.0

    @property
    def store(self) -> Store:
        return self.api.store

    @property
    def ledger(self) -> Ledger:
        return self.api.ledger

    def now(self) -> int:
        return self.api.clock()

    def fingerprints(self) -> list[str]:
        return [key_fingerprint(k) for k in self.api.api_keys]

    def decimals(self) -> dict[tuple[str, str], int]:
        return {
            (n.name, a.symbol): a.decimals
            for n in self.ledger.networks.values()
            for a in n.assets.values()
        }


CTX: web.AppKey[DashboardContext] = web.AppKey("dashboard", DashboardContext)


def security_headers(hsts: bool) -> dict[str, str]:
    """Every dashboard response: nothing from other hosts, no inline script or style,
    forms only to itself, never framed, never cached."""
    headers = {
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        # same-origin, not no-referrer: a browser sends `Origin: null` on the forms of a
        # no-referrer page, and the origin check below wants the real one
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }
    if hsts:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


def origin_ok(
    origin: str | None, host: str, public_origin: str | None, *, required: bool
) -> bool:
    """A browser's `Origin` is this listener's host (either scheme: a TLS proxy in front
    changes it) or the configured public URL's origin. A missing one (or `null`) passes
    only where it is not `required` (forms carry their CSRF token anyway)."""
    if not origin or origin == "null":
        return not required
    allowed = {f"http://{host}".lower(), f"https://{host}".lower()}
    if public_origin:
        allowed.add(public_origin.lower())
    return origin.lower() in allowed


def public_origin_of(url: str | None) -> str | None:
    """`scheme://host[:port]` of a URL (None for None)."""
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def refusal(inv: Invoice, action: str, ledger: Ledger) -> str | None:
    """Why the state machine refuses `action` on `inv` now (None: it allows it): the rules
    the ledger applies when the action is taken (`watcher.state`), and their words."""
    try:
        if action == "remainder":
            state.remainder(inv, ledger.tolerance)
        else:
            {"cancel": state.cancel, "accept": state.accept, "refund": state.refund}[action](inv)
    except state.ActionRefused as exc:
        return str(exc)
    return None


def allowed_actions(inv: Invoice, ledger: Ledger) -> list[str]:
    """The actions the state machine allows on `inv` now, in `forms.ACTIONS` order."""
    return [a for a in forms.ACTIONS if refusal(inv, a, ledger) is None]


# ---------------------------------------------------------------- responses


def _see(location: str) -> web.Response:
    """303 See Other: after a form, the browser GETs `location`."""
    return web.Response(status=303, headers={"Location": location})


def _session(request: web.Request) -> Session | None:
    value = request.get(SESSION_KEY)
    return value if isinstance(value, Session) else None


async def _render(
    request: web.Request,
    name: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    flash: bool = True,
) -> web.Response:
    """A page, with what every page has: the session's CSRF token and its message."""
    ctx = request.app[CTX]
    session = _session(request)
    shown = None
    if flash and session is not None:
        shown = await ctx.store.run(take_flash, session.id_hash)
    page: dict[str, Any] = {
        "csrf": session.csrf if session else "",
        "signed_in": session is not None,
        "flash": shown,
        "nav": "",
    }
    page.update(context)
    return aiohttp_jinja2.render_template(name, request, page, status=status)


async def _flash(request: web.Request, kind: str, text: str) -> None:
    session = _session(request)
    if session is not None:
        await request.app[CTX].store.run(put_flash, session.id_hash, kind, text)


async def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return await _render(
        request, "error.html", {"status": status, "message": message}, status=status,
        flash=False,
    )


def _to_signin(request: web.Request, *, stale: bool) -> web.Response:
    """Without a (live) session: the sign-in page, then back here (pages only; a form
    sent with a session that is over is not done, and not sent again after sign-in)."""
    query: list[str] = []
    if stale:
        query.append("expired=1")
    if request.method == "GET" and request.path not in QUIET_PATHS:
        query.append("next=" + quote(forms.safe_next(request.path_qs), safe=""))
    resp = _see(f"{PREFIX}/signin" + ("?" + "&".join(query) if query else ""))
    if stale:
        resp.del_cookie(SESSION_COOKIE, path=PREFIX)
    return resp


# ---------------------------------------------------------------- middlewares


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as an HTML page of the dashboard, never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = "No such page." if exc.status == 404 else exc.reason
        return await _error_page(request, exc.status, text)
    except ApiError as exc:
        return await _error_page(request, exc.status, exc.message)
    except StoreError as exc:
        log.error("database unavailable in dashboard %s %s: %s", request.method, request.path,
                  exc)
        return await _error_page(request, 503, "The database is unavailable; try again in "
                                               "a moment.")
    except Exception:
        log.exception("unhandled error in dashboard %s %s", request.method, request.path)
        return await _error_page(request, 500, "Internal error; the details are in the log.")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A live session for every route but sign-in and the static files; on a POST also
    its CSRF token (and the browser's Origin, when it sends one)."""
    path = request.path
    if path in OPEN_PATHS or path.startswith(STATIC_PREFIX):
        return await handler(request)
    ctx = request.app[CTX]
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return _to_signin(request, stale=False)
    id_hash = token_hash(cookie)
    session = await ctx.store.run(load_session, id_hash)
    now = ctx.now()
    if session is None or not ctx.policy.alive(session, now, ctx.fingerprints()):
        if session is not None:
            await ctx.store.run(close_session, id_hash)
        return _to_signin(request, stale=True)
    request[SESSION_KEY] = session
    if request.method == "POST":
        form = await request.post()
        origin = request.headers.get("Origin")
        if not same_token(form.get("csrf"), session.csrf) or not origin_ok(
            origin, request.host, ctx.public_origin, required=False
        ):
            log.warning("dashboard: a form without its valid CSRF token from %s on %s",
                        request.remote, path)
            return await _error_page(
                request, 403,
                "This form was not accepted: its security token is missing or out of date, "
                "or it came from another site. Nothing was done. Reload the page and try "
                "again.",
            )
    if path not in QUIET_PATHS and now - session.last_seen >= TOUCH_EVERY:
        await ctx.store.run(touch_session, id_hash, now)
    return await handler(request)


def _on_prepare(headers: dict[str, str]) -> Callable[..., Awaitable[None]]:
    async def on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers.update(headers)
        if not request.path.startswith(STATIC_PREFIX):
            resp.headers["Cache-Control"] = "no-store"

    return on_prepare


# ---------------------------------------------------------------- sign-in


async def _signin_form(
    request: web.Request, *, status: int = 200, error: str | None = None,
    next_path: str | None = None,
) -> web.Response:
    """The sign-in form with a fresh form token (double submit: cookie and field)."""
    ctx = request.app[CTX]
    token = new_token()
    notice = None
    if request.query.get("expired"):
        notice = "Your session has ended: sign in again. Nothing you sent was done."
    elif request.query.get("signedout"):
        notice = "You are signed out."
    resp = await _render(
        request, "signin.html",
        {"token": token, "error": error, "notice": notice,
         "next": forms.safe_next(next_path or request.query.get("next"))},
        status=status, flash=False,
    )
    resp.set_cookie(SIGNIN_COOKIE, token, httponly=True, samesite="Strict", secure=ctx.secure,
                    path=f"{PREFIX}/signin")
    return resp


async def signin_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = await ctx.store.run(load_session, token_hash(cookie))
        if session is not None and ctx.policy.alive(session, ctx.now(), ctx.fingerprints()):
            return _see(forms.safe_next(request.query.get("next")))
    return await _signin_form(request)


async def signin(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    ip = request.remote or "unknown"
    form = await request.post()
    next_path = forms.safe_next(form.get("next"))
    wait = ctx.limiter.wait(ip)
    if wait:
        log.warning("dashboard sign-in refused from %s: too many failed attempts", ip)
        resp = await _signin_form(
            request, status=429, next_path=next_path,
            error=f"Too many failed sign-ins from your address. Try again in {wait} s.",
        )
        resp.headers["Retry-After"] = str(wait)
        return resp
    if not same_token(form.get("csrf"), request.cookies.get(SIGNIN_COOKIE)):
        return await _signin_form(
            request, status=403, next_path=next_path,
            error="The sign-in form had expired. Please try again.",
        )
    given = form.get("key")
    key = matching_key(given if isinstance(given, str) else "", ctx.api.api_keys)
    if key is None:
        ctx.limiter.failed(ip)
        log.warning("dashboard sign-in failed from %s", ip)
        return await _signin_form(
            request, status=401, next_path=next_path, error="That API key is not valid.",
        )
    token, csrf, fingerprint = new_token(), new_token(), key_fingerprint(key)
    await ctx.store.run(open_session, token_hash(token), csrf, fingerprint, ctx.now(),
                        ctx.policy)
    log.info("dashboard sign-in from %s (key %s)", ip, fingerprint)
    resp = _see(next_path)
    resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=ctx.secure,
                    path=PREFIX)
    resp.del_cookie(SIGNIN_COOKIE, path=f"{PREFIX}/signin")
    return resp


async def signout(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    session = _session(request)
    if session is not None:
        await ctx.store.run(close_session, session.id_hash)
    resp = _see(f"{PREFIX}/signin?signedout=1")
    resp.del_cookie(SESSION_COOKIE, path=PREFIX)
    return resp


# ---------------------------------------------------------------- invoices


async def home(request: web.Request) -> web.StreamResponse:
    return _see(f"{PREFIX}/invoices")


def _assets(ledger: Ledger) -> list[str]:
    return sorted({a for n in ledger.networks.values() for a in n.assets})


async def invoices_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    filters, errors = forms.parse_filters(request.query)
    found, position = await ctx.store.read(
        queries.find_invoices, forms.invoice_where(filters), forms.PAGE_SIZE
    )
    return await _render(request, "invoices.html", {
        "nav": "invoices",
        "invoices": [ctx.ledger.render(i) for i in found],
        "filters": filters,
        "errors": errors,
        "next_link": forms.next_link(filters, position),
        "first_link": forms.first_link(filters),
        "statuses": forms.statuses(),
        "networks": sorted(ctx.ledger.networks),
        "assets": _assets(ctx.ledger),
        "live": ctx.sockets is not None,
    })


async def live_json(request: web.Request) -> web.StreamResponse:
    """`?ids=a,b,c`: the status of each (the page's fallback when its socket fails)."""
    ctx = request.app[CTX]
    ids = [i for i in request.query.get("ids", "").split(",") if i][:200]
    found = await ctx.store.read(queries.invoice_statuses, ids)
    return web.json_response({"data": found}, dumps=lambda o: orjson.dumps(o).decode())


async def _load(ctx: DashboardContext, invoice_id: str) -> Invoice:
    inv: Invoice | None = await ctx.store.read(load_invoice, invoice_id)
    if inv is None:
        raise web.HTTPNotFound()
    return inv


def _invoice_view(
    db: Db, invoice_id: str
) -> tuple[Invoice | None, list[dict[str, Any]], list[str]]:
    """An invoice, its events and its children, read in one snapshot."""
    return (load_invoice(db, invoice_id), invoice_events(db, invoice_id) or [],
            queries.children_of(db, invoice_id))


async def invoice_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    invoice_id = request.match_info["id"]
    inv, events, children = await ctx.store.read(_invoice_view, invoice_id)
    if inv is None:
        raise web.HTTPNotFound()
    data = ctx.ledger.render(inv)
    return await _render(request, "invoice.html", {
        "nav": "invoices",
        "inv": data,
        "fields": [(k, v) for k, v in data.items() if k not in ("payments", "latePayments")],
        "payload": (orjson.dumps(data["payload"], option=orjson.OPT_INDENT_2).decode()
                    if data["payload"] is not None else None),
        "methods_json": (orjson.dumps(data["methods"], option=orjson.OPT_INDENT_2).decode()
                         if data.get("methods") is not None else None),
        "events": events,
        "actions": allowed_actions(inv, ctx.ledger),
        "children": children,
        "explorer": ctx.explorers.get(inv.network) if inv.network else None,
        "explorers": ctx.explorers,
        "created": request.query.get("created") == "1",
        "live": ctx.sockets is not None,
    })


async def qr(request: web.Request) -> web.StreamResponse:
    """The QR code of the invoice's checkout link."""
    ctx = request.app[CTX]
    url = ctx.ledger.render(await _load(ctx, request.match_info["id"]))["url"]
    if url is None:
        raise web.HTTPNotFound()
    return web.Response(body=qr_svg(url), content_type="image/svg+xml")


async def confirm_page(request: web.Request) -> web.StreamResponse:
    """The confirmation step of an action (only where the state machine allows it)."""
    ctx = request.app[CTX]
    action = request.match_info["action"]
    inv = await _load(ctx, request.match_info["id"])
    refused = refusal(inv, action, ctx.ledger)
    if refused is not None:
        await _flash(request, "error", refused)
        return _see(f"{PREFIX}/invoices/{inv.id}")
    return await _confirm(request, inv, action)


async def _confirm(
    request: web.Request, inv: Invoice, action: str, *, status: int = 200,
    error: str | None = None, tx: str = "",
) -> web.Response:
    ctx = request.app[CTX]
    title, text, button = ACTION_TEXTS[action]
    return await _render(request, "confirm.html", {
        "nav": "invoices", "inv": ctx.ledger.render(inv), "action": action, "title": title,
        "text": text, "button": button, "error": error, "tx": tx,
    }, status=status)


async def act(request: web.Request) -> web.StreamResponse:
    """Cancel, accept, remainder or refund: the ledger's operation, as the API runs it."""
    ctx = request.app[CTX]
    action = request.match_info["action"]
    invoice_id = request.match_info["id"]
    form = await request.post()
    now = ctx.now()
    ledger = ctx.ledger
    try:
        if action == "refund":
            body = forms.refund_body({"txHash": str(form.get("txHash", ""))})
            tx = rq.parse_refund(body)
            inv, outcome = await ctx.store.run(ledger.refund, invoice_id, now, tx)
        else:
            operation = {"cancel": ledger.cancel, "accept": ledger.accept,
                         "remainder": ledger.remainder}[action]
            inv, outcome = await ctx.store.run(operation, invoice_id, now)
    except Invalid as exc:  # the refund's transaction hash
        current = await _load(ctx, invoice_id)
        return await _confirm(request, current, action, status=exc.status, error=exc.message,
                              tx=str(form.get("txHash", "")))
    except ApiError as exc:  # 409: the state forbids it now; 404: no such invoice
        await _flash(request, "error", exc.message)
        return _see(f"{PREFIX}/invoices/{invoice_id}" if exc.status != 404
                    else f"{PREFIX}/invoices")
    report_outcome(ctx.api, outcome)
    log.info("dashboard: %s of invoice %s", action, invoice_id, extra={"invoice": invoice_id})
    if action == "remainder":
        child = ledger.render(inv)
        await _flash(request, "ok", f"Remainder invoice created: it asks for "
                                    f"{child['amount']} {child['asset']}.")
        return _see(f"{PREFIX}/invoices/{inv.id}")
    await _flash(request, "ok", f"Done: the invoice is now {inv.status.value}.")
    return _see(f"{PREFIX}/invoices/{inv.id}")


# ---------------------------------------------------------------- new invoice


def _new_context(ctx: DashboardContext, values: Mapping[str, str],
                 errors: dict[str, str], methods: Sequence[str] = ()) -> dict[str, Any]:
    ledger = ctx.ledger
    pairs = ledger.rates.pair_names if ledger.rates else []
    derivable = ledger.deriver is not None
    networks = [
        {"name": n.name, "assets": [
            {"symbol": a.symbol, "shared": a.shared_address is not None, "native": a.is_native,
             "method": forms.method_value(n.name, a.symbol),
             # where a chosen method is paid: a derived address, else the shared one; with
             # neither the API refuses the method
             "where": ("derived address" if derivable else "shared address"
                       if a.shared_address is not None else None)}
            for a in n.assets.values()
        ]}
        for n in ledger.networks.values()
    ]
    currencies = sorted({p.split("/")[1] for p in pairs})
    defaults = {
        "kind": "one",
        "network": next(iter(ledger.networks), ""),
        "pricing": "amount",
        "address_mode": "derive" if derivable else "dedicated",
    }
    return {
        "nav": "new", "networks": networks, "currencies": currencies,
        "derivable": derivable, "default_ttl": ledger.default_ttl,
        "v": {**defaults, **values}, "errors": errors, "ticked": list(methods),
    }


async def new_form(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    return await _render(request, "new.html", _new_context(ctx, {}, {}))


async def new_invoice(request: web.Request) -> web.StreamResponse:
    """The create form: its values as the API's request body, parsed by the API's parser
    and written through the API's group commit."""
    ctx = request.app[CTX]
    posted = await request.post()
    values = {k: v for k, v in posted.items()
              if isinstance(v, str) and k not in ("csrf", "method")}
    methods = [v for v in posted.getall("method", []) if isinstance(v, str)]
    body, errors = forms.create_body(values, methods)
    ledger = ctx.ledger
    now = ctx.now()
    try:
        # the API's verdict on the rest even when the payload box is not JSON
        req = rq.parse_create(body, ledger.networks, now, ledger.rates,
                              derivable=ledger.deriver is not None)
        if errors:
            return await _new_again(request, values, errors, 422, methods)
        inv, created, outcome = await ctx.creates.submit((req, now))
    except ApiError as exc:
        where = "ttl" if exc.field == "expireAt" else exc.field
        errors.setdefault(where if where in FORM_FIELDS else "_form", exc.message)
        return await _new_again(request, values, errors, exc.status, methods)
    if not created:  # the same externalId and values: the API answers 200 with it
        await _flash(request, "ok", "An invoice with this externalId and the same values "
                                    "exists already: here it is.")
        return _see(f"{PREFIX}/invoices/{inv.id}")
    report_outcome(ctx.api, outcome)
    log.info("dashboard: invoice %s created", inv.id, extra={"invoice": inv.id})
    return _see(f"{PREFIX}/invoices/{inv.id}?created=1")


async def _new_again(
    request: web.Request, values: Mapping[str, str], errors: dict[str, str], status: int,
    methods: Sequence[str] = (),
) -> web.Response:
    """The create form again, with the values as sent (the method boxes as ticked) and each
    message beside its field."""
    ctx = request.app[CTX]
    return await _render(request, "new.html", _new_context(ctx, values, errors, methods),
                         status=status)


# ---------------------------------------------------------------- transfers


def _cursor(request: web.Request) -> tuple[str, int | None]:
    """The page token of a list page and the position it stands for; a token that does
    not decode is dropped (the first page)."""
    cursor = request.query.get("cursor", "")
    if not cursor:
        return "", None
    try:
        return cursor, rq.decode_cursor(cursor)
    except BadRequest:
        return "", None


async def transfers_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    kind = request.query.get("kind", "unmatched")
    if kind not in queries.ASSIGNABLE:
        kind = "unmatched"
    network = request.query.get("network", "") or None
    cursor, before = _cursor(request)
    rows, position = await ctx.store.run(
        queries.assignable_transfers, kind, network, before, forms.PAGE_SIZE, ctx.decimals()
    )
    next_link = None
    if position is not None:
        query = {"kind": kind, "cursor": rq.encode_cursor(position)}
        if network:
            query["network"] = network
        next_link = f"{PREFIX}/transfers?" + "&".join(
            f"{k}={quote(v, safe='')}" for k, v in query.items()
        )
    return await _render(request, "transfers.html", {
        "nav": "transfers", "transfers": rows, "kind": kind, "network": network or "",
        "networks": sorted(ctx.ledger.networks), "next_link": next_link,
        "paged": bool(cursor), "explorers": ctx.explorers,
    })


async def _assign_page(
    request: web.Request, transfer_id: str, invoice_id: str, *, status: int = 200,
    error: str | None = None,
) -> web.Response:
    ctx = request.app[CTX]
    transfer = await ctx.store.run(queries.transfer_by_id, transfer_id, ctx.decimals())
    if transfer is None:
        raise web.HTTPNotFound()
    invoice = None
    if invoice_id and error is None:
        found: Invoice | None = await ctx.store.run(load_invoice, invoice_id)
        if found is None:
            error, status = f"no invoice {invoice_id}", 422
        else:
            invoice = ctx.ledger.render(found)
    return await _render(request, "assign.html", {
        "nav": "transfers", "t": transfer, "invoice": invoice, "invoice_id": invoice_id,
        "error": error, "explorer": ctx.explorers.get(transfer["network"]),
        "fit": assign_fit(transfer, invoice),
    }, status=status)


def assign_fit(transfer: Mapping[str, Any], invoice: Mapping[str, Any] | None) -> str | None:
    """How a transfer compares with what an invoice still needs: "other" (another network
    or asset: the ledger will refuse it), "less", "equal" or "more"; None without one."""
    if invoice is None:
        return None
    if (transfer["network"], transfer["asset"]) != (invoice["network"], invoice["asset"]):
        return "other"
    due = Fraction(invoice["amountDue"])
    amount = Fraction(transfer["amount"])
    return "less" if amount < due else "more" if amount > due else "equal"


async def assign_page(request: web.Request) -> web.StreamResponse:
    """The confirmation step of an assignment: the transfer and the invoice side by side."""
    return await _assign_page(request, request.match_info["id"],
                              request.query.get("invoiceId", "").strip())


async def assign(request: web.Request) -> web.StreamResponse:
    """`Ledger.assign`, as `POST /v1/transfers/{id}/assign` runs it."""
    ctx = request.app[CTX]
    transfer_id = request.match_info["id"]
    form = await request.post()
    given = str(form.get("invoiceId", "")).strip()
    now = ctx.now()
    try:
        invoice_id = rq.parse_assign({"invoiceId": given or None})
        inv, outcome = await ctx.store.run(ctx.ledger.assign, transfer_id, invoice_id, now)
    except Invalid as exc:
        return await _assign_page(request, transfer_id, given, status=exc.status,
                                  error=exc.message)
    except ApiError as exc:  # 409 (already a payment, refunded invoice), 404 (no transfer)
        await _flash(request, "error", exc.message)
        return _see(f"{PREFIX}/transfers")
    report_outcome(ctx.api, outcome)
    log.info("dashboard: transfer %s assigned to invoice %s", transfer_id, inv.id,
             extra={"invoice": inv.id})
    await _flash(request, "ok",
                 f"Transfer {transfer_id} assigned: the invoice is now {inv.status.value}.")
    return _see(f"{PREFIX}/invoices/{inv.id}")


# ---------------------------------------------------------------- callbacks


def _wake_sender(ctx: DashboardContext, event_id: str) -> None:
    try:
        ctx.api.on_redeliver(event_id)
    except Exception:
        log.exception("on_redeliver failed")


async def callbacks_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    cursor, before = _cursor(request)
    rows, position = await ctx.store.run(queries.failed_deliveries, before, forms.PAGE_SIZE)
    counts = await ctx.store.run(queries.delivery_counts)
    return await _render(request, "callbacks.html", {
        "nav": "callbacks", "deliveries": rows, "counts": counts, "paged": bool(cursor),
        "next_link": (f"{PREFIX}/callbacks?cursor={rq.encode_cursor(position)}"
                      if position is not None else None),
    })


async def redeliver_one(request: web.Request) -> web.StreamResponse:
    """`outbox.redeliver`, as `POST /v1/callbacks/{eventId}/redeliver` runs it."""
    ctx = request.app[CTX]
    event_id = request.match_info["eventId"]
    form = await request.post()
    back = forms.safe_next(form.get("next"), f"{PREFIX}/callbacks")
    if await ctx.store.run(redeliver, event_id, ctx.now()):
        _wake_sender(ctx, event_id)
        await _flash(request, "ok", f"Callback {event_id} is queued again.")
    else:
        await _flash(request, "error", f"no callback delivery for event {event_id}")
    return _see(back)


async def redeliver_all(request: web.Request) -> web.StreamResponse:
    """Every failed callback queued again (oldest first, at most REDELIVER_ALL_MAX)."""
    ctx = request.app[CTX]
    ids = await ctx.store.run(queries.failed_event_ids)
    queued = 0
    for event_id in ids:
        if await ctx.store.run(redeliver, event_id, ctx.now()):
            queued += 1
            _wake_sender(ctx, event_id)
    await _flash(request, "ok", f"{queued} failed callback{'s' if queued != 1 else ''} "
                                "queued again.")
    return _see(f"{PREFIX}/callbacks")


# ---------------------------------------------------------------- networks


async def networks_page(request: web.Request) -> web.StreamResponse:
    """What `GET /v1/networks` and `GET /v1/rates` give, as tables."""
    ctx = request.app[CTX]
    api = ctx.api
    status = await networks_report(api)
    rates = api.rates.status(api.clock()) if api.rates is not None else []
    return await _render(request, "networks.html", {
        "nav": "networks", "networks": status, "rates": rates,
    })


# ---------------------------------------------------------------- live socket


async def socket(request: web.Request) -> web.StreamResponse:
    """`/dashboard/ws`: every committed event's invoice id and status, for the pages to
    update in place. The session was checked before the upgrade (and is checked again
    every `socket_check` seconds: closed 4401 when it is over); the browser's Origin must
    be this dashboard's."""
    ctx = request.app[CTX]
    sockets = ctx.sockets
    session = _session(request)
    if sockets is None or session is None:
        raise web.HTTPNotFound()
    if not origin_ok(request.headers.get("Origin"), request.host, ctx.public_origin,
                     required=True):
        log.warning("dashboard socket refused from %s: origin %r", request.remote,
                    request.headers.get("Origin"))
        raise web.HTTPForbidden()
    sockets.admit()
    conn = sockets.connection()
    watchers: list[asyncio.Task[None]] = []

    def encode(msg: Message) -> bytes | None:
        body = msg.body
        data = body.get("data") or {}
        return orjson.dumps({
            "id": msg.invoice_id, "event": body.get("event"), "status": data.get("status"),
            "amountPaid": data.get("amountPaid"), "confirmations": data.get("confirmations"),
        })

    async def watch(ws: web.WebSocketResponse) -> None:
        while True:
            await asyncio.sleep(ctx.socket_check)
            try:
                current = await ctx.store.run(load_session, session.id_hash)
            except StoreError:  # the database is away: check again at the next tick
                continue
            if current is None or not ctx.policy.alive(current, ctx.now(), ctx.fingerprints()):
                await ws.close(code=CLOSE_SESSION_OVER, message=b"session over")
                return

    async def on_open(ws: web.WebSocketResponse) -> bool:
        sockets.hub.subscribe(conn, ("all", ""))
        watchers.append(asyncio.create_task(watch(ws)))
        return True

    try:
        return await serve_socket(request, sockets, conn, encode, None, on_open)
    finally:
        for task in watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


# ---------------------------------------------------------------- the application


def create_dashboard_app(ctx: DashboardContext) -> web.Application:
    """The dashboard as an application to mount at `/dashboard` (see `mount_dashboard`)."""
    app = web.Application(middlewares=[_errors, _guard])
    app[CTX] = ctx
    if ctx.sockets is not None:
        app.on_shutdown.append(ctx.sockets.on_shutdown)
    app.on_response_prepare.append(_on_prepare(security_headers(ctx.secure)))
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(
        version=__version__, prefix=PREFIX, labels=forms.STATUS_LABELS, short=forms.short,
        explorer_link=forms.explorer,
    )
    env.policies["json.dumps_function"] = lambda o, **kw: orjson.dumps(o).decode()
    r = app.router
    r.add_get("/", home)
    r.add_get("/signin", signin_page)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_get("/invoices", invoices_page)
    r.add_get("/invoices/new", new_form)
    r.add_post("/invoices/new", new_invoice)
    r.add_get("/invoices/{id}", invoice_page)
    r.add_get("/invoices/{id}/qr.svg", qr)
    actions = "|".join(forms.ACTIONS)
    r.add_get(f"/invoices/{{id}}/{{action:{actions}}}", confirm_page)
    r.add_post(f"/invoices/{{id}}/{{action:{actions}}}", act)
    r.add_get("/transfers", transfers_page)
    r.add_get("/transfers/{id}/assign", assign_page)
    r.add_post("/transfers/{id}/assign", assign)
    r.add_get("/callbacks", callbacks_page)
    r.add_post("/callbacks/redeliver", redeliver_all)
    r.add_post("/callbacks/{eventId}/redeliver", redeliver_one)
    r.add_get("/networks", networks_page)
    r.add_get("/live.json", live_json)
    r.add_get("/ws", socket, allow_head=False)
    r.add_static("/static/", STATIC, append_version=False)
    r.add_route("*", "/{tail:.*}", not_found)
    return app


async def _to_dashboard(request: web.Request) -> web.StreamResponse:
    return _see(f"{PREFIX}/")


def mount_dashboard(app: web.Application, ctx: DashboardContext) -> None:
    """Serve the dashboard under `/dashboard` of `app` (the API's application)."""
    app.add_subapp(PREFIX, create_dashboard_app(ctx))  # `/dashboard` itself included


def dashboard_root(ctx: DashboardContext) -> web.Application:
    """The dashboard on a listener of its own: `/dashboard/...`, and `/` leads there."""
    app = web.Application(client_max_size=64 * 1024)
    mount_dashboard(app, ctx)
    app.router.add_get("/", _to_dashboard, allow_head=False)
    return app
