"""The dashboard's side of payment methods (issue 19), through a real aiohttp test client on
the real API app, store and ledger (the `env` of test_dashboard.py): the create form with
several methods goes through `requests.parse_create` and the API's group commit, refusals
come back beside their fields with every value kept, and the pages show a method invoice
before and after the customer chose (null network/asset/amount)."""

from __future__ import annotations

import re

import pytest

from tests.unit.test_dashboard import Env, error_of, signed_in, unescape
from tests.unit.test_dashboard import env as base_env  # noqa: F401 (its fixture, `base_env`)
from tests.unit.test_ledger import NET
from watcher import requests as rq
from watcher.errors import Invalid
from watcher.models import Method
from watcher.web import dashboard_forms as forms

USDT = f"{NET}:USDT"
ETH = f"{NET}:ETH"


@pytest.fixture
async def env(base_env: Env) -> Env:  # noqa: F811 (the fixture imported above)
    """test_dashboard's `env`, signed in."""
    return await signed_in(base_env)


async def priced(env: Env) -> None:
    """Rates for both assets (USDT 0.92 EUR, ETH 3000 EUR) and an xpub, so every configured
    pair is a method the customer may choose."""
    from tests.hdkeys import xpub
    from watcher.derivation import Deriver
    from watcher.pricing.book import RateBook
    from watcher.pricing.sources import FixedSource

    book = RateBook({"USDT/EUR": [FixedSource("0.92")], "ETH/EUR": [FixedSource("3000")]},
                    3600)
    await book.refresh(env.clock())
    env.ledger.rates = book
    env.ledger.deriver = Deriver(xpub(), "0/{index}")


def methods_form(**values: str) -> dict[str, str]:
    return {"kind": "methods", "price": "46", "currency": "EUR", "title": "Order 1042",
            "description": "Two bags of coffee\nground", "ttl": "900", **values}


async def post_methods(
    env: Env, methods: list[str], **values: str
) -> tuple[int, str, str | None]:
    """The create form sent with these method boxes ticked: (status, page, Location)."""
    data = [(k, v) for k, v in methods_form(**values).items()]
    data += [("method", m) for m in methods] + [("csrf", env.csrf)]
    resp = await env.client.post("/dashboard/invoices/new", data=data, allow_redirects=False)
    page = await resp.text()
    assert "Traceback" not in page
    return resp.status, page, resp.headers.get("Location")


# ---------------------------------------------------------------- the form's body


def test_the_methods_form_is_the_apis_methods_body() -> None:
    body, errors = forms.create_body(
        {"kind": "methods", "network": NET, "asset": "USDT", "amount": "5", "pricing": "amount",
         "address_mode": "dedicated", "address": "0xabc", "price": "46", "currency": "EUR",
         "title": " Order 7 ", "description": "beans"},
        [USDT, ETH, USDT],
    )
    # what only "one network and asset" asks for is not sent; a box ticked twice once
    assert body == {"methods": [{"network": NET, "asset": "USDT"},
                                {"network": NET, "asset": "ETH"}],
                    "price": "46", "currency": "EUR", "title": "Order 7",
                    "description": "beans"}
    assert errors == {}
    body, errors = forms.create_body({"kind": "methods", "price": "1", "currency": "EUR"}, [])
    assert body["methods"] == []  # none ticked: the API refuses it too, the form says how
    assert errors == {"methods": "Tick at least one method the customer may choose."}
    _, errors = forms.create_body({"kind": "methods"}, ["anvil"])
    assert "NETWORK:ASSET" in errors["methods"]
    # the classic form ignores ticked boxes, and sends title/description too
    body, _ = forms.create_body({"network": NET, "asset": "USDT", "amount": "5",
                                 "title": "T"}, [USDT])
    assert body == {"network": NET, "asset": "USDT", "amount": "5", "title": "T"}
    assert forms.parse_method(" polygon : USDT ") == {"network": "polygon", "asset": "USDT"}
    assert forms.parse_method("polygon:") is None and forms.parse_method(":USDT") is None


async def test_the_form_offers_every_configured_pair(env: Env) -> None:
    _, page = await env.get("/dashboard/invoices/new")
    boxes = re.findall(r'<input type="checkbox" name="method" value="([^"]+)"', page)
    assert boxes == [ETH, USDT]
    assert 'name="kind" value="methods"' in page and 'id="title"' in page
    # no xpub: ETH has no shared address here, the page says it cannot be chosen
    eth = page[page.index(f'value="{ETH}"'):page.index(f'value="{USDT}"')]
    assert "cannot be chosen" in eth
    assert "shared address" in page[page.index(f'value="{USDT}"'):]


