"""A lean JSON-RPC client for EVM nodes: aiohttp + orjson, several URLs with failover,
tenacity retries. It returns the raw JSON values (hex strings); callers convert what they use.

Why not web3: its result formatters cost ~28x the CPU of a raw decode, and the follower
needs ~1,000 full blocks/s on catch-up.

Failover
    The URLs are in priority order. Requests go to the *current* URL (sticky). A transport
    failure (connection error, timeout, HTTP 429/4xx/5xx, truncated or invalid JSON, a
    rate-limit JSON-RPC error) marks that URL unhealthy for a cooldown (doubling with each
    consecutive failure, up to 8x) and the retry goes at once to the next usable URL. When
    the cooldown of a URL listed before the current one has passed, one request probes it;
    if it answers, it is "restored" (logged) and becomes current again. When every URL is
    resting, the one whose cooldown ends first is tried. A dead URL never stops the client
    while another one answers.

Retries
    Each call is retried up to `max_attempts` times on `RpcRetryable` (exponential backoff
    with jitter; `Retry-After` of a 429 honoured; no wait when switching to another healthy
    URL). JSON-RPC errors that will not change (bad params, unknown method, reverted call)
    raise `RpcFatal` at once; an `eth_getLogs` range refusal raises `RangeTooLarge` with the
    provider's suggested range when it gives one. After the last attempt the last
    `RpcRetryable` propagates.

Secrets
    URLs often carry API keys (`https://x.infura.io/v3/KEY`). Only the redacted label
    (`scheme://host[:port]`, with `#2`, `#3` appended when labels repeat) ever appears in
    logs, errors, `health()` and the `on_request` hook.

The `on_request(method, outcome, url_label, seconds)` hook is called once per HTTP attempt;
`outcome` is one of `OUTCOMES`:

    ok                a JSON-RPC answer without error
    rpc_error         a JSON-RPC error answer (fatal or transient)
    timeout           no complete answer within `timeout`
    connection_error  refused, reset, DNS failure, disconnect mid-body
    rate_limited      HTTP 429, or a JSON-RPC rate-limit error
    http_error        any other HTTP status that is not a JSON-RPC answer (401, 403, 5xx...)
    invalid_response  a body that is not valid JSON-RPC (truncated, HTML, wrong ids)

For a batch `method` is the common method name, or "batch" when they differ.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .errors import ChainIdMismatch, RangeTooLarge, RpcFatal, RpcRetryable

log = logging.getLogger(__name__)

OUTCOMES: Final = (
    "ok",
    "rpc_error",
    "timeout",
    "connection_error",
    "rate_limited",
    "http_error",
    "invalid_response",
)

RequestHook = Callable[[str, str, str, float], None]
T = TypeVar("T")

#: Full blocks per JSON-RPC batch in `get_blocks`. Measured on anvil, 2,000 blocks x 10
#: token transfers, 2 cores shared with other load: 4 requests in flight of 1 block each
#: ~550 blocks/s (client CPU ~510 us/block); batches of 4: ~670-720 blocks/s (~230-300
#: us/block); batches of 8: ~730 blocks/s (~200 us/block); 8 in flight no better. Small
#: batches stay under providers' batch limits.
DEFAULT_BATCH_SIZE: Final = 4
#: Transactions per batch in `get_receipts`.
RECEIPT_BATCH_SIZE: Final = 20
_MAX_COOLDOWN_FACTOR: Final = 8

# --- JSON-RPC error classification -----------------------------------------------------

_RANGE_RE = re.compile(
    r"too many (results|logs|blocks)|more than \d[\d,]* (results|logs)|block range"
    r"|range (is )?too (large|wide|big|long)|response size|query exceeds|max(imum)? results"
    r"|returned more than|limit(ed)? to \d|logs? limit|results? limit|exceeds? (the )?max",
    re.IGNORECASE,
)
_RANGE_PAIR_RE = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*,\s*(0x[0-9a-fA-F]+)\s*\]")
_RANGE_SIZE_RE = re.compile(
    r"(?:range|limited to|up to|max(?:imum)?)\D{0,30}?(\d[\d,]*)\s*(k\b)?", re.IGNORECASE
)
_RATE_RE = re.compile(
    r"rate.?limit|too many requests|request rate|requests per|exceeded .*(quota|capacity)"
    r"|daily request|credits|throughput",
    re.IGNORECASE,
)
_TRANSIENT_RE = re.compile(
    r"header not found|unknown block|timeout|timed out|try again|temporar|busy|overload"
    r"|unavailable|syncing|not ready|internal error",
    re.IGNORECASE,
)
_RATE_CODES: Final = frozenset({-32005, -32090, 429})
#: geth/erigon-style "query limit exceeded" on eth_getLogs (not a rate limit)
_LIMIT_RE = re.compile(r"limit exceeded", re.I)


def redact_url(url: str) -> str:
    """`scheme://host[:port]` of a URL: no user, password, path or query (they may hold keys)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme or "http"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _hex(n: int | str) -> str:
    return n if isinstance(n, str) else hex(n)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _range_hint(message: str, data: Any, params: Sequence[Any] | None) -> tuple[int, int] | None:
    """The block range a provider suggests in a refusal of `eth_getLogs`, if any."""
    m = _RANGE_PAIR_RE.search(message)
    if m:
        return int(m.group(1), 16), int(m.group(2), 16)
    if isinstance(data, dict):
        lo, hi = data.get("from"), data.get("to")
        if isinstance(lo, str) and isinstance(hi, str):
            try:
                return int(lo, 16), int(hi, 16)
            except ValueError:
                pass
    # "exceed maximum block range: 5000", "limited to a 10,000 block range", "up to a 2K ..."
    flt = params[0] if params and isinstance(params[0], dict) else None
    if flt is None:
        return None
    try:
        lo = int(flt["fromBlock"], 16)
        hi = int(flt["toBlock"], 16)
    except (KeyError, TypeError, ValueError):
        return None
    for m in _RANGE_SIZE_RE.finditer(message):
        size = int(m.group(1).replace(",", "")) * (1000 if m.group(2) else 1)
        if 1 <= size <= hi - lo:
            return lo, lo + size - 1
    return None


