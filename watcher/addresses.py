"""EIP-55 checksummed addresses, fast: the hot paths (every transfer a node sends, every
invoice create) hash the lower-case hex with keccak (eth_hash) and cache the answer; any
other input goes through `eth_utils.to_checksum_address` itself."""

from __future__ import annotations

import functools
import re

from eth_hash.auto import keccak

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


#: a hex digit of the hash -> 0xFF where EIP-55 upper-cases the address's letter (8-f)
_UPPER_MASK = bytes.maketrans(b"0123456789abcdef", b"\x00" * 8 + b"\xff" * 8)


@functools.lru_cache(maxsize=4096)
def checksum_address(address: str) -> str:
    """`eth_utils.to_checksum_address` (EIP-55) without its validation layers: ~20x cheaper
    on `0x` + 40 hex digits; anything else goes through eth_utils itself. The letters to
    upper-case are picked with integer masks over the 40 characters at once (upper- and
    lower-case digits are the same byte)."""
    if _HEX_ADDRESS.fullmatch(address) is None:
        from eth_utils.address import to_checksum_address

        return str(to_checksum_address(address))
    lower = address[2:].lower().encode("ascii")
    mask = int.from_bytes(keccak(lower).hex()[:40].encode("ascii").translate(_UPPER_MASK))
    mixed = (int.from_bytes(lower.upper()) & mask) | (int.from_bytes(lower) & ~mask)
    return "0x" + mixed.to_bytes(40).decode("ascii")
