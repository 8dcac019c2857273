"""Deposit addresses from an extended public key (BIP-32, public derivation only). No I/O.

The merchant configures the account-level key (e.g. the `xpub` of `m/44'/60'/0'`) and a path
template below it (`0/{index}`); invoice `i` is paid to the EVM address of the public key at
`<account>/0/i`: keccak-256 of the uncompressed point, last 20 bytes, EIP-55 checksummed.
The daemon never sees a private key: anything that looks like one is refused here, and no
message quotes the value it refuses.

Derivation is `bip32` (pure Python over libsecp256k1 through `coincurve`): small, maintained,
and it does public derivation only when asked to (it raises on a hardened step without a
private key). The checks around it (version bytes, depth, what a pasted secret looks like)
are ours because they are about what an operator may paste, not about BIP-32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import coincurve
from bip32 import BIP32
from bip32.base58 import b58decode_check
from eth_hash.auto import keccak

from watcher.addresses import checksum_address

#: BIP-32 version bytes of extended public keys we accept (mainnet `xpub`, testnet `tpub`).
_PUBLIC_VERSIONS = {0x0488B21E: "xpub", 0x043587CF: "tpub"}
#: Version bytes of extended private keys (`xprv`, `tprv`): refused.
_PRIVATE_VERSIONS = {0x0488ADE4: "xprv", 0x04358394: "tprv"}
#: SLIP-132 Bitcoin key versions (ypub/zpub/...): another coin's export, refused with a hint.
_BITCOIN_PREFIXES = ("ypub", "zpub", "Ypub", "Zpub", "upub", "vpub", "Upub", "Vpub")
_BITCOIN_PRIVATE_PREFIXES = ("yprv", "zprv", "Yprv", "Zprv", "uprv", "vprv")

MAX_INDEX = 2**31 - 1  # above it a step would be hardened
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_STEP = re.compile(r"^(0|[1-9][0-9]{0,9})$")


class DerivationError(ValueError):
    """An unusable extended key or path template; the message never quotes a key."""


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """Non-hardened steps around one `{index}`: `0/{index}` is prefix (0,), suffix ()."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    def steps(self, index: int) -> list[int]:
        return [*self.prefix, index, *self.suffix]

    def render(self, index: int) -> str:
        return "/".join(str(s) for s in self.steps(index))


def parse_path(text: str) -> PathTemplate:
    """`"0/{index}"` -> PathTemplate. Every step non-hardened, `{index}` exactly once."""
    raw = text.strip()
    if raw.startswith("m/") or raw == "m":
        raise DerivationError(
            "the path is relative to the configured key: drop the leading 'm/' "
            "(e.g. \"0/{index}\")"
        )
    parts = raw.split("/")
    if parts.count("{index}") != 1:
        raise DerivationError("the path must contain {index} exactly once, e.g. \"0/{index}\"")
    steps: list[int] = []
    at = parts.index("{index}")
    for i, part in enumerate(parts):
        if i == at:
            continue
        if part.endswith(("'", "h", "H")):
            raise DerivationError(
                f"step {part!r} is hardened: an extended public key cannot derive hardened "
                "steps (put them in the exported key's own path instead)"
            )
        if not _STEP.match(part) or int(part) > MAX_INDEX:
            raise DerivationError(
                f"step {part!r} is not a number from 0 to {MAX_INDEX} or {{index}}"
            )
        steps.append(int(part))
    return PathTemplate(prefix=tuple(steps[:at]), suffix=tuple(steps[at:]))


def _refuse_secret_shapes(text: str) -> None:
    if text.startswith(tuple(_PRIVATE_VERSIONS.values()) + _BITCOIN_PRIVATE_PREFIXES):
        raise DerivationError(
            "this is an extended PRIVATE key: never give the daemon a private key; export "
            "the account's extended public key (xpub) instead"
        )
    if len(text.split()) >= 12:
        raise DerivationError(
            "this looks like a seed phrase: never give the daemon a seed; derive the "
            "account's xpub offline (see README, 'Deposit addresses from an xpub')"
        )
    if _HEX_KEY.match(text):
        raise DerivationError(
            "this looks like a private key (64 hex digits): never give the daemon a private "
            "key; export the account's extended public key (xpub) instead"
        )
    if text.startswith(_BITCOIN_PREFIXES):
        raise DerivationError(
            "this is a Bitcoin SegWit extended key (ypub/zpub): export the Ethereum "
            "account's key (xpub, e.g. of m/44'/60'/0')"
        )


def parse_xpub(text: str) -> BIP32:
    """An account-level extended public key, checked: base58 checksum, public version
    bytes, depth >= 1, a valid curve point. Anything else raises DerivationError."""
    raw = text.strip()
    _refuse_secret_shapes(raw)
    try:
        data = b58decode_check(raw)
    except ValueError:
        raise DerivationError(
            "not a valid extended public key: the base58 checksum does not match "
            "(a character is wrong or missing)"
        ) from None
    if len(data) != 78:
        raise DerivationError(
            f"not an extended public key: {len(data)} bytes after decoding, expected 78"
        )
    version = int.from_bytes(data[:4], "big")
    if version in _PRIVATE_VERSIONS:
        raise DerivationError(
            "this is an extended PRIVATE key: never give the daemon a private key; export "
            "the account's extended public key (xpub) instead"
        )
    if version not in _PUBLIC_VERSIONS:
        raise DerivationError(
            "unknown extended key version: expected an xpub (or tpub) key"
        )
    depth = data[4]
    if depth < 1:
        raise DerivationError(
            "this is a master (depth 0) public key: export the account-level key, "
            "e.g. the xpub of m/44'/60'/0'"
        )
    try:
        return BIP32.from_xpub(raw)
    except ValueError:
        raise DerivationError(
            "not a valid extended public key: its point is not on the curve"
        ) from None


def address_of(public_key: bytes) -> str:
    """The EIP-55 address of a secp256k1 public key (compressed or not)."""
    point = coincurve.PublicKey(public_key).format(compressed=False)[1:]
    return checksum_address("0x" + keccak(point)[-20:].hex())


class Deriver:
    """Addresses for indexes under one key and template; the fixed prefix is derived once."""

    max_index = MAX_INDEX

    def __init__(self, xpub: str, path: str = "0/{index}") -> None:
        self.template = parse_path(path)
        key = parse_xpub(xpub)
        #: Names the key and template without revealing the key: the key's own BIP-32
        #: fingerprint (hash160 of its public key, as wallets show it) and the path.
        self.key_id = f"{key.get_fingerprint().hex()}:{path.strip()}"
        chaincode, pubkey = key.get_extended_pubkey_from_path(list(self.template.prefix))
        self._node = BIP32(chaincode, pubkey=pubkey, depth=1, index=0)

    def address(self, index: int) -> str:
        """The checksummed address at `index` (0 <= index <= 2**31 - 1)."""
        if not 0 <= index <= MAX_INDEX:
            raise DerivationError(f"index {index} is outside 0..{MAX_INDEX}")
        pubkey = self._node.get_pubkey_from_path([index, *self.template.suffix])
        return address_of(pubkey)
