"""The checkout page in a real headless Chromium (Debian's `chromium`, driven by Playwright)
against the real daemon following a real anvil: live status without reload, the redirect,
PARTIAL asking for the rest, expiry, the polling fallback, copy buttons, the QR code read
back from the rendered page, no request leaving 127.0.0.1 and no console error. The paid-live
test runs on PostgreSQL too (the page's reads, its socket and the redirect through the
other store).

Screenshots (360 px and 1280 px wide) are saved under each test's tmp dir, and also under
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
from aiohttp import web
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.integration.conftest import serving
from tests.integration.daemonproc import poll
from watcher.config import Settings
from watcher.daemon import Daemon
from watcher.devchain import DevChain
from watcher.timeutil import parse_iso
from watcher.web.i18n import catalogue

CHROMIUM = os.environ.get("PAYMENT_WATCHER_CHROMIUM", "/usr/bin/chromium")
KEY = "browser-test-key"
EXPLORER = "https://explorer.invalid"
EN = catalogue("en")
DE = catalogue("de")
PHONE = {"width": 360, "height": 800}
DESKTOP = {"width": 1280, "height": 900}
WAIT = 20_000  # ms: a status change needs a block and a follower pass (~0.5 s here)
# Every other expectation gets a generous bound too: a cold browser on a busy 2-core CI
# machine can take seconds for its first page (these are bounds, not timings).
expect.set_options(timeout=15_000)


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


@pytest.fixture
async def shop() -> AsyncIterator[str]:
    """The merchant's shop on 127.0.0.1: where the checkout redirects after payment."""

    async def thanks(_request: web.Request) -> web.Response:
        # its own icon inline: the browser's /favicon.ico request to the shop would be a
        # 404 in the console, the shop's not the checkout's
        return web.Response(
            text='<!doctype html><title>Thanks</title><link rel="icon" href="data:,">'
                 "<h1>Thank you</h1>",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/thanks", thanks)
    async with serving(app) as url:
        yield url


@dataclass
class Env:
    daemon: Daemon
    chain: DevChain
    token: str
    api: aiohttp.ClientSession
    shots: Path
    saved: list[Path] = field(default_factory=list)
    engine: str = "sqlite"

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("network", "anvil")
        body.setdefault("address", DevChain.new_account())
        async with self.api.post(f"http://127.0.0.1:{self.daemon.port}/v1/invoices",
                                 json=body) as resp:
            assert resp.status == 201, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def shot(self, page: Page, name: str) -> None:
        width = page.viewport_size["width"] if page.viewport_size else 0
        engine = "" if self.engine == "sqlite" else f"-{self.engine}"
        path = self.shots / f"{name}-{width}{engine}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        extra = os.environ.get("PW_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)


@pytest.fixture
async def env(
    request: pytest.FixtureRequest, tmp_path: Path, chain: DevChain, token: str, rpc_url: str
) -> AsyncIterator[Env]:
    """A daemon with the checkout on; on SQLite, or on PostgreSQL where a test asks for it
    (`parametrize("env", ["postgres"], indirect=True)`)."""
    engine = getattr(request, "param", "sqlite")
    database: Path | str = tmp_path / "watcher.db"
    if engine == "postgres":
        database = request.getfixturevalue("pg_databases").new()
    settings = Settings(
        database=database,
        api={"listen": "127.0.0.1:0", "api_keys": [KEY]},
        checkout={"enabled": True, "listen": "127.0.0.1:0", "redirect_delay": 3},
        networks={
            "anvil": {
                "rpc": [rpc_url],
                "confirmations": 2,
                "block_time": 1,
                "poll_interval": 0.25,
                "explorer": EXPLORER,
                "tokens": [{"symbol": "USDT", "address": token, "decimals": 6}],
            }
        },
    )
    daemon = Daemon(settings)
    await daemon.start()
    if engine == "postgres":  # creates open once this instance leads and read a block
        await poll(lambda: _started(daemon), 20, interval=0.05, what="leading anvil")
    api = aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"})
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        yield Env(daemon, chain, token, api, shots, engine=engine)
    finally:
        await api.close()
        await daemon.stop()