# ---------------------------------------------------------------- creating


async def test_a_methods_invoice_created_from_the_form_and_shown(env: Env) -> None:
    await priced(env)
    status, _, location = await post_methods(env, [USDT, ETH])
    assert status == 303 and location
    found = re.fullmatch(r"/dashboard/invoices/([0-9a-f-]{36})\?created=1", location)
    assert found
    inv = await env.invoice(found.group(1))
    assert inv.methods == [Method(NET, "USDT"), Method(NET, "ETH")]
    assert (inv.network, inv.asset, inv.amount, inv.to_addr) == (None, None, None, None)
    assert (inv.title, inv.description, inv.price, inv.currency) == (
        "Order 1042", "Two bags of coffee\nground", "46", "EUR")
    assert inv.expire_at == env.clock() + 900
    assert [o.changes[0].event for o in env.outcomes] == ["invoice.created"]
    # the same request as JSON is the same invoice (the API's parser made it)
    body, _ = forms.create_body(methods_form(), [USDT, ETH])
    req = rq.parse_create(body, env.ledger.networks, env.clock(), env.ledger.rates,
                          derivable=True)
    assert req.fingerprint == inv.fingerprint

    _, page = await env.get(location)
    text = unescape(page)
    assert 'id="inv-title">Order 1042<' in text and "Two bags of coffee\nground" in text
    assert 'id="method-pending"' in page and "Method not chosen yet" in page
    rows = re.findall(r'<tr data-method="([^"]+)" data-chosen="(yes|no)">(.*?)</tr>', page,
                      re.S)
    assert [(m, c) for m, c, _ in rows] == [(USDT, "no"), (ETH, "no")]
    assert "50 USDT" in rows[0][2]  # 46 EUR at 0.92 EUR per USDT
    assert "0.015333333333333334 ETH" in rows[1][2]  # 46 / 3000 rounded up (18 decimals)
    assert not re.search(r"\bNone\b(?! yet)", re.sub(r"<[^>]+>", " ", page))  # no null shown
    # as Python's None

    _, listing = await env.get("/dashboard/invoices")
    row = re.search(rf'<tr data-invoice="{inv.id}">(.*?)</tr>', listing, re.S)
    assert row and "choice pending" in row.group(1) and "46 EUR" in row.group(1)
    assert "Order 1042" in row.group(1) and "None" not in row.group(1)

    # the customer chooses USDT: the page shows the locked amount, the chosen method
    chosen, _ = await env.store.run(env.ledger.choose, inv.id, NET, "USDT", env.clock())
    assert chosen.to_addr is not None
    _, page = await env.get(f"/dashboard/invoices/{inv.id}")
    assert 'id="method-pending"' not in page
    rows = re.findall(r'<tr data-method="([^"]+)" data-chosen="(yes|no)">', page)
    assert rows == [(USDT, "yes"), (ETH, "no")]
    summary = re.search(r'<p class="summary">(.*?)</p>', page, re.S)
    assert summary and "USDT</strong> on " + NET in summary.group(1)
    _, listing = await env.get("/dashboard/invoices")
    row = re.search(rf'<tr data-invoice="{inv.id}">(.*?)</tr>', listing, re.S)
    assert row and "choice pending" not in row.group(1) and " USDT" in row.group(1)


@pytest.mark.parametrize(
    "ticked,values,name",
    [
        ([USDT, ETH], {"price": ""}, None),  # no price: the API's field (price or currency)
        ([], {}, "methods"),  # none ticked
        ([USDT, f"{NET}:DOGE"], {}, "methods"),  # not configured (a forged box)
        ([USDT], {"currency": "JPY"}, None),  # no rate prices USDT in JPY
        ([USDT], {"title": "t" * 201}, "title"),
        ([USDT], {"description": "d" * 1001}, "description"),
    ],
)
async def test_a_refused_methods_create_keeps_every_value(
    env: Env, ticked: list[str], values: dict[str, str], name: str | None
) -> None:
    await priced(env)
    status, page, _ = await post_methods(env, ticked, **values)
    assert status == 422
    body, mine = forms.create_body(methods_form(**values), ticked)
    with pytest.raises(Invalid) as refused:
        rq.parse_create(body, env.ledger.networks, env.clock(), env.ledger.rates,
                        derivable=True)
    field = refused.value.field
    assert field is not None and (name is None or field == name)
    # the API's message beside its field (the form's own, for what the form adds)
    assert error_of(page, field) == mine.get(field, refused.value.message)
    text = unescape(page)
    for box in ticked:  # the boxes as they were ticked, the others not
        if box.endswith(":DOGE"):
            continue
        assert re.search(rf'value="{re.escape(box)}" checked', page), box
    for box in {USDT, ETH} - set(ticked):
        assert not re.search(rf'value="{re.escape(box)}" checked', page), box
    assert re.search(r'name="kind" value="methods" checked', page)
    for key, value in methods_form(**values).items():
        if key != "kind" and value:
            assert value in text, key
    assert env.outcomes == []


