"""Rate sources against real parts: a TestAggregator (Chainlink AggregatorV3) on anvil read
through the real RPC client, and the HTTP source against a local aiohttp server."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.conftest import serving
from tests.integration.daemonproc import DaemonConfig, DaemonProc, run_cli
from watcher.devchain import DevChain
from watcher.pricing.book import RateBook
from watcher.pricing.sources import ChainlinkSource, FixedSource, HttpSource, SourceError
from watcher.rates import RateUnavailable
from watcher.rpc import RpcClient

MAX_AGE = 3600


def now_of(chain: DevChain) -> int:
    return int(chain.get_block("latest")["timestamp"], 16)


@pytest.fixture
async def rpc(rpc_url: str, make_rpc: Callable[..., RpcClient]) -> RpcClient:
    return make_rpc([rpc_url])


async def test_chainlink_answers_with_8_and_18_decimals(chain: DevChain, rpc: RpcClient) -> None:
    eth = chain.deploy_aggregator(8, "ETH / USD")
    chain.set_round(eth, 3_500_12345678, round_id=7)
    dai = chain.deploy_aggregator(18, "DAI / USD")
    chain.set_round(dai, 999_800_000_000_000_000, round_id=2)
    now = now_of(chain)
    rate = await ChainlinkSource(rpc, "anvil", eth, MAX_AGE).fetch("ETH/USD", now)
    assert rate.value == Fraction("3500.12345678") and rate.source == "chainlink"
    assert abs(rate.at - now) <= 1
    rate = await ChainlinkSource(rpc, "anvil", dai, MAX_AGE).fetch("DAI/USD", now)
    assert rate.value == Fraction("0.9998")


@pytest.mark.parametrize(
    "round_kw,reason",
    [
        ({"answer": 0}, "not positive"),
        ({"answer": -5}, "not positive"),
        ({"answer": 100, "round_id": 5, "answered_in_round": 4}, "earlier round"),
        ({"answer": 100, "updated_at": 1}, "old"),
    ],
)
async def test_chainlink_refuses_bad_rounds(
    chain: DevChain, rpc: RpcClient, round_kw: dict[str, Any], reason: str
) -> None:
    feed = chain.deploy_aggregator(8)
    answer = round_kw.pop("answer")
    chain.set_round(feed, answer, **round_kw)
    with pytest.raises(SourceError, match=reason):
        await ChainlinkSource(rpc, "anvil", feed, MAX_AGE).fetch("ETH/USD", now_of(chain))


async def test_a_reverting_feed_or_no_contract_is_a_source_error(
    chain: DevChain, rpc: RpcClient
) -> None:
    feed = chain.deploy_aggregator(8)
    chain.set_round(feed, 100)
    chain.set_broken(feed)
    with pytest.raises(SourceError, match="eth_call failed"):
        await ChainlinkSource(rpc, "anvil", feed, MAX_AGE).fetch("ETH/USD", now_of(chain))
    with pytest.raises(SourceError):
        await ChainlinkSource(rpc, "anvil", DevChain.new_account(), MAX_AGE).fetch(
            "ETH/USD", now_of(chain)
        )


@pytest.fixture
async def prices() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A local exchange API: GET /ticker answers whatever the test puts in `doc`."""
    state: dict[str, Any] = {"status": 200, "body": b"{}"}

    async def ticker(_request: web.Request) -> web.Response:
        return web.Response(status=state["status"], body=state["body"],
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/ticker", ticker)
    async with serving(app) as url:
        yield f"{url}/ticker", state


async def test_http_source_reads_exact_numbers(prices: tuple[str, dict[str, Any]]) -> None:
    url, state = prices
    async with aiohttp.ClientSession() as session:
        src = HttpSource(session, url, "ethereum.eur")
        state["body"] = b'{"ethereum": {"eur": 3123.456789012345678901}}'
        rate = await src.fetch("ETH/EUR", 100)
        assert rate.value == Fraction("3123.456789012345678901")  # no float on the way
        state["body"] = b'{"ethereum": {"eur": "2999.5"}}'
        assert (await src.fetch("ETH/EUR", 100)).value == Fraction("2999.5")
        for body, reason in [
            (b'{"ethereum": {}}', "no 'ethereum.eur'"),
            (b'{"ethereum": {"eur": -1}}', "not positive"),
            (b'{"ethereum": {"eur": "abc"}}', "not a number"),
            (b"<html>", "not JSON"),
        ]:
            state["body"] = body
            with pytest.raises(SourceError, match=reason):
                await src.fetch("ETH/EUR", 100)
        state["status"] = 503
        with pytest.raises(SourceError, match="HTTP 503"):
            await src.fetch("ETH/EUR", 100)
        assert "127.0.0.1" in src.label and "ticker" not in src.label


async def test_book_fails_over_and_derives_through_usd(
    chain: DevChain, rpc: RpcClient, prices: tuple[str, dict[str, Any]]
) -> None:
    url, state = prices
    broken = chain.deploy_aggregator(8)
    chain.set_round(broken, 100)
    chain.set_broken(broken)
    eur = chain.deploy_aggregator(8, "EUR / USD")
    chain.set_round(eur, 1_08000000)
    state["body"] = b'{"price": "3240"}'
    seen: list[tuple[str, str]] = []
    async with aiohttp.ClientSession() as session:
        book = RateBook(
            {
                "ETH/USD": [ChainlinkSource(rpc, "anvil", broken, MAX_AGE),
                            HttpSource(session, url, "price")],
                "EUR/USD": [ChainlinkSource(rpc, "anvil", eur, MAX_AGE)],
                "USDT/USD": [FixedSource("1")],
            },
            MAX_AGE,
            on_rate=lambda pair, kind, rate, now: seen.append((pair, kind)),
        )
        now = now_of(chain)
        await book.refresh(now)
        eth_eur = book.rate("ETH", "EUR", now)
        assert eth_eur.value == Fraction(3000) and eth_eur.source == "ETH/USD / EUR/USD"
        assert book.rate("USDT", "USD", now).value == 1
        status = {s["pair"]: s for s in book.status(now)}
        assert status["ETH/USD"]["source"].startswith("http") and status["ETH/USD"]["fresh"]
        assert set(seen) == {("ETH/USD", "http"), ("EUR/USD", "chainlink"), ("USDT/USD", "fixed")}
        # every source of a pair fails: the last rate serves until it is older than max_age
        state["status"] = 500
        await book.refresh(now + 10)
        assert book.rate("ETH", "USD", now + 10).value == 3240
        assert "HTTP 500" in (book.state["ETH/USD"].error or "")
        with pytest.raises(RateUnavailable):
            book.rate("ETH", "EUR", now + MAX_AGE + 60)
        assert book.rate("USDT", "USD", now + 10).value == 1  # the others keep working


async def test_daemon_and_cli_price_in_euro_from_a_feed_on_anvil(
    tmp_path: Path, chain: DevChain, rpc_url: str, token: str
) -> None:
    feed = chain.deploy_aggregator(8, "ETH / USD")
    chain.set_round(feed, 3_240_00000000)
    cfg = DaemonConfig(
        tmp_path, rpc=[rpc_url], tokens={"USDT": token},
        extra={"rates.pairs": {
            "ETH/USD": [{"chainlink": "anvil", "feed": feed}],
            "EUR/USD": [{"fixed": "1.08"}],
        }},
    )
    conf = str(cfg.write())
    out = run_cli("rates", "--config", conf)
    assert out.returncode == 0, out.stderr
    assert re.search(r"ETH/USD\s+3240\s+chainlink anvil", out.stdout), out.stdout
    assert "EUR/USD" in out.stdout and "fresh" in out.stdout
    address = DevChain.new_account()
    created = run_cli("invoices", "create", "--config", conf, "--network", "anvil",
                      "--asset", "ETH", "--price", "30", "--currency", "EUR",
                      "--address", address)
    assert created.returncode == 0, created.stderr
    inv = json.loads(created.stdout)
    assert inv["rate"] == "3000" and inv["rateSource"] == "ETH/USD / EUR/USD"
    assert inv["amount"] == "0.01"
    bad = run_cli("invoices", "create", "--config", conf, "--network", "anvil",
                  "--asset", "ETH", "--price", "30", "--currency", "JPY", "--address", address)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "currency" in bad.stderr

    async with DaemonProc(cfg) as d:
        status, rates = await d.request("GET", "/v1/rates")
        assert status == 200
        assert {r["pair"]: r["rate"] for r in rates["data"]} == {
            "ETH/USD": "3240", "EUR/USD": "1.08"
        }
        status, inv = await d.request("POST", "/v1/invoices", {
            "network": "anvil", "asset": "ETH", "price": "30", "currency": "EUR",
            "address": DevChain.new_account(), "ttl": 600,
        })
        assert status == 201 and inv["amount"] == "0.01", inv
        status, text = await d.request("GET", "/metrics", auth=False)
        assert 'payment_watcher_rate{pair="ETH/USD",source="chainlink"} 3240.0' in text
        assert 'payment_watcher_rate_age_seconds{pair="ETH/USD"}' in text
