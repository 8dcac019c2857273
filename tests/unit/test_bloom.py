"""The follower's logsBloom check: the same answer as eth_bloom's own membership test."""

from __future__ import annotations

import random

from eth_bloom import BloomFilter

from watcher.follower import _bloom_may_hold_any


def test_cached_masks_answer_as_eth_bloom_membership() -> None:
    rnd = random.Random(5)
    for _ in range(300):
        sizes = [rnd.choice([20, 32]) for _ in range(rnd.randint(0, 40))]
        present = ["0x" + rnd.randbytes(size).hex() for size in sizes]
        bloom = int(BloomFilter.from_iterable(bytes.fromhex(x[2:]) for x in present))
        probes = present[:3] + ["0x" + rnd.randbytes(32).hex() for _ in range(5)]
        for probe in probes:
            expected = bytes.fromhex(probe[2:]) in BloomFilter(bloom)
            assert _bloom_may_hold_any(bloom, [probe]) == expected
        assert _bloom_may_hold_any(bloom, probes) == any(
            bytes.fromhex(p[2:]) in BloomFilter(bloom) for p in probes)
    assert not _bloom_may_hold_any(0, ["0x" + "11" * 20])
    assert not _bloom_may_hold_any(2**2048 - 1, [])
