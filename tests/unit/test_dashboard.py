"""The merchant dashboard through a real aiohttp test client, mounted on the real API app
over a real SQLite store and ledger: sign-in and sessions, CSRF, every page, every action
going through the API's ledger operations, errors beside their fields, the live socket.

The pure helpers (forms, filters, links, tokens, the sign-in limiter) are tested at the
end without a server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientResponse, WSMsgType, web
from aiohttp.test_utils import TestClient

from tests.unit.test_api import _routes
from tests.unit.test_checkout import decode_qr_svg
from tests.unit.test_ledger import (
    DEDICATED,
    NET,
    OTHER,
    SHARED,
    invoice_in,
    make_ledger,
    new,
    tx_hash,
)
from watcher import requests as rq
from watcher.errors import Invalid, StoreError
from watcher.ledger import Ledger, Outcome, ScanBatch
from watcher.models import Invoice, Status, Transfer
from watcher.outbox import record_attempt
from watcher.storage.rows import last_event_seq, load_invoice
from watcher.storage.store import Store
from watcher.timeutil import now as wall_clock
from watcher.web import dashboard_forms as forms
from watcher.web.api import CREATES, ApiContext, create_app
from watcher.web.channels import Limits, Sockets
from watcher.web.dashboard import (
    DashboardContext,
    assign_fit,
    dashboard_root,
    mount_dashboard,
    origin_ok,
    public_origin_of,
    security_headers,
)
from watcher.web.hub import Hub
from watcher.web.sessions import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    Policy,
    Session,
    SignInLimiter,
    key_fingerprint,
    matching_key,
    same_token,
    token_hash,
)

KEY = "dashboard-test-key-1"
KEY2 = "dashboard-test-key-2"
EXPLORER = "https://explorer.example"
CHECKOUT = "https://pay.shop.example"
IDLE = 1800
LIFETIME = 43200
ClientFactory = Any


class Clock:
    """The host's clock as the dashboard sees it (sessions, the sign-in limiter)."""

    def __init__(self) -> None:
        self.now = wall_clock()

    def __call__(self) -> int:
        return self.now

    def mono(self) -> float:
        return float(self.now)


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: Store
    ledger: Ledger
    api: ApiContext
    dash: DashboardContext
    hub: Hub
    clock: Clock
    outcomes: list[Outcome] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    csrf: str = ""

    async def get(self, path: str, **kw: Any) -> tuple[ClientResponse, str]:
        kw.setdefault("allow_redirects", False)
        resp = await self.client.get(path, **kw)
        text = await resp.text()
        assert "Traceback" not in text
        return resp, text

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, **kw: Any
    ) -> tuple[ClientResponse, str]:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        resp = await self.client.post(path, data=form, allow_redirects=False, **kw)
        text = await resp.text()
        assert "Traceback" not in text
        return resp, text

    async def signin(self, key: str = KEY, next_path: str = "") -> ClientResponse:
        _, page = await self.get("/dashboard/signin")
        token = field_value(page, "csrf")
        resp, _ = await self.post(
            "/dashboard/signin", {"csrf": token, "key": key, "next": next_path}, csrf=False
        )
        if resp.status == 303:
            _, page = await self.get("/dashboard/invoices")
            self.csrf = field_value(page, "csrf")
        return resp

    async def make(self, status: Status, **kw: Any) -> Invoice:
        return await self.store.run(invoice_in, self.ledger, status, self.clock(), **kw)

    async def invoice(self, invoice_id: str) -> Invoice:
        inv = await self.store.run(load_invoice, invoice_id)
        assert inv is not None
        return inv

    async def flash(self, path: str) -> str:
        """The flash message the page at `path` shows (once)."""
        _, page = await self.get(path)
        m = re.search(r'<p class="flash (ok|error)" id="flash"[^>]*>([^<]*)</p>', page)
        assert m, page[:2000]
        return unescape(m.group(2))

    def session_rows(self) -> list[dict[str, Any]]:
        return list(self.store._db.query("SELECT * FROM dashboard_sessions"))  # type: ignore[union-attr]


