"""The customer chooses how to pay on the checkout page (contract section 14), in a real
headless Chromium against the real daemon following a real anvil, with fixed rates and
addresses derived from the test xpub: the method list with each amount at the rate, choose
ETH, change to the token, pay the token amount shown, COMPLETED without a reload; the same
without JavaScript (plain form posts and links); a form posted from another origin refused.
No request leaves 127.0.0.1 and no console error.

Screenshots of the method list and of a chosen method (390 px and 1280 px wide) are saved
under the test's tmp dir, and also under `$PW_SCREENSHOTS` when it is set (docs/img has
copies)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

from tests import hdkeys
from tests.integration.conftest import serving
from tests.integration.test_checkout_browser import (
    CHROMIUM,
    DE,
    EN,
    WAIT,
    Watched,
    open_page,
    read_qr,
    status_is,
)
from watcher.config import Settings
from watcher.daemon import Daemon
from watcher.devchain import DevChain

KEY = "methods-browser-key"
PHONE: ViewportSize = {"width": 390, "height": 844}
NARROW: ViewportSize = {"width": 360, "height": 740}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
TITLE = "Order #1042 <b>not bold</b>"
DESCRIPTION = "Two ceramic mugs (blue) and a teapot.\nShipped within 2 days."


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
class Env:
    daemon: Daemon
    chain: DevChain
    token: str
    api: aiohttp.ClientSession
    shots: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    async def create(self, **extra: Any) -> dict[str, Any]:
        body = {
            "methods": [{"network": "anvil", "asset": "ETH"},
                        {"network": "anvil", "asset": "USDT"}],
            "price": "25", "currency": "USD", "title": TITLE, "description": DESCRIPTION,
            "ttl": 900, "email": "secret@example.org", "externalId": "secret-order-9",
            **extra,
        }
        async with self.api.post(f"{self.base}/v1/invoices", json=body) as resp:
            assert resp.status == 201, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def get(self, invoice_id: str) -> dict[str, Any]:
        async with self.api.get(f"{self.base}/v1/invoices/{invoice_id}") as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def shot(self, page: Page, name: str) -> None:
        """The page at 390 px and 1280 px (the viewport goes back to where it was)."""
        before = page.viewport_size or PHONE
        await page.evaluate("() => document.activeElement && document.activeElement.blur()")
        for size in (PHONE, DESKTOP):
            await page.set_viewport_size(size)
            path = self.shots / f"checkout-methods-{name}-{size['width']}.png"
            await page.screenshot(path=str(path), full_page=True)
            extra = os.environ.get("PW_SCREENSHOTS")
            if extra:
                Path(extra).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(extra) / path.name)
        await page.set_viewport_size(before)


@pytest.fixture
async def env(tmp_path: Path, chain: DevChain, token: str, rpc_url: str) -> AsyncIterator[Env]:
    settings = Settings(
        database=tmp_path / "watcher.db",
        api={"listen": "127.0.0.1:0", "api_keys": [KEY]},
        checkout={"enabled": True, "listen": "127.0.0.1:0"},
        addresses={"xpub": hdkeys.xpub(), "start_index": 7000},
        rates={"pairs": {"ETH/USD": [{"fixed": "2500"}], "USDT/USD": [{"fixed": "1"}]}},
        networks={
            "anvil": {
                "rpc": [rpc_url],
                "confirmations": 2,
                "block_time": 1,
                "poll_interval": 0.25,
                "tokens": [{"symbol": "USDT", "address": token, "decimals": 6}],
            }
        },
    )
    daemon = Daemon(settings)
    await daemon.start()
    api = aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"})
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        yield Env(daemon, chain, token, api, shots)
    finally:
        await api.close()
        await daemon.stop()


def method_button(page: Page, asset: str) -> Any:
    return page.locator(f'#pw-method-list button.method[data-asset="{asset}"]')


async def no_sideways_scroll(page: Page) -> None:
    wide = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert wide <= 0, f"the page scrolls sideways by {wide} px at this width"


# ---------------------------------------------------------------- tests


async def test_choose_change_and_pay_the_token_live(env: Env, browser: Browser) -> None:
    inv = await env.create()
    assert inv["method"] is None and inv["url"]
    page, seen = await open_page(browser, inv["url"], {"width": 390, "height": 844})
    await expect(page.locator("#pw-live")).to_have_text(EN["live"], timeout=WAIT)

    # the method list: title and description as text, the price, each method's amount now
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "choose")
    await expect(page.locator("#pw-status")).to_have_text(EN["status_CHOOSE"])
    await expect(page.locator("#pw-title")).to_have_text(TITLE)  # shown as text, not markup
    assert await page.locator("#pw-title b").count() == 0
    assert (await page.locator("#pw-description").inner_text()).splitlines() == \
        DESCRIPTION.splitlines()
    await expect(page.locator("#pw-total")).to_have_text("25 USD")
    await expect(page.locator("#pw-method-list button.method")).to_have_count(2)
    await expect(method_button(page, "ETH").locator(".m-amount")).to_have_text("0.01 ETH")
    await expect(method_button(page, "USDT").locator(".m-amount")).to_have_text("25 USDT")
    await expect(method_button(page, "USDT").locator("code")).to_have_text(env.token)
    await expect(method_button(page, "ETH")).to_contain_text(EN["native_coin"])
    await expect(page.locator("#pw-pay")).to_be_hidden()
    html = await page.content()
    assert "secret@example.org" not in html and "secret-order-9" not in html
    await no_sideways_scroll(page)
    await env.shot(page, "list")
    await page.set_viewport_size(NARROW)
    await no_sideways_scroll(page)
    await page.set_viewport_size(PHONE)
    await page.evaluate("window.__notReloaded = 42")

    # keyboard: Tab reaches the first method, Enter chooses it (JSON post, no navigation)
    await page.locator("#pw-methods-h").focus()
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.dataset.asset") == "ETH"
    await page.keyboard.press("Enter")
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "pay")
    chosen = await env.get(inv["id"])
    assert chosen["method"] == {"network": "anvil", "asset": "ETH"}
    assert chosen["derivationIndex"] == 7000
    to = chosen["to"]
    await expect(page.locator("#pw-amount")).to_have_text("0.01")
    await expect(page.locator("#pw-address")).to_have_text(to)
    await expect(page.locator("#pw-chosen-text")).to_have_text(
        EN["paying_with"].format(asset="ETH", network="anvil"))
    await expect(page.locator("#pw-asset-native")).to_be_visible()
    await expect(page.locator("#pw-change")).to_be_visible()
    await expect(page.locator("#pw-status")).to_have_text(EN["status_PENDING"])
    assert await read_qr(page) == f"ethereum:{to}@31337?value={10**16}"
    await no_sideways_scroll(page)
    await env.shot(page, "chosen")

    # change: the list again, ETH marked; choose the token
    await page.locator("#pw-change").click()
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "choose")
    await expect(method_button(page, "ETH")).to_have_attribute("aria-current", "true")
    await expect(page.locator("#pw-keep")).to_be_visible()
    await env.shot(page, "change")
    await method_button(page, "USDT").click()
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "pay")
    await expect(page.locator("#pw-amount")).to_have_text("25")
    await expect(page.locator("#pw-token")).to_have_text(env.token)
    await expect(page.locator("#pw-asset-token")).to_be_visible()
    await expect(page.locator("#pw-asset-native")).to_be_hidden()
    await expect(page.locator("#pw-warn")).to_have_text(
        EN["warning_send_only"].format(asset="USDT", network="anvil"))
    switched = await env.get(inv["id"])
    assert switched["method"] == {"network": "anvil", "asset": "USDT"}
    assert switched["to"] == to  # the invoice's derived address serves each method
    amount = await page.locator("#pw-amount").text_content()
    assert await read_qr(page) == (
        f"ethereum:{env.token}@31337/transfer?address={to}&uint256={25 * 10**6}")

    # pay the amount the page shows: received, confirmed, COMPLETED, no reload
    payer = env.chain.accounts[1]
    assert amount is not None
    await env.chain.aio.send_token(env.token, payer, to, int(float(amount) * 10**6))
    await status_is(page, "WAITING_FOR_CONFIRMATIONS")
    # the page opened without a method, so without a network's required confirmations
    await expect(page.locator("#pw-conf")).to_contain_text("1 / 2")
    await expect(page.locator("#pw-change")).to_be_hidden()  # something was received
    await env.chain.aio.mine(1)
    await status_is(page, "COMPLETED")
    await expect(page.locator("#pw-pay")).to_be_hidden()
    await expect(page.locator("#pw-methods")).to_be_hidden()
    await expect(page.locator("#pw-paid")).to_have_text("25")
    assert await page.evaluate("window.__notReloaded") == 42
    await env.shot(page, "completed")
    seen.check()
    await page.context.close()


async def test_without_javascript_forms_and_links_do_it(env: Env, browser: Browser) -> None:
    inv = await env.create()
    context = await browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = await context.new_page()
    seen = Watched()
    page.on("request", lambda r: seen.urls.append(r.url))
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    await page.goto(inv["url"] + "?lang=de")
    await expect(page.locator("#pw-status")).to_have_text(DE["status_CHOOSE"])
    await method_button(page, "USDT").click()  # a plain form post, 303 back to the page
    await expect(page).to_have_url(inv["url"] + "?lang=de")
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "pay")
    await expect(page.locator("#pw-amount")).to_have_text("25")
    assert (await env.get(inv["id"]))["method"]["asset"] == "USDT"
    await page.locator("#pw-change").click()  # a link to the list
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "choose")
    await expect(page.locator("html")).to_have_attribute("lang", "de")
    await method_button(page, "ETH").click()
    await expect(page).to_have_url(inv["url"] + "?lang=de")
    await expect(page.locator("#pw-amount")).to_have_text("0.01")
    assert (await env.get(inv["id"]))["method"]["asset"] == "ETH"
    seen.check()
    await context.close()


async def test_a_form_from_another_origin_is_refused(env: Env, browser: Browser) -> None:
    inv = await env.create()
    action = f"{inv['url']}/method"

    async def evil(_request: web.Request) -> web.Response:
        return web.Response(
            text=f'<!doctype html><title>Win</title><link rel="icon" href="data:,">'
                 f'<form method="post" action="{action}"><input type="hidden" name="network"'
                 f' value="anvil"><input type="hidden" name="asset" value="ETH">'
                 f'<button id="go">Claim your prize</button></form>',
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/", evil)
    async with serving(app) as url:  # another port on 127.0.0.1: another origin
        context = await browser.new_context(viewport=PHONE)
        page = await context.new_page()
        await page.goto(url + "/")
        async with page.expect_response(action) as answer:
            await page.locator("#go").click()
        assert (await answer.value).status == 403
        await context.close()
    assert (await env.get(inv["id"]))["method"] is None


async def test_a_refused_choice_is_said_on_the_page(env: Env, browser: Browser) -> None:
    """The script's error path: the server's refusal as the catalogue's text, the methods
    usable again (the answer is faked: a real 503 needs a rate source that fails)."""
    inv = await env.create()
    context = await browser.new_context(viewport=PHONE)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    async def refuse(route: Any) -> None:
        await route.fulfill(status=503, content_type="application/json",
                            body='{"error": {"code": "rate_unavailable", "message": "no rate",'
                                 ' "field": null}}')

    await page.route(f"{inv['url']}/method", refuse)
    await page.goto(inv["url"])
    await method_button(page, "USDT").click()
    await expect(page.locator("#pw-method-error")).to_have_text(EN["error_method_rate"])
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "choose")
    await expect(method_button(page, "USDT")).to_be_enabled()
    await page.unroute(f"{inv['url']}/method")
    await method_button(page, "USDT").click()  # the real server this time
    await expect(page.locator("#pw")).to_have_attribute("data-mode", "pay")
    await expect(page.locator("#pw-method-error")).to_be_hidden()
    assert not errors, errors
    await context.close()
