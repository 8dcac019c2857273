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
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from watcher.models import Asset, Invoice, Leg, retired_route, stopped_at, window_route


class Route(StrEnum):
    PAYMENT = "payment"  # counts for the invoice
    LATE = "late"  # to the dedicated address of an invoice that stopped collecting
    UNMATCHED = "unmatched"  # to a watched address, but no invoice takes it


@dataclass(slots=True)
class Entry:
    invoice_id: str
    seq: int
    amount: int
    opens_at: int | None
    expire_at: int
    closed_at: int | None  # None while collecting
    home: _Entries | None = None  # the list at its key that holds it
    #: its key in the index: the invoice id, or "{id}/{n}" for a method chosen before the
    #: invoice's current one (retired: it only takes late payments)
    ref: str = ""
    retired: bool = False

    def stopped_at(self) -> int:
        return stopped_at(self.expire_at, self.closed_at)

    def route(self, at: int, late_window: int) -> str:
        if self.retired:  # its expire_at is when the customer switched away from it
            return retired_route(self.opens_at, self.expire_at, at, late_window)
        return window_route(self.opens_at, self.expire_at, self.closed_at, at, late_window)


Key = tuple[str, str]  # (asset symbol, lower-case address)


class _Entries(list[Entry]):
    """The entries at one key (and, at a shared address, one amount), oldest first; it
    knows where it sits, so an entry can leave the index without a search."""

    __slots__ = ("amount", "key")

    def __init__(self, key: Key, amount: int | None) -> None:
        super().__init__()
        self.key = key
        self.amount = amount  # None at a dedicated address


def _entry(inv: Invoice, amount: int) -> Entry:
    return Entry(
        inv.id, inv.seq, amount, inv.opens_at, inv.expire_at, inv.closed_for_window, ref=inv.id
    )


def _leg_entry(inv: Invoice, leg: Leg) -> Entry:
    """A method chosen before the current one: it stopped collecting at the switch."""
    return Entry(inv.id, inv.seq, leg.amount, leg.opens_at, leg.closed_at, leg.closed_at,
                 ref=f"{inv.id}/{leg.n}", retired=True)


def _replace(entries: _Entries, entry: Entry) -> None:
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
        #: shared address -> amount -> invoices with that amount, oldest first
        self._shared: dict[Key, dict[int, _Entries]] = {
            (s, a.shared_address.lower()): {} for s, a in assets.items() if a.shared_address
        }
        #: dedicated address -> its invoices, oldest first (usually one)
        self._dedicated: dict[Key, _Entries] = {}
        #: dedicated keys per asset symbol: answers `watches_native` and sizes the token
        #: recipients without walking every key on each scanned range
        self._dedicated_count: dict[str, int] = {}
        self._token_symbols = frozenset(s for s, a in assets.items() if a.token)
        self._native = next((s for s, a in assets.items() if a.is_native), None)
        #: the entry of each invoice held, by id
        self._at: dict[str, Entry] = {}
        #: (time after which no transfer can reach it, invoice id), one item per `put`:
        #: `prune` pops what is due instead of walking every invoice; items that a later
        #: `put` superseded are recognised by their time and dropped
        self._deadlines: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._at)

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
        return entry.stopped_at() + (self.late_window if late else 0)

    def put(self, inv: Invoice) -> None:
        """Record the invoice's current state (collecting or not) on this network: its
        method, and the methods it had before; each stays until pruned."""
        for leg in inv.legs:
            if leg.network == self.network:
                self._put((leg.asset, leg.to_addr.lower()), leg.shared, _leg_entry(inv, leg))
        if inv.network is None or inv.network != self.network:
            # unchosen, or chosen on another network (after a switch): no entry as a payee
            before = self._at.get(inv.id)
            if before is not None and before.home is not None:
                self._forget(before)
            return
        assert inv.asset is not None and inv.to_addr is not None and inv.amount is not None
        self._put((inv.asset, inv.to_addr.lower()), inv.shared, _entry(inv, inv.amount))

    def _put(self, key: Key, shared: bool, entry: Entry) -> None:
        if shared:
            by_amount = self._shared.setdefault(key, {})
            entries = by_amount.get(entry.amount)
            if entries is None:
                entries = by_amount[entry.amount] = _Entries(key, entry.amount)
        else:
            entries = self._dedicated.get(key)
            if entries is None:
                entries = self._dedicated[key] = _Entries(key, None)
                self._dedicated_count[key[0]] = self._dedicated_count.get(key[0], 0) + 1
        before = self._at.get(entry.ref)
        if before is not None and before.home is not entries:
            self._forget(before)  # held at another key before (a switch): move it
        entry.home = entries
        _replace(entries, entry)
        self._at[entry.ref] = entry
        heapq.heappush(self._deadlines, (self._deadline(entry, shared), entry.ref))

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
        while heap and heap[0][0] < confirmed_time:
            deadline, ref = heapq.heappop(heap)
            entry = self._at.get(ref)
            if entry is None or entry.home is None:
                continue  # forgotten already
            if self._deadline(entry, entry.home.amount is not None) != deadline:
                continue  # a later put moved its deadline: that item decides
            self._forget(entry)
            forgotten += 1
        return forgotten

    def _forget(self, entry: Entry) -> None:
        """Take one invoice out of the index."""
        home = entry.home
        assert home is not None
        home[:] = [e for e in home if e is not entry]
        entry.home = None
        if self._at.get(entry.ref) is entry:
            del self._at[entry.ref]
        if home:
            return
        if home.amount is not None:
            del self._shared[home.key][home.amount]
        else:
            del self._dedicated[home.key]
            self._dedicated_count[home.key[0]] -= 1

    def is_watched(self, symbol: str, address: str) -> bool:
        key = (symbol, address.lower())
        return key in self._shared or key in self._dedicated

    def addresses(self, symbol: str | None = None) -> set[str]:
        """Lower-case watched addresses (of one asset, or of every asset)."""
        keys = list(self._shared) + list(self._dedicated)
        return {a for s, a in keys if symbol is None or s == symbol}

    def token_recipients(self, limit: int) -> set[str] | None:
        """The lower-case addresses watched for any token (`addresses(symbol)` over the token
        assets, merged) while there are at most `limit` of them; None when there are more."""
        symbols = self._token_symbols
        total = sum(self._dedicated_count.get(s, 0) for s in symbols)
        total += sum(1 for s, _ in self._shared if s in symbols)
        if total > limit * max(1, len(symbols)):
            return None  # at least total / len(symbols) distinct addresses: more than limit
        if not total:
            return set()
        keys = list(self._shared) + list(self._dedicated)
        found = {a for s, a in keys if s in symbols}
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
        return self._dedicated_count.get(native, 0) > 0

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
            held: Sequence[Entry] = by_amount.get(amount) or ()
            for e in held:
                if not e.retired and e.route(timestamp, self.late_window) == Route.PAYMENT:
                    return Route.PAYMENT, e.invoice_id
            for e in reversed(held):  # an amount a switched invoice gave up: late
                if e.retired and e.route(timestamp, self.late_window) == Route.LATE:
                    return Route.LATE, e.invoice_id
            return Route.UNMATCHED, None
        entries = self._dedicated[key]
        for e in entries:
            if e.route(timestamp, self.late_window) == Route.PAYMENT:
                return Route.PAYMENT, e.invoice_id
        for e in reversed(entries):
            if e.route(timestamp, self.late_window) == Route.LATE:
                return Route.LATE, e.invoice_id
        return Route.UNMATCHED, None
