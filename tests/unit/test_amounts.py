from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.amounts import (
    MAX_UINT256,
    default_step,
    format_amount,
    paid_threshold,
    parse_amount,
    parse_fraction,
)
from watcher.errors import AmountError


@pytest.mark.parametrize(
    ("text", "decimals", "base"),
    [
        ("10", 6, 10_000_000),
        ("0.5", 6, 500_000),
        ("0.50", 6, 500_000),
        (".5", 6, 500_000),
        ("7.", 2, 700),
        ("501.723934", 6, 501_723_934),
        ("1.000000000000000000", 18, 10**18),
        ("0.000001", 6, 1),
        ("3", 0, 3),
    ],
)
def test_parse(text: str, decimals: int, base: int) -> None:
    assert parse_amount(text, decimals) == base


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "-1", "+1", "1e5", "1E5", "0x10", "1,5", "1.2.3", "NaN", "inf", ".", "１"],
)
def test_parse_rejects_non_plain(text: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text, 6)


@pytest.mark.parametrize("value", [1.5, 1, None, ["1"], {"a": 1}])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(AmountError, match="decimal string"):
        parse_amount(value, 6)


def test_decimals_bound() -> None:
    with pytest.raises(AmountError, match="more than 6 decimal places"):
        parse_amount("0.0000001", 6)
    assert parse_amount("0.1000000", 6) == 100_000  # trailing zeros are not precision


def test_uint256_bound() -> None:
    assert parse_amount(str(MAX_UINT256), 0) == MAX_UINT256
    with pytest.raises(AmountError, match="too large"):
        parse_amount(str(MAX_UINT256 + 1), 0)


@pytest.mark.parametrize(
    ("base", "decimals", "text"),
    [(10_000_000, 6, "10"), (500_000, 6, "0.5"), (1, 18, "0.000000000000000001"), (0, 6, "0"),
     (123, 0, "123"), (10**30, 18, "1000000000000")],
)
def test_format_shortest(base: int, decimals: int, text: str) -> None:
    assert format_amount(base, decimals) == text


@given(st.integers(min_value=0, max_value=MAX_UINT256), st.integers(min_value=0, max_value=30))
def test_round_trip(base: int, decimals: int) -> None:
    text = format_amount(base, decimals)
    assert "e" not in text.lower()
    assert not (("." in text) and text.endswith("0"))
    assert parse_amount(text, decimals) == base


@given(st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False))
def test_decimal_strings_parse_exactly(d: object) -> None:
    text = format(d, "f")
    base = parse_amount(text, 6)
    assert Fraction(base, 10**6) == Fraction(text)
    assert Fraction(format_amount(base, 6)) == Fraction(text)


def test_tolerance_and_threshold() -> None:
    assert parse_fraction("0.005") == Fraction(1, 200)
    assert paid_threshold(1000, Fraction(1, 200)) == 995
    assert paid_threshold(1001, Fraction(1, 200)) == 996  # never rounds the shortfall up
    assert paid_threshold(1000, Fraction(0)) == 1000
    for bad in ["1", "-0.1", "abc", "1e400"]:
        with pytest.raises(AmountError):
            parse_fraction(bad)


def test_default_step() -> None:
    assert default_step(6) == 1
    assert default_step(18) == 10**12
    assert default_step(2) == 1
