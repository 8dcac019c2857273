"""Where a rate comes from. Each source answers `fetch(pair, now)` with a `Rate` or raises
`SourceError` saying why (the book then tries the pair's next source)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Protocol

import aiohttp
from eth_abi.abi import decode
from eth_utils.abi import function_signature_to_4byte_selector

from watcher.errors import RpcError
from watcher.rates import Rate, from_units
from watcher.rpc import RpcClient

LATEST_ROUND_DATA = "0x" + function_signature_to_4byte_selector("latestRoundData()").hex()
DECIMALS = "0x" + function_signature_to_4byte_selector("decimals()").hex()
HTTP_TIMEOUT = 10.0
MAX_HTTP_BODY = 1024 * 1024


class SourceError(Exception):
    """This source has no usable answer now (the message says why, without secrets)."""


class Source(Protocol):
    kind: str  # "fixed" | "chainlink" | "http": the metric label
    label: str  # for logs and /v1/rates

    async def fetch(self, pair: str, now: int) -> Rate: ...


class FixedSource:
    kind = "fixed"

    def __init__(self, value: str) -> None:
        self.value = Fraction(value)
        self.label = f"fixed {value}"

    async def fetch(self, pair: str, now: int) -> Rate:
        return Rate(pair, self.value, "fixed", now)


class ChainlinkSource:
    """An AggregatorV3 feed read with `eth_call` through the network's RPC client (its
    failover and retries included). A round is refused when its answer is not positive,
    it was never updated, it is older than `max_age`, or it was carried over from an
    earlier round (`answeredInRound < roundId`)."""

    kind = "chainlink"

    def __init__(self, rpc: RpcClient, network: str, feed: str, max_age: int) -> None:
        self.rpc = rpc
        self.network = network
        self.feed = feed
        self.max_age = max_age
        self.decimals: int | None = None
        self.label = f"chainlink {network} {feed}"

    async def _call(self, data: str) -> bytes:
        try:
            result = await self.rpc.call("eth_call", [{"to": self.feed, "data": data}, "latest"])
        except RpcError as exc:
            raise SourceError(f"eth_call failed: {exc}") from None
        if not isinstance(result, str) or not result.startswith("0x") or len(result) < 66:
            raise SourceError("the feed answered nothing (is it a contract?)")
        return bytes.fromhex(result[2:])

    async def fetch(self, pair: str, now: int) -> Rate:
        if self.decimals is None:
            (dec,) = decode(["uint8"], await self._call(DECIMALS))
            self.decimals = int(dec)
        raw = await self._call(LATEST_ROUND_DATA)
        try:
            round_id, answer, _started, updated, answered_in = decode(
                ["uint80", "int256", "uint256", "uint256", "uint80"], raw
            )
        except Exception:
            raise SourceError("latestRoundData() answered something else") from None
        if answer <= 0:
            raise SourceError(f"round {round_id} answers {answer} (not positive)")
        if updated == 0:
            raise SourceError(f"round {round_id} was never updated")
        if answered_in < round_id:
            raise SourceError(f"round {round_id} was answered in an earlier round {answered_in}")
        if now - updated > self.max_age:
            raise SourceError(f"round {round_id} is {now - updated} s old (max_age {self.max_age})")
        return Rate(pair, from_units(int(answer), self.decimals), "chainlink", int(updated))


def _walk(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(doc, dict) and key in doc:
            doc = doc[key]
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            raise SourceError(f"no {path!r} in the answer")
    return doc


class HttpSource:
    """A JSON document over HTTP(S) and the dotted path of the price in it (a number or a
    decimal string, read exactly: never through a float)."""

    kind = "http"

    def __init__(self, session: aiohttp.ClientSession, url: str, path: str) -> None:
        self.session = session
        self.url = url
        self.path = path
        host = url.split("/")[2] if "//" in url else url
        self.label = f"http {host.rsplit('@', 1)[-1]} {path}"  # no credentials in labels

    async def fetch(self, pair: str, now: int) -> Rate:
        try:
            async with self.session.get(
                self.url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
            ) as resp:
                if resp.status != 200:
                    raise SourceError(f"HTTP {resp.status}")
                body = await resp.content.read(MAX_HTTP_BODY + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"request failed: {type(exc).__name__}") from None
        if len(body) > MAX_HTTP_BODY:
            raise SourceError("the answer is over 1 MiB")
        try:
            doc = json.loads(body, parse_float=Decimal, parse_int=Decimal)
        except ValueError:
            raise SourceError("the answer is not JSON") from None
        value = _walk(doc, self.path)
        try:
            number = Decimal(value) if isinstance(value, str) else value
            if not isinstance(number, Decimal) or not number.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            raise SourceError(f"{self.path!r} is not a number") from None
        if number <= 0:
            raise SourceError(f"{self.path!r} is {number} (not positive)")
        return Rate(pair, Fraction(number), "http", now)
