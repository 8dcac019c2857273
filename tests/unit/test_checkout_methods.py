"""The checkout's `POST /pay/{id}/method` and the method list on the page, through a real
aiohttp server, real SQLite, the real ledger and a RateBook with fixed sources: JSON and
form posts, every refusal (another origin, a body too big, a wrong content type, bad JSON,
a method not offered, too late, no rate), and the page before and after a choice."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, make_mocked_request

from tests.unit.test_checkout import assert_no_secrets, assert_strict_headers
from tests.unit.test_ledger import pay
from watcher.errors import BadRequest, Invalid
from watcher.ledger import Ledger, NetworkInfo, NewInvoice, Outcome
from watcher.models import Asset, Invoice, Method
from watcher.pricing.book import RateBook
from watcher.pricing.sources import FixedSource, SourceError
from watcher.rates import Rate
from watcher.storage.store import Store
from watcher.timeutil import now as clock
from watcher.web.channels import Limits, Sockets
from watcher.web.checkout import (
    MAX_METHOD_BODY,
    CheckoutContext,
    create_checkout_app,
    parse_choice,
    same_origin,
)
from watcher.web.hub import Hub
from watcher.web.i18n import catalogue

NET = "testnet"
TOKEN = "0x1111111111111111111111111111111111111111"
DAI = "0x3333333333333333333333333333333333333333"
SHARED = "0x2222222222222222222222222222222222222222"
EN, DE = catalogue("en"), catalogue("de")
FORM = "application/x-www-form-urlencoded"
UNKNOWN = "6ef3cc15-24ae-4192-9744-a9017ed153cc"
TITLE = 'Order <script>alert("t")</script> #42'
DESCRIPTION = "Two mugs & one <b>teapot</b>\nshipped Monday"


class Failing:
    kind = "http"
    label = "http down.example price"

    async def fetch(self, pair: str, now: int) -> Rate:
        raise SourceError("HTTP 503")


def make_ledger() -> Ledger:
    assets = {
        "ETH": Asset(NET, "ETH", 18, shared_address=SHARED),
        "USDT": Asset(NET, "USDT", 6, token=TOKEN, shared_address=SHARED, amount_step=1),
        "DAI": Asset(NET, "DAI", 18, token=DAI, shared_address=SHARED),
    }
    return Ledger({NET: NetworkInfo(NET, 31337, 2, assets)}, tolerance=Fraction(0),
                  default_ttl=3600, late_window=3600, default_callback_url=None)


@dataclass
class Env:
    client: TestClient[Any, Any]
    store: Store
    ledger: Ledger
    hub: Hub
    outcomes: list[Outcome] = field(default_factory=list)

    async def invoice(self, *methods: str, **kw: Any) -> Invoice:
        req = NewInvoice(
            network=None, asset=None, amount=None, address=None,
            expire_at=kw.pop("expire_at", None),
            methods=[Method(NET, m) for m in (methods or ("ETH", "USDT"))],
            price="25", currency="USD", title=TITLE, description=DESCRIPTION,
            email="secret-customer@example.org", external_id="secret-order-77", **kw,
        )
        inv, _, _ = await self.store.run(self.ledger.create, req, clock())
        self.hub.wake()
        return inv

    async def post(self, invoice_id: str, body: Any, *, query: str = "",
                   headers: dict[str, str] | None = None) -> Any:
        return await self.client.post(f"/pay/{invoice_id}/method{query}", json=body,
                                      headers=headers or {}, allow_redirects=False)

    async def form(self, invoice_id: str, fields: dict[str, str], *, query: str = "",
                   headers: dict[str, str] | None = None) -> Any:
        return await self.client.post(f"/pay/{invoice_id}/method{query}", data=fields,
                                      headers=headers or {}, allow_redirects=False)


@pytest.fixture
async def env(database: str, aiohttp_client: Any) -> AsyncIterator[Env]:
    store = await Store(database).open()
    ledger = make_ledger()
    await store.run(ledger.start_network, NET, 1, 0)
    book = RateBook({"ETH/USD": [FixedSource("2500")], "USDT/USD": [FixedSource("1")],
                     "DAI/USD": [Failing()]}, 3600)
    await book.refresh(clock())
    ledger.rates = book
    hub = Hub(store, tick=0.05)
    await hub.start()
    task = asyncio.create_task(hub.run())
    outcomes: list[Outcome] = []
    ctx = CheckoutContext(
        store=store, ledger=ledger, sockets=Sockets("checkout", hub, Limits(), None),
        languages=["en", "de"], explorers={NET: None}, on_outcome=outcomes.append,
    )
    client = await aiohttp_client(create_checkout_app(ctx))
    yield Env(client, store, ledger, hub, outcomes)
    task.cancel()
    await store.close()


def error_of(data: dict[str, Any]) -> tuple[str, str | None]:
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message", "field"}
    return data["error"]["code"], data["error"]["field"]


def page_error(html: str) -> str | None:
    """The text of the method list's message (None: no message shown)."""
    m = re.search(r'<p class="form-error" id="pw-method-error" role="alert"( hidden)?>(.*?)</p>',
                  html, re.S)
    assert m is not None, "no method list on the page"
    return None if m.group(1) else m.group(2)


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    "headers,ok",
    [
        ({}, True),  # not a browser (curl, a backend)
        ({"Origin": "http://pay.test"}, True),
        ({"Origin": "https://PAY.test"}, True),  # a TLS proxy in front
        ({"Origin": "https://shop.example"}, True),  # the configured public URL
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "http://pay.test.evil.example"}, False),
        ({"Origin": "http://pay.test:8080"}, False),
        ({"Origin": "null"}, False),  # a sandboxed frame or a no-referrer page elsewhere
        ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, True),  # our own form post
        ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Origin": "http://pay.test", "Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "http://pay.test", "Sec-Fetch-Site": "same-origin"}, True),
    ],
)
def test_same_origin(headers: dict[str, str], ok: bool) -> None:
    request = make_mocked_request("POST", f"/pay/{UNKNOWN}/method",
                                  headers={"Host": "pay.test", **headers})
    assert same_origin(request, "https://shop.example") is ok


