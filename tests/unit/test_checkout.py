"""The public checkout listener through a real aiohttp server and real SQLite: pages,
`/status`, the QR code (decoded back from the served SVG), the public socket, languages,
security headers, and that no merchant-only field ever reaches the customer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient
from PIL import Image

from tests.unit.test_ledger import NET, make_ledger, new, pay
from watcher.errors import StoreError
from watcher.ledger import Ledger
from watcher.models import Invoice
from watcher.storage.store import Store
from watcher.timeutil import now as clock
from watcher.web.channels import Limits, Sockets
from watcher.web.checkout import CheckoutContext, create_checkout_app
from watcher.web.hub import Hub
from watcher.web.i18n import LANGUAGES, catalogue

#: Merchant-only values: none may appear anywhere the customer can look.
SECRETS = {
    "email": "secret-customer@example.org",
    "payload": {"internalNote": "secret-payload-value"},
    "callback_url": "https://secret-hook.example/cb",
    "external_id": "secret-order-77",
    "client_id": "secret-client-42",
}
SECRET_TEXTS = ("secret-customer", "secret-payload", "secret-hook", "secret-order", "secret-client")
EXPLORER = "https://explorer.example"


@dataclass
class Env:
    client: TestClient[Any, Any]
    store: Store
    ledger: Ledger
    hub: Hub

    async def invoice(self, **kw: Any) -> Invoice:
        inv, _, _ = await self.store.run(
            self.ledger.create, new(address=None, **{**SECRETS, **kw}), clock()
        )
        self.hub.wake()
        return inv


@pytest.fixture
async def env(database: str, aiohttp_client: Any) -> AsyncIterator[Env]:
    store = await Store(database).open()
    ledger = make_ledger()
    await store.run(ledger.start_network, NET, 1, 0)
    hub = Hub(store, tick=0.05)
    await hub.start()
    task = asyncio.create_task(hub.run())
    ctx = CheckoutContext(
        store=store,
        ledger=ledger,
        sockets=Sockets("checkout", hub, Limits(), None),
        languages=["en", "de"],
        explorers={NET: EXPLORER},
    )
    client = await aiohttp_client(create_checkout_app(ctx))
    yield Env(client, store, ledger, hub)
    task.cancel()
    await store.close()


def assert_no_secrets(text: str) -> None:
    for s in SECRET_TEXTS:
        assert s not in text, s


def assert_strict_headers(headers: Any) -> None:
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


# ---------------------------------------------------------------- QR decoding


def svg_matrix(svg: str) -> list[list[bool]]:
    """The module matrix drawn by segno's SVG path (`M x y` then `h n` runs, `m dx dy`
    moves), read back without segno."""
    size = int(re.search(r'viewBox="0 0 (\d+) \d+"', svg).group(1))  # type: ignore[union-attr]
    scale = int(re.search(r"scale\((\d+)\)", svg).group(1))  # type: ignore[union-attr]
    n = size // scale
    grid = [[False] * n for _ in range(n)]
    # the dark modules are stroked (the light background, if any, is a filled rectangle)
    path = re.search(r'<path stroke="[^"]+" d="([^"]+)"', svg).group(1)  # type: ignore[union-attr]
    x = y = 0.0
    for cmd, args in re.findall(r"([MmHhVv])([^MmHhVv]*)", path):
        nums = [float(v) for v in args.replace(",", " ").split()]
        if cmd == "M":
            x, y = nums[0], nums[1]
        elif cmd == "m":
            x, y = x + nums[0], y + nums[1]
        elif cmd == "h":
            for col in range(int(x), int(x + nums[0])):
                grid[int(y)][col] = True
            x += nums[0]
    return grid


def decode_qr_svg(svg: str) -> str:
    grid = svg_matrix(svg)
    px = 8
    img = Image.new("L", (len(grid) * px, len(grid) * px), 255)
    for r, row in enumerate(grid):
        for c, dark in enumerate(row):
            if dark:
                img.paste(0, (c * px, r * px, (c + 1) * px, (r + 1) * px))
    found = zxingcpp.read_barcodes(img)
    assert len(found) == 1, "no QR code found in the SVG"
    return str(found[0].text)


# ---------------------------------------------------------------- tests


async def test_page_shows_what_the_customer_needs_and_nothing_else(env: Env) -> None:
    inv = await env.invoice()
    resp = await env.client.get(f"/pay/{inv.id}")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert_strict_headers(resp.headers)
    assert resp.headers["Cache-Control"] == "no-store"
    assert inv.to_addr in html and "USDT" in html and "10" in html
    assert inv.token_address is not None and inv.token_address in html
    assert_no_secrets(html)
    assert "built-in" not in html and "object at 0x" not in html  # a text rendered wrong
    # no inline script or style, nothing from another host
    assert "<style" not in html
    assert not re.search(r"<[^>]+\s(?:on[a-z]+|style)\s*=", html), "inline handler or style"
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith(("/", "?")) or src == "", src
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    for attrs, body in scripts:
        assert 'type="application/json"' in attrs or (body.strip() == "" and "src=" in attrs)


async def test_status_is_the_public_view(env: Env) -> None:
    inv = await env.invoice()
    now = clock()
    await env.store.run(pay, env.ledger, inv, inv.amount // 2, deep=True, now=now)
    resp = await env.client.get(f"/pay/{inv.id}/status")
    assert resp.status == 200
    assert_strict_headers(resp.headers)
    text = await resp.text()
    assert_no_secrets(text)
    view = json.loads(text)
    assert set(view) == {
        "id", "status", "network", "chainId", "asset", "tokenAddress", "decimals", "to",
        "amount", "amountPaid", "amountDue", "confirmations", "requiredConfirmations",
        "expireAt", "payments", "redirectUrl", "price", "currency", "paymentUri",
        "addressExplorer", "serverTime", "title", "description", "method", "methods",
        "canChangeMethod",
    }
    assert view["status"] == "PARTIAL"
    assert view["amountDue"] == "5" and view["amountPaid"] == "5"
    assert view["paymentUri"] == (
        f"ethereum:{inv.token_address}@{inv.chain_id}/transfer?address={inv.to_addr}"
        f"&uint256={inv.amount - inv.amount // 2}"
    )
    (p,) = view["payments"]
    assert set(p) == {"txHash", "amount", "block", "confirmations", "explorer"}
    assert p["explorer"] == f"{EXPLORER}/tx/{p['txHash']}"


async def test_qr_decodes_to_the_exact_payment_uri(env: Env) -> None:
    inv = await env.invoice()
    resp = await env.client.get(f"/pay/{inv.id}/qr.svg")
    assert resp.status == 200 and resp.content_type == "image/svg+xml"
    assert_strict_headers(resp.headers)
    expected = (
        f"ethereum:{inv.token_address}@{inv.chain_id}/transfer?address={inv.to_addr}"
        f"&uint256={inv.amount}"
    )
    assert decode_qr_svg(await resp.text()) == expected
    resp = await env.client.get(f"/pay/{inv.id}/qr.svg?kind=address")
    assert decode_qr_svg(await resp.text()) == inv.to_addr
    resp = await env.client.get(f"/pay/{inv.id}/qr.svg?kind=other")
    assert resp.status == 400


@pytest.mark.parametrize(
    "path",
    ["/pay/6ef3cc15-24ae-4192-9744-a9017ed153cc", "/pay/not-an-id", "/pay/../etc", "/",
     "/pay/6ef3cc15-24ae-4192-9744-a9017ed153cc/qr.svg"],
)
async def test_unknown_ids_get_a_404_page(env: Env, path: str) -> None:
    resp = await env.client.get(path)
    assert resp.status == 404
    html = await resp.text()
    assert resp.content_type == "text/html" and "Invoice not found" in html
    assert "Traceback" not in html
    assert_strict_headers(resp.headers)


async def test_unknown_status_is_404_json(env: Env) -> None:
    for path in ("/pay/6ef3cc15-24ae-4192-9744-a9017ed153cc/status", "/pay/nope/status"):
        resp = await env.client.get(path)
        assert resp.status == 404
        data = await resp.json()
        assert set(data["error"]) == {"code", "message", "field"}
        assert data["error"]["code"] == "not_found"


async def test_languages(env: Env) -> None:
    inv = await env.invoice()
    de, en = catalogue("de"), catalogue("en")
    cases = [
        ({}, "", en),
        ({"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}, "", de),
        ({"Accept-Language": "fr-CH, fr;q=0.9"}, "", en),
        ({"Accept-Language": "de"}, "?lang=en", en),
        ({}, "?lang=de", de),
        ({}, "?lang=xx", en),
    ]
    for headers, query, texts in cases:
        html = await (await env.client.get(f"/pay/{inv.id}{query}", headers=headers)).text()
        assert f">{texts['status_PENDING']}<" in html, (headers, query)
        assert f'lang="{"de" if texts is de else "en"}"' in html


def test_catalogues_have_the_same_keys_and_no_empty_text() -> None:
    keys = set(catalogue("en"))
    # jinja looks up `t.name` as an attribute first: a key named like a dict method
    # (`copy`, `items`, ...) would render the method
    assert not [k for k in keys if hasattr(dict, k)]
    for lang in LANGUAGES:
        texts = catalogue(lang)
        assert set(texts) == keys, lang
        assert all(v.strip() for v in texts.values()), lang


def test_every_text_the_page_and_script_use_is_in_the_catalogue() -> None:
    root = Path(__file__).resolve().parents[2] / "watcher" / "web"
    template = (root / "templates" / "pay.html").read_text()
    script = (root / "static" / "checkout.js").read_text()
    used = set(re.findall(r"\bt\.(\w+)", template)) | set(re.findall(r"\bT\.(\w+)", script))
    assert used and used <= set(catalogue("en")), used - set(catalogue("en"))
    statuses = {"PENDING", "WAITING_FOR_CONFIRMATIONS", "COMPLETED", "PARTIAL", "VOIDED",
                "REVERSED", "REFUNDED"}
    for s in statuses:
        assert f"status_{s}" in catalogue("en") and f"detail_{s}" in catalogue("en")


async def test_static_assets_are_served_with_the_headers(env: Env) -> None:
    for name, ctype in (("checkout.css", "text/css"), ("checkout.js", "text/javascript"),
                        ("favicon.svg", "image/svg+xml")):
        resp = await env.client.get(f"/static/{name}")
        assert resp.status == 200, name
        assert resp.content_type in (ctype, "application/javascript"), resp.content_type
        assert_strict_headers(resp.headers)
    js = await (await env.client.get("/static/checkout.js")).text()
    assert "innerHTML" not in js and "eval(" not in js
    assert (await env.client.get("/static/nothing.js")).status == 404


async def test_socket_sends_the_view_then_every_change(env: Env) -> None:
    inv = await env.invoice()
    ws = await env.client.ws_connect(f"/pay/{inv.id}/ws")
    first = await ws.receive(timeout=5)
    assert first.type == WSMsgType.TEXT
    assert_no_secrets(first.data)
    assert json.loads(first.data)["status"] == "PENDING"
    await env.store.run(pay, env.ledger, inv, inv.amount, deep=True, now=clock())
    env.hub.wake()
    statuses = []
    while "COMPLETED" not in statuses:
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.TEXT
        assert_no_secrets(msg.data)
        statuses.append(json.loads(msg.data)["status"])
    assert statuses == ["WAITING_FOR_CONFIRMATIONS", "COMPLETED"]
    await ws.close()


async def test_socket_while_the_database_is_away_closes_try_again_later(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first view cannot be read: the socket closes 1013 (the page polls meanwhile),
    no traceback; once the database is back a new socket gets the view."""
    inv = await env.invoice()
    read = env.store.read

    async def away(*_args: Any, **_kw: Any) -> Any:
        raise StoreError("database unreachable")

    monkeypatch.setattr(env.store, "read", away)
    ws = await env.client.ws_connect(f"/pay/{inv.id}/ws")
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == WSCloseCode.TRY_AGAIN_LATER
    monkeypatch.setattr(env.store, "read", read)
    ws = await env.client.ws_connect(f"/pay/{inv.id}/ws")
    first = await ws.receive(timeout=5)
    assert json.loads(first.data)["status"] == "PENDING"
    await ws.close()