def field_value(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m, f"no field {name}"
    return m.group(1)


def unescape(text: str) -> str:
    import html

    return html.unescape(text)


def error_of(page: str, name: str) -> str | None:
    m = re.search(rf'<p class="err" id="err-{re.escape(name)}">([^<]*)</p>', page)
    return unescape(m.group(1)) if m else None


@pytest.fixture
async def env(database: str, aiohttp_client: ClientFactory) -> AsyncIterator[Env]:
    store = await Store(database).open()
    ledger = make_ledger()
    ledger.checkout_url = CHECKOUT
    await store.run(ledger.start_network, NET, 1, 0)
    clock = Clock()
    outcomes: list[Outcome] = []
    redelivered: list[str] = []
    api = ApiContext(store, ledger, [KEY, KEY2], on_outcome=outcomes.append,
                     on_redeliver=redelivered.append, clock=clock)
    app = create_app(api)
    hub = Hub(store, tick=0.05)
    await hub.start()
    dash = DashboardContext(
        api, app[CREATES], Policy(IDLE, LIFETIME), SignInLimiter(5, clock=clock.mono),
        sockets=Sockets("dashboard", hub, Limits(heartbeat=5), None),
        explorers={NET: EXPLORER}, socket_check=0.05,
    )
    mount_dashboard(app, dash)
    client = await aiohttp_client(app)
    pump = asyncio.create_task(hub.run())
    yield Env(client, store, ledger, api, dash, hub, clock, outcomes, redelivered)
    pump.cancel()
    await store.close()


async def signed_in(env: Env) -> Env:
    resp = await env.signin()
    assert resp.status == 303
    return env


# ---------------------------------------------------------------- routes and sessions


def _dashboard_routes(app: web.Application) -> list[tuple[str, str]]:
    return [(m, p) for m, p in _routes(app) if p.startswith("/dashboard")]


async def test_the_dashboard_adds_no_v1_route(env: Env, tmp_path: Path) -> None:
    plain = create_app(ApiContext(env.store, env.ledger, [KEY]))
    v1 = sorted(r for r in _routes(env.client.app) if r[1].startswith("/v1"))
    assert v1 == sorted(r for r in _routes(plain) if r[1].startswith("/v1"))
    assert len(_dashboard_routes(env.client.app)) >= 20


async def test_every_route_redirects_to_signin_without_a_session(env: Env) -> None:
    inv = await env.make(Status.PENDING)
    routes = _dashboard_routes(env.client.app)
    checked = 0
    for method, path in routes:
        if path in ("/dashboard/signin",) or path.startswith("/dashboard/static"):
            continue
        concrete = (path.replace("{id}", inv.id).replace("{eventId}", "evt_x")
                    .replace("{tail}", "anything"))
        concrete = re.sub(r"\{action:[^}]+\}", "cancel", concrete)
        for verb in (["GET", "POST"] if method == "*" else [method]):
            for cookie in (None, "not-a-session"):
                headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
                resp = await env.client.request(verb, concrete, allow_redirects=False,
                                                headers=headers, data={"csrf": "x"})
                assert resp.status == 303, (verb, path, resp.status)
                assert resp.headers["Location"].startswith("/dashboard/signin"), (verb, path)
                checked += 1
    assert checked >= 40
    assert (await env.invoice(inv.id)).status == Status.PENDING
    # the plain prefix is the dashboard's too
    resp = await env.client.get("/dashboard", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/signin")


async def test_signin_opens_a_hashed_session_with_strict_cookie(env: Env) -> None:
    resp = await env.signin(next_path="/dashboard/networks")
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard/networks"
    cookie = next(c for c in resp.headers.getall("Set-Cookie")
                  if c.startswith(SESSION_COOKIE + "="))
    value = cookie.split(";")[0].split("=", 1)[1]
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/dashboard"} <= attrs
    assert "secure" not in attrs  # no https public_url here
    (row,) = env.session_rows()
    assert row["id_hash"] == hashlib.sha256(value.encode()).hexdigest() != value
    assert row["key_fingerprint"] == key_fingerprint(KEY) and KEY not in str(row)
    if env.store.postgres:  # every row of every table, as text
        raw = "\n".join(await env.store.run(lambda db: [
            str(r[0]) for (t,) in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
            for r in db.execute(f"SELECT t::text FROM {t} t").fetchall()])).encode()
    else:  # the file and its WAL, byte for byte
        raw = (Path(env.store.path).read_bytes()
               + Path(str(env.store.path) + "-wal").read_bytes())
    assert raw and KEY.encode() not in raw and value.encode() not in raw
    resp, page = await env.get("/dashboard/networks")
    assert resp.status == 200 and "Networks" in page


def test_hsts_only_behind_https() -> None:
    assert security_headers(True)["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in security_headers(False)


async def test_a_secure_dashboard_sets_secure_cookies(env: Env) -> None:
    env.dash.secure = True
    resp, page = await env.get("/dashboard/signin")
    (form_cookie,) = resp.headers.getall("Set-Cookie")
    assert "secure" in form_cookie.lower()  # the browser sends it back over https only
    token = field_value(page, "csrf")
    resp, _ = await env.post("/dashboard/signin", {"csrf": token, "key": KEY}, csrf=False,
                             headers={"Cookie": f"{SIGNIN_COOKIE}={token}"})
    assert resp.status == 303
    cookie = next(c for c in resp.headers.getall("Set-Cookie")
                  if c.startswith(SESSION_COOKIE + "="))
    assert "secure" in cookie.lower()


async def test_a_wrong_key_gets_one_message_and_a_log_line_without_the_key(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "watcher")
    for wrong in (KEY + "x", KEY[:-1], "", " "):
        resp = await env.signin(key=wrong)
        page = await resp.text()
        assert resp.status == 401
        assert page.count('class="flash error"') == 1
        assert "That API key is not valid." in page
        assert wrong.strip() == "" or wrong not in page
    assert env.session_rows() == []
    failed = [r for r in caplog.records if "sign-in failed" in r.getMessage()]
    assert len(failed) == 4
    assert all(r.getMessage() == "dashboard sign-in failed from 127.0.0.1" for r in failed)
    assert all(KEY[:-1] not in r.getMessage() for r in caplog.records)


async def test_failed_signins_are_rate_limited_per_address(env: Env) -> None:
    for _ in range(5):
        assert (await env.signin(key="wrong")).status == 401
    resp = await env.signin(key=KEY)  # even the right key waits
    assert resp.status == 429 and int(resp.headers["Retry-After"]) == 60
    assert "Too many failed sign-ins" in await resp.text()
    assert env.session_rows() == []
    env.clock.now += 61
    assert (await env.signin(key=KEY)).status == 303


async def test_signin_needs_its_form_token(env: Env) -> None:
    await env.get("/dashboard/signin")
    resp, page = await env.post("/dashboard/signin", {"key": KEY}, csrf=False)
    assert resp.status == 403 and "expired" in page
    resp, _ = await env.post("/dashboard/signin", {"key": KEY, "csrf": "forged"}, csrf=False)
    assert resp.status == 403
    assert env.session_rows() == []


async def test_a_signed_in_visit_to_signin_goes_on(env: Env) -> None:
    await signed_in(env)
    resp, _ = await env.get("/dashboard/signin?next=/dashboard/callbacks")
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard/callbacks"
    resp, _ = await env.get("/dashboard/signin?next=//evil.example/x")
    assert resp.headers["Location"] == "/dashboard/invoices"


async def test_signout_ends_the_session(env: Env) -> None:
    await signed_in(env)
    resp, _ = await env.post("/dashboard/signout")
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard/signin?signedout=1"
    assert env.session_rows() == []
    resp, _ = await env.get("/dashboard/invoices")
    assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/signin")
    _, page = await env.get("/dashboard/signin?signedout=1")
    assert "You are signed out." in page


async def test_an_idle_session_ends_and_its_action_is_not_done(env: Env) -> None:
    await signed_in(env)
    inv = await env.make(Status.PENDING)
    env.clock.now += IDLE - 5
    resp, _ = await env.get("/dashboard/invoices")  # use keeps it alive
    assert resp.status == 200
    env.clock.now += IDLE + 1
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/cancel")
    assert resp.status == 303
    assert resp.headers["Location"] == "/dashboard/signin?expired=1"
    assert (await env.invoice(inv.id)).status == Status.PENDING
    assert env.outcomes == [] and env.session_rows() == []
    _, page = await env.get("/dashboard/signin?expired=1")
    assert "Your session has ended" in page


async def test_a_session_ends_at_its_lifetime_and_with_its_key(env: Env) -> None:
    await signed_in(env)
    for _ in range(LIFETIME // (IDLE - 60) + 1):
        env.clock.now += IDLE - 60
        resp, _ = await env.get("/dashboard/invoices")
    assert resp.status == 303  # busy all along, but over its lifetime
    await signed_in(env)
    env.api.api_keys = [KEY2]  # the key it was opened with is gone from the config
    resp, _ = await env.get("/dashboard/invoices")
    assert resp.status == 303 and "expired=1" in resp.headers["Location"]


# ---------------------------------------------------------------- CSRF, origin, headers


async def test_a_form_without_its_csrf_token_is_refused(env: Env) -> None:
    await signed_in(env)
    inv = await env.make(Status.PENDING)
    for form in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": env.csrf + "x"}):
        resp, page = await env.post(f"/dashboard/invoices/{inv.id}/cancel", form, csrf=False)
        assert resp.status == 403, form
        assert "Nothing was done" in page
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/cancel",
                             headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert (await env.invoice(inv.id)).status == Status.PENDING and env.outcomes == []
    # another session's token is not this session's
    other = env.csrf
    env.client.session.cookie_jar.clear()
    await env.signin()
    assert env.csrf != other
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/cancel", {"csrf": other})
    assert resp.status == 403
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/cancel",
                             headers={"Origin": str(env.client.make_url("")).rstrip("/")})
    assert resp.status == 303
    assert (await env.invoice(inv.id)).status == Status.VOIDED


async def test_every_page_has_strict_headers_and_is_not_cached(env: Env) -> None:
    inv = await env.make(Status.PENDING)
    paths = ["/dashboard/signin"]
    for path in (*paths, "/dashboard/invoices", f"/dashboard/invoices/{inv.id}",
                 "/dashboard/invoices/new", "/dashboard/transfers", "/dashboard/callbacks",
                 "/dashboard/networks", "/dashboard/no-such-page"):
        if path != "/dashboard/signin" and not env.csrf:
            await signed_in(env)
        resp, page = await env.get(path)
        assert resp.status in (200, 404), path
        csp = resp.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert "http" not in csp  # no other host
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "<script>" not in page and " style=" not in page  # nothing inline
        for url in re.findall(r'(?:src|href)="([^"]+)"', page):
            assert url.startswith(("/", "#", EXPLORER, CHECKOUT)), (path, url)
    resp, _ = await env.get("/dashboard/static/dashboard.css")
    assert resp.status == 200 and resp.content_type == "text/css"


# ---------------------------------------------------------------- creating an invoice


def create_form(**values: str) -> dict[str, str]:
    return {"network": NET, "asset": "USDT", "pricing": "amount", "amount": "12.5",
            "address_mode": "shared", **values}


async def test_create_through_the_form_shows_the_checkout_link_and_qr(env: Env) -> None:
    await signed_in(env)
    form = create_form(externalId="order-7", clientId="client-7", email="c@example.org",
                       payload='{"cart": [1, 2]}', ttl="900",
                       callbackUrl="https://shop.example/hook",
                       redirectUrl="https://shop.example/thanks")
    resp, _ = await env.post("/dashboard/invoices/new", form)
    assert resp.status == 303
    location = resp.headers["Location"]
    invoice_id = re.fullmatch(r"/dashboard/invoices/([0-9a-f-]{36})\?created=1", location)
    assert invoice_id
    inv = await env.invoice(invoice_id.group(1))
    assert (inv.external_id, inv.client_id, inv.email) == ("order-7", "client-7",
                                                           "c@example.org")
    assert inv.payload == {"cart": [1, 2]} and inv.shared and inv.to_addr == SHARED
    assert inv.expire_at == env.clock() + 900 and inv.amount == 12_500_000
    assert len(env.outcomes) == 1 and env.outcomes[0].changes[0].event == "invoice.created"
    # the same request as JSON would have made the same invoice (idempotency fingerprint)
    body, errors = forms.create_body(form)
    assert not errors
    req = rq.parse_create(body, env.ledger.networks, env.clock())
    assert req.fingerprint == inv.fingerprint
    _, page = await env.get(location)
    url = f"{CHECKOUT}/pay/{inv.id}"
    assert f'href="{url}"' in page and "Invoice created" in page
    resp, svg = await env.get(f"/dashboard/invoices/{inv.id}/qr.svg")
    assert resp.content_type == "image/svg+xml" and decode_qr_svg(svg) == url
    # the same externalId and values again: the existing invoice, nothing new
    resp, _ = await env.post("/dashboard/invoices/new", form)
    assert resp.headers["Location"] == f"/dashboard/invoices/{inv.id}"
    assert len(env.outcomes) == 1
    assert "exists already" in await env.flash(f"/dashboard/invoices/{inv.id}")


@pytest.mark.parametrize(
    "values,name",
    [
        ({"amount": "abc"}, "amount"),
        ({"amount": "1.1234567"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"asset": "DOGE"}, "asset"),
        ({"address_mode": "dedicated", "address": ""}, "address"),
        ({"address_mode": "dedicated", "address": "0x1234"}, "address"),
        ({"address_mode": "derive"}, "address"),
        ({"asset": "ETH"}, "address"),  # ETH has no shared address here
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": "0"}, "ttl"),
        ({"callbackUrl": "ftp://x"}, "callbackUrl"),
        ({"email": "nobody"}, "email"),
        ({"payload": "[1, 2]"}, "payload"),
        ({"pricing": "price", "price": "10"}, "currency"),
        ({"externalId": "x" * 129}, "externalId"),
    ],
)
async def test_a_refused_create_shows_the_apis_message_beside_the_field(
    env: Env, values: dict[str, str], name: str
) -> None:
    await signed_in(env)
    form = create_form(**values)
    resp, page = await env.post("/dashboard/invoices/new", form)
    assert resp.status == 422
    body, _ = forms.create_body(form)
    with pytest.raises(Invalid) as refused:
        rq.parse_create(body, env.ledger.networks, env.clock())
    assert refused.value.field == name
    assert error_of(page, name) == refused.value.message
    assert f'id="{name}"' in page and 'aria-invalid="true"' in page
    for key, value in form.items():  # the form again with what was sent
        if key not in ("pricing", "address_mode") and value:
            assert unescape(page).count(value) >= 1, key
    assert env.outcomes == []
    assert (await env.get("/dashboard/invoices"))[1].count("data-invoice=") == 0


async def test_a_payload_that_is_not_json_is_shown_with_the_other_problems(env: Env) -> None:
    await signed_in(env)
    resp, page = await env.post("/dashboard/invoices/new",
                                create_form(amount="-1", payload='{"a": '))
    assert resp.status == 422
    assert (error_of(page, "payload") or "").startswith("payload is not valid JSON")
    assert error_of(page, "amount") is not None
    assert env.outcomes == []


async def test_a_busy_dedicated_address_is_a_conflict_beside_the_address(env: Env) -> None:
    await signed_in(env)
    form = create_form(address_mode="dedicated", address=DEDICATED)
    assert (await env.post("/dashboard/invoices/new", form))[0].status == 303
    resp, page = await env.post("/dashboard/invoices/new", form)
    assert resp.status == 409
    assert "is still open on this address" in (error_of(page, "address") or "")


# ---------------------------------------------------------------- the invoice list


async def test_the_list_filters_searches_and_pages(env: Env) -> None:
    await signed_in(env)
    made = []
    for i in range(30):
        made.append(await env.make(Status.PENDING, external_id=f"order-{i}",
                                   client_id=f"client-{i % 3}"))
    paid = await env.make(Status.COMPLETED, external_id="paid-1")
    voided = await env.make(Status.VOIDED)
    _, page = await env.get("/dashboard/invoices")
    first = re.findall(r'data-invoice="([^"]+)"', page)
    assert len(first) == forms.PAGE_SIZE and first[0] == voided.id
    next_link = re.search(r'href="([^"]+)" rel="next"', page)
    assert next_link
    _, page2 = await env.get(unescape(next_link.group(1)))
    second = re.findall(r'data-invoice="([^"]+)"', page2)
    assert len(second) == 32 - forms.PAGE_SIZE and not set(first) & set(second)
    assert 'rel="next"' not in page2 and "Newest invoices" in page2

    async def ids(query: str) -> list[str]:
        resp, text = await env.get(f"/dashboard/invoices?{query}")
        assert resp.status == 200
        return re.findall(r'data-invoice="([^"]+)"', text)

    assert await ids("status=COMPLETED") == [paid.id]
    assert await ids("status=VOIDED&network=" + NET) == [voided.id]
    assert await ids("network=elsewhere") == []
    assert len(await ids("asset=USDT")) == forms.PAGE_SIZE
    assert await ids("q=order-7") == [made[7].id]
    assert await ids(f"q={made[3].id}") == [made[3].id]
    assert await ids(f"q={made[3].id.upper()}") == [made[3].id]
    assert len(await ids("q=client-1")) == 10
    payment_tx = paid.payments[0].tx_hash
    assert await ids(f"q={payment_tx}") == [paid.id]
    assert await ids(f"q={payment_tx.upper().replace('0X', '0x')}") == [paid.id]
    assert await ids(f"q={OTHER}") == [paid.id]  # the payer's address
    assert len(await ids(f"q={SHARED.lower()}")) == forms.PAGE_SIZE
    assert await ids("q=nothing-like-it") == []
    today = datetime.fromtimestamp(env.clock(), UTC).strftime("%Y-%m-%d")
    assert len(await ids(f"from={today}&to={today}")) == forms.PAGE_SIZE
    assert await ids("to=2001-01-01") == []
    resp, text = await env.get("/dashboard/invoices?status=PAID&from=yesterday&cursor=%%%")
    assert resp.status == 200
    assert error_of(text, "status") == "unknown status 'PAID'"
    assert error_of(text, "from") == "from must be a date like 2024-07-31"
    assert "cursor is not a valid page token" in text


async def test_live_json_gives_the_statuses_asked_for(env: Env) -> None:
    await signed_in(env)
    a = await env.make(Status.PENDING)
    b = await env.make(Status.PARTIAL)
    resp = await env.client.get(f"/dashboard/live.json?ids={a.id},{b.id},nope")
    assert resp.status == 200
    assert await resp.json() == {"data": {a.id: "PENDING", b.id: "PARTIAL"}}


# ---------------------------------------------------------------- one invoice, actions


ALLOWED = {
    Status.PENDING: ["cancel"],
    Status.WAITING_FOR_CONFIRMATIONS: [],
    Status.COMPLETED: ["refund"],
    Status.PARTIAL: ["accept", "remainder", "refund"],
    Status.VOIDED: [],
    Status.REVERSED: [],
    Status.REFUNDED: [],
}


@pytest.mark.parametrize("status", list(Status))
async def test_actions_are_offered_only_where_the_state_machine_allows(
    env: Env, status: Status
) -> None:
    await signed_in(env)
    inv = await env.make(status)
    _, page = await env.get(f"/dashboard/invoices/{inv.id}")
    offered = re.findall(r'id="action-(\w+)"', page)
    assert offered == ALLOWED[status]
    for action in forms.ACTIONS:
        resp, text = await env.get(f"/dashboard/invoices/{inv.id}/{action}")
        if action in offered:
            assert resp.status == 200 and 'id="confirm"' in text
            assert f'action="/dashboard/invoices/{inv.id}/{action}"' in text
        else:
            assert resp.status == 303
            assert resp.headers["Location"] == f"/dashboard/invoices/{inv.id}"
            message = await env.flash(f"/dashboard/invoices/{inv.id}")
            assert status.value in message or "already stopped" in message


async def test_cancel_then_cancel_again_shows_the_conflict(env: Env) -> None:
    await signed_in(env)
    inv = await env.make(Status.PENDING)
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/cancel")
    assert resp.status == 303 and resp.headers["Location"] == f"/dashboard/invoices/{inv.id}"
    assert (await env.invoice(inv.id)).status == Status.VOIDED
    assert [c.event for o in env.outcomes for c in o.changes] == ["invoice.voided"]
    assert await env.flash(f"/dashboard/invoices/{inv.id}") == "Done: the invoice is now VOIDED."
    # the API answers 409 with this text; the dashboard shows it
    api = await env.client.post(f"/v1/invoices/{inv.id}/cancel",
                                headers={"Authorization": f"Bearer {KEY}"})
    conflict = (await api.json())["error"]["message"]
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/cancel")
    assert resp.status == 303
    assert await env.flash(f"/dashboard/invoices/{inv.id}") == conflict
    assert len(env.outcomes) == 1


async def test_refund_records_the_hash_and_a_bad_hash_is_shown_beside_it(env: Env) -> None:
    await signed_in(env)
    inv = await env.make(Status.COMPLETED)
    resp, page = await env.post(f"/dashboard/invoices/{inv.id}/refund", {"txHash": "0x12"})
    assert resp.status == 422
    assert error_of(page, "txHash") == "txHash must be 0x and 64 hex digits"
    assert (await env.invoice(inv.id)).status == Status.COMPLETED
    tx = tx_hash()
    resp, _ = await env.post(f"/dashboard/invoices/{inv.id}/refund", {"txHash": tx.upper()
                                                                        .replace("0X", "0x")})
    assert resp.status == 303
    done = await env.invoice(inv.id)
    assert done.status == Status.REFUNDED and done.refund_tx == tx
    _, page = await env.get(f"/dashboard/invoices/{inv.id}")
    assert f"{EXPLORER}/tx/{tx}" in page


async def test_accept_and_remainder_of_a_partial_invoice(env: Env) -> None:
    await signed_in(env)
    partial = await env.make(Status.PARTIAL)
    resp, _ = await env.post(f"/dashboard/invoices/{partial.id}/remainder")
    child_id = resp.headers["Location"].rsplit("/", 1)[1]
    child = await env.invoice(child_id)
    assert child.parent_id == partial.id and child.amount == partial.amount - partial.amount_paid
    assert "Remainder invoice created" in await env.flash(f"/dashboard/invoices/{child_id}")
    _, page = await env.get(f"/dashboard/invoices/{partial.id}")
    assert f'href="/dashboard/invoices/{child_id}"' in page
    assert re.findall(r'id="action-(\w+)"', page) == ["accept", "refund"]  # no 2nd remainder
    other = await env.make(Status.PARTIAL)
    resp, _ = await env.post(f"/dashboard/invoices/{other.id}/accept")
    assert (await env.invoice(other.id)).status == Status.COMPLETED


async def test_the_invoice_page_shows_everything(env: Env) -> None:
    await signed_in(env)
    inv = await env.make(Status.COMPLETED, external_id="ext-9", client_id="cli-9",
                         email="e@example.org", payload={"k": "<b>v</b>"})
    await env.store.run(lambda db: record_attempt(
        db, _first_event(db, inv.id), float(env.clock()), 500, "HTTP 500", 87, "retry",
        float(env.clock() + 10)))
    _, page = await env.get(f"/dashboard/invoices/{inv.id}")
    rendered = env.ledger.render(await env.invoice(inv.id))
    for key in rendered:
        if key not in ("payments", "latePayments"):  # those are tables of their own
            assert f"<dt>{key}</dt>" in page, key
    assert "<b>v</b>" not in page and "&lt;b&gt;v&lt;/b&gt;" in page  # escaped
    p = rendered["payments"][0]
    assert f'{EXPLORER}/tx/{p["txHash"]}' in page
    assert f'{EXPLORER}/address/{rendered["to"]}' in page
    for event in ("invoice.created", "invoice.waiting_for_confirmations", "invoice.completed"):
        assert f"<strong>{event}</strong>" in page
    assert "HTTP 500" in page and "87 ms" in page and ">500<" in page
    assert page.count('action="/dashboard/callbacks/') == 3  # redeliver each


def _first_event(db: Any, invoice_id: str) -> str:
    row = db.execute("SELECT id FROM events WHERE invoice_id = ? ORDER BY seq LIMIT 1",
                     [invoice_id]).fetchone()
    return str(row[0])


# ---------------------------------------------------------------- callbacks


async def test_failed_callbacks_are_listed_and_redelivered(env: Env) -> None:
    await signed_in(env)
    invoices = [await env.make(Status.PENDING) for _ in range(3)]
    events = []
    for inv in invoices:
        event_id = await env.store.run(_first_event, inv.id)
        await env.store.run(record_attempt, event_id, float(env.clock()), 404, "HTTP 404", 12,
                            "failed", None)
        events.append(event_id)
    _, page = await env.get("/dashboard/callbacks")
    assert re.findall(r'data-event="([^"]+)"', page) == events[::-1]
    assert 'id="count-failed">3<' in page and "HTTP 404" in page
    resp, _ = await env.post(f"/dashboard/callbacks/{events[0]}/redeliver",
                             {"next": f"/dashboard/invoices/{invoices[0].id}"})
    assert resp.headers["Location"] == f"/dashboard/invoices/{invoices[0].id}"
    assert env.redelivered == [events[0]]
    state = await env.store.run(lambda db: db.execute(
        "SELECT state FROM deliveries WHERE event_id = ?", [events[0]]).fetchone()[0])
    assert state == "pending"
    assert "queued again" in await env.flash(f"/dashboard/invoices/{invoices[0].id}")
    resp, _ = await env.post("/dashboard/callbacks/evt_none/redeliver",
                             {"next": "https://evil.example/"})
    assert resp.headers["Location"] == "/dashboard/callbacks"
    assert await env.flash("/dashboard/callbacks") == "no callback delivery for event evt_none"
    resp, _ = await env.post("/dashboard/callbacks/redeliver")
    assert await env.flash("/dashboard/callbacks") == "2 failed callbacks queued again."
    assert env.redelivered == [events[0], events[1], events[2]]
    _, page = await env.get("/dashboard/callbacks")
    assert "No failed callbacks." in page


# ---------------------------------------------------------------- transfers


async def _unmatched(env: Env, amount: int = 3_000_000) -> Transfer:
    t = Transfer(NET, "USDT", tx_hash(), 0, OTHER, SHARED, amount, 1000, tx_hash(),
                 env.clock(), kind="unmatched")
    await env.store.run(env.ledger.apply_scan, ScanBatch(NET, 1010, None, env.clock(), 1010,
                                                        [t]), env.clock())
    return t


async def test_an_unmatched_transfer_is_assigned_after_a_confirmation(env: Env) -> None:
    await signed_in(env)
    t = await _unmatched(env)
    inv, _, _ = await env.store.run(env.ledger.create, new(amount=3_000_000), env.clock())
    _, page = await env.get("/dashboard/transfers")
    assert re.findall(r'data-transfer="([^"]+)"', page) == [t.id]
    assert "3 USDT" in page
    resp, page = await env.get(f"/dashboard/transfers/{t.id}/assign?invoiceId=nope")
    assert resp.status == 422 and error_of(page, "invoiceId") == "no invoice nope"
    resp, page = await env.get(f"/dashboard/transfers/{t.id}/assign?invoiceId={inv.id}")
    assert resp.status == 200 and "Yes, assign it" in page and inv.id in page
    resp, page = await env.post(f"/dashboard/transfers/{t.id}/assign", {"invoiceId": "nope"})
    assert resp.status == 422 and error_of(page, "invoiceId") == "no invoice nope"
    resp, _ = await env.post(f"/dashboard/transfers/{t.id}/assign", {"invoiceId": inv.id})
    assert resp.headers["Location"] == f"/dashboard/invoices/{inv.id}"
    done = await env.invoice(inv.id)
    assert done.status == Status.COMPLETED and done.payments[0].assigned
    assert [c.event for o in env.outcomes for c in o.changes] == [
        "invoice.waiting_for_confirmations", "invoice.completed"]
    assert "now COMPLETED" in await env.flash(f"/dashboard/invoices/{inv.id}")
    # already a payment: the API's 409, as a message
    resp, _ = await env.post(f"/dashboard/transfers/{t.id}/assign", {"invoiceId": inv.id})
    assert resp.headers["Location"] == "/dashboard/transfers"
    assert "already" in await env.flash("/dashboard/transfers")
    _, page = await env.get("/dashboard/transfers")
    assert "No unmatched transfers." in page


# ---------------------------------------------------------------- networks


async def test_the_networks_page_shows_heads_rpc_and_rescans(env: Env) -> None:
    await signed_in(env)
    env.api.networks_status = lambda: [{
        "name": NET, "chainId": 31337, "headBlock": 120, "scannedBlock": 100,
        "lagBlocks": 20, "confirmations": 2, "lastError": "boom",
        "rpc": [{"label": "https://rpc.example/…", "healthy": False, "current": True,
                 "last_error": "timeout", "failures": 3}],
        "assets": [{"symbol": "USDT", "decimals": 6, "tokenAddress": None,
                    "sharedAddress": None}],
    }]
    await env.store.run(env.ledger.start_rescan, NET, 10, 50, env.clock())
    _, page = await env.get("/dashboard/networks")
    for text in (">120<", ">100<", ">20<", "https://rpc.example/…", "timeout", "3 failures",
                 "Last error: boom", "Blocks 10 – 50", "running", "No pairs configured"):
        assert text in page, text
    assert 'class="lag behind"' in page


# ---------------------------------------------------------------- the live socket


async def test_the_socket_sends_status_changes_and_closes_when_the_session_ends(
    env: Env,
) -> None:
    await signed_in(env)
    inv = await env.make(Status.PENDING)
    created = await env.store.read(last_event_seq)
    for _ in range(500):  # the hub has passed invoice.created: the socket gets what follows
        if env.hub.seq is not None and env.hub.seq >= created:
            break
        await asyncio.sleep(0.01)
    origin = str(env.client.make_url("")).rstrip("/")
    resp = await env.client.get("/dashboard/ws", headers={"Origin": "https://evil.example",
                                                          "Upgrade": "websocket",
                                                          "Connection": "Upgrade",
                                                          "Sec-WebSocket-Version": "13",
                                                          "Sec-WebSocket-Key": "x" * 22 + "=="},
                                allow_redirects=False)
    assert resp.status == 403
    before = env.hub.subscriptions
    ws = await env.client.ws_connect("/dashboard/ws", headers={"Origin": origin})
    for _ in range(500):  # until the socket has subscribed (not a fixed sleep: slow runs)
        if env.hub.subscriptions > before:
            break
        await asyncio.sleep(0.01)
    assert env.hub.subscriptions > before
    await env.store.run(env.ledger.cancel, inv.id, env.clock())
    env.hub.wake()
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT
    assert msg.json() == {"id": inv.id, "event": "invoice.voided", "status": "VOIDED",
                          "amountPaid": "0", "confirmations": 0}
    # a session check while the database is away does not end the checks
    run, failed = env.store.run, asyncio.Event()

    async def away(*_args: Any, **_kw: Any) -> Any:
        failed.set()
        raise StoreError("database unreachable")

    env.store.run = away  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(failed.wait(), 5)
    finally:
        env.store.run = run  # type: ignore[method-assign]
    await env.post("/dashboard/signout")
    closed = await ws.receive(timeout=5)
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == 4401
    # no session, no socket
    resp = await env.client.get("/dashboard/ws", allow_redirects=False)
    assert resp.status == 303


# ---------------------------------------------------------------- its own listener


async def test_the_dashboard_on_a_listener_of_its_own(
    env: Env, aiohttp_client: ClientFactory
) -> None:
    own = await aiohttp_client(dashboard_root(env.dash))
    resp = await own.get("/", allow_redirects=False)
    assert resp.headers["Location"] == "/dashboard/"
    page = await (await own.get("/dashboard/signin")).text()
    resp = await own.post("/dashboard/signin", data={"csrf": field_value(page, "csrf"),
                                                     "key": KEY}, allow_redirects=False)
    assert resp.status == 303
    resp = await own.get("/dashboard/invoices", allow_redirects=False)
    assert resp.status == 200
    resp = await own.get("/v1/invoices", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status == 404  # only the dashboard there


# ---------------------------------------------------------------- pure helpers


def test_create_body_maps_a_form_like_a_json_client() -> None:
    body, errors = forms.create_body({
        "network": " n ", "asset": "USDT", "pricing": "amount", "amount": "1.5 ",
        "price": "9", "currency": "EUR", "address_mode": "shared", "address": "0xabc",
        "ttl": "60", "externalId": "", "payload": '{"a": 1}', "email": "a@b",
    })
    assert errors == {}
    assert body == {"network": "n", "asset": "USDT", "amount": "1.5", "ttl": 60,
                    "payload": {"a": 1}, "email": "a@b"}
    body, _ = forms.create_body({"pricing": "price", "price": "9", "currency": "EUR",
                                 "amount": "3", "address_mode": "derive", "ttl": "1h"})
    assert body == {"price": "9", "currency": "EUR", "address": "derive", "ttl": "1h"}
    body, _ = forms.create_body({"address_mode": "dedicated", "address": ""})
    assert body == {"address": ""}  # left out it would mean the shared address
    _, errors = forms.create_body({"payload": "{"})
    assert errors["payload"].startswith("payload is not valid JSON")
    assert forms.refund_body({"txHash": " "}) == {}
    assert forms.refund_body({"txHash": "0xab"}) == {"txHash": "0xab"}


def test_filters_and_their_sql() -> None:
    f, errors = forms.parse_filters({"status": "completed", "network": "n", "q": " x ",
                                     "from": "2024-07-31", "to": "2024-08-01"})
    assert errors == {} and f.status == "COMPLETED" and f.q == "x" and f.active
    where = forms.invoice_where(f)
    assert where.sql == ("status = ? AND network = ? AND created_at >= ? AND created_at < ? "
                         "AND (id = ? OR external_id = ? OR client_id = ?)")
    assert where.params == ["COMPLETED", "n", 1722384000, 1722384000 + 2 * 86400, "x", "x", "x"]
    tx = "0x" + "Ab" * 32
    assert forms.invoice_where(forms.Filters(q=tx)).params == [tx.lower(), tx.lower()]
    assert "to_lower" in forms.invoice_where(forms.Filters(q="0x" + "a" * 40)).sql
    assert forms.invoice_where(forms.Filters()).sql == "1 = 1"
    cursor = rq.encode_cursor(42)
    assert forms.invoice_where(forms.Filters(cursor=cursor)).params == [42]
    assert forms.next_link(f, None) is None
    link = forms.next_link(f, 7)
    assert link is not None and parse_qs(urlsplit(link).query) == {
        "status": ["COMPLETED"], "network": ["n"], "from": ["2024-07-31"],
        "to": ["2024-08-01"], "q": ["x"], "cursor": [rq.encode_cursor(7)]}
    assert forms.first_link(f) is None
    assert forms.first_link(forms.Filters(cursor=cursor, q="y")) == "/dashboard/invoices?q=y"
    bad, errors = forms.parse_filters({"status": "nope", "from": "2024-02-30", "cursor": "!"})
    assert set(errors) == {"status", "from", "cursor"} and bad == forms.Filters()


@pytest.mark.parametrize("target,expected", [
    ("/dashboard/invoices?x=1", "/dashboard/invoices?x=1"),
    ("/dashboard/networks", "/dashboard/networks"),
    ("//evil.example/dashboard/", "/dashboard/invoices"),
    ("/dashboard//evil.example", "/dashboard/invoices"),
    ("/dashboard/\\evil", "/dashboard/invoices"),
    ("https://evil.example/dashboard/", "/dashboard/invoices"),
    ("/v1/invoices", "/dashboard/invoices"),
    ("/dashboard/x\r\nSet-Cookie: a=b", "/dashboard/invoices"),
    (None, "/dashboard/invoices"),
])
def test_safe_next_stays_inside_the_dashboard(target: str | None, expected: str) -> None:
    assert forms.safe_next(target) == expected


def test_tokens_keys_and_origins() -> None:
    assert same_token("abc", "abc") and not same_token("abc", "abd")
    assert not same_token("", "") and not same_token(None, "abc") and not same_token("a", None)
    assert matching_key(" k2 ", ["k1", "k2"]) == "k2"
    assert matching_key("", ["k1"]) is None and matching_key("k3", ["k1", "k2"]) is None
    assert token_hash("t") == hashlib.sha256(b"t").hexdigest()
    assert key_fingerprint("k1") != key_fingerprint("k2") and "k1" not in key_fingerprint("k1")
    assert origin_ok("http://h:1", "h:1", None, required=True)
    assert origin_ok("https://h:1", "h:1", None, required=True)
    assert not origin_ok("http://evil", "h:1", None, required=True)
    assert origin_ok("https://dash.example", "127.0.0.1:8080", "https://dash.example",
                     required=True)
    assert origin_ok(None, "h", None, required=False)
    assert not origin_ok(None, "h", None, required=True)
    assert not origin_ok("null", "h", None, required=True)
    assert public_origin_of("https://Dash.example:8443/x/") == "https://dash.example:8443"


def test_session_policy_and_limiter() -> None:
    policy = Policy(idle=100, lifetime=1000)
    s = Session("h", "c", key_fingerprint("k"), created_at=0, last_seen=950)
    assert policy.alive(s, 1000, [key_fingerprint("k")])
    assert not policy.alive(s, 1051, [key_fingerprint("k")])  # idle
    assert not policy.alive(Session("h", "c", key_fingerprint("k"), 0, 1000), 1001,
                            [key_fingerprint("k")])  # over its lifetime
    assert not policy.alive(s, 1000, [key_fingerprint("other")])  # its key is gone
    now = [0.0]
    limiter = SignInLimiter(3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.wait("a") == 0
        limiter.failed("a")
        now[0] += 1
    assert limiter.wait("a") == 57 and limiter.wait("b") == 0  # the first failed at 0
    now[0] = 60.5
    assert limiter.wait("a") == 0  # the first failure left the window
    now[0] = 1000
    assert limiter.wait("a") == 0 and "a" not in limiter._failures


def test_the_limiter_forgets_the_oldest_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    from watcher.web import sessions

    monkeypatch.setattr(sessions, "MAX_TRACKED", 3)
    limiter = SignInLimiter(1, clock=lambda: 0.0)
    for ip in ("a", "b", "c", "d"):
        limiter.failed(ip)
    assert list(limiter._failures) == ["b", "c", "d"]
    assert limiter.wait("a") == 0 and limiter.wait("d") == 60


def test_assign_fit_compares_with_what_is_due() -> None:
    t = {"network": "n", "asset": "ETH", "amount": "0.123"}
    due = {"network": "n", "asset": "ETH", "amountDue": "0.2"}
    assert assign_fit(t, due) == "less"
    assert assign_fit({**t, "amount": "0.20"}, due) == "equal"
    assert assign_fit({**t, "amount": "1"}, due) == "more"
    assert assign_fit({**t, "asset": "USDT"}, due) == "other"
    assert assign_fit(t, None) is None


def test_the_dashboards_sql_takes_no_value_into_its_text() -> None:
    """Every f-string SQL of the dashboard joins only placeholders and fixed fragments:
    search words, filters and ids are parameters."""
    import inspect

    from watcher.web import dashboard, dashboard_queries, sessions

    pattern = re.compile(r"f\"[^\"]*(SELECT|INSERT|UPDATE|DELETE|WHERE)[^\"]*\{([^}]*)\}",
                         re.IGNORECASE)
    allowed = {"where.sql", "marks", "' AND '.join(where)"}
    found = 0
    for mod in (dashboard, dashboard_queries, forms, sessions):
        for m in pattern.finditer(inspect.getsource(mod)):
            assert m.group(2) in allowed, (mod.__name__, m.group(0))
            found += 1
    assert found == 2  # the id list of live.json and the transfers' filters
    where = forms.invoice_where(forms.Filters(q="x' OR 1=1 --", network="n'; DROP"))
    assert "DROP" not in where.sql and "OR 1=1" not in where.sql


async def test_a_derived_address_is_offered_with_an_xpub_and_taken(env: Env) -> None:
    from tests.hdkeys import ACCOUNT_PATH, reference_address, xpub
    from watcher.derivation import Deriver

    await signed_in(env)
    _, page = await env.get("/dashboard/invoices/new")
    assert 'value="derive"' not in page  # no xpub: no such choice
    env.ledger.deriver = Deriver(xpub(), "0/{index}")
    _, page = await env.get("/dashboard/invoices/new")
    assert re.search(r'value="derive" checked', page)  # the default then
    resp, _ = await env.post("/dashboard/invoices/new",
                             create_form(asset="ETH", amount="0.1", address_mode="derive"))
    inv = await env.invoice(resp.headers["Location"].split("/")[-1].split("?")[0])
    assert inv.derivation_index == 0
    assert inv.to_addr == reference_address(f"{ACCOUNT_PATH}/0/0")


async def test_a_price_in_a_currency_is_converted_by_the_api_rules(env: Env) -> None:
    from watcher.pricing.book import RateBook
    from watcher.pricing.sources import FixedSource

    await signed_in(env)
    book = RateBook({"USDT/EUR": [FixedSource("0.92")]}, 3600)
    await book.refresh(env.clock())
    env.ledger.rates = book
    _, page = await env.get("/dashboard/invoices/new")
    assert '<option value="EUR">' in page  # the configured currencies are suggested
    resp, page = await env.post("/dashboard/invoices/new",
                                create_form(pricing="price", price="46", currency="GBP"))
    assert resp.status == 422 and "no rate prices USDT in it" in (error_of(page, "currency")
                                                                 or "")
    resp, _ = await env.post("/dashboard/invoices/new",
                             create_form(pricing="price", price="46", currency="EUR",
                                         amount="999"))  # the amount box is not sent
    inv = await env.invoice(resp.headers["Location"].split("/")[-1].split("?")[0])
    assert (inv.amount, inv.price, inv.currency, inv.rate) == (50_000_000, "46", "EUR", "0.92")


def test_a_0010_database_gets_the_sessions_table(tmp_path: Path) -> None:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    from watcher.storage import schema
    from watcher.storage.sqlite import connect

    path = tmp_path / "old.db"
    old = Migrations(schema.migrations.name)
    for m in schema.migrations._migrations:
        if m.name[:4] <= "0010":
            old(name=m.name)(m.fn)
    db = Database(path)
    old.apply(db)
    assert "dashboard_sessions" not in db.table_names()
    db.close()
    db = connect(path)
    assert {c.name for c in db["dashboard_sessions"].columns} == {
        "id_hash", "csrf", "key_fingerprint", "created_at", "last_seen", "flash"}
    assert "dashboard_sessions_seen" in {i.name for i in db["dashboard_sessions"].indexes}
    db.close()
