"""Which invoice a transfer pays: a pure, in-memory index per network.

The index routes a transfer in O(1) per invoice at its key: by (asset, receiving address),
then for shared addresses by the exact amount. Several invoices may share a key over time
(an address or an amount reused once the earlier invoice stopped collecting): each keeps its
own collecting window (from just after the newest block the daemon had read when it was
created, to the end of collecting), and a transfer goes to the invoice
whose window holds its **block's timestamp**. So a payment made in time for an earlier
invoice is never moved to a later one, however late the follower sees it.

The index is kept in step with the database by feeding it every invoice the ledger changes
(`put`). Invoices leave it only once the follower's confirmed scan has passed the end of
their late-payment window (`prune`), never by the host's clock. The ledger re-checks each
routed invoice inside its transaction with the same rule (`models.window_route`).

Memory: the daemon holds every open invoice here (100,000 and more), so what one invoice
costs is kept small: one `Entry` (slots only, no per-entry dict or list), held directly at
its key while it is the only one there (the common case: dedicated and derived addresses;
a list only where several share a key), the keys nested per asset symbol instead of
(symbol, address) tuples, the entries themselves on the deadline heap (a `put` that keeps
an entry's place and deadline updates it there instead of adding another), and nothing
kept that the entry can rebuild (the invoice id of a retired method's entry). Measured with
100,000 invoices from the database: ~460 bytes each (was ~780) by tracemalloc.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from watcher.models import Asset, Invoice, Leg, retired_route, stopped_at, window_route


class Route(StrEnum):
    PAYMENT = "payment"  # counts for the invoice
    LATE = "late"  # to the dedicated address of an invoice that stopped collecting
    UNMATCHED = "unmatched"  # to a watched address, but no invoice takes it


@dataclass(slots=True, eq=False)
class Entry:
    """One invoice's current method at its key (no per-entry dict: slots only)."""

    #: a method chosen before the invoice's current one (`_Retired`): late payments only
    retired: ClassVar[bool] = False

    #: its key in the index: the invoice id, or "{id}/{n}" for a retired method
    ref: str
    seq: int
    opens_at: int | None
    expire_at: int
    closed_at: int | None  # None while collecting
    #: when no transfer can reach it any more (`WatchIndex._deadline`): its heap order
    deadline: int = field(init=False, repr=False)
    #: where it is held: `home[key]` is it, or the list of entries that holds it. A
    #: dedicated address: the address dict of its asset symbol, and the lower-case address;
    #: a shared one: the amount dict of the (symbol, address), and the amount.
    home: dict[Any, Held] = field(init=False, repr=False)
    key: str | int = field(init=False, repr=False)

    @property
    def invoice_id(self) -> str:
        return self.ref

    def stopped_at(self) -> int:
        return stopped_at(self.expire_at, self.closed_at)

    def route(self, at: int, late_window: int) -> str:
        return window_route(self.opens_at, self.expire_at, self.closed_at, at, late_window)

    def __lt__(self, other: Entry) -> bool:  # the deadline heap's order
        return self.deadline < other.deadline


class _Retired(Entry):
    """A method chosen before the invoice's current one: it stopped collecting at the
    switch (its `expire_at` and `closed_at`) and only takes late payments."""

    __slots__ = ()
    retired: ClassVar[bool] = True

    @property
    def invoice_id(self) -> str:
        return self.ref.rpartition("/")[0]  # ref is "{id}/{n}"

    def route(self, at: int, late_window: int) -> str:
        return retired_route(self.opens_at, self.expire_at, at, late_window)


#: What a key holds: its one entry, or its entries ordered by seq (oldest first) when
#: several share it (never an empty or one-entry list).
Held = Entry | list[Entry]
Key = tuple[str, str]  # (asset symbol, lower-case address) of a shared address


def _entry(inv: Invoice) -> Entry:
    return Entry(inv.id, inv.seq, inv.opens_at, inv.expire_at, inv.closed_for_window)


def _leg_entry(inv: Invoice, leg: Leg) -> Entry:
    """A method chosen before the current one: it stopped collecting at the switch."""
    return _Retired(f"{inv.id}/{leg.n}", inv.seq, leg.opens_at, leg.closed_at, leg.closed_at)


def _entries(held: Held | None) -> Sequence[Entry]:
    if held is None:
        return ()
    return held if isinstance(held, list) else (held,)