async def test_socket_to_an_unknown_invoice_closes_with_a_reason(env: Env) -> None:
    for invoice_id in ("6ef3cc15-24ae-4192-9744-a9017ed153cc", "junk"):
        ws = await env.client.ws_connect(f"/pay/{invoice_id}/ws")
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert ws.close_code == 4404 and msg.extra == "no such invoice"


async def test_framing_follows_the_operator(tmp_path: Path, aiohttp_client: Any) -> None:
    store = await Store(tmp_path / "w.db").open()
    hub = Hub(store)
    await hub.start()
    ctx = CheckoutContext(
        store=store, ledger=make_ledger(), sockets=Sockets("checkout", hub, Limits(), None),
        languages=["de"], explorers={}, frame_ancestors=["https://shop.example"], hsts=True,
    )
    client = await aiohttp_client(create_checkout_app(ctx))
    resp = await client.get("/pay/nope")
    assert "frame-ancestors https://shop.example" in resp.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in resp.headers
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Rechnung nicht gefunden" in await resp.text()
    await store.close()


async def test_socket_counts_confirmations_as_heads_move(env: Env) -> None:
    inv = await env.invoice()
    await env.store.run(pay, env.ledger, inv, inv.amount, deep=False, now=clock())
    ws = await env.client.ws_connect(f"/pay/{inv.id}/ws")
    first = json.loads((await ws.receive(timeout=5)).data)
    assert (first["status"], first["confirmations"]) == ("WAITING_FOR_CONFIRMATIONS", 1)
    view = env.ledger.views[NET]
    env.ledger.views[NET] = replace(view, head=view.head + 1)
    env.hub.heads(NET, view.head + 1)  # a new head, no event
    again = json.loads((await ws.receive(timeout=5)).data)
    assert (again["status"], again["confirmations"]) == ("WAITING_FOR_CONFIRMATIONS", 2)
    assert again["payments"][0]["confirmations"] == 2
    await ws.close()


async def test_a_head_after_a_change_never_sends_an_older_state(env: Env) -> None:
    """A recount queued behind a status change is resolved when sent: the page never goes
    back from COMPLETED to an older status."""
    inv = await env.invoice()
    await env.store.run(pay, env.ledger, inv, inv.amount, deep=False, now=clock())
    ws = await env.client.ws_connect(f"/pay/{inv.id}/ws")
    assert json.loads((await ws.receive(timeout=5)).data)["status"] == "WAITING_FOR_CONFIRMATIONS"
    await env.store.run(pay, env.ledger, inv, 1, deep=True, now=clock())  # completes it
    await env.hub.pump()
    env.hub.heads(NET, env.ledger.views[NET].head)  # queued right behind the change
    statuses = [json.loads((await ws.receive(timeout=5)).data)["status"]]
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            statuses.append(json.loads((await ws.receive(timeout=0.3)).data)["status"])
    assert "COMPLETED" in statuses
    after = statuses[statuses.index("COMPLETED"):]
    assert after == ["COMPLETED"] * len(after), statuses
    await ws.close()
