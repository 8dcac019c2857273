"""Addresses from an xpub equal eth_account's HD derivation of the same mnemonic; every kind
of bad key or path is refused with a reason, never quoting the key."""

from __future__ import annotations

import pytest
from bip32.base58 import b58decode_check, b58encode_check

from tests import hdkeys
from watcher.derivation import (
    MAX_INDEX,
    DerivationError,
    Deriver,
    PathTemplate,
    parse_path,
    parse_xpub,
)


@pytest.fixture(scope="module")
def metamask() -> Deriver:
    return Deriver(hdkeys.xpub(), "0/{index}")


def test_indexes_0_to_99_equal_eth_account(metamask: Deriver) -> None:
    for i in range(100):
        assert metamask.address(i) == hdkeys.reference_address(f"m/44'/60'/0'/0/{i}"), i


@pytest.mark.parametrize("index", [1000, 65_535, 1_000_000, 123_456_789, MAX_INDEX])
def test_large_indexes_equal_eth_account(metamask: Deriver, index: int) -> None:
    assert metamask.address(index) == hdkeys.reference_address(f"m/44'/60'/0'/0/{index}")


def test_anvil_first_account_is_index_0(metamask: Deriver) -> None:
    # anvil's and hardhat's default account 0 of the same mnemonic
    assert metamask.address(0) == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_addresses_are_checksummed(metamask: Deriver) -> None:
    a = metamask.address(7)
    assert a.startswith("0x") and a != a.lower() and a != a.upper()


@pytest.mark.parametrize(
    ("key_path", "template", "full"),
    [
        ("m/44'/60'/0'", "{index}", "m/44'/60'/0'/{i}"),  # Ledger "legacy" (MEW) layout
        ("m/44'/60'/0'/0", "{index}", "m/44'/60'/0'/0/{i}"),  # a change-level key
        ("m/44'/60'/0'", "1/{index}/3", "m/44'/60'/0'/1/{i}/3"),
        ("m/44'/60'/7'", "0/{index}", "m/44'/60'/7'/0/{i}"),
    ],
)
def test_other_layouts(key_path: str, template: str, full: str) -> None:
    d = Deriver(hdkeys.xpub(key_path), template)
    for i in (0, 1, 42):
        assert d.address(i) == hdkeys.reference_address(full.format(i=i))


def test_tpub_is_accepted() -> None:
    d = Deriver(hdkeys.xpub(network="test"))
    assert d.address(3) == hdkeys.reference_address("m/44'/60'/0'/0/3")


def test_key_id_names_the_key_not_the_value() -> None:
    x = hdkeys.xpub()
    d = Deriver(x, " 0/{index} ")
    fingerprint, path = d.key_id.split(":", 1)
    assert len(fingerprint) == 8 and path == "0/{index}" and fingerprint not in x
    assert Deriver(hdkeys.xpub("m/44'/60'/1'")).key_id != d.key_id


def test_index_out_of_range(metamask: Deriver) -> None:
    with pytest.raises(DerivationError):
        metamask.address(MAX_INDEX + 1)
    with pytest.raises(DerivationError):
        metamask.address(-1)


def _reversion(key: str, version: int) -> str:
    data = b58decode_check(key)
    return str(b58encode_check(version.to_bytes(4, "big") + data[4:]).decode())


def _flip(key: str) -> str:
    i = len(key) // 2
    return key[:i] + ("2" if key[i] != "2" else "3") + key[i + 1 :]


BAD_KEYS = {
    "xprv": (lambda: hdkeys.xprv(), "PRIVATE key"),
    "tprv": (lambda: hdkeys.xprv(network="test"), "PRIVATE key"),
    "xprv with public prefix": (lambda: _reversion(hdkeys.xprv(), 0x0488B21E), "curve"),
    "seed phrase": (lambda: hdkeys.MNEMONIC, "seed phrase"),
    "private key": (lambda: hdkeys.reference_key("m/44'/60'/0'/0/0"), "private key"),
    "private key without 0x": (
        lambda: hdkeys.reference_key("m/44'/60'/0'/0/0")[2:], "private key"
    ),
    "bad checksum": (lambda: _flip(hdkeys.xpub()), "checksum"),
    "truncated": (lambda: hdkeys.xpub()[:-3], "checksum"),
    "master key": (lambda: hdkeys.xpub("m"), "depth 0"),
    "zpub": (lambda: _reversion(hdkeys.xpub(), 0x04B24746), "SegWit"),
    "unknown version": (lambda: _reversion(hdkeys.xpub(), 0x01020304), "version"),
    "empty": (lambda: "", "checksum"),
    "address": (lambda: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "checksum"),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_bad_keys_refused_with_reason(case: str) -> None:
    make, reason = BAD_KEYS[case]
    value = make()
    with pytest.raises(DerivationError) as info:
        parse_xpub(value)
    message = str(info.value)
    assert reason in message
    if value:
        assert value not in message and value[4:20] not in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0'/{index}", "hardened"),
        ("0h/{index}", "hardened"),
        ("{index}/1H", "hardened"),
        ("0/1", "exactly once"),
        ("{index}/{index}", "exactly once"),
        ("m/0/{index}", "leading 'm/'"),
        ("x/{index}", "not a number"),
        ("/{index}", "not a number"),
        ("2147483648/{index}", "not a number"),
        ("01/{index}", "not a number"),
        ("0/{index}'", "exactly once"),
    ],
)
def test_bad_paths(text: str, reason: str) -> None:
    with pytest.raises(DerivationError, match=reason):
        parse_path(text)


def test_path_templates() -> None:
    assert parse_path("0/{index}") == PathTemplate((0,), ())
    assert parse_path("{index}") == PathTemplate((), ())
    assert parse_path("5/{index}/2/9") == PathTemplate((5,), (2, 9))
    assert parse_path("5/{index}/2").render(7) == "5/7/2"
