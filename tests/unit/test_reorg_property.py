"""Property: whatever sequence of blocks, transfers and reorgs shallower than the confirmations
the follower lives through, the invoices end exactly as a fresh scan of the final canonical
chain leaves them. Runs the real ledger, matching index and state machine on SQLite; the
chain is simulated (no node), so thousands of histories run in seconds."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from watcher.ledger import Ledger, NetworkInfo, NewInvoice, Outcome, ScanBatch
from watcher.matching import WatchIndex
from watcher.models import Asset, Transfer
from watcher.store import connect, load_invoices

NET = "local"
REQUIRED = 3
NOW = 1000
SHARED = "0x" + "aa" * 20
TOKEN = "0x" + "bb" * 20
A = ["0x" + f"{i + 1:02x}" * 20 for i in range(3)]
UNWATCHED = "0x" + "cc" * 20
ASSETS = {
    "ETH": Asset(NET, "ETH", 18),
    "USDT": Asset(NET, "USDT", 6, token=TOKEN, shared_address=SHARED),
}
_ids = itertools.count()


def ts(height: int) -> int:
    return 1000 + 10 * height


@dataclass
class Block:
    number: int
    hash: str
    parent: str
    transfers: list[tuple[str, str, int]] = field(default_factory=list)  # asset, to, amount


def new_block(chain: list[Block], transfers: list[tuple[str, str, int]]) -> Block:
    n = len(chain)
    return Block(n, f"0x{next(_ids):064x}", chain[-1].hash if chain else "0x0", transfers)


class Sim:
    """A follower over a simulated chain: the same calls the real one makes."""

    def __init__(self, db: Database, expiries: list[int]) -> None:
        self.db = db
        self.ledger = Ledger(
            {NET: NetworkInfo(NET, 31337, REQUIRED, ASSETS)},
            tolerance=Fraction(0), default_ttl=3600, late_window=50, default_callback_url=None,
        )
        self.index = WatchIndex(ASSETS, late_window=50)
        self.scanned = 0
        self.confirmed = 0  # the highest block ever seen with REQUIRED confirmations
        self.hashes: dict[int, str] = {}
        # amounts in base units; the two shared ones become 50 and 51
        specs = [("ETH", A[0], 100), ("ETH", A[1], 100), ("USDT", A[2], 100),
                 ("USDT", None, 50), ("USDT", None, 50)]
        for i, ((asset, addr, amount), exp) in enumerate(zip(specs, expiries, strict=True)):
            req = NewInvoice(NET, asset, int(amount), addr, exp, external_id=f"x{i}")
            _, _, out = self.ledger.create(db, req, NOW)
            self.apply(out)

    def apply(self, out: Outcome) -> None:
        for inv in out.touched:
            self.index.put(inv)

    def sync(self, chain: list[Block]) -> None:
        head = len(chain) - 1
        n = min(self.scanned, head)
        while n > 0 and self.hashes.get(n) != chain[n].hash:
            n -= 1
        if n < self.scanned:
            self.apply(self.ledger.undo_above(self.db, NET, n, head, NOW))
            self.hashes = {k: v for k, v in self.hashes.items() if k <= n}
            self.scanned = n
        for b in chain[self.scanned + 1 :]:
            transfers = []
            for i, (asset, to, amount) in enumerate(b.transfers):
                if not self.index.is_watched(asset, to):
                    continue
                route, invoice_id = self.index.route(asset, to, amount, ts(b.number))
                transfers.append(Transfer(
                    NET, asset, f"{b.hash}-{i}", i, "0x" + "99" * 20, to, amount, b.number,
                    b.hash, ts(b.number), invoice_id, route.value,
                ))
            batch = ScanBatch(NET, b.number, b.hash, ts(b.number), head, transfers,
                              [(b.number, b.hash, b.parent, ts(b.number))])
            self.apply(self.ledger.apply_scan(self.db, batch, NOW))
            self.hashes[b.number] = b.hash
            self.scanned = b.number
            self.confirmed = max(self.confirmed, head - REQUIRED + 1)

    def result(self) -> dict[str, Any]:
        out = {}
        for inv in load_invoices(self.db, "1"):
            out[inv.external_id] = (
                inv.status,
                inv.amount,
                sorted((p.tx_hash, p.amount, p.block) for p in inv.payments),
                sorted((p.tx_hash, p.amount) for p in inv.late_payments),
            )
        out["unmatched"] = sorted(
            r["tx_hash"]
            for r in self.db.query("SELECT tx_hash FROM transfers WHERE kind = 'unmatched'")
        )
        return out


transfer = st.tuples(
    st.sampled_from(["ETH", "USDT"]),
    st.sampled_from([*A, SHARED, UNWATCHED]),
    st.sampled_from([30, 50, 51, 70, 100]),
)
mine = st.tuples(st.just("mine"), st.lists(transfer, max_size=2))
reorg = st.tuples(
    st.just("reorg"),
    st.integers(min_value=1, max_value=REQUIRED - 1),
    st.lists(st.lists(transfer, max_size=2), min_size=1, max_size=3),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.one_of(mine, reorg), min_size=1, max_size=25),
    expiries=st.lists(st.integers(min_value=ts(2), max_value=ts(25)), min_size=5, max_size=5),
    sync_every=st.integers(min_value=1, max_value=3),
)
def test_final_state_equals_canonical_chain(
    tmp_path: Path, ops: list[Any], expiries: list[int], sync_every: int
) -> None:
    run = next(_ids)
    live = Sim(connect(tmp_path / f"live{run}.db"), expiries)
    chain = [Block(0, "0xgenesis", "0x0")]
    for step, op in enumerate(ops):
        if op[0] == "mine":
            chain.append(new_block(chain, op[1]))
        else:
            _, depth, blocks = op
            # Never replace a block the follower already saw confirmed: that would be a
            # reorg deeper than the confirmations, where REVERSED is the right answer.
            depth = min(depth, len(chain) - 1 - live.confirmed)
            del chain[len(chain) - depth :]
            for txs in blocks:
                chain.append(new_block(chain, txs))
        if step % sync_every == 0:
            live.sync(chain)
    # a few empty blocks so confirmations and expiry settle the same way for both
    for _ in range(REQUIRED + 1):
        chain.append(new_block(chain, []))
    live.sync(chain)
    canonical = Sim(connect(tmp_path / f"canon{run}.db"), expiries)
    canonical.sync(chain)
    assert live.result() == canonical.result()