def _error_parts(error: Any) -> tuple[Any, str, Any]:
    if isinstance(error, dict):
        return error.get("code"), str(error.get("message", "")), error.get("data")
    return None, str(error), None


def _is_rate_limit(error: Any) -> bool:
    code, message, _ = _error_parts(error)
    return bool(_RATE_RE.search(message)) or (code in _RATE_CODES and not _RANGE_RE.search(message))


def map_rpc_error(
    error: Any, *, method: str, params: Sequence[Any] | None = None, label: str | None = None
) -> RpcRetryable | RpcFatal:
    """The typed error for a JSON-RPC `error` object:

    - `eth_getLogs` refusals ("too many results", "block range", -32005 that is not a
      rate limit...) -> `RangeTooLarge` with the provider's suggested range if any;
    - rate limits (-32005, 429, "rate limit", "too many requests") -> `RpcRetryable`;
    - transient node states ("header not found", "timeout", "internal error") ->
      `RpcRetryable`;
    - everything else (invalid params, method not found, execution reverted) -> `RpcFatal`.
    """
    code, message, data = _error_parts(error)
    text = f"{method}: JSON-RPC error {code}: {message}"[:500]
    if method == "eth_getLogs" and (
        _RANGE_RE.search(message)
        or (code in (-32005, -32000) and _LIMIT_RE.search(message) and not _RATE_RE.search(message))
        or (code == -32005 and not _RATE_RE.search(message))
    ):
        return RangeTooLarge(text, suggested=_range_hint(message, data, params), url=label)
    if _is_rate_limit(error) or _TRANSIENT_RE.search(message):
        return RpcRetryable(text, url=label, method=method)
    return RpcFatal(text, url=label, method=method)


# --- endpoints ------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Endpoint:
    url: str
    label: str
    index: int
    healthy: bool = True
    failures: int = 0
    retry_at: float = 0.0  # monotonic time after which an unhealthy endpoint may be probed
    last_error: str | None = None


class _TransportError(RpcRetryable):
    """A failure of the endpoint itself (not of the request): fail over."""

    def __init__(
        self,
        message: str,
        *,
        outcome: str,
        label: str,
        method: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=label, method=method, retry_after=retry_after)
        self.outcome = outcome


# --- the client -----------------------------------------------------------------------