@dataclass
class Watched:
    """What a page asked for and complained about."""

    urls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.urls, "the page made no request at all"
        for url in self.urls:
            host = urlsplit(url).hostname
            assert host == "127.0.0.1", f"a request left 127.0.0.1: {url}"
        assert not self.errors, self.errors


async def open_page(
    browser: Browser, url: str, viewport: dict[str, int], *, console: bool = True
) -> tuple[Page, Watched]:
    context = await browser.new_context(
        viewport=viewport, permissions=["clipboard-read", "clipboard-write"]
    )
    page = await context.new_page()
    seen = Watched()
    page.on("request", lambda r: seen.urls.append(r.url))
    page.on("websocket", lambda ws: seen.urls.append(ws.url))
    if console:
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
    await page.goto(url)
    return page, seen


async def read_qr(page: Page) -> str:
    """Decode the QR code as the browser rendered it."""
    await expect(page.locator("#pw-qr")).to_be_visible()
    await page.wait_for_function(
        "() => { const i = document.getElementById('pw-qr'); "
        "return i.complete && i.naturalWidth > 0; }"
    )
    png = await page.locator("#pw-qr").screenshot()
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(found) == 1, "no QR code readable on the page"
    return str(found[0].text)


async def status_is(page: Page, status: str, texts: dict[str, str] = EN) -> None:
    await expect(page.locator("#pw-status")).to_have_text(texts[f"status_{status}"], timeout=WAIT)


async def _started(daemon: Daemon) -> bool:
    follower = daemon.followers.get("anvil")
    return follower is not None and follower.scanned is not None


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("env", ["sqlite", "postgres"], indirect=True)
async def test_paid_live_without_reload_then_redirected(
    env: Env, browser: Browser, shop: str
) -> None:
    payer = env.chain.accounts[1]
    inv = await env.create(asset="ETH", amount="0.5", redirectUrl=f"{shop}/thanks", ttl=900,
                           email="secret@example.org", externalId="secret-order-1",
                           clientId="secret-client-1", payload={"note": "secret-note"})
    assert inv["url"].startswith(f"http://127.0.0.1:{env.daemon.checkout_port}/pay/")
    page, seen = await open_page(browser, inv["url"], PHONE)
    await status_is(page, "PENDING")
    await expect(page.locator("#pw-live")).to_have_text(EN["live"], timeout=WAIT)
    html = await page.content()
    for secret in ("secret@example.org", "secret-order-1", "secret-client-1", "secret-note"):
        assert secret not in html
    assert await page.locator("#pw-amount").text_content() == "0.5"
    assert await page.locator("#pw-address").text_content() == inv["to"]
    assert await read_qr(page) == f"ethereum:{inv['to']}@31337?value={5 * 10**17}"
    # copy with feedback, and the clipboard holds the address
    await page.locator('button[data-copy="pw-address"]').click()
    await expect(page.locator('button[data-copy="pw-address"]')).to_have_text(EN["copied"])
    assert await page.evaluate("navigator.clipboard.readText()") == inv["to"]
    await env.shot(page, "pending")
    await page.set_viewport_size(DESKTOP)
    await env.shot(page, "pending")
    await page.set_viewport_size(PHONE)

    await page.evaluate("window.__notReloaded = 42")
    await env.chain.aio.send_native(payer, inv["to"], 5 * 10**17)
    await status_is(page, "WAITING_FOR_CONFIRMATIONS")
    await expect(page.locator("#pw-conf")).to_contain_text("1 / 2")
    link = page.locator("#pw-payments a")
    await expect(link).to_have_count(1)
    assert (await link.get_attribute("href") or "").startswith(f"{EXPLORER}/tx/0x")
    await env.shot(page, "waiting")
    await env.chain.aio.mine(1)
    await status_is(page, "COMPLETED")
    assert await page.evaluate("window.__notReloaded") == 42  # live, no reload
    await expect(page.locator("#pw-redirect")).to_be_visible()
    await expect(page.locator("#pw-pay")).to_be_hidden()
    await env.shot(page, "completed")
    await page.wait_for_url(f"{shop}/thanks", timeout=WAIT)
    await page.wait_for_load_state("networkidle")  # the shop page's own requests too
    seen.check()
    await page.context.close()


