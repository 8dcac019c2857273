"""The rates in memory: one `RateBook` per daemon, refreshed in the background, read by
creates without any I/O.

Each configured pair keeps the last rate one of its sources gave. A refresh tries the
pair's sources in order; the first that answers wins. When every source fails, the pair
keeps its last rate until that is older than `max_age`, then creates that need it get 503
`rate_unavailable` (others keep working)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from watcher.config import Settings
from watcher.pricing.sources import (
    ChainlinkSource,
    FixedSource,
    HttpSource,
    Source,
    SourceError,
)
from watcher.rates import Rate, format_rate, lookup, priceable
from watcher.rpc import RpcClient

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PairState:
    rate: Rate | None = None
    label: str | None = None  # the source that gave `rate`
    error: str | None = None  # why the last refresh found nothing (None: it did)
    checked_at: int | None = None


def build_sources(
    settings: Settings,
    rpcs: Mapping[str, RpcClient],
    session: aiohttp.ClientSession | None,
) -> dict[str, list[Source]]:
    """The configured pairs' sources: chainlink ones read through the networks' RPC
    clients (`rpcs`; a feed not given is the network file's for the pair), http ones
    through `session`. `Settings.runtime_problems` has refused what cannot be built."""
    rates = settings.rates
    out: dict[str, list[Source]] = {}
    for pair, configs in rates.pairs.items():
        sources: list[Source] = []
        for c in configs:
            feed = settings.feed_of(pair, c)
            if c.fixed is not None:
                sources.append(FixedSource(c.fixed))
            elif c.chainlink is not None and feed is not None and c.chainlink in rpcs:
                sources.append(ChainlinkSource(rpcs[c.chainlink], c.chainlink, feed,
                                               rates.max_age))
            elif c.http is not None and c.path is not None and session is not None:
                sources.append(HttpSource(session, c.http, c.path))
        out[pair] = sources
    return out


class RateBook:
    def __init__(
        self,
        pairs: Mapping[str, Sequence[Source]],
        max_age: int,
        *,
        on_rate: Callable[[str, str, Rate | None, int], None] | None = None,
    ) -> None:
        self.pairs = dict(pairs)
        self.max_age = max_age
        self.state: dict[str, PairState] = {name: PairState() for name in pairs}
        #: Called after each refresh of a pair: (pair, source kind, rate or None, now).
        self.on_rate = on_rate

    # ------------------------------------------------------------------ reading

    def fresh(self, now: int) -> dict[str, Rate]:
        """The pairs whose last rate is at most `max_age` old."""
        return {
            name: st.rate
            for name, st in self.state.items()
            if st.rate is not None and now - st.rate.at <= self.max_age
        }

    def rate(self, asset: str, currency: str, now: int) -> Rate:
        """The rate to price `asset` in `currency` now (RateUnavailable if none)."""
        return lookup(self.fresh(now), asset, currency)

    def can_price(self, asset: str, currency: str) -> bool:
        return priceable(set(self.pairs), asset, currency)

    @property
    def pair_names(self) -> list[str]:
        return list(self.pairs)

    def status(self, now: int) -> list[dict[str, Any]]:
        """Every configured pair for `GET /v1/rates`."""
        out = []
        for name, st in self.state.items():
            r = st.rate
            out.append({
                "pair": name,
                "rate": format_rate(r.value) if r else None,
                "source": st.label,
                "updatedAt": r.at if r else None,
                "ageSeconds": now - r.at if r else None,
                "fresh": r is not None and now - r.at <= self.max_age,
                "error": st.error,
            })
        return out

    # ------------------------------------------------------------------ refreshing

    async def refresh_pair(self, name: str, now: int) -> None:
        st = self.state[name]
        errors = []
        for src in self.pairs[name]:
            try:
                rate = await src.fetch(name, now)
            except SourceError as exc:
                errors.append(f"{src.label}: {exc}")
                continue
            except Exception as exc:  # a source's bug must not stop the others
                log.exception("rate source %s failed for %s", src.label, name)
                errors.append(f"{src.label}: {type(exc).__name__}")
                continue
            st.rate, st.label, st.error, st.checked_at = rate, src.label, None, now
            if self.on_rate is not None:
                self.on_rate(name, src.kind, rate, now)
            return
        st.error, st.checked_at = "; ".join(errors), now
        log.warning("no source of %s answered: %s", name, st.error, extra={"pair": name})
        if self.on_rate is not None:
            self.on_rate(name, "", st.rate, now)

    async def refresh(self, now: int) -> None:
        await asyncio.gather(*(self.refresh_pair(name, now) for name in self.pairs))

    async def run(self, interval: float, clock: Callable[[], int]) -> None:
        """Refresh every `interval` seconds (the first refresh is the caller's)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh(clock())


async def read_once(settings: Settings, timeout: float) -> RateBook:
    """A book filled by one refresh, with clients of its own (the CLI's way: no daemon's
    book to ask). Sources that do not answer within `timeout` leave their pair empty."""
    names = {c.chainlink for cs in settings.rates.pairs.values() for c in cs if c.chainlink}
    nets = settings.enabled_networks()
    rpcs = {n: RpcClient(n, nets[n].rpc, max_attempts=2) for n in names if n in nets}
    try:
        async with aiohttp.ClientSession() as session:
            book = RateBook(build_sources(settings, rpcs, session), settings.rates.max_age)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(book.refresh(int(time.time())), timeout)
            return book
    finally:
        for rpc in rpcs.values():
            await rpc.close()
