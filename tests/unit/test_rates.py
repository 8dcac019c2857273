"""Fiat pricing math (pure): rounding up, cross rates, pairs."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.rates import (
    Rate,
    RateUnavailable,
    amount_for,
    format_rate,
    from_units,
    lookup,
    priceable,
    rounded,
    split_pair,
    value_of,
)

prices = st.fractions(min_value=Fraction(1, 100), max_value=Fraction(10**9)).map(
    lambda f: Fraction(round(f * 100), 100) or Fraction(1, 100)
)
rates = st.integers(1, 10**15).map(lambda n: Fraction(n, 10**8))


@given(price=prices, rate=rates, decimals=st.sampled_from([0, 6, 8, 18]),
       step_exp=st.integers(0, 6))
def test_the_customer_never_pays_short_and_never_a_step_too_much(
    price: Fraction, rate: Fraction, decimals: int, step_exp: int
) -> None:
    step = 10 ** min(step_exp, decimals)
    units = amount_for(price, rate, decimals, step)
    assert units % step == 0
    assert value_of(units, decimals, rate) >= price
    assert value_of(units - step, decimals, rate) < price  # one step less is short


def test_examples() -> None:
    # 29.99 EUR at 3,000.50 EUR/ETH, 18 decimals, step 10^12 (6 decimal places)
    units = amount_for(Fraction("29.99"), Fraction("3000.5"), 18, 10**12)
    assert units == 9_996_000_000_000_000  # 0.0099950008... ETH, up to 0.009996
    # 500 EUR of USDT (6 decimals, step 1) at 0.92 EUR/USDT
    assert amount_for(Fraction(500), Fraction("0.92"), 6, 1) == 543_478_261
    with pytest.raises(ValueError):
        amount_for(Fraction(0), Fraction(1), 6, 1)


def test_feed_answers_are_exact() -> None:
    assert from_units(300_012_345_678, 8) == Fraction("3000.12345678")
    assert from_units(10**18, 18) == 1


def test_cross_rates_through_usd() -> None:
    book = {
        "ETH/USD": Rate("ETH/USD", Fraction("3500"), "chainlink:a", 100),
        "EUR/USD": Rate("EUR/USD", Fraction("1.08"), "chainlink:b", 90),
        "USDT/EUR": Rate("USDT/EUR", Fraction("0.92"), "fixed", 50),
    }
    eth_eur = lookup(book, "ETH", "EUR")
    assert eth_eur.pair == "ETH/EUR" and eth_eur.at == 90
    assert eth_eur.source == "ETH/USD / EUR/USD"
    assert abs(eth_eur.value - Fraction(3500) / Fraction("1.08")) < Fraction(1, 10**18)
    assert eth_eur.value == rounded(eth_eur.value)  # what it shows is what it uses
    assert lookup(book, "USDT", "EUR").source == "fixed"  # a configured pair comes first
    with pytest.raises(RateUnavailable):
        lookup(book, "BTC", "EUR")
    with pytest.raises(RateUnavailable):
        lookup(book, "USDT", "GBP")
    assert priceable(set(book), "ETH", "EUR") and not priceable(set(book), "ETH", "GBP")
    assert priceable(set(book), "ETH", "USD") and not priceable(set(book), "eth", "usd")


def test_formatting_and_pairs() -> None:
    assert format_rate(Fraction("3000.50")) == "3000.5"
    assert format_rate(Fraction(1)) == "1"
    assert format_rate(Fraction(1, 3)) == "0.3333333333333333333333333"[:26]
    assert "e" not in format_rate(Fraction(1, 10**12)).lower()
    assert split_pair("USDC.e/USD") == ("USDC.e", "USD")
    for bad in ("ETHUSD", "ETH/", "/USD", "ETH/USD/EUR", "E TH/USD"):
        with pytest.raises(ValueError):
            split_pair(bad)
