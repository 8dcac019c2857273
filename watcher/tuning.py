"""How many blocks per JSON-RPC batch, and how many batches in flight, a node serves
fastest (full blocks), and in how many parts read at once a range's `eth_getLogs` comes
back fastest: measured on the follower's own reads, never assumed.

`Tuner` keeps a smoothed rate (blocks per second of wall time) for each setting it has
tried. It starts at the client's defaults, and every `explore_every` reads it tries one
neighbour of the best setting (batch size or concurrency one step up or down); the best
smoothed rate wins. Only reads of at least `min_blocks` blocks are measured (a block or
two at the tip says nothing about throughput). A setting whose read failed is never tried
again, so a node that refuses large batches or many requests in flight is moved away from
them at the cost of one failed read. Pure logic: the caller times the reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
CONCURRENCIES = (1, 2, 4, 8)
#: parts of one range's eth_getLogs read at once
LOG_PARTS = (1, 2, 4, 8)

Setting = tuple[int, int]  # (batch size, requests in flight)


@dataclass(slots=True)
class Tuner:
    start: Setting = (4, 4)
    #: the values each side of a setting may take
    sizes: tuple[int, ...] = BATCH_SIZES
    concurrencies: tuple[int, ...] = CONCURRENCIES
    explore_every: int = 4
    min_blocks: int = 16
    #: weight of the newest observation in a setting's smoothed rate
    alpha: float = 0.5
    rates: dict[Setting, float] = field(default_factory=dict)
    refused: set[Setting] = field(default_factory=set)
    _reads: int = 0
    _next_probe: int = 0

    def __post_init__(self) -> None:
        if self.start[0] not in self.sizes or self.start[1] not in self.concurrencies:
            raise ValueError(f"not a tunable setting: {self.start}")

    def best(self) -> Setting:
        if not self.rates:
            return self.start
        return max(self.rates, key=lambda s: (self.rates[s], s == self.start))

    def next_setting(self, blocks: int) -> Setting:
        """The setting for the next read of `blocks` blocks: the best so far, or now and
        then a neighbour of it."""
        best = self.best()
        if blocks < self.min_blocks:
            return best
        self._reads += 1
        if self._reads % self.explore_every == 0:
            probes = self._neighbours(best)
            if probes:
                self._next_probe += 1
                return probes[(self._next_probe - 1) % len(probes)]
        return best

    def observe(self, setting: Setting, blocks: int, seconds: float) -> None:
        """A read of `blocks` blocks with `setting` took `seconds`."""
        if blocks < self.min_blocks or setting in self.refused:
            return
        rate = blocks / max(seconds, 1e-6)
        old = self.rates.get(setting)
        self.rates[setting] = rate if old is None else old + self.alpha * (rate - old)

    def failed(self, setting: Setting) -> None:
        """A read with `setting` failed: never use it again, unless it is the start (the
        client's defaults are kept through an outage)."""
        if setting != self.start:
            self.refused.add(setting)
            self.rates.pop(setting, None)

    def _neighbours(self, s: Setting) -> list[Setting]:
        sizes, concurrencies = self.sizes, self.concurrencies
        b, c = sizes.index(s[0]), concurrencies.index(s[1])
        out = []
        for db, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            if 0 <= b + db < len(sizes) and 0 <= c + dc < len(concurrencies):
                n = (sizes[b + db], concurrencies[c + dc])
                if n not in self.refused:
                    out.append(n)
        return out
