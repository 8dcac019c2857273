"""The dashboard's payment methods (issue 19) in a real headless Chromium against the real
daemon following a real anvil: a methods invoice created from the form (a refused one first:
methods with no price, the message beside the field and every value kept), seen in the list
("choice pending") and on its page (title, description, the methods with their amounts,
"Method not chosen yet"); chosen through the API, paid on chain, COMPLETED in the list
without a reload.

The new-invoice form with methods and the page of an unchosen methods invoice are
photographed at 1280 and 390 px (`dashboard-methods-*.png`, copied to `$PW_SCREENSHOTS`
when it is set: `PW_SCREENSHOTS=docs/img` refreshes the documentation's pictures)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.integration.daemonproc import NETWORK, Daemons
from tests.integration.receiver import Receiver
from tests.integration.test_dashboard_browser import (
    EXPLORER,
    PHONE,
    SHARED,
    WAIT,
    Dash,
    row_status,
    sign_in,
)
from tests.integration.test_dashboard_browser import (  # noqa: F401 (its fixture)
    browser as chromium,
)
from watcher.devchain import DevChain

#: USDT's shared address (ETH's is test_dashboard_browser's SHARED)
SHARED_USDT = "0x00000000000000000000000000000000000C0FFE"
ETH_BOX = f'input[name="method"][value="{NETWORK}:ETH"]'
USDT_BOX = f'input[name="method"][value="{NETWORK}:USDT"]'


@pytest.fixture
async def browser(chromium: Browser) -> Browser:  # noqa: F811 (the fixture imported above)
    return chromium


@pytest.fixture
async def dash(
    tmp_path: Path, chain: DevChain, daemons: Daemons, rx: Receiver, token: str
) -> AsyncIterator[Dash]:
    """The daemon with both assets at a shared address and a rate for each in USD."""
    config = daemons.config(
        callback_url=rx.url, confirmations=1,
        extra={
            "checkout": {"enabled": True, "listen": "127.0.0.1:0"},
            f"networks.{NETWORK}": {
                "explorer": EXPLORER,
                "native": {"symbol": "ETH", "decimals": 18, "shared_address": SHARED},
                "tokens": [{"symbol": "USDT", "address": token, "decimals": 6,
                            "shared_address": SHARED_USDT}],
            },
            "rates.pairs": {"ETH/USD": [{"fixed": "2500"}], "USDT/USD": [{"fixed": "1"}]},
        },
    )
    daemon = await daemons.start(config)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    yield Dash(daemon, shots)


async def fill_methods_form(page: Page, price: str) -> None:
    await page.check('input[name="kind"][value="methods"]')
    await page.check(USDT_BOX)
    await page.check(ETH_BOX)
    await page.fill("#price", price)
    await page.fill("#currency", "USD")
    await page.fill("#title", "Order 1042")
    await page.fill("#description", "Two bags of coffee beans, 500 g each")
    await page.fill("#externalId", "order-1042")


async def test_a_methods_invoice_from_the_form_to_completed(
    dash: Dash, browser: Browser, chain: DevChain, payer: str, token: str
) -> None:
    page = await dash.page(browser)
    await sign_in(page, dash)
    await page.click("nav.nav >> text=New invoice")
    await expect(page.locator("h1")).to_have_text("New invoice")
    # one network and asset first: the method boxes are hidden, the amount is there
    await expect(page.locator("#methods")).to_be_hidden()
    await expect(page.locator("#amount")).to_be_visible()
    await page.check('input[name="kind"][value="methods"]')
    # several methods: always a price, never an amount or an address of one asset
    await expect(page.locator("#methods")).to_be_visible()
    await expect(page.locator("#amount")).to_be_hidden()
    await expect(page.locator("#network")).to_be_hidden()
    await expect(page.locator('input[name="address_mode"]').first).to_be_hidden()
    await expect(page.locator("#price")).to_be_visible()
    await expect(page.locator("input[name=method]")).to_have_count(2)

    # methods with no price: refused, the API's message beside the price, nothing lost
    await fill_methods_form(page, "")
    await page.click("#create")
    await expect(page.locator("#form-problem")).to_be_visible()
    await expect(page.locator("#err-price")).to_contain_text("required with methods")
    await expect(page.locator("#price")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator('input[name="kind"][value="methods"]')).to_be_checked()
    await expect(page.locator(USDT_BOX)).to_be_checked()
    await expect(page.locator(ETH_BOX)).to_be_checked()
    await expect(page.locator("#methods")).to_be_visible()
    await expect(page.locator("#title")).to_have_value("Order 1042")
    await expect(page.locator("#description")).to_have_value(
        "Two bags of coffee beans, 500 g each")
    await expect(page.locator("#currency")).to_have_value("USD")
    await expect(page.locator("#externalId")).to_have_value("order-1042")
    listed = await dash.api("GET", "/v1/invoices")
    assert listed["data"] == []  # nothing was created

    # no box ticked: the message beside the boxes
    await page.uncheck(USDT_BOX)
    await page.uncheck(ETH_BOX)
    await page.fill("#price", "25")
    await page.click("#create")
    await expect(page.locator("#err-methods")).to_have_text(
        "Tick at least one method the customer may choose.")
    await expect(page.locator("#methods")).to_have_attribute("aria-describedby", "err-methods")
    await expect(page.locator("#price")).to_have_value("25")

    # the form as the merchant fills it in (a fresh one): photographed, then created
    await page.click("nav.nav >> text=New invoice")
    await fill_methods_form(page, "25")
    await page.locator("#externalId").blur()
    await dash.shot(page, "methods-new")
    await page.click("#create")
    await expect(page.locator("#created-h")).to_have_text("Invoice created")
    invoice_id = page.url.split("/invoices/")[1].split("?")[0]
    inv = await dash.api("GET", f"/v1/invoices/{invoice_id}")
    assert (inv["method"], inv["network"], inv["asset"], inv["amount"], inv["to"]) == (
        None, None, None, None, None)
    # in the form's order (a box's place on the page, not when it was ticked)
    assert [(m["asset"], m["amount"]) for m in inv["methods"]] == [("ETH", "0.01"),
                                                                    ("USDT", "25")]
    assert (inv["title"], inv["price"], inv["currency"], inv["externalId"]) == (
        "Order 1042", "25", "USD", "order-1042")

    # its page: title, description, the methods and their amounts, not chosen yet
    await expect(page.locator("#inv-title")).to_have_text("Order 1042")
    await expect(page.locator("#inv-description")).to_have_text(
        "Two bags of coffee beans, 500 g each")
    await expect(page.locator("#method-pending")).to_contain_text("Method not chosen yet")
    rows = page.locator("#methods-table tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("0.01 ETH")
    await expect(rows.nth(1)).to_contain_text("25 USDT")
    await expect(page.locator('#methods-table tr[data-chosen="yes"]')).to_have_count(0)
    link = rows.nth(1).locator("a")  # the token contract, on the explorer
    assert (await link.get_attribute("href")) == f"{EXPLORER}/address/{token}"
    assert "None" not in (await page.locator("main").inner_text()).replace("None yet", "")
    await dash.shot(page, "methods-invoice")

    # the list: "choice pending", no network yet
    await page.click("nav.nav >> text=Invoices")
    row = page.locator(f'tr[data-invoice="{invoice_id}"]')
    await expect(row.locator('td[data-label="Amount"]')).to_contain_text("25 USD")
    await expect(row.locator('td[data-label="Amount"]')).to_contain_text("choice pending")
    await expect(row.locator('td[data-label="Network"]')).to_contain_text("—")
    await expect(row).to_contain_text("Order 1042")
    await expect(row_status(page, invoice_id)).to_have_attribute("data-status", "PENDING")
    await expect(page.locator("#dash-live")).to_have_attribute("data-state", "live")

    # the customer chooses (here through the API): the open invoice page says it changed
    # (its status is still PENDING). A choice made before the page's socket subscribed
    # is not pushed, so switch until one is.
    await page.goto(f"{dash.base}/invoices/{invoice_id}")
    stale = page.locator("#dash-stale")
    await expect(stale).to_be_hidden()
    for asset in ("ETH", "USDT") * 5:
        await dash.api("POST", f"/v1/invoices/{invoice_id}/method",
                       {"network": NETWORK, "asset": asset})
        try:
            await expect(stale).to_be_visible(timeout=2_000)
            break
        except AssertionError:
            continue
    await expect(stale).to_be_visible()
    await expect(stale).to_have_text("The invoice changed. Reload for the details.")

    # ... USDT in the end, and pays: live in the list
    chosen = await dash.api("POST", f"/v1/invoices/{invoice_id}/method",
                            {"network": NETWORK, "asset": "USDT"})
    assert chosen["to"].lower() == SHARED_USDT.lower() and chosen["amount"] == "25"
    await page.click("nav.nav >> text=Invoices")
    await expect(page.locator("#dash-live")).to_have_attribute("data-state", "live")
    await page.evaluate("window.__notReloaded = 19")
    chain.mint(token, payer, 25_000_000)
    chain.send_token(token, payer, SHARED_USDT, 25_000_000)
    chain.mine(1)
    await expect(row_status(page, invoice_id)).to_have_attribute(
        "data-status", "COMPLETED", timeout=WAIT)
    await expect(page.locator(f'[data-live-paid="{invoice_id}"]')).to_have_text("25")
    assert await page.evaluate("window.__notReloaded") == 19

    # the invoice's page now: the chosen method, its amount locked, the payment
    await page.goto(f"{dash.base}/invoices/{invoice_id}")
    await expect(page.locator("#method-pending")).to_have_count(0)
    usdt_row = page.locator(f'#methods-table tr[data-method="{NETWORK}:USDT"]')
    await expect(usdt_row).to_have_attribute("data-chosen", "yes")
    await expect(page.locator("p.summary")).to_contain_text(f"25 USDT on {NETWORK}")
    await expect(page.locator("#payments-h .count")).to_have_text("1")
    events = page.locator(".event strong")
    await expect(events.first).to_have_text("invoice.created")
    await expect(events.nth(1)).to_have_text("invoice.method_selected")
    dash.check()
    await page.context.close()


async def test_an_unchosen_methods_invoice_on_a_phone(dash: Dash, browser: Browser) -> None:
    """At 390 px: the list and the invoice page of an invoice whose customer has not chosen,
    every cell readable (no "None", no overflow past the viewport)."""
    made = await dash.api("POST", "/v1/invoices", {
        "methods": [{"network": NETWORK, "asset": "ETH"}, {"network": NETWORK, "asset": "USDT"}],
        "price": "12.5", "currency": "USD", "title": "A title long enough to wrap on a phone "
        "screen without pushing the page sideways", "description": "Line one\nLine two",
    }, expect=201)
    page = await dash.page(browser, PHONE)
    await sign_in(page, dash)
    row = page.locator(f'tr[data-invoice="{made["id"]}"]')
    await expect(row).to_contain_text("choice pending")
    await page.goto(f"{dash.base}/invoices/{made['id']}")
    await expect(page.locator("#method-pending")).to_be_visible()
    await expect(page.locator("#inv-description")).to_have_text(re.compile("Line one\\s+Line two"))
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    # a cancel is offered (PENDING) and works on an unchosen invoice
    await page.click("#action-cancel")
    await page.click("#confirm")
    await expect(page.locator("#flash")).to_have_text("Done: the invoice is now VOIDED.")
    await expect(page.locator("p.summary")).to_contain_text("no method chosen")
    await expect(page.locator("#method-pending")).to_contain_text("No payment method was chosen")
    dash.check()
    await page.context.close()