def test_parse_choice() -> None:
    assert parse_choice("application/json", b'{"network": "a", "asset": "B"}') == ("a", "B")
    assert parse_choice(FORM, b"network=a&asset=B&lang=de") == ("a", "B")
    assert parse_choice(FORM, b"asset=%E2%82%AC&network=x") == ("x", "\u20ac")
    for raw, exc, where in [
        (b"", BadRequest, None), (b"[1]", BadRequest, None), (b"{", BadRequest, None),
        (b'{"asset": "B"}', Invalid, "network"), (b'{"network": "a"}', Invalid, "asset"),
        (b'{"network": 1, "asset": "B"}', Invalid, "network"),
        (b'{"network": "a", "asset": ""}', Invalid, "asset"),
        (b'{"network": "a", "asset": "' + b"x" * 65 + b'"}', Invalid, "asset"),
    ]:
        with pytest.raises(exc) as info:
            parse_choice("application/json", raw)
        assert info.value.field == where, raw
    with pytest.raises(Invalid):
        parse_choice(FORM, b"network=a")
    with pytest.raises(BadRequest):
        parse_choice(FORM, b"network=\xff&asset=B")


# ---------------------------------------------------------------- refusals


async def test_a_post_from_another_origin_is_refused_and_changes_nothing(env: Env) -> None:
    inv = await env.invoice()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}):
        resp = await env.post(inv.id, {"network": NET, "asset": "ETH"}, headers=headers)
        assert resp.status == 403
        assert error_of(await resp.json())[0] == "forbidden"
        resp = await env.form(inv.id, {"network": NET, "asset": "ETH"}, headers=headers)
        assert resp.status == 403 and resp.content_type == "text/html"
        assert page_error(await resp.text()) == EN["error_method_other"]
    view = await (await env.client.get(f"/pay/{inv.id}/status")).json()
    assert view["method"] is None and not any(o.changes for o in env.outcomes)


