"""Exchange rates and fiat pricing, pure: no I/O, no float.

A rate is the price of one unit of an asset in a currency (`ETH/EUR` = euros per ether), a
`Fraction` inside and a decimal string outside. An invoice priced in a currency gets the
amount `price / rate` in base units, rounded **up** to the asset's `amount_step`, so the
customer never pays less than the price: `amount * rate >= price`, and one step less would
be short.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from typing import Protocol

#: Significant digits a derived (cross) rate keeps; the invoice stores and uses exactly
#: the rounded value, so its amount is computed from the rate it shows.
RATE_DIGITS = 24
_CONTEXT = Context(prec=RATE_DIGITS, rounding=ROUND_HALF_EVEN)
#: "BASE/QUOTE": asset or currency symbols, letters and digits.
PAIR = re.compile(r"([A-Za-z0-9.]{1,16})/([A-Za-z0-9.]{1,16})\Z")
USD = "USD"


class RateUnavailable(Exception):
    """No usable rate for a pair (none yet, or every source failed or is stale)."""


@dataclass(frozen=True, slots=True)
class Rate:
    pair: str  # "ETH/USD"
    value: Fraction  # quote currency per one unit of the base asset, > 0
    source: str  # "fixed", "chainlink:ethereum:0x…", "http:host", or "A/USD / B/USD" derived
    at: int  # unix seconds the value is as of (a feed's updatedAt, a fetch's time)


class RateProvider(Protocol):
    """What the ledger needs of the rates (the daemon's `RateBook`): no I/O."""

    def rate(self, asset: str, currency: str, now: int) -> Rate: ...

    def can_price(self, asset: str, currency: str) -> bool: ...

    @property
    def pair_names(self) -> list[str]: ...


def split_pair(pair: str) -> tuple[str, str]:
    m = PAIR.match(pair)
    if m is None:
        raise ValueError(f"{pair!r} is not a pair like \"ETH/USD\"")
    return m.group(1), m.group(2)


def rounded(value: Fraction) -> Fraction:
    """`value` to RATE_DIGITS significant digits (exact for every finite decimal shorter
    than that, which feed answers are)."""
    d = _CONTEXT.divide(Decimal(value.numerator), Decimal(value.denominator))
    return Fraction(d)


def format_rate(value: Fraction) -> str:
    """The shortest decimal string of a rate (rounded to RATE_DIGITS significant digits)."""
    d = _CONTEXT.divide(Decimal(value.numerator), Decimal(value.denominator)).normalize()
    return format(d, "f")


def from_units(answer: int, decimals: int) -> Fraction:
    """A feed's integer answer with its decimals as an exact value."""
    return Fraction(answer, 10**decimals)


def amount_for(price: Fraction, rate: Fraction, decimals: int, step: int) -> int:
    """Base units of an asset with `decimals` worth at least `price` at `rate`, rounded up
    to a multiple of `step` base units."""
    if price <= 0 or rate <= 0 or step <= 0:
        raise ValueError("price, rate and step must be positive")
    exact = price * 10**decimals / rate
    units: int = -(-exact.numerator // exact.denominator)  # ceil
    return -(-units // step) * step


def value_of(units: int, decimals: int, rate: Fraction) -> Fraction:
    """What `units` base units are worth in the rate's currency."""
    return Fraction(units, 10**decimals) * rate


def lookup(
    rates: Mapping[str, Rate], asset: str, currency: str
) -> Rate:
    """The rate of `asset` in `currency`: the configured pair, else derived through USD
    (`A/C` = `A/USD` / `C/USD`) when both legs are there. RateUnavailable otherwise.
    Symbols are compared as written (`ETH`, `USDC.e`, `EUR`)."""
    direct = rates.get(f"{asset}/{currency}")
    if direct is not None:
        return direct
    if currency != USD and asset != USD:
        base, quote = rates.get(f"{asset}/{USD}"), rates.get(f"{currency}/{USD}")
        if base is not None and quote is not None:
            return Rate(
                f"{asset}/{currency}",
                rounded(base.value / quote.value),
                f"{base.pair} / {quote.pair}",
                min(base.at, quote.at),
            )
    raise RateUnavailable(f"no usable rate for {asset}/{currency}")


def priceable(pairs: Mapping[str, object] | set[str], asset: str, currency: str) -> bool:
    """Whether configured `pairs` can price `asset` in `currency` (directly or through
    USD), whatever their current values."""
    names = set(pairs)
    if f"{asset}/{currency}" in names:
        return True
    return (
        currency != USD
        and asset != USD
        and f"{asset}/{USD}" in names
        and f"{currency}/{USD}" in names
    )
