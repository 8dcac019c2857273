"""Test keys: extended keys of the well-known anvil/hardhat test mnemonic, and the reference
derivation of `eth_account` (its own BIP-32 implementation) to compare ours against."""

from __future__ import annotations

from functools import cache

from bip32 import BIP32
from eth_account import Account
from eth_account.hdaccount import seed_from_mnemonic

MNEMONIC = "test test test test test test test test test test test junk"
ACCOUNT_PATH = "m/44'/60'/0'"

Account.enable_unaudited_hdwallet_features()


@cache
def master(network: str = "main") -> BIP32:
    return BIP32.from_seed(seed_from_mnemonic(MNEMONIC, ""), network=network)


def xpub(path: str = ACCOUNT_PATH, network: str = "main") -> str:
    return str(master(network).get_xpub_from_path(path))


def xprv(path: str = ACCOUNT_PATH, network: str = "main") -> str:
    return str(master(network).get_xpriv_from_path(path))


def reference_address(path: str) -> str:
    """The address `eth_account` derives for the full path `path` of the mnemonic."""
    return str(Account.from_mnemonic(MNEMONIC, account_path=path).address)


def reference_key(path: str) -> str:
    """The private key (0x hex) of the account at `path`: to pay from a derived address."""
    return str(Account.from_mnemonic(MNEMONIC, account_path=path).key.to_0x_hex())
