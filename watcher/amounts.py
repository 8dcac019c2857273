"""Exact amounts: integers in base units inside, shortest decimal strings outside.

No float ever touches an amount. `parse_amount` accepts any plain decimal string
(`"10"`, `"0.50"`, `".5"`, `"7."`); no sign, exponent, separators or whitespace.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

from watcher.errors import AmountError

MAX_UINT256 = 2**256 - 1
_PLAIN = re.compile(r"(?:([0-9]+)(?:\.([0-9]*))?|\.([0-9]+))\Z")


def parse_amount(text: object, decimals: int) -> int:
    """Parse a decimal string in asset units into base units, exactly."""
    if not isinstance(text, str):
        raise AmountError("must be a decimal string")
    m = _PLAIN.match(text)
    if not m:
        raise AmountError("must be a plain decimal string like \"12.5\"")
    whole = m.group(1) or "0"
    frac = (m.group(2) if m.group(1) is not None else m.group(3)) or ""
    frac = frac.rstrip("0")
    if len(frac) > decimals:
        raise AmountError(f"has more than {decimals} decimal places")
    if len(whole) > 80:
        raise AmountError("is too large")
    value: int = int(whole) * 10**decimals + (int(frac.ljust(decimals, "0")) if frac else 0)
    if value > MAX_UINT256:
        raise AmountError("is too large")
    return value


@lru_cache(maxsize=8192)  # an invoice's amounts are rendered again in each of its events
def format_amount(base: int, decimals: int) -> str:
    """Shortest decimal form: no exponent, no trailing zeros, no point for whole numbers."""
    if base < 0:
        return "-" + format_amount(-base, decimals)
    if decimals == 0:
        return str(base)
    whole, frac = divmod(base, 10**decimals)
    if not frac:
        return str(whole)
    return f"{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


def parse_fraction(text: object) -> Fraction:
    """A non-negative fraction below 1 from a decimal string (underpayment tolerance)."""
    if not isinstance(text, str | int):
        raise AmountError("must be a decimal string")
    try:
        d = Decimal(str(text))
    except InvalidOperation:
        raise AmountError("must be a decimal string like \"0.005\"") from None
    if not d.is_finite() or d < 0 or d >= 1:
        raise AmountError("must be at least 0 and below 1")
    return Fraction(d)


def paid_threshold(amount: int, tolerance: Fraction) -> int:
    """The least sum that counts as paid in full: amount minus the tolerated shortfall."""
    shortfall = (amount * tolerance.numerator) // tolerance.denominator
    return amount - shortfall


def default_step(decimals: int) -> int:
    """Smallest step for unique shared-address amounts: 10^-min(decimals, 6) asset units."""
    step: int = 10 ** (decimals - min(decimals, 6))
    return step
