"""Property: on a hostile node, the real follower, ledger, store and index attribute every
transfer exactly as a fresh scan of the canonical chain does.

A hypothesis state machine drives the daemon's own parts (`Follower`, `Ledger`, `Store`,
`WatchIndex`, wired as `daemon.py` wires them) against `tests/chainmodel.py`, a JSON-RPC
server over an in-memory chain, through the real `RpcClient`. Random interleavings of:
blocks with payments (native, token, zero, reverted, to reused addresses and amounts,
unwatched), reorgs up to `confirmations - 1` deep at any moment (their transactions
re-included or dropped), follower passes, daemon restarts, node quirks (no
`blockTimestamp`, lagging backends for heads, blocks and logs, null answers for announced
blocks, result caps with each provider's error, HTTP 429/503), invoice creates and cancels.

After every step: nothing is COMPLETED whose paying transfers are not canonical and deep.
At `check` (and at the end): the node is made healthy, the chain grows past the
confirmations, the follower catches up, and then every invoice's payments, late payments
and status, and the unmatched transfers at the shared address, equal what a reference
scan of the canonical chain gives (`expected`, written from the contract's rules, not from
the code under test).

Runs in `make test` with a bounded number of examples; `PW_CHAIN_EXAMPLES` changes it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import orjson
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.chainmodel import CAP_STYLES, ChainModel, ChainServer, NativeTx, TokenTx, Tx
from tests.daemonparts import (
    ADDRS,
    CONF,
    LATE,
    NET,
    PAYER,
    SHARED,
    T0,
    TOKEN,
    UNWATCHED,
    Node,
)
from tests.pgserver import PgDatabases
from watcher import ledger as ledger_module
from watcher import state
from watcher.amounts import parse_amount
from watcher.errors import Conflict
from watcher.ledger import NewInvoice, late_event_id
from watcher.models import OPENS_EARLY, Status
from watcher.storage.rows import load_invoices

EXAMPLES = int(os.environ.get("PW_CHAIN_EXAMPLES", "100"))


@dataclass
class Chain:
    """A canonical transfer as the reference scan sees it."""

    asset: str
    to: str
    amount: int
    key: tuple[str, int]  # (tx hash, log index or -1)
    timestamp: int
    block: str  # its block's hash


def canonical_transfers(model: ChainModel, start: int) -> list[Chain]:
    """Transfers in canonical blocks from `start` (the network's start block) on."""
    out = []
    for b in model.blocks[start:]:
        logs = {lg.tx_hash: lg for lg in b.logs}
        for tx, h in zip(b.txs, b.tx_hashes, strict=True):
            if not tx.success:
                continue
            if isinstance(tx, NativeTx) and tx.value > 0:
                out.append(Chain("ETH", tx.to, tx.value, (h, -1), b.timestamp, b.hash))
            elif isinstance(tx, TokenTx) and tx.amount > 0 and tx.token == TOKEN.lower():
                out.append(Chain("USDT", tx.to, tx.amount, (h, logs[h].log_index), b.timestamp,
                                 b.hash))
    return out


def expected(
    invoices: list[dict[str, Any]], transfers: list[Chain]
) -> tuple[dict[str, set[tuple[str, int]]], dict[str, set[tuple[str, int]]], set[tuple[str, int]]]:
    """Payments and late payments per invoice, and unmatched transfers at the shared
    address, by the contract's rules (section 1): a transfer pays the oldest invoice at its
    address (and, shared, with its exact amount) whose collecting window
    [opens_at, expireAt] holds the block time, unless the merchant closed it; else, at a
    dedicated address, it is a late payment of the newest invoice created before it that
    stopped collecting at most `late_payment_window` before; zero transfers never count.
    A window opens `OPENS_EARLY` before the create (the invoice's `opens_at`, checked at the
    create); a block the daemon had already scanned when an invoice was created never pays
    it or counts as its late payment (`pre`: it was on chain before the invoice existed)."""
    pays: dict[str, set[tuple[str, int]]] = {i["id"]: set() for i in invoices}
    late: dict[str, set[tuple[str, int]]] = {i["id"]: set() for i in invoices}
    unmatched: set[tuple[str, int]] = set()
    by_seq = sorted(invoices, key=lambda i: i["seq"])
    for t in transfers:
        at = [i for i in by_seq if i["asset"] == t.asset and i["to"].lower() == t.to.lower()
              and (not i["shared"] or i["amount"] == t.amount) and t.block not in i["pre"]]
        paid = [i for i in at if i["cancelled_at"] is None
                and i["opens_at"] <= t.timestamp <= i["expire_at"]]
        if paid:
            pays[paid[0]["id"]].add(t.key)
            continue
        if t.to.lower() == SHARED.lower():
            if t.asset == "USDT":
                unmatched.add(t.key)
            continue
        for i in reversed(at):
            stopped = i["expire_at"] if i["cancelled_at"] is None else min(
                i["cancelled_at"], i["expire_at"])
            if i["opens_at"] <= t.timestamp <= stopped + LATE:
                late[i["id"]].add(t.key)
                break
    return pays, late, unmatched


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return loop.run_until_complete(coro)


transfers = st.lists(
    st.tuples(
        st.sampled_from(["ETH", "USDT"]),
        st.sampled_from([*range(len(ADDRS)), "shared", "unwatched"]),
        st.sampled_from([0, 30, 50, 51, 70, 100]),
        st.booleans(),  # success
    ),
    max_size=3,
)


class ChainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._hold = ledger_module.SHARED_AMOUNT_HOLD
        ledger_module.SHARED_AMOUNT_HOLD = 0  # reuse shared amounts as soon as allowed
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="chainprop-"))
        self.model = ChainModel(genesis_time=T0, block_time=12)
        self.model.mine_empty(2)
        self.server = ChainServer(self.model)
        run(self.loop, self.server.start())
        self.node = run(self.loop, Node(self.database(), self.server.url,
                                        cluster=self.cluster).start())
        assert self.node.follower.scanned is not None
        self.start = self.node.follower.scanned + 1  # the start block written at first start
        self.max_ts = self.model.head.timestamp
        self.max_head = self.model.head.number
        self.clock = 0  # the host's clock (see `create`)
        self.tokens_only = False
        self.split = False  # `split_logs`
        self.reorgs = 0
        self.cancelled: dict[str, int] = {}
        self.created: list[str] = []
        self.paying: dict[str, tuple[str, str, int]] = {}  # id -> (asset, to, amount)
        #: per invoice, what the follower had scanned when it was created: (cursor, hashes)
        self.read_before: dict[str, tuple[int, dict[int, str]]] = {}
        self.dropped: list[Tx] = []  # transactions of reorged blocks, not yet re-included

    # ------------------------------------------------------------------ the chain

    def _txs(self, spec: list[tuple[str, Any, int, bool]]) -> list[Tx]:
        txs: list[Tx] = []
        for asset, where, amount, success in spec:
            to = {"shared": SHARED, "unwatched": UNWATCHED}.get(str(where)) or ADDRS[int(where)]
            if asset == "ETH":
                txs.append(NativeTx(PAYER, to, amount, success=success))
            else:
                txs.append(TokenTx(TOKEN, PAYER, to, amount, success=success))
        return txs

    def _now(self) -> int:
        self.clock = max(self.clock, self.max_ts + OPENS_EARLY + 1)
        return self.clock

    def _grew(self) -> None:
        self.max_head = max(self.max_head, self.model.head.number)
        self.max_ts = max(self.max_ts, self.model.head.timestamp)

    @rule(spec=transfers)
    def mine(self, spec: list[tuple[str, Any, int, bool]]) -> None:
        self.model.mine(self._txs(spec))
        self._grew()

    @rule(
        depth=st.integers(1, CONF - 1),
        blocks=st.lists(transfers, min_size=0, max_size=CONF),
        keep=st.booleans(),
    )
    def reorg(self, depth: int, blocks: list[Any], keep: bool) -> None:
        # Never replace a block that was ever `CONF` deep: that is a reorg deeper than the
        # confirmations, where REVERSED is the right answer and no rule is broken.
        allowed = self.model.head.number - (self.max_head - CONF + 1)
        depth = min(depth, allowed)
        if depth <= 0:
            self.model.mine()
            self._grew()
            return
        removed = [tx for b in self.model.blocks[-depth:] for tx in b.txs]
        new = [self._txs(spec) for spec in blocks] or [[]]
        if keep and removed:  # the mempool gives the dropped transactions back
            new[-1] = removed + new[-1]
        else:
            self.dropped += removed
        self.model.reorg(depth, new)
        self.reorgs += 1
        self._grew()

    @precondition(lambda self: bool(self.created))
    @rule(pick=st.integers(0, 100), how=st.sampled_from(["exact", "part", "over", "zero"]),
          success=st.booleans(), later=st.integers(0, 2))
    def pay(self, pick: int, how: str, success: bool, later: int) -> None:
        """A customer pays an invoice (exactly, in part, too much, or a poisoner's zero),
        maybe after a few empty blocks."""
        asset, to, amount = self.paying[self.created[pick % len(self.created)]]
        value = {"exact": amount, "part": amount // 2, "over": amount + 7, "zero": 0}[how]
        tx: Tx = (NativeTx(PAYER, to, value, success=success) if asset == "ETH"
                  else TokenTx(TOKEN, PAYER, to, value, success=success))
        self.model.mine_empty(later)
        self.model.mine([tx])
        self._grew()

    @precondition(lambda self: bool(self.created))
    @rule(pick=st.integers(0, 100), how=st.sampled_from(["exact", "part", "over"]))
    def pay_now(self, pick: int, how: str) -> None:
        self.pay(pick, how, True, 0)

    @rule(blocks=st.integers(5, 40), depth=st.integers(0, CONF - 1), keep=st.booleans())
    def away(self, blocks: int, depth: int, keep: bool) -> None:
        """The daemon is away (stopped, or its RPC down) while a shallow reorg replaces
        blocks it has scanned and the chain grows far past them."""
        if depth:
            self.reorg(depth, [[]], keep)
        self.model.mine_empty(blocks)
        self._grew()

    @precondition(lambda self: bool(self.created))
    @rule(picks=st.lists(st.integers(0, 100), min_size=1, max_size=3),
          blocks=st.integers(13, 30))
    def paid_while_away(self, picks: list[int], blocks: int) -> None:
        """Payments are made while the daemon is away, and the chain grows past the blocks
        whose headers the follower checks: only `eth_getLogs` over the backlog finds them."""
        for pick in picks:
            self.pay(pick, "exact", True, pick % 3)
        self.model.mine_empty(blocks)
        self._grew()

    @precondition(lambda self: bool(self.dropped))
    @rule()
    def reinclude(self) -> None:
        """Transactions of a reorged block come back later, in a new block."""
        self.model.mine(self.dropped)
        self.dropped = []
        self._grew()

    # ------------------------------------------------------------------ the node's quirks

    @rule(quirk=st.one_of(
        st.tuples(st.just("omit_block_timestamp"), st.booleans()),
        st.tuples(st.just("stale"), st.sampled_from(["eth_getLogs", "eth_getBlockByNumber"]),
                  st.integers(1, 3), st.integers(1, 3)),
        st.tuples(st.just("null_announced"), st.integers(0, 2)),
        st.tuples(st.just("log_cap"), st.none() | st.integers(1, 3),
                  st.sampled_from(sorted(CAP_STYLES))),
        st.tuples(st.just("http_errors"), st.sampled_from([429, 503]), st.integers(1, 3)),
    ))
    def node_quirk(self, quirk: tuple[Any, ...]) -> None:
        """What real nodes and load balancers do (tests/chainmodel.py)."""
        kind = quirk[0]
        if kind == "omit_block_timestamp":
            self.model.omit_block_timestamp = quirk[1]
        elif kind == "stale":  # a lagging backend answers every n-th call
            self.model.stale[quirk[1]] = (quirk[2], quirk[3])
        elif kind == "null_announced":
            self.model.null_announced = quirk[1]
        elif kind == "log_cap":
            self.model.log_cap, self.model.cap_style = quirk[1], quirk[2]
        else:
            self.model.http_errors.extend([(quirk[1], 0.001)] * quirk[2])

    def heal(self) -> None:
        """End the passing troubles. A node that omits `blockTimestamp` or a provider's log
        cap are how it is: they stay, and the follower must catch up with them."""
        self.model.stale.clear()
        self.model.null_announced = 0
        self.model.http_errors.clear()

    # ------------------------------------------------------------------ the daemon

    @rule(passes=st.integers(1, 3))
    def sync(self, passes: int) -> None:
        run(self.loop, self.node.sync(passes))

    @rule()
    def restart(self) -> None:
        run(self.loop, self.node.stop())
        self.node = run(self.loop, Node(self.node.db, self.server.url,
                                        cluster=self.cluster).start())
        self._split_logs()

    @rule(on=st.booleans())
    def split_logs(self, on: bool) -> None:
        """Token ranges of 2 blocks or more are read as several `eth_getLogs` parts at once
        (the daemon does so from 64 blocks; the machine's ranges are shorter)."""
        self.split = on
        self._split_logs()

    def _split_logs(self) -> None:
        self.node.follower._log_tuner.min_blocks = 2 if self.split else 64

    @rule(kind=st.sampled_from(["head", "behind", "sibling", "no_bloom"]))
    def announce(self, kind: str) -> None:
        """A newHeads notification reaches the follower before its next pass: the head,
        an older block, a sibling of the head from another fork, or a header without
        `logsBloom` (what a socket on another node, or a lagging one, may send)."""
        block = self.model.head
        if kind == "behind" and block.number > 1:
            block = self.model.block(block.number - 1)
        head = dict(self.model._block_json(block, False))
        if kind == "sibling":
            head["hash"] = "0x" + "ab" * 32
            head["logsBloom"] = "0x" + "00" * 256
        elif kind == "no_bloom":
            head.pop("logsBloom", None)
        self.node.follower._announce(orjson.dumps({
            "jsonrpc": "2.0", "method": "eth_subscription",
            "params": {"subscription": "0x1", "result": head},
        }))

    @rule(
        asset=st.sampled_from(["ETH", "USDT"]),
        where=st.sampled_from([*range(len(ADDRS)), "shared"]),
        amount=st.sampled_from([50, 100]),
        ttl_blocks=st.integers(2, 20),
    )
    def create(self, asset: str, where: Any, amount: int, ttl_blocks: int) -> None:
        if self.tokens_only:
            asset = "USDT"
        if where == "shared" and asset != "USDT":
            where = 0
        # The host's clock: past every block it has seen by more than the early opening of
        # windows (a block read before the invoice existed cannot hold its payment); the
        # next block is stamped earlier than this, inside the early opening.
        now = self._now()
        req = NewInvoice(NET, asset, amount, None if where == "shared" else ADDRS[int(where)],
                         now + 12 * ttl_blocks)
        try:
            inv, _, out = run(self.loop, self.node.store.run(self.node.ledger.create, req, now))
        except Conflict:
            return  # an open invoice holds that address
        self.node.report(out)
        self.created.append(inv.id)
        f = self.node.follower
        self.read_before[inv.id] = (f.scanned or 0, {n: h for n, (h, _) in f._hashes.items()})
        # Every block made after the create is inside its window, even one that replaces a
        # block in a reorg: the lowest height a block can still be made at is stamped
        # 12 s a height (the model's clock) after genesis.
        lowest = min(self.model.head.number + 1, self.max_head - CONF + 2)
        assert inv.opens_at is not None and inv.opens_at <= T0 + 12 * lowest
        self.paying[inv.id] = (asset, inv.to_addr, inv.amount)

    @initialize(
        first=st.tuples(st.sampled_from(["ETH", "USDT"]), st.sampled_from([0, 1, "shared"]),
                        st.sampled_from([50, 100]), st.integers(2, 20)),
        second=st.tuples(st.sampled_from(["ETH", "USDT"]), st.sampled_from([1, 2, "shared"]),
                         st.sampled_from([50, 100]), st.integers(2, 20)),
        tokens_only=st.booleans(),
    )
    def open_invoices(self, first: tuple[str, Any, int, int], second: tuple[str, Any, int, int],
                      tokens_only: bool) -> None:
        # A network with only token invoices reads no full blocks: the follower's other path.
        self.tokens_only = tokens_only
        self.create(*first)
        self.create(*second)

    @precondition(lambda self: bool(self.created))
    @rule(pick=st.integers(0, 100))
    def cancel(self, pick: int) -> None:
        invoice_id = self.created[pick % len(self.created)]
        now = self._now()
        try:
            _, out = run(self.loop, self.node.store.run(self.node.ledger.cancel, invoice_id, now))
        except Conflict:
            return  # only a PENDING invoice can be cancelled
        self.node.report(out)
        self.cancelled[invoice_id] = now

    # ------------------------------------------------------------------ what must hold

    def _pre_read(self, invoice_id: str) -> set[str]:
        """Hashes of the canonical blocks the follower had scanned when the invoice was
        created: those up to the newest block it had stored that is still canonical."""
        scanned, hashes = self.read_before[invoice_id]
        canonical = self.model.blocks
        for n in range(min(scanned, len(canonical) - 1), -1, -1):
            if hashes.get(n) == canonical[n].hash:
                return {b.hash for b in canonical[: n + 1]}
        return set()

    def _invoices(self) -> list[Any]:
        return run(self.loop, self.node.store.run(load_invoices, "network = ?", [NET]))

    @invariant()
    def completed_only_on_canonical_deep_payments(self) -> None:
        canonical = {b.hash: b.number for b in self.model.blocks}
        for inv in self._invoices():
            if inv.status != Status.COMPLETED or inv.closed_at is not None:
                continue
            total = 0
            for p in sorted(inv.payments, key=lambda p: (p.block, p.log_index or -1)):
                assert canonical.get(p.block_hash) == p.block, (inv.id, p)
                assert self.max_head - p.block + 1 >= CONF, (inv.id, p)
                total += p.amount
                if total >= inv.amount:
                    break
            assert total >= inv.amount, inv

    @rule()
    def check(self) -> None:
        """Heal the node, let the chain pass the confirmations, catch up, compare."""
        self.heal()
        if self.dropped:
            self.reinclude()
        self.model.mine_empty(CONF + 1)
        self._grew()
        head = self.model.head.number
        for _ in range(50):
            run(self.loop, self.node.sync(1))
            if self.node.follower.scanned == head:
                break
        assert self.node.follower.scanned == head, (self.node.follower.last_error, head)
        invoices = self._invoices()
        rows = [{"id": i.id, "seq": i.seq, "asset": i.asset, "to": i.to_addr,
                 "shared": i.shared, "amount": i.amount, "opens_at": i.opens_at,
                 "expire_at": i.expire_at, "cancelled_at": self.cancelled.get(i.id),
                 "pre": self._pre_read(i.id)}
                for i in invoices]
        pays, late, unmatched = expected(rows, canonical_transfers(self.model, self.start))
        deep = self.model.blocks[head - CONF + 1].timestamp
        view = state.ChainView(head, deep, CONF)
        for inv in invoices:
            got_pays = {(p.tx_hash, -1 if p.log_index is None else p.log_index)
                        for p in inv.payments}
            got_late = {(p.tx_hash, -1 if p.log_index is None else p.log_index)
                        for p in inv.late_payments}
            assert got_pays == pays[inv.id], ("payments", inv.id, got_pays, pays[inv.id])
            assert got_late == late[inv.id], ("late", inv.id, got_late, late[inv.id])
            if inv.id in self.cancelled:
                want = Status.VOIDED
            else:
                want = state.chain_status(inv.amount, inv.payments, inv.expire_at, view,
                                          Fraction(0))
            assert inv.status == want, ("status", inv.id, inv.status, want)
        self.seen = (sum(map(len, pays.values())), sum(map(len, late.values())),
                     len(unmatched), len(invoices))
        for inv in invoices:
            events = run(self.loop, self.node.events(inv.id))
            # each late payment announced once, with its derived id, once it is deep
            announced = sorted(e[0] for e in events if e[1] == "invoice.late_payment")
            assert announced == sorted(
                late_event_id(inv.id, p.tx_hash, -1 if p.log_index is None else p.log_index)
                for p in inv.late_payments
            ), ("late_payment events", inv.id)
            # a body tells the confirmations of the range that committed it
            for _, name, body in events:
                if name == "invoice.completed" and inv.closed_at is None:
                    data = orjson.loads(body)["data"]
                    # the payments that reach the amount show the confirmations that
                    # completed it (the body is rendered with the head of its own range)
                    paid = 0
                    for p in sorted(data["payments"],
                                    key=lambda p: (p["block"], p["logIndex"] or -1)):
                        assert p["confirmations"] >= data["requiredConfirmations"], data
                        paid += parse_amount(p["amount"], inv.decimals)
                        if paid >= inv.amount:
                            break
        got_unmatched = {
            (r[0], r[1]) for r in run(self.loop, self.node.store.run(
                lambda db: db.execute(
                    "SELECT tx_hash, log_index FROM transfers WHERE kind = 'unmatched' "
                    "AND lower(to_addr) = ?", [SHARED.lower()]).fetchall()))
        }
        assert got_unmatched == unmatched

    #: the node leads the network among several instances, and the creates and cancels
    #: are another instance's (`PgChainMachine`)
    cluster: ClassVar[bool] = False

    def database(self) -> Path | str:
        """Where this example's store lives (`PgChainMachine`: a PostgreSQL database)."""
        return self.tmp / "live.db"

    def teardown(self) -> None:
        try:
            self.check()
            pays, late, unmatched, invoices = self.seen
            event(f"invoices {min(invoices, 4)}+, payments {min(pays, 4)}+, late {min(late, 2)}+")
            event(f"reorgs {min(self.reorgs, 3)}+, unmatched {min(unmatched, 2)}+")
        finally:
            run(self.loop, self.node.stop())
            run(self.loop, self.server.stop())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            ledger_module.SHARED_AMOUNT_HOLD = self._hold


ChainMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    # PW_CHAIN_SHRINK=0: report the first failure as found (for mutation runs)
    phases=[p for p in Phase if p != Phase.shrink or os.environ.get("PW_CHAIN_SHRINK") != "0"],
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestChainModel = ChainMachine.TestCase


class PgChainMachine(ChainMachine):
    """The same rules with the store on PostgreSQL, each example on a fresh database, the
    node as the leader of several instances: its commits fenced by the network's lock,
    and every invoice created or cancelled by another instance, so the node learns of it
    only from the events (`invoices_after_event`), as a leader does."""

    cluster = True
    databases: ClassVar[PgDatabases | None] = None

    def database(self) -> Path | str:
        assert self.databases is not None
        return self.databases.new()


def test_chain_model_on_postgres(pg_databases: PgDatabases) -> None:
    """Fewer examples than on SQLite (each statement is a round trip to the server)."""
    PgChainMachine.databases = pg_databases
    try:
        run_state_machine_as_test(PgChainMachine, settings=settings(
            ChainMachine.TestCase.settings, max_examples=max(1, EXAMPLES // 5)))
    finally:
        PgChainMachine.databases = None