class RpcClient:
    """JSON-RPC over HTTP to one network's URLs. Create inside the event loop that uses it
    (the aiohttp session is made on first use); `await close()` at the end."""

    def __init__(
        self,
        network: str,
        urls: list[str],
        *,
        timeout: float = 10.0,
        on_request: RequestHook | None = None,
        max_attempts: int = 4,
        cooldown: float = 30.0,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_connections: int = 16,
    ) -> None:
        if not urls:
            raise ValueError(f"{network}: no RPC URL")
        self.network = network
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.cooldown = cooldown
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._on_request = on_request
        self._max_connections = max_connections
        self._endpoints: list[_Endpoint] = []
        seen: dict[str, int] = {}
        for i, url in enumerate(urls):
            label = redact_url(url)
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}#{seen[label]}"
            self._endpoints.append(_Endpoint(url=url, label=label, index=i))
        self._current = 0
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._wait = wait_exponential_jitter(multiplier=backoff, max=max_backoff, jitter=backoff)

    @property
    def labels(self) -> list[str]:
        return [ep.label for ep in self._endpoints]

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    # --- endpoint selection and health ---

    def _pick(self) -> _Endpoint:
        now = time.monotonic()
        eps = self._endpoints
        current = eps[self._current]
        # probe a preferred (earlier) URL whose cooldown has passed; one request at a time
        for ep in eps[: self._current]:
            if not ep.healthy and ep.retry_at <= now:
                ep.retry_at = now + self._cooldown_for(ep)
                return ep
        if current.healthy:
            return current
        n = len(eps)
        for k in range(1, n + 1):
            ep = eps[(self._current + k) % n]
            if ep.healthy or ep.retry_at <= now:
                return ep
        return min(eps, key=lambda e: e.retry_at)

    def _cooldown_for(self, ep: _Endpoint) -> float:
        return self.cooldown * min(1 << max(ep.failures - 1, 0), _MAX_COOLDOWN_FACTOR)

    def _mark_failed(self, ep: _Endpoint, err: _TransportError) -> None:
        ep.failures += 1
        ep.last_error = str(err)
        cool = self._cooldown_for(ep)
        if err.retry_after is not None:
            cool = max(err.retry_after, min(cool, self.max_backoff))
        ep.retry_at = time.monotonic() + cool
        if ep.healthy:
            ep.healthy = False
            log.warning("rpc %s: %s unhealthy for %.0fs: %s", self.network, ep.label, cool, err)
        if ep.index == self._current:
            nxt = self._pick_next(ep)
            if nxt is not ep:
                log.warning("rpc %s: failing over %s -> %s", self.network, ep.label, nxt.label)
                self._current = nxt.index

    def _pick_next(self, failed: _Endpoint) -> _Endpoint:
        now = time.monotonic()
        n = len(self._endpoints)
        for k in range(1, n):
            ep = self._endpoints[(failed.index + k) % n]
            if ep.healthy or ep.retry_at <= now:
                return ep
        return failed

    def _mark_ok(self, ep: _Endpoint) -> None:
        if not ep.healthy:
            log.info("rpc %s: %s restored", self.network, ep.label)
            ep.healthy = True
        ep.failures = 0
        if ep.index < self._current or not self._endpoints[self._current].healthy:
            self._current = ep.index

    def health(self) -> list[dict[str, Any]]:
        """Per URL: `label`, `healthy`, `current`, `last_error`, `failures` (consecutive)."""
        return [
            {
                "label": ep.label,
                "healthy": ep.healthy,
                "current": ep.index == self._current,
                "last_error": ep.last_error,
                "failures": ep.failures,
            }
            for ep in self._endpoints
        ]

    # --- transport ---

    def _report(self, method: str, outcome: str, label: str, seconds: float) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(method, outcome, label, seconds)
        except Exception:  # a metrics bug must not break RPC
            log.exception("rpc %s: on_request hook failed", self.network)

    def _redact(self, ep: _Endpoint, text: str) -> str:
        return text.replace(ep.url, ep.label)

    async def _post(
        self, ep: _Endpoint, method: str, body: bytes, ids: list[int] | None
    ) -> list[Any]:
        """One HTTP attempt. Returns the answer's items in the order of `ids` (a batch) or
        the single answer as a one-item list (`ids` None). Raises `_TransportError` when
        the endpoint fails or answers something that is not JSON-RPC."""
        session = self._get_session()
        started = time.perf_counter()
        outcome = "invalid_response"

        def fail(out: str, what: str, retry_after: float | None = None) -> _TransportError:
            nonlocal outcome
            outcome = out
            return _TransportError(
                f"{method}: {ep.label}: {what}",
                outcome=out,
                label=ep.label,
                method=method,
                retry_after=retry_after,
            )

        try:
            async with session.post(ep.url, data=body) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
            if status == 429:
                raise fail("rate_limited", "HTTP 429", _parse_retry_after(retry_after))
            if status == 413 and method == "eth_getLogs":
                # "payload too large": the answer, not the endpoint, is the problem
                outcome = "rpc_error"
                raise RangeTooLarge(f"{method}: {ep.label}: HTTP 413", url=ep.label)
            try:
                decoded = orjson.loads(raw)
            except orjson.JSONDecodeError:
                if status != 200:
                    raise fail("http_error", f"HTTP {status}") from None
                raise fail("invalid_response", f"invalid JSON ({len(raw)} bytes)") from None
            if status >= 500 or (status != 200 and not _is_jsonrpc(decoded)):
                raise fail("http_error", f"HTTP {status}")
            items = _items(decoded, ids)
            if items is None:
                raise fail("invalid_response", "an answer that is not JSON-RPC")
            outcome = "rpc_error" if any(it.get("error") is not None for it in items) else "ok"
            return items
        except TimeoutError:
            raise fail("timeout", f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            detail = self._redact(ep, f"{type(exc).__name__}: {exc}")[:300]
            raise fail("connection_error", detail) from None
        finally:
            self._report(method, outcome, ep.label, time.perf_counter() - started)

    def _wait_for(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _TransportError):
            now = time.monotonic()
            if any(ep.healthy or ep.retry_at <= now for ep in self._endpoints):
                return 0.0  # another URL can take it at once
            if exc.retry_after is not None:
                return min(exc.retry_after, self.max_backoff)
        return float(self._wait(state))

    def _error(
        self, ep: _Endpoint, error: Any, method: str, params: Sequence[Any] | None
    ) -> RpcRetryable | RpcFatal:
        err = map_rpc_error(error, method=method, params=params, label=ep.label)
        if isinstance(err, RpcRetryable) and _is_rate_limit(error):
            # a JSON-RPC rate-limit answer is a failure of the endpoint: fail over
            limited = _TransportError(
                str(err), outcome="rate_limited", label=ep.label, method=method
            )
            self._mark_failed(ep, limited)
            return limited
        return err

    async def _send(
        self,
        calls: Sequence[tuple[str, list[Any]]],
        *,
        single: bool,
        allow_null: bool = True,
    ) -> list[Any]:
        """POST `calls` (one call, or one batch) with retries and failover; the results in
        order. A JSON-RPC error raises its typed error (the first one of a batch); a null
        result raises `RpcRetryable` (and is retried) unless `allow_null`."""
        first = next(self._ids)
        if single:
            method, params = calls[0]
            ids = None
            body = orjson.dumps({"jsonrpc": "2.0", "id": first, "method": method, "params": params})
        else:
            # reserve the ids so concurrent batches never share one
            self._ids = itertools.count(first + len(calls))
            ids = list(range(first, first + len(calls)))
            methods = {m for m, _ in calls}
            method = next(iter(methods)) if len(methods) == 1 else "batch"
            body = orjson.dumps(
                [
                    {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                    for i, (m, p) in zip(ids, calls, strict=True)
                ]
            )
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait_for,
            retry=retry_if_exception_type(RpcRetryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                ep = self._pick()
                try:
                    items = await self._post(ep, method, body, ids)
                except _TransportError as err:
                    self._mark_failed(ep, err)
                    raise
                results: list[Any] = []
                for item, (m, p) in zip(items, calls, strict=True):
                    if item.get("error") is not None:
                        raise self._error(ep, item["error"], m, p)
                    result = item.get("result")
                    if result is None and not allow_null:
                        raise RpcRetryable(
                            f"{m}{_short(p)}: null at {ep.label} (not available yet)",
                            url=ep.label,
                            method=m,
                        )
                    results.append(result)
                self._mark_ok(ep)
                return results
        raise AssertionError("unreachable")  # pragma: no cover

    # --- public calls ---

    async def call(self, method: str, params: list[Any] | None = None) -> Any:
        """One JSON-RPC call; its `result` (raw JSON)."""
        return (await self._send([(method, [] if params is None else params)], single=True))[0]

    async def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Several calls in one HTTP request; their results in order. If any element
        answers an error, the mapped error of the first one is raised."""
        if not calls:
            return []
        return await self._send(calls, single=False)

    async def block_number(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId"), 16)

    async def get_block(self, number: int | str, full: bool = False) -> dict[str, Any] | None:
        """The block by number or tag ("latest", "safe", "finalized"); None if unknown."""
        result = await self.call("eth_getBlockByNumber", [_hex(number), full])
        return result if isinstance(result, dict) else None

    async def get_block_by_hash(self, block_hash: str, full: bool = False) -> dict[str, Any] | None:
        """The block with this hash; None if the node does not know it."""
        result = await self.call("eth_getBlockByHash", [block_hash, full])
        return result if isinstance(result, dict) else None

    async def get_block_receipts(self, number: int | str) -> list[dict[str, Any]] | None:
        """Every receipt of a block (`eth_getBlockReceipts`) by number or by hash; None if
        the node has no such block."""
        ref = number if isinstance(number, str) and len(number) == 66 else _hex(number)
        result = await self.call("eth_getBlockReceipts", [ref])
        return result if isinstance(result, list) else None

    async def trace_blocks(
        self, numbers: Sequence[int], mode: str, concurrency: int = 4, batch_size: int = 4
    ) -> list[Any]:
        """Traces of several blocks, in order: `trace_block` (mode "trace_block") or
        `debug_traceBlockByNumber` with the callTracer (mode "debug_trace")."""
        calls: list[tuple[str, list[Any]]]
        if mode == "trace_block":
            calls = [("trace_block", [_hex(n)]) for n in numbers]
        else:
            calls = [("debug_traceBlockByNumber", [_hex(n), {"tracer": "callTracer"}])
                     for n in numbers]
        return await self._chunked(
            calls, concurrency=concurrency, batch_size=batch_size, allow_null=True
        )

    async def get_blocks_receipts(
        self, block_hashes: Sequence[str], concurrency: int = 4, batch_size: int = 4
    ) -> list[list[dict[str, Any]] | None]:
        """`eth_getBlockReceipts` of several blocks by hash, in order; None for a block the
        node does not have."""
        calls = [("eth_getBlockReceipts", [h]) for h in block_hashes]
        return await self._chunked(
            calls, concurrency=concurrency, batch_size=batch_size, allow_null=True
        )

    async def get_logs_by_hash(
        self, block_hash: str, addresses: Sequence[str], topics: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """`eth_getLogs` of one block by hash (EIP-234): a node that does not have the block
        answers an error instead of `[]`, unlike a range query."""
        return await self._get_logs({"blockHash": block_hash}, addresses, topics)

    async def _chunked(
        self,
        calls: list[tuple[str, list[Any]]],
        *,
        concurrency: int,
        batch_size: int,
        allow_null: bool,
    ) -> list[Any]:
        """`calls` in batches of `batch_size`, `concurrency` requests in flight; results in
        order."""
        size = max(1, batch_size)
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(start: int) -> list[Any]:
            chunk = calls[start : start + size]
            async with sem:
                return await self._send(chunk, single=size == 1, allow_null=allow_null)

        parts = await asyncio.gather(*(one(s) for s in range(0, len(calls), size)))
        return [r for part in parts for r in part]

    async def get_blocks(
        self,
        numbers: Sequence[int],
        full: bool = False,
        concurrency: int = 4,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[dict[str, Any]]:
        """The blocks, in the order asked. A block the node does not have (yet) is retried,
        then raises `RpcRetryable`."""
        calls = [("eth_getBlockByNumber", [hex(n), full]) for n in numbers]
        return await self._chunked(
            calls, concurrency=concurrency, batch_size=batch_size, allow_null=False
        )

    async def get_logs(
        self,
        from_block: int,
        to_block: int,
        addresses: Sequence[str] | None = None,
        topics: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """`eth_getLogs` over [from_block, to_block]; raises `RangeTooLarge` if refused."""
        return await self._get_logs(
            {"fromBlock": hex(from_block), "toBlock": hex(to_block)}, addresses, topics
        )

    async def _get_logs(
        self,
        flt: dict[str, Any],
        addresses: Sequence[str] | None,
        topics: Sequence[Any] | None,
    ) -> list[dict[str, Any]]:
        if addresses:
            flt["address"] = list(addresses)
        if topics:
            flt["topics"] = list(topics)
        result = await self.call("eth_getLogs", [flt])
        if not isinstance(result, list):
            raise RpcRetryable(
                f"eth_getLogs: unexpected answer {type(result).__name__}", method="eth_getLogs"
            )
        return result

    async def get_receipt(self, tx_hash: str) -> dict[str, Any] | None:
        result = await self.call("eth_getTransactionReceipt", [tx_hash])
        return result if isinstance(result, dict) else None

    async def get_receipts(
        self, tx_hashes: Sequence[str], concurrency: int = 4, batch_size: int = RECEIPT_BATCH_SIZE
    ) -> list[dict[str, Any] | None]:
        """Receipts in the order asked; None for a transaction the node does not know."""
        calls = [("eth_getTransactionReceipt", [h]) for h in tx_hashes]
        return await self._chunked(
            calls, concurrency=concurrency, batch_size=batch_size, allow_null=True
        )

    async def check_chain_id(self, expected: int) -> list[dict[str, Any]]:
        """Ask EVERY URL its chain id. Returns per URL `{label, chain_id, ok, error}`; raises
        `ChainIdMismatch` (naming the URL's label and both ids) if one answers another id.
        An unreachable URL is reported (`chain_id` None, `error` set), not a mismatch."""
        body = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "eth_chainId", "params": []})

        async def ask(ep: _Endpoint) -> dict[str, Any]:
            row: dict[str, Any] = {"label": ep.label, "chain_id": None, "ok": False, "error": None}
            try:
                answer = (await self._post(ep, "eth_chainId", body, None))[0]
                if not isinstance(answer.get("result"), str):
                    row["error"] = f"no chain id in answer: {answer.get('error')!r}"[:300]
                else:
                    row["chain_id"] = int(answer["result"], 16)
                    row["ok"] = row["chain_id"] == expected
                    self._mark_ok(ep)
            except _TransportError as err:
                self._mark_failed(ep, err)
                row["error"] = str(err)
            except ValueError as err:
                row["error"] = f"bad chain id: {err}"
            return row

        rows = list(await asyncio.gather(*(ask(ep) for ep in self._endpoints)))
        for row in rows:
            if row["chain_id"] is not None and row["chain_id"] != expected:
                raise ChainIdMismatch(
                    f"{self.network}: {row['label']} answers chain id {row['chain_id']}, "
                    f"expected {expected}",
                    url=row["label"],
                    method="eth_chainId",
                )
        return rows


def _short(params: list[Any]) -> str:
    text = orjson.dumps(params).decode()
    return f"({text[:80]})"


def _items(decoded: Any, ids: list[int] | None) -> list[dict[str, Any]] | None:
    """The answer's items in the order of `ids`; None if it is not a JSON-RPC answer.
    A single error object answering a whole batch stands for each of its items."""
    if isinstance(decoded, dict):
        if "result" not in decoded and "error" not in decoded:
            return None
        if ids is not None and decoded.get("error") is None:
            return None
        return [decoded] * (1 if ids is None else len(ids))
    if ids is None or not isinstance(decoded, list):
        return None
    by_id = {it.get("id"): it for it in decoded if isinstance(it, dict)}
    items = [by_id.get(i) for i in ids]
    if any(it is None or ("result" not in it and "error" not in it) for it in items):
        return None
    return items  # type: ignore[return-value]


def _is_jsonrpc(decoded: Any) -> bool:
    if isinstance(decoded, list):
        return bool(decoded) and all(isinstance(d, dict) and "jsonrpc" in d for d in decoded)
    return (
        isinstance(decoded, dict)
        and "jsonrpc" in decoded
        and ("result" in decoded or "error" in decoded)
    )
