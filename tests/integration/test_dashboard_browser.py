"""The merchant dashboard in a real headless Chromium (Debian's `chromium`, driven by
Playwright) against the real daemon (`payment-watcher run`, a subprocess) following a real
anvil: sign in, create an invoice through the form, pay it and watch it turn COMPLETED in
the list without a reload, cancel one behind its confirmation step, assign an unmatched
transfer, redeliver a callback that failed while its receiver was down, sign out; a form
sent without its CSRF token is refused; no request leaves 127.0.0.1 and no script error.

Every page is photographed at 1280 px and 390 px under the test's tmp dir, and copied to
`$PW_SCREENSHOTS` when it is set (to look at them)."""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import zxingcpp
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.integration.daemonproc import DaemonProc, Daemons, poll
from tests.integration.receiver import Receiver
from watcher.devchain import DevChain

CHROMIUM = os.environ.get("PAYMENT_WATCHER_CHROMIUM", "/usr/bin/chromium")
EXPLORER = "https://explorer.invalid"
SHARED = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
WAIT = 20_000  # ms: a status change needs a block and a follower pass
expect.set_options(timeout=15_000)
#: What a browser logs for a page answered with 4xx on purpose (a refused form, a wrong
#: key): not a script error.
_EXPECTED_STATUS = re.compile(r"Failed to load resource: the server responded with a status "
                              r"of (401|403|409|422|429)")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():  # never a skip: CI installs Debian's chromium
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)", pytrace=False)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


