"""EIP-55 checksummed addresses, fast: the hot paths (every transfer a node sends, every
invoice create) hash the lower-case hex with keccak (eth_hash) and cache the answer; any
other input goes through `eth_utils.to_checksum_address` itself."""

from __future__ import annotations

import functools
import re

from eth_hash.auto import keccak

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@functools.lru_cache(maxsize=4096)
def checksum_address(address: str) -> str:
    """`eth_utils.to_checksum_address` (EIP-55) without its validation layers: ~20x cheaper
    on `0x` + 40 hex digits; anything else goes through eth_utils itself."""
    if _HEX_ADDRESS.fullmatch(address) is None:
        from eth_utils.address import to_checksum_address

        return str(to_checksum_address(address))
    lower = address[2:].lower()
    digest = keccak(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if d in "89abcdef" else c for c, d in zip(lower, digest[:40], strict=True)
    )