async def test_methods_with_no_price_say_so_beside_the_price(env: Env) -> None:
    await priced(env)
    status, page, _ = await post_methods(env, [USDT, ETH], price="")
    assert status == 422
    message = error_of(page, "price") or error_of(page, "currency") or error_of(page, "methods")
    assert message and "price" in message
    assert 'aria-invalid="true"' in page


async def test_a_method_without_an_address_is_refused_beside_the_boxes(env: Env) -> None:
    await priced(env)
    env.ledger.deriver = None  # ETH has no shared address and there is no xpub now
    status, page, _ = await post_methods(env, [USDT, ETH])
    assert status == 422
    assert error_of(page, "methods")
    assert 'aria-describedby="err-methods"' in page
    assert env.outcomes == []


async def test_a_late_payment_to_an_earlier_method_is_shown_in_its_asset(env: Env) -> None:
    """After a switch, a transfer to the first method's address is a late payment of the
    invoice, listed with its own asset."""
    from tests.unit.test_ledger import OTHER, tx_hash
    from watcher.ledger import ScanBatch
    from watcher.models import Transfer

    await priced(env)
    status, _, location = await post_methods(env, [USDT, ETH])
    assert status == 303 and location
    invoice_id = location.split("/")[-1].split("?")[0]
    now = env.clock()
    first, _ = await env.store.run(env.ledger.choose, invoice_id, NET, "USDT", now)
    env.clock.now += 5
    await env.store.run(env.ledger.choose, invoice_id, NET, "ETH", env.clock())
    assert first.to_addr and first.amount
    # as the follower's index routes it (tests/unit/test_methods.py): late, of this invoice
    late = Transfer(NET, "USDT", tx_hash(), 0, OTHER, first.to_addr, first.amount, 10,
                    tx_hash(), env.clock.now + 5, invoice_id=invoice_id, kind="late")
    await env.store.run(lambda db: env.ledger.apply_scan(
        db, ScanBatch(NET, 20, None, env.clock.now + 6, 20, [late]), env.clock.now + 6))
    data = env.ledger.render(await env.invoice(invoice_id))
    assert [(p["network"], p["asset"]) for p in data["latePayments"]] == [(NET, "USDT")]
    _, page = await env.get(f"/dashboard/invoices/{invoice_id}")
    assert "earlier method: USDT on " + NET in page
    assert f"{data['latePayments'][0]['amount']} USDT" in page


async def test_confirm_and_assign_pages_of_an_unchosen_invoice(env: Env) -> None:
    """The cancel confirmation and the assign step read well without a network, asset or
    amount; assigning a transfer to it is refused with the ledger's message."""
    from tests.unit.test_ledger import OTHER, tx_hash
    from watcher.ledger import ScanBatch
    from watcher.models import Transfer

    await priced(env)
    status, _, location = await post_methods(env, [USDT, ETH])
    assert status == 303 and location
    invoice_id = location.split("/")[-1].split("?")[0]
    now = env.clock()

    _, page = await env.get(f"/dashboard/invoices/{invoice_id}/cancel")
    summary = re.search(r'<p class="summary">(.*?)</p>', page, re.S)
    assert summary and "choice pending" in summary.group(1) and "46 EUR" in summary.group(1)
    assert "None" not in summary.group(1) and "paid" not in summary.group(1)

    loose = Transfer(NET, "USDT", tx_hash(), 0, OTHER, OTHER, 1_234_567, 10, tx_hash(), now)
    await env.store.run(
        lambda db: env.ledger.apply_scan(db, ScanBatch(NET, 10, None, now, 10, [loose]), now))
    _, page = await env.get(f"/dashboard/transfers/{loose.id}/assign?invoiceId={invoice_id}")
    assert "payment method is not chosen yet" in page
    assert not re.search(r"\bNone\b", re.sub(r"<[^>]+>", " ", page))
    resp, _ = await env.post(f"/dashboard/transfers/{loose.id}/assign",
                             {"invoiceId": invoice_id})
    assert resp.status == 303
    assert "no payment method chosen yet" in await env.flash("/dashboard/transfers")
    assert (await env.invoice(invoice_id)).payments == []