@dataclass
class Dash:
    daemon: DaemonProc
    shots: Path
    urls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.daemon.base_url + "/dashboard"

    async def page(self, browser: Browser, viewport: dict[str, int] = DESKTOP) -> Page:
        context = await browser.new_context(
            viewport=viewport, permissions=["clipboard-read", "clipboard-write"]
        )
        page = await context.new_page()
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("websocket", lambda ws: self.urls.append(ws.url))
        page.on("console", lambda m: self.errors.append(m.text)
                if m.type == "error" and not _EXPECTED_STATUS.search(m.text) else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        return page

    async def shot(self, page: Page, name: str) -> None:
        """The page at both widths (the viewport goes back to where it was)."""
        before = page.viewport_size or DESKTOP
        for size in (DESKTOP, PHONE):
            await page.set_viewport_size(size)
            path = self.shots / f"dashboard-{name}-{size['width']}.png"
            await page.screenshot(path=str(path), full_page=True)
            extra = os.environ.get("PW_SCREENSHOTS")
            if extra:
                Path(extra).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(extra) / path.name)
        await page.set_viewport_size(before)

    def check(self) -> None:
        assert self.urls, "the pages made no request at all"
        for url in self.urls:
            assert urlsplit(url).hostname == "127.0.0.1", f"a request left 127.0.0.1: {url}"
        assert not self.errors, self.errors

    async def api(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        return await self.daemon.ok(method, path, body, expect)


@pytest.fixture
async def dash(
    tmp_path: Path, chain: DevChain, daemons: Daemons, rx: Receiver
) -> AsyncIterator[Dash]:
    """The daemon (stopped before `chain` goes back to its snapshot)."""
    config = daemons.config(
        callback_url=rx.url,
        extra={
            "callbacks": {"max_age": 2},  # a receiver that is down fails within seconds
            "checkout": {"enabled": True, "listen": "127.0.0.1:0"},
            "networks.anvil": {
                "explorer": EXPLORER,
                "native": {"symbol": "ETH", "decimals": 18, "shared_address": SHARED},
            },
            "rates.pairs": {"ETH/USD": [{"fixed": "2500"}]},
        },
    )
    daemon = await daemons.start(config)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    yield Dash(daemon, shots)


async def sign_in(page: Page, dash: Dash) -> None:
    await page.goto(dash.base + "/invoices")
    await expect(page).to_have_url(re.compile(r"/dashboard/signin\?next="))
    await page.fill("#key", dash.daemon.api_key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(dash.base + "/invoices")


async def read_qr(page: Page, selector: str) -> str:
    await page.wait_for_function(
        "(s) => { const i = document.querySelector(s); return i && i.complete && "
        "i.naturalWidth > 0; }", arg=selector,
    )
    png = await page.locator(selector).screenshot()
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(found) == 1, "no QR code readable on the page"
    return str(found[0].text)


def row_status(page: Page, invoice_id: str) -> Any:
    return page.locator(f'tr[data-invoice="{invoice_id}"] .badge')


# ---------------------------------------------------------------- tests


async def test_the_merchant_works_through_the_dashboard(
    dash: Dash, browser: Browser, chain: DevChain, payer: str
) -> None:
    page = await dash.page(browser)
    # a wrong key: the form again with one message; then the right one
    await page.goto(dash.base)
    await expect(page).to_have_url(re.compile(r"/dashboard/signin"))
    await page.fill("#key", "not-the-key")
    await page.click("button[type=submit]")
    await expect(page.locator("#signin-error")).to_have_text("That API key is not valid.")
    assert "not-the-key" not in await page.content()
    await dash.shot(page, "signin")
    await page.fill("#key", dash.daemon.api_key)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Invoices")

    # a new invoice: the payload is checked in place, a refused value comes back beside
    # its field with the API's message, then it is created and shows its link and QR
    await page.click("nav.nav >> text=New invoice")
    await expect(page.locator("h1")).to_have_text("New invoice")
    await page.select_option("#asset", "ETH")
    await page.check('input[name="address_mode"][value="dedicated"]')
    to = DevChain.new_account()
    await page.fill("#address", to)
    await page.fill("#amount", "0.5000000000000000001")
    await page.fill("#externalId", "order-dash-1")
    await page.fill("#payload", '{"cart": ')
    await expect(page.locator("#payload-check")).to_contain_text("payload is not valid JSON")
    await expect(page.locator("#payload")).to_have_attribute("aria-invalid", "true")
    await page.fill("#payload", '{"cart": 42}')
    await expect(page.locator("#payload-check")).to_have_text("A valid JSON object.")
    await page.click("#create")
    await expect(page.locator("#err-amount")).to_have_text(
        "amount has more than 18 decimal places")
    await expect(page.locator("#amount")).to_have_value("0.5000000000000000001")
    await expect(page.locator("#address")).to_have_value(to)  # the form as it was sent
    await dash.shot(page, "new-invoice")
    await page.fill("#amount", "0.5")
    await page.click("#create")
    await expect(page.locator("#created-h")).to_have_text("Invoice created")
    invoice_id = page.url.split("/invoices/")[1].split("?")[0]
    url = await page.locator("#checkout-link").get_attribute("href")
    assert url and url.endswith(f"/pay/{invoice_id}")
    assert await read_qr(page, "#checkout-qr") == url
    inv = await dash.api("GET", f"/v1/invoices/{invoice_id}")
    assert (inv["amount"], inv["to"], inv["externalId"], inv["payload"]) == (
        "0.5", to, "order-dash-1", {"cart": 42})
    await dash.shot(page, "invoice-created")

    # the list follows the payment live: no reload
    other = await dash.daemon.create("ETH", "1", DevChain.new_account(), ttl=900)
    await page.click("nav.nav >> text=Invoices")
    await expect(row_status(page, invoice_id)).to_have_attribute("data-status", "PENDING")
    await expect(page.locator("#dash-live")).to_have_attribute("data-state", "live")
    await page.evaluate("window.__notReloaded = 42")
    await chain.aio.send_native(payer, to, 5 * 10**17)
    await expect(row_status(page, invoice_id)).to_have_attribute(
        "data-status", "WAITING_FOR_CONFIRMATIONS", timeout=WAIT)
    await chain.aio.mine(1)
    await expect(row_status(page, invoice_id)).to_have_attribute(
        "data-status", "COMPLETED", timeout=WAIT)
    await expect(row_status(page, invoice_id)).to_have_text("Completed")
    await expect(page.locator(f'[data-live-paid="{invoice_id}"]')).to_have_text("0.5")
    assert await page.evaluate("window.__notReloaded") == 42
    await dash.shot(page, "invoices")

    # cancel the other one, behind its confirmation step, with the keyboard only: the skip
    # link first, then links and buttons by focus and Enter
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    await page.focus(f'tr[data-invoice="{other}"] a')
    await page.keyboard.press("Enter")
    await page.focus("#action-cancel")
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm-h")).to_have_text("Cancel this invoice?")
    await dash.shot(page, "confirm-cancel")
    await page.focus("#confirm")
    await page.keyboard.press("Enter")
    await expect(page.locator("#flash")).to_have_text("Done: the invoice is now VOIDED.")
    await expect(page.locator(".head .badge")).to_have_attribute("data-status", "VOIDED")
    assert (await dash.api("GET", f"/v1/invoices/{other}"))["status"] == "VOIDED"
    await expect(page.locator("#action-cancel")).to_have_count(0)

    # a form without its CSRF token is refused, and nothing is done
    third = await dash.daemon.create("ETH", "0.2", DevChain.new_account(), ttl=900)
    await page.goto(f"{dash.base}/invoices/{third}/cancel")
    await page.evaluate(
        "document.getElementById('confirm').form.querySelector('input[name=csrf]').remove()")
    await page.click("#confirm")
    await expect(page.locator("#error-message")).to_contain_text("Nothing was done")
    assert (await dash.api("GET", f"/v1/invoices/{third}"))["status"] == "PENDING"

    # a customer paid the shared address an amount no invoice asks for: assign it
    await chain.aio.send_native(payer, SHARED, 123 * 10**15)
    await chain.aio.mine(1)

    async def listed() -> bool:
        await page.goto(f"{dash.base}/transfers")
        return await page.locator("tr[data-transfer]").count() == 1

    await poll(listed, 20, 0.5, what="the unmatched transfer on the page")
    await expect(page.locator("tr[data-transfer]")).to_contain_text("0.123 ETH")
    await dash.shot(page, "transfers")
    await page.fill("tr[data-transfer] input[name=invoiceId]", third)
    await page.click("tr[data-transfer] button")
    await expect(page.locator("#assign-h")).to_have_text("Assign this transfer?")
    await expect(page.locator("#fit")).to_contain_text("will be PARTIAL once it is confirmed")
    await dash.shot(page, "assign")
    await page.click("#confirm")
    await expect(page.locator("#flash")).to_contain_text("assigned: the invoice is now")
    await expect(page.locator(".head .badge")).to_have_attribute(
        "data-status", re.compile("PARTIAL|WAITING_FOR_CONFIRMATIONS"))
    got = await dash.api("GET", f"/v1/invoices/{third}")
    assert got["amountPaid"] == "0.123" and got["payments"][0]["assigned"] is True

    # the networks page
    await page.click("nav.nav >> text=Networks")
    await expect(page.locator("section.network h2")).to_contain_text("anvil")
    await expect(page.locator(".rates")).to_contain_text("ETH/USD")
    # one instance on its own database follows every network itself
    await expect(page.locator("section.network .leader")).to_contain_text("this instance")
    await dash.shot(page, "networks")

    # the first invoice's page, with its payment and its callbacks, as the merchant sees it
    await page.goto(f"{dash.base}/invoices/{invoice_id}")
    await expect(page.locator(".event")).to_have_count(3)
    link = page.locator("#payments-h + table a").first
    assert (await link.get_attribute("href") or "").startswith(f"{EXPLORER}/tx/0x")
    await dash.shot(page, "invoice")

    # sign out: every page leads to the sign-in again
    await page.click("#signout")
    await expect(page.locator("#signin-notice")).to_have_text("You are signed out.")
    await page.goto(f"{dash.base}/invoices/{invoice_id}")
    await expect(page).to_have_url(re.compile(r"/dashboard/signin\?next="))
    dash.check()
    await page.context.close()


async def test_a_callback_that_failed_while_its_receiver_was_down_is_redelivered(
    dash: Dash, browser: Browser
) -> None:
    async with Receiver() as down:
        hook = down.url
    assert down._runner is None  # nothing listens there now
    invoice_id = await dash.daemon.create("ETH", "1", DevChain.new_account(), ttl=900,
                                          callbackUrl=hook)

    async def failed() -> bool:
        events = await dash.api("GET", f"/v1/invoices/{invoice_id}/events")
        delivery = events["data"][0]["delivery"]
        return bool(delivery["state"] == "failed")

    await poll(failed, 20, 0.25, what="the callback given up")
    page = await dash.page(browser)
    await sign_in(page, dash)
    await page.click("nav.nav >> text=Callbacks")
    row = page.locator("tr[data-event]")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("invoice.created")
    await expect(row).to_contain_text("ClientConnectorError")
    await dash.shot(page, "callbacks")
    async with Receiver(port=down.port) as back:  # the receiver is up again
        await row.locator("button").click()
        await expect(page.locator("#flash")).to_contain_text("is queued again")
        await back.wait_for(lambda r: len(r.requests) >= 1, timeout=20)
        assert back.requests[0].invoice_id == invoice_id
        assert back.requests[0].event == "invoice.created"

        async def delivered() -> bool:
            events = await dash.api("GET", f"/v1/invoices/{invoice_id}/events")
            return bool(events["data"][0]["delivery"]["state"] == "delivered")

        await poll(delivered, 20, 0.25, what="the redelivered callback delivered")
    await page.reload()
    await expect(page.locator("tr[data-event]")).to_have_count(0)
    dash.check()
    await page.context.close()


async def test_statuses_are_polled_when_the_socket_cannot_connect(
    dash: Dash, browser: Browser
) -> None:
    invoice_id = await dash.daemon.create("ETH", "1", DevChain.new_account(), ttl=900)
    page = await dash.page(browser, PHONE)
    await page.route_web_socket(re.compile(r".*/dashboard/ws$"),
                                lambda ws: ws.close(code=1011))
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/live.json" in r.url else None)
    await sign_in(page, dash)
    await expect(page.locator("#dash-live")).to_have_attribute("data-state", "polling")
    await page.evaluate("window.__notReloaded = 7")
    await dash.api("POST", f"/v1/invoices/{invoice_id}/cancel")
    await expect(row_status(page, invoice_id)).to_have_attribute("data-status", "VOIDED",
                                                                  timeout=WAIT)
    assert await page.evaluate("window.__notReloaded") == 7
    assert polls and all(invoice_id in url for url in polls)
    await page.context.close()


async def test_every_dashboard_route_needs_a_session(dash: Dash) -> None:
    invoice_id = await dash.daemon.create("ETH", "1", DevChain.new_account(), ttl=900)
    paths = [
        ("GET", "/"), ("GET", "/invoices"), ("GET", "/invoices/new"),
        ("POST", "/invoices/new"), ("GET", f"/invoices/{invoice_id}"),
        ("GET", f"/invoices/{invoice_id}/qr.svg"),
        *[(m, f"/invoices/{invoice_id}/{a}") for a in ("cancel", "accept", "remainder",
                                                       "refund") for m in ("GET", "POST")],
        ("GET", "/transfers"), ("GET", "/transfers/tr_x/assign"),
        ("POST", "/transfers/tr_x/assign"), ("GET", "/callbacks"),
        ("POST", "/callbacks/redeliver"), ("POST", "/callbacks/evt_x/redeliver"),
        ("GET", "/networks"), ("GET", "/live.json"), ("GET", "/ws"), ("POST", "/signout"),
        ("GET", "/anything/else"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path in paths:
            async with http.request(method, dash.base + path, allow_redirects=False,
                                    data={"csrf": "x"}) as resp:
                assert resp.status == 303, (method, path, resp.status)
                assert resp.headers["Location"].startswith("/dashboard/signin"), (method, path)
        async with http.get(dash.base + "/signin") as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert (await dash.api("GET", f"/v1/invoices/{invoice_id}"))["status"] == "PENDING"


async def test_the_dashboard_on_a_listener_of_its_own(daemons: Daemons) -> None:
    daemon = await daemons.start(extra={"dashboard": {"listen": "127.0.0.1:0"}})
    found = re.search(r"dashboard on 127\.0\.0\.1:(\d+)/dashboard", daemon.log_text())
    assert found, daemon.log_text()[-2000:]
    own = f"http://127.0.0.1:{found.group(1)}"
    async with aiohttp.ClientSession() as http:
        async with http.get(own + "/dashboard/signin") as resp:
            assert resp.status == 200 and "Sign in" in await resp.text()
        async with http.get(daemon.base_url + "/dashboard/signin") as resp:
            assert resp.status == 404  # not on the API listener then
        async with http.get(own + "/v1/invoices",
                            headers={"Authorization": f"Bearer {daemon.api_key}"}) as resp:
            assert resp.status == 404  # and the API is not there
