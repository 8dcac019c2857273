"""Which invoice a transfer pays: a pure, in-memory index per network.

The index routes a transfer in O(1): by (asset, receiving address), then for shared addresses
by the exact amount. It is kept in step with the database by feeding it every invoice the
ledger changes (`put`). The ledger re-checks each routed invoice inside its transaction, so
the index only has to be right about where to look, never about the final word.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from watcher.models import Asset, Invoice, stopped_at


class Route(StrEnum):
    PAYMENT = "payment"  # counts for the invoice
    LATE = "late"  # to the dedicated address of an invoice that stopped collecting
    UNMATCHED = "unmatched"  # to a watched address, but no invoice takes it


@dataclass(slots=True)
class Entry:
    invoice_id: str
    seq: int
    amount: int
    expire_at: int
    closed_at: int | None  # None while open

    def stopped_at(self) -> int:
        return stopped_at(self.expire_at, self.closed_at)


Key = tuple[str, str]  # (asset symbol, lower-case address)


class WatchIndex:
    """The watched (asset, address) pairs of one network and the invoices behind them."""

    def __init__(self, assets: dict[str, Asset], late_window: int) -> None:
        self.assets = assets
        self.late_window = late_window
        self._token_symbol = {a.token.lower(): s for s, a in assets.items() if a.token}
        self._shared: dict[Key, dict[int, Entry]] = {
            (s, a.shared_address.lower()): {} for s, a in assets.items() if a.shared_address
        }
        self._dedicated: dict[Key, Entry] = {}
        #: dedicated keys per asset symbol: answers `watches_native` and sizes the token
        #: recipients without walking every key on each scanned range
        self._dedicated_count: dict[str, int] = {}
        self._token_symbols = frozenset(s for s, a in assets.items() if a.token)
        self._where: dict[str, Key] = {}
        self._native = next((s for s, a in assets.items() if a.is_native), None)

    def __len__(self) -> int:
        return len(self._where)

    def symbol_for_token(self, address: str) -> str | None:
        return self._token_symbol.get(address.lower())

    @property
    def native_symbol(self) -> str | None:
        return self._native

    def put(self, inv: Invoice) -> None:
        """Record the invoice's current state: open, stopped collecting, or gone."""
        key = (inv.asset, inv.to_addr.lower())
        if inv.shared:
            by_amount = self._shared.setdefault(key, {})
            current = by_amount.get(inv.amount)
            if current is not None and current.seq > inv.seq:
                return  # a newer invoice took this amount
            if inv.collects:
                by_amount[inv.amount] = Entry(inv.id, inv.seq, inv.amount, inv.expire_at, None)
                self._where[inv.id] = key
            else:
                if current is not None and current.invoice_id == inv.id:
                    del by_amount[inv.amount]
                self._where.pop(inv.id, None)
            return
        current = self._dedicated.get(key)
        if current is not None and current.seq > inv.seq:
            return  # a newer invoice owns this address
        closed_at = None if inv.collects else (inv.closed_at or inv.expire_at)
        if current is None:
            self._dedicated_count[inv.asset] = self._dedicated_count.get(inv.asset, 0) + 1
        self._dedicated[key] = Entry(inv.id, inv.seq, inv.amount, inv.expire_at, closed_at)
        if current is not None and current.invoice_id != inv.id:
            self._where.pop(current.invoice_id, None)
        self._where[inv.id] = key

    def prune(self, now: int) -> int:
        """Forget dedicated invoices whose late-payment window has passed."""
        gone = [
            k
            for k, e in self._dedicated.items()
            if e.stopped_at() + self.late_window < now
        ]
        for k in gone:
            self._where.pop(self._dedicated.pop(k).invoice_id, None)
            self._dedicated_count[k[0]] -= 1
        count = len(gone)
        for by_amount in self._shared.values():
            old = [a for a, e in by_amount.items() if e.expire_at + self.late_window < now]
            for a in old:
                self._where.pop(by_amount.pop(a).invoice_id, None)
            count += len(old)
        return count

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
        """Where a transfer goes. Raises KeyError when nobody watches the address."""
        key = (symbol, to.lower())
        by_amount = self._shared.get(key)
        if by_amount is not None:
            e = by_amount.get(amount)
            if e is not None and e.closed_at is None and timestamp <= e.expire_at:
                return Route.PAYMENT, e.invoice_id
            return Route.UNMATCHED, None
        e = self._dedicated[key]
        if e.closed_at is None and timestamp <= e.expire_at:
            return Route.PAYMENT, e.invoice_id
        if timestamp <= e.stopped_at() + self.late_window:
            return Route.LATE, e.invoice_id
        return Route.UNMATCHED, None