async def test_bodies_that_cannot_be_a_choice(env: Env) -> None:
    inv = await env.invoice()
    url = f"/pay/{inv.id}/method"
    big = json.dumps({"network": NET, "asset": "ETH", "pad": "x" * MAX_METHOD_BODY})
    resp = await env.client.post(url, data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and error_of(await resp.json())[0] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(8):
            yield b" " * 200
    resp = await env.client.post(url, data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    resp = await env.client.post(url, data="network=testnet&asset=ETH",
                                 headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and error_of(await resp.json())[0] == "unsupported_media_type"
    resp = await env.client.post(url, data="{not json",
                                 headers={"Content-Type": "application/json"})
    assert resp.status == 400 and error_of(await resp.json()) == ("bad_request", None)
    resp = await env.post(inv.id, {"network": NET})
    assert resp.status == 422 and error_of(await resp.json()) == ("invalid", "asset")
    resp = await env.client.get(url)
    assert resp.status == 405
    assert not env.outcomes


async def test_unknown_invoices(env: Env) -> None:
    resp = await env.post(UNKNOWN, {"network": NET, "asset": "ETH"})
    assert resp.status == 404 and error_of(await resp.json())[0] == "not_found"
    resp = await env.post("not-an-id", {"network": NET, "asset": "ETH"})
    assert resp.status == 404 and error_of(await resp.json())[0] == "not_found"
    resp = await env.form(UNKNOWN, {"network": NET, "asset": "ETH"})
    assert resp.status == 404 and EN["not_found_title"] in await resp.text()


# ---------------------------------------------------------------- choosing


async def test_choose_and_switch_with_json(env: Env) -> None:
    inv = await env.invoice()
    resp = await env.post(inv.id, {"network": NET, "asset": "ETH"},
                          headers={"Origin": f"http://{env.client.host}:{env.client.port}"})
    assert resp.status == 200, await resp.text()
    assert_strict_headers(resp.headers)
    text = await resp.text()
    assert_no_secrets(text)
    view = json.loads(text)
    assert view["method"] == {"network": NET, "asset": "ETH"}
    assert (view["asset"], view["to"], view["amount"]) == ("ETH", SHARED, "0.01")
    assert view["canChangeMethod"] is True
    assert view["paymentUri"].startswith(f"ethereum:{SHARED}@31337?value=")
    assert [len(o.changes) for o in env.outcomes] == [1]
    # the same method again: nothing changes
    resp = await env.post(inv.id, {"network": NET, "asset": "ETH"})
    assert resp.status == 200 and (await resp.json())["amount"] == "0.01"
    assert sum(len(o.changes) for o in env.outcomes) == 1
    # switch to the token
    resp = await env.post(inv.id, {"network": NET, "asset": "USDT"})
    view = await resp.json()
    assert view["method"] == {"network": NET, "asset": "USDT"} and view["amount"] == "25"
    assert view["tokenAddress"] == TOKEN
    assert [m["asset"] for m in view["methods"]] == ["ETH", "USDT"]
    assert sum(len(o.changes) for o in env.outcomes) == 2


async def test_choose_with_a_form_redirects_back_keeping_the_language(env: Env) -> None:
    inv = await env.invoice()
    resp = await env.form(inv.id, {"network": NET, "asset": "USDT"}, query="?lang=de",
                          headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    assert resp.status == 303 and resp.headers["Location"] == f"/pay/{inv.id}?lang=de"
    assert len(env.outcomes) == 1
    resp = await env.form(inv.id, {"network": NET, "asset": "ETH"})
    assert resp.status == 303 and resp.headers["Location"] == f"/pay/{inv.id}"
    html = await (await env.client.get(f"/pay/{inv.id}?lang=de")).text()
    assert 'data-mode="pay"' in html and SHARED in html
    assert DE["paying_with"].format(asset="ETH", network=f'<span class="net">{NET}</span>') in html
    assert DE["change_method"] in html and f'href="/pay/{inv.id}?change=1&amp;lang=de"' in html


async def test_refused_choices_answer_their_status(env: Env) -> None:
    inv = await env.invoice("ETH", "USDT", "DAI")
    for body, status, where, text in [
        ({"network": "elsewhere", "asset": "ETH"}, 422, "network", "error_method_invalid"),
        ({"network": NET, "asset": "BTC"}, 422, "asset", "error_method_invalid"),
        ({"network": NET, "asset": "DAI"}, 503, None, "error_method_rate"),
    ]:
        resp = await env.post(inv.id, body)
        assert resp.status == status, await resp.text()
        code, got = error_of(await resp.json())
        assert got == where or status == 503, (body, got)
        if status == 503:
            assert code == "rate_unavailable"
        resp = await env.form(inv.id, body, query="?lang=de")
        assert resp.status == status and resp.content_type == "text/html"
        html = await resp.text()
        assert page_error(html) == DE[text].replace("&", "&amp;")
        assert "Traceback" not in html and 'data-mode="choose"' in html
        assert f'action="/pay/{inv.id}/method?lang=de"' in html
    view = await (await env.client.get(f"/pay/{inv.id}/status")).json()
    assert view["method"] is None and not any(o.changes for o in env.outcomes)
    # a payment arrives: the method can no longer change (409), the page says so
    await env.post(inv.id, {"network": NET, "asset": "USDT"})
    chosen = await env.store.run(env.ledger.get, inv.id)
    await env.store.run(pay, env.ledger, chosen, 1_000_000, deep=False, now=clock())
    resp = await env.post(inv.id, {"network": NET, "asset": "ETH"})
    assert resp.status == 409 and error_of(await resp.json())[0] == "conflict"
    resp = await env.form(inv.id, {"network": NET, "asset": "ETH"})
    assert resp.status == 409
    html = await resp.text()
    assert page_error(html) == EN["error_method_conflict"]
    # it shows the payment view (the list is not offered any more), never the list
    assert 'data-mode="pay"' in html


async def test_an_expired_invoice_cannot_be_chosen(env: Env) -> None:
    inv = await env.invoice(expire_at=clock() + 1)
    await asyncio.sleep(1.1)
    resp = await env.post(inv.id, {"network": NET, "asset": "ETH"})
    assert resp.status == 409
    html = await (await env.client.get(f"/pay/{inv.id}")).text()
    assert 'data-mode="none"' in html


# ---------------------------------------------------------------- the page


async def test_the_page_lists_the_methods_escaped(env: Env) -> None:
    inv = await env.invoice("ETH", "USDT", "DAI")
    resp = await env.client.get(f"/pay/{inv.id}")
    assert resp.status == 200
    assert_strict_headers(resp.headers)
    assert "form-action 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    assert_no_secrets(html)
    assert 'data-mode="choose"' in html
    assert not re.search(r"<[^>]+\s(?:on[a-z]+|style)\s*=", html), "inline handler or style"
    assert "<script>alert" not in html and "<b>teapot" not in html
    assert "Order &lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt; #42" in html
    assert "Two mugs &amp; one &lt;b&gt;teapot&lt;/b&gt;\nshipped Monday" in html
    assert f"{EN['total']}: <strong id=\"pw-total\">25 USD</strong>" in html
    assert f">{EN['status_CHOOSE']}<" in html
    # each method a form with its network and asset, its amount now, the token contract
    forms = re.findall(r'<form class="method-form" method="post" action="([^"]+)">(.*?)</form>',
                       html, re.S)
    assert [a for a, _ in forms] == [f"/pay/{inv.id}/method"] * 3
    eth, usdt, dai = (body for _, body in forms)
    assert 'name="asset" value="ETH"' in eth and "0.01 ETH" in eth and EN["native_coin"] in eth
    assert 'name="asset" value="USDT"' in usdt and "25 USDT" in usdt and TOKEN in usdt
    assert EN["method_no_rate"] in dai and " disabled" in dai
    # no payment view filled, no QR requested before a choice
    assert 'id="pw-pay" hidden' in html or re.search(r'id="pw-pay"[^>]* hidden', html)
    assert "/qr.svg" not in html
    assert (await env.client.get(f"/pay/{inv.id}/qr.svg")).status == 404


async def test_change_shows_the_list_again_with_the_current_method(env: Env) -> None:
    inv = await env.invoice()
    await env.post(inv.id, {"network": NET, "asset": "USDT"})
    html = await (await env.client.get(f"/pay/{inv.id}")).text()
    assert 'data-mode="pay"' in html and f"/pay/{inv.id}/qr.svg?due=25" in html
    html = await (await env.client.get(f"/pay/{inv.id}?change=1")).text()
    assert 'data-mode="choose"' in html
    current = re.findall(r'<button type="submit" class="method current"[^>]*>', html)
    assert len(current) == 1 and 'data-asset="USDT"' in current[0]
    assert EN["method_keep"] in html


async def test_a_classic_invoice_shows_its_title(env: Env) -> None:
    req = NewInvoice(network=NET, asset="USDT", amount=5_000_000, address=None,
                     expire_at=None, title="Invoice 7", description=None)
    inv, _, _ = await env.store.run(env.ledger.create, req, clock())
    html = await (await env.client.get(f"/pay/{inv.id}")).text()
    assert 'data-mode="pay"' in html and ">Invoice 7</h2>" in html
    assert "pw-methods" not in html and "pw-change" not in html
    resp = await env.post(inv.id, {"network": NET, "asset": "USDT"})
    assert resp.status == 409


async def test_the_socket_follows_a_choice(env: Env) -> None:
    inv = await env.invoice()
    ws = await env.client.ws_connect(f"/pay/{inv.id}/ws")
    first = json.loads((await ws.receive(timeout=5)).data)
    assert first["method"] is None and first["canChangeMethod"] is True
    await env.post(inv.id, {"network": NET, "asset": "ETH"})
    env.hub.wake()
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT
    assert_no_secrets(msg.data)
    view = json.loads(msg.data)
    assert view["method"] == {"network": NET, "asset": "ETH"} and view["to"] == SHARED
    # the socket now counts the confirmations of the chosen method's network
    chosen = await env.store.run(env.ledger.get, inv.id)
    assert chosen.amount is not None
    await env.store.run(pay, env.ledger, chosen, chosen.amount, deep=False, now=clock())
    env.hub.wake()
    view = json.loads((await ws.receive(timeout=5)).data)
    assert (view["status"], view["confirmations"]) == ("WAITING_FOR_CONFIRMATIONS", 1)
    head = env.ledger.views[NET]
    env.ledger.views[NET] = replace(head, head=head.head + 1)
    env.hub.heads(NET, head.head + 1)  # a new head, no event
    view = json.loads((await ws.receive(timeout=5)).data)
    assert (view["status"], view["confirmations"]) == ("WAITING_FOR_CONFIRMATIONS", 2)
    await ws.close()
