"""The batch size and concurrency of full-block reads follow what the node serves fastest
(`watcher.tuning`, pure), and the follower keeps every payment while it explores,
including against a node that refuses large batches."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.chainmodel import ChainModel, NativeTx
from tests.daemonparts import ADDRS, PAYER, clock, running
from watcher.models import Status
from watcher.tuning import Setting, Tuner


def _drive(tuner: Tuner, rate_of: dict[Setting, float], reads: int) -> list[Setting]:
    used = []
    for _ in range(reads):
        s = tuner.next_setting(100)
        used.append(s)
        tuner.observe(s, 100, 100 / rate_of.get(s, 1.0))
    return used


def test_small_reads_are_neither_measured_nor_explored() -> None:
    t = Tuner()
    for _ in range(50):
        s = t.next_setting(2)
        assert s == (4, 4)
        t.observe(s, 2, 0.001)
    assert t.rates == {}


def test_it_climbs_to_the_setting_the_node_serves_fastest() -> None:
    # a node fastest at 16 blocks per batch and 4 in flight; every step away is slower
    def rate(s: tuple[int, int]) -> float:
        return 1000.0 / (1 + abs(s[0].bit_length() - 5) + abs(s[1].bit_length() - 3))

    rates = {(b, c): rate((b, c)) for b in (1, 2, 4, 8, 16, 32) for c in (1, 2, 4, 8)}
    t = Tuner()
    used = _drive(t, rates, 80)
    assert t.best() == (16, 4)
    tail = used[-40:]
    # the best most of the time; a neighbour once every `explore_every` reads
    assert tail.count((16, 4)) >= len(tail) * (1 - 1 / t.explore_every) - 1


def test_it_stays_at_the_defaults_when_they_are_best() -> None:
    rates = {(4, 4): 2000.0}
    t = Tuner()
    used = _drive(t, rates, 40)
    assert t.best() == (4, 4)
    assert used.count((4, 4)) >= 30


def test_a_refused_setting_is_never_tried_again_but_the_defaults_are_kept() -> None:
    t = Tuner()
    t.observe((4, 4), 100, 0.1)
    t.failed((8, 4))
    t.failed((4, 4))  # an outage while at the defaults: they stay usable
    seen = set()
    for _ in range(40):
        s = t.next_setting(100)
        seen.add(s)
        t.observe(s, 100, 0.5)
    assert (8, 4) not in seen and (4, 4) in seen
    assert (8, 4) not in t.rates


async def test_the_follower_explores_and_keeps_every_payment(tmp_path: Path) -> None:
    """Native invoices make the follower read full blocks; a node that refuses batches of
    more than 4 makes every larger setting fail once. Every payment is found, and the
    refused settings are not tried again."""
    model = ChainModel(genesis_time=1_700_000_000, block_time=12)
    model.mine_empty(2)
    model.max_batch = 4
    async with running(tmp_path, model, max_block_range=40) as (model, _, node):
        now = clock(model)
        invs = [await node.create("ETH", 10 + i, a, now=now, expire_at=now + 100_000)
                for i, a in enumerate(ADDRS[:3])]
        for round_ in range(12):
            for i, a in enumerate(ADDRS[:3]):
                if round_ == i * 4:
                    model.mine([NativeTx(PAYER, a, 10 + i)])
            model.mine_empty(39)
        await node.catch_up(model.head.number, passes=200)
        for inv in invs:
            got = await node.get(inv.id)
            assert (got.status, len(got.payments)) == (Status.COMPLETED, 1), got
        tuner = node.follower._tuner
        assert tuner.refused and all(b > 4 for b, _ in tuner.refused)
        assert len(tuner.rates) >= 2  # something beside the defaults was measured


def test_split_gives_consecutive_nearly_equal_spans() -> None:
    from watcher.follower import _split

    assert _split(10, 10, 4) == [(10, 10)]
    assert _split(1, 10, 4) == [(1, 3), (4, 6), (7, 8), (9, 10)]
    assert _split(1, 1000, 1) == [(1, 1000)]
    for start, end, parts in ((5, 17, 3), (1, 999, 8), (100, 163, 8)):
        spans = _split(start, end, parts)
        assert spans[0][0] == start and spans[-1][1] == end
        assert all(b + 1 == c for (_, b), (c, _) in itertools.pairwise(spans))
        sizes = [b - a + 1 for a, b in spans]
        assert max(sizes) - min(sizes) <= 1


async def test_a_long_token_range_is_read_in_parts_and_loses_nothing(tmp_path: Path) -> None:
    """A 400-block range of token transfers is asked in several `eth_getLogs` at once;
    every payment is found once, in chain order, whatever part it fell in."""
    from tests.chainmodel import TokenTx
    from tests.daemonparts import TOKEN

    model = ChainModel(genesis_time=1_700_000_000, block_time=12)
    model.mine_empty(2)
    async with running(tmp_path, model, max_block_range=400) as (model, _, node):
        now = clock(model)
        inv = await node.create("USDT", 400, ADDRS[0], now=now, expire_at=now + 100_000)
        await node.catch_up(model.head.number)
        for _ in range(4):
            model.mine([TokenTx(TOKEN, PAYER, ADDRS[0], 100)])
            model.mine_empty(99)
        model.reset_calls()
        await node.catch_up(model.head.number)
        assert model.calls["eth_getLogs"] >= 4  # one range, in parts
        got = await node.get(inv.id)
        assert [p.amount for p in got.payments] == [100] * 4
        assert got.status in (Status.WAITING_FOR_CONFIRMATIONS, Status.COMPLETED)