def _replace(entries: list[Entry], entry: Entry) -> None:
    """Put `entry` into `entries` (ordered by seq), replacing the same invoice's entry."""
    for i, e in enumerate(entries):
        if e.ref == entry.ref:
            entries[i] = entry
            return
    entries.append(entry)
    if len(entries) > 1 and entries[-2].seq > entry.seq:
        entries.sort(key=lambda e: e.seq)


class WatchIndex:
    """The watched (asset, address) pairs of one network and the invoices behind them."""

    def __init__(self, assets: dict[str, Asset], late_window: int) -> None:
        self.assets = assets
        self.late_window = late_window
        self.network = next((a.network for a in assets.values()), None)
        self._token_symbol = {a.token.lower(): s for s, a in assets.items() if a.token}
        #: shared address -> amount -> what the amount holds (`Held`)
        self._shared: dict[Key, dict[int, Held]] = {
            (s, a.shared_address.lower()): {} for s, a in assets.items() if a.shared_address
        }
        #: asset symbol -> dedicated lower-case address -> what it holds (usually one entry);
        #: its size per symbol answers `watches_native` and sizes the token recipients
        #: without walking every address on each scanned range
        self._dedicated: dict[str, dict[str, Held]] = {s: {} for s in assets}
        self._token_symbols = frozenset(s for s, a in assets.items() if a.token)
        self._native = next((s for s, a in assets.items() if a.is_native), None)
        #: the entry of each invoice held (and of each retired method), by ref
        self._at: dict[str, Entry] = {}
        #: the entries by deadline: `prune` pops what is due instead of walking every
        #: invoice. A `put` that keeps an entry's place and deadline updates it where it
        #: stands; otherwise the new entry is pushed, and the one it replaced, no longer
        #: the one at its ref, is dropped when it comes up
        self._deadlines: list[Entry] = []

    def __len__(self) -> int:
        return len(self._at)

    def holds(self, invoice_id: str) -> bool:
        """Whether the invoice's own entry (not a retired method's) is in the index."""
        return invoice_id in self._at

    def symbol_for_token(self, address: str) -> str | None:
        return self._token_symbol.get(address.lower())

    @property
    def native_symbol(self) -> str | None:
        return self._native

    def _deadline(self, entry: Entry, shared: bool) -> int:
        """The time after which no transfer reaches the entry: the end of its collecting
        window at a shared address, of its late-payment window at a dedicated one (and at
        any address a method replaced by another one)."""
        late = not shared or entry.retired
        stopped = entry.stopped_at()
        return stopped + self.late_window if late else stopped  # no new int when not late

    def put(self, inv: Invoice) -> None:
        """Record the invoice's current state (collecting or not) on this network: its
        method, and the methods it had before; each stays until pruned."""
        for leg in inv.legs:
            if leg.network == self.network:
                amount = leg.amount if leg.shared else None
                self._put(leg.asset, leg.to_addr.lower(), amount, _leg_entry(inv, leg))
        if inv.network is None or inv.network != self.network:
            # unchosen, or chosen on another network (after a switch): no entry as a payee
            before = self._at.get(inv.id)
            if before is not None:
                self._forget(before)
            return
        assert inv.asset is not None and inv.to_addr is not None and inv.amount is not None
        amount = inv.amount if inv.shared else None
        self._put(inv.asset, inv.to_addr.lower(), amount, _entry(inv))

    def _home(
        self, symbol: str, address: str, amount: int | None
    ) -> tuple[dict[Any, Held], str | int]:
        """Where an entry at (symbol, address) is held: the dict and its key there (the
        amount at a shared address, given with `amount`; else the address)."""
        if amount is not None:
            return self._shared.setdefault((symbol, address), {}), amount
        return self._dedicated.setdefault(symbol, {}), address

    def _put(self, symbol: str, address: str, amount: int | None, entry: Entry) -> None:
        """Hold `entry` at (symbol, address), and at a shared address (`amount` given) at
        that amount."""
        home, key = self._home(symbol, address, amount)
        entry.deadline = self._deadline(entry, amount is not None)
        before = self._at.get(entry.ref)
        if before is not None:
            if before.home is not home or before.key != key:
                self._forget(before)  # held at another key before (a switch): move it
            elif type(before) is type(entry) and before.deadline == entry.deadline:
                # the same place and deadline (a payment, a status that keeps collecting):
                # it takes the new state where it stands, and its heap item stays valid
                before.seq, before.opens_at = entry.seq, entry.opens_at
                before.expire_at, before.closed_at = entry.expire_at, entry.closed_at
                return
        entry.home, entry.key = home, key
        held = home.get(key)
        if held is None or (isinstance(held, Entry) and held.ref == entry.ref):
            home[key] = entry
        else:
            entries = held if isinstance(held, list) else [held]
            _replace(entries, entry)
            home[key] = entries
        self._at[entry.ref] = entry
        heapq.heappush(self._deadlines, entry)

    def prune(self, confirmed_time: int | None) -> int:
        """Forget invoices no transfer can reach any more: the newest scanned block with the
        required confirmations (`confirmed_time`, its timestamp) is past the end of their
        late-payment window (dedicated) or of their collecting window (shared). Returns how
        many were forgotten. Never by the host's clock: after an outage, invoices stay until
        the follower has scanned the blocks of the outage."""
        if confirmed_time is None:
            return 0
        forgotten = 0
        heap = self._deadlines
        while heap and heap[0].deadline < confirmed_time:
            entry = heapq.heappop(heap)
            if self._at.get(entry.ref) is not entry:
                continue  # forgotten already, or a later put replaced it: its item decides
            self._forget(entry)
            forgotten += 1
        return forgotten

    def _forget(self, entry: Entry) -> None:
        """Take one held entry (the one at its ref) out of the index."""
        home, key = entry.home, entry.key
        held = home[key]
        if held is entry:
            del home[key]
        else:
            assert isinstance(held, list)
            rest = [e for e in held if e is not entry]
            home[key] = rest[0] if len(rest) == 1 else rest
        if self._at.get(entry.ref) is entry:
            del self._at[entry.ref]

    def is_watched(self, symbol: str, address: str) -> bool:
        address = address.lower()
        return (symbol, address) in self._shared or address in self._dedicated.get(symbol, ())

    def addresses(self, symbol: str | None = None) -> set[str]:
        """Lower-case watched addresses (of one asset, or of every asset)."""
        found = {a for s, a in self._shared if symbol is None or s == symbol}
        for s, held in self._dedicated.items():
            if symbol is None or s == symbol:
                found.update(held)
        return found

    def token_recipients(self, limit: int) -> set[str] | None:
        """The lower-case addresses watched for any token (`addresses(symbol)` over the token
        assets, merged) while there are at most `limit` of them; None when there are more."""
        symbols = self._token_symbols
        total = sum(len(self._dedicated.get(s, ())) for s in symbols)
        total += sum(1 for s, _ in self._shared if s in symbols)
        if total > limit * max(1, len(symbols)):
            return None  # at least total / len(symbols) distinct addresses: more than limit
        if not total:
            return set()
        found = {a for s, a in self._shared if s in symbols}
        for s in symbols:
            found.update(self._dedicated.get(s, ()))
        return found if len(found) <= limit else None

    def token_addresses(self) -> list[str]:
        return sorted(self._token_symbol)

    def watches_native(self) -> bool:
        """True while a native transfer could count for something: full blocks are needed."""
        if self._native is None:
            return False
        native = self._native
        if any(s == native and d for (s, _), d in self._shared.items()):
            return True
        return len(self._dedicated.get(native, ())) > 0

    def route(self, symbol: str, to: str, amount: int, timestamp: int) -> tuple[Route, str | None]:
        """Where a transfer in a block with `timestamp` goes: the oldest invoice at the key
        whose collecting window holds the time; else (dedicated addresses) the newest one
        created before it whose late-payment window holds it. Raises KeyError when nobody
        watches the address."""
        key = (symbol, to.lower())
        if amount <= 0:
            return Route.UNMATCHED, None  # zero transfers never count (address poisoning)
        by_amount = self._shared.get(key)
        if by_amount is not None:
            held = _entries(by_amount.get(amount))
            for e in held:
                if not e.retired and e.route(timestamp, self.late_window) == Route.PAYMENT:
                    return Route.PAYMENT, e.invoice_id
            for e in reversed(held):  # an amount a switched invoice gave up: late
                if e.retired and e.route(timestamp, self.late_window) == Route.LATE:
                    return Route.LATE, e.invoice_id
            return Route.UNMATCHED, None
        at_address = self._dedicated.get(symbol, {}).get(key[1])
        if at_address is None:
            raise KeyError(key)
        entries = _entries(at_address)
        for e in entries:
            if e.route(timestamp, self.late_window) == Route.PAYMENT:
                return Route.PAYMENT, e.invoice_id
        for e in reversed(entries):
            if e.route(timestamp, self.late_window) == Route.LATE:
                return Route.LATE, e.invoice_id
        return Route.UNMATCHED, None
