"""Balances of deposit addresses, read from the chain so the merchant knows what to sweep.

Native coins with `eth_getBalance`, tokens with `balanceOf` through `eth_call`, many in one
JSON-RPC batch, every call pinned to one block so the figures are of the same moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from eth_abi.abi import encode
from eth_utils.abi import function_signature_to_4byte_selector

from watcher.errors import RpcError
from watcher.models import Asset
from watcher.rpc import RpcClient

_BALANCE_OF = function_signature_to_4byte_selector("balanceOf(address)")
#: Calls per JSON-RPC batch (providers commonly cap batches at 100-1000 elements).
BATCH = 100


class BalanceError(Exception):
    """A balance could not be read (the node answered an error, or a token is no contract)."""


def balance_of_data(holder: str) -> str:
    """The `eth_call` data of `balanceOf(holder)`."""
    return "0x" + (_BALANCE_OF + encode(["address"], [holder])).hex()


def _word(result: object, what: str) -> int:
    if not isinstance(result, str) or not result.startswith("0x") or len(result) < 3:
        raise BalanceError(f"{what}: no answer (is the token address a contract?)")
    try:
        return int(result[:66], 16) if len(result) > 66 else int(result, 16)
    except ValueError:
        raise BalanceError(f"{what}: not a number: {result[:20]}") from None


async def read_balances(
    rpc: RpcClient, assets: Sequence[Asset], addresses: Sequence[str]
) -> tuple[int, dict[str, dict[str, int]]]:
    """`(block, {address: {symbol: base units}})` for every asset at every address, read at
    one block (the node's latest when asked)."""
    try:
        block = hex(await rpc.block_number())
    except RpcError as exc:
        raise BalanceError(f"{rpc.network}: {exc}") from None
    calls: list[tuple[str, list[object]]] = []
    keys: list[tuple[str, Asset]] = []
    for address in addresses:
        for asset in assets:
            if asset.token is None:
                calls.append(("eth_getBalance", [address, block]))
            else:
                calls.append(
                    ("eth_call", [{"to": asset.token, "data": balance_of_data(address)}, block])
                )
            keys.append((address, asset))
    out: dict[str, dict[str, int]] = {a: {} for a in addresses}
    for start in range(0, len(calls), BATCH):
        try:
            results = await rpc.batch(calls[start : start + BATCH])
        except RpcError as exc:  # the client already retried; say what failed
            raise BalanceError(f"{rpc.network}: {exc}") from None
        for (address, asset), result in zip(keys[start : start + BATCH], results, strict=True):
            out[address][asset.symbol] = _word(result, f"{rpc.network} {asset.symbol}")
    return int(block, 16), out


async def balances_by_network(
    rpcs: Mapping[str, RpcClient],
    assets: Mapping[str, Sequence[Asset]],
    addresses: Sequence[str],
) -> tuple[dict[str, tuple[int, dict[str, dict[str, int]]]], dict[str, str]]:
    """Every network of `assets` read at once: `({network: (block, balances)},
    {network: error})`; a network that fails does not hide the others."""
    names = [n for n in assets if n in rpcs]
    results = await asyncio.gather(
        *(read_balances(rpcs[n], assets[n], addresses) for n in names), return_exceptions=True
    )
    found: dict[str, tuple[int, dict[str, dict[str, int]]]] = {}
    errors: dict[str, str] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BalanceError):
            errors[name] = str(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            found[name] = result
    for name in assets:
        if name not in rpcs:
            errors[name] = f"{name}: no RPC client"
    return found, errors