async def test_partial_asks_for_the_rest(env: Env, browser: Browser) -> None:
    payer = env.chain.accounts[1]
    inv = await env.create(asset="USDT", amount="25", ttl=900)
    page, seen = await open_page(browser, inv["url"], DESKTOP)
    await status_is(page, "PENDING")
    token_text = await page.locator("#pw-token").text_content()
    assert token_text == env.token
    await env.chain.aio.send_token(env.token, payer, inv["to"], 10 * 10**6)
    await env.chain.aio.mine(2)
    await status_is(page, "PARTIAL")
    await expect(page.locator("#pw-amount-label")).to_have_text(EN["send_rest"])
    await expect(page.locator("#pw-amount")).to_have_text("15")
    await expect(page.locator("#pw-due")).to_have_text("15")
    assert await read_qr(page) == (
        f"ethereum:{env.token}@31337/transfer?address={inv['to']}&uint256={15 * 10**6}"
    )
    await page.locator('button[data-kind="address"]').click()
    await expect(page.locator("#pw-qr")).to_have_attribute("data-uri", inv["to"])
    assert await read_qr(page) == inv["to"]
    await env.shot(page, "partial")
    await page.set_viewport_size(PHONE)
    await env.shot(page, "partial")
    seen.check()
    await page.context.close()


async def test_expired_page_in_german(env: Env, browser: Browser) -> None:
    inv = await env.create(asset="ETH", amount="1", ttl=2)
    page, seen = await open_page(browser, inv["url"] + "?lang=de", PHONE)
    await status_is(page, "PENDING", DE)
    await expect(page.locator("#pw-countdown")).to_have_text(DE["expired"], timeout=WAIT)
    await expect(page.locator("#pw-pay")).to_be_hidden()
    # the chain (whose clock is its own) moves past expireAt, and that block gets its
    # confirmations: VOIDED
    env.chain.set_next_timestamp(parse_iso(inv["expireAt"]) + 5)
    await env.chain.aio.mine(3)
    await status_is(page, "VOIDED", DE)
    await expect(page.locator("#pw-timer")).to_be_hidden()
    assert await page.get_attribute("html", "lang") == "de"
    await env.shot(page, "expired")
    await page.set_viewport_size(DESKTOP)
    await env.shot(page, "expired")
    seen.check()
    await page.context.close()


async def test_polling_when_the_socket_cannot_connect(env: Env, browser: Browser) -> None:
    payer = env.chain.accounts[1]
    inv = await env.create(asset="ETH", amount="0.1", ttl=900)
    context = await browser.new_context(viewport=PHONE)
    page = await context.new_page()
    await page.route_web_socket(re.compile(r".*/ws$"), lambda ws: ws.close(code=1011))
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/status") else None)
    await page.goto(inv["url"])
    await expect(page.locator("#pw-live")).to_have_attribute("data-state", "polling",
                                                             timeout=WAIT)
    await env.chain.aio.send_native(payer, inv["to"], 10**17)
    await env.chain.aio.mine(1)
    await status_is(page, "COMPLETED")
    assert polls, "the page never polled /status"
    await env.shot(page, "polling")
    await context.close()


async def test_unknown_invoice_page(env: Env, browser: Browser) -> None:
    url = f"http://127.0.0.1:{env.daemon.checkout_port}/pay/6ef3cc15-24ae-4192-9744-a9017ed153cc"
    page, seen = await open_page(browser, url, PHONE, console=False)
    await expect(page.locator("h1")).to_have_text(EN["not_found_title"])
    await env.shot(page, "not-found")
    seen.errors.clear()  # the 404 itself is logged by the browser as a failed resource
    seen.check()
    await page.context.close()
