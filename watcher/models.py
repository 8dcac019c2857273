"""The domain's plain data: statuses, assets, transfers, invoices. No I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PENDING = "PENDING"
    WAITING_FOR_CONFIRMATIONS = "WAITING_FOR_CONFIRMATIONS"
    COMPLETED = "COMPLETED"
    PARTIAL = "PARTIAL"
    VOIDED = "VOIDED"
    REVERSED = "REVERSED"
    REFUNDED = "REFUNDED"

    @property
    def event(self) -> str:
        """The callback event name announcing this status."""
        return "invoice." + self.value.lower()


#: Statuses in which an invoice collects payments (while before `expireAt`).
OPEN_STATUSES = frozenset({Status.PENDING, Status.WAITING_FOR_CONFIRMATIONS, Status.PARTIAL})
#: Statuses that end collection for good.
CLOSED_STATUSES = frozenset({Status.VOIDED, Status.REFUNDED})
LATE_PAYMENT_EVENT = "invoice.late_payment"
CREATED_EVENT = "invoice.created"
METHOD_SELECTED_EVENT = "invoice.method_selected"


def stopped_at(expire_at: int, closed_at: int | None) -> int:
    """When an invoice stopped collecting: at expiry, or earlier if it was closed."""
    return expire_at if closed_at is None else min(closed_at, expire_at)


#: An invoice's collecting window opens this many seconds before it was created (on the
#: chain's clock: the newest head the daemon had read, or the host's clock if earlier). A
#: block is stamped at its slot's start, so a payment sent right after the create can carry
#: an earlier stamp, and a reorg can replace the head with a block of the same slot.
OPENS_EARLY = 30


def window_route(
    opens_at: int | None, expire_at: int, closed_at: int | None, at: int, late_window: int
) -> str:
    """What a transfer in a block with timestamp `at` is to one invoice: "payment" inside its
    collecting window `[opens_at, expireAt]` while it collects (`closed_at` None), "late"
    after it stopped collecting and within `late_window`, else "unmatched". Block time
    decides, never the host's clock: the answer is the same however late the block is seen.
    `opens_at` None (invoices from before windows had a start) opens at the beginning.
    """
    if opens_at is not None and at < opens_at:
        return "unmatched"
    if closed_at is None and at <= expire_at:
        return "payment"
    if at <= stopped_at(expire_at, closed_at) + late_window:
        return "late"
    return "unmatched"


@dataclass(frozen=True, slots=True)
class Asset:
    """One payable asset on one network: the native coin (`token is None`) or an ERC-20."""

    network: str
    symbol: str
    decimals: int
    token: str | None = None  # checksummed contract address
    shared_address: str | None = None  # checksummed
    amount_step: int = 1  # base units

    @property
    def is_native(self) -> bool:
        return self.token is None


@dataclass(slots=True)
class Transfer:
    """A transfer of an asset to a watched address, as found on chain."""

    network: str
    asset: str
    tx_hash: str
    log_index: int | None  # None for native transfers
    from_addr: str
    to_addr: str
    amount: int
    block: int
    block_hash: str
    timestamp: int
    invoice_id: str | None = None
    kind: str = "unmatched"  # "payment" | "late" | "unmatched"
    #: An internal native transfer (a contract's call): its call's `traceAddress`, e.g.
    #: "0.2"; None for a transaction's own value or a log.
    trace: str | None = None
    assigned: bool = False  # made a payment of its invoice by hand

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.network, self.tx_hash, -1 if self.log_index is None else self.log_index,
                self.trace or "")

    @property
    def id(self) -> str:
        """A stable id: the same for the same transfer whenever and however it is found."""
        return transfer_id(*self.key)


def transfer_id(network: str, tx_hash: str, log_index: int, trace: str) -> str:
    """`tr_` + 24 hex digits of SHA-256 over the transfer's identity: (network, tx hash,
    log index or -1 for native, trace address or "")."""
    digest = hashlib.sha256(f"{network}:{tx_hash.lower()}:{log_index}:{trace}".encode())
    return "tr_" + digest.hexdigest()[:24]


@dataclass(slots=True)
class Invoice:
    id: str
    seq: int
    status: Status
    #: The method's fields: None while the customer has not chosen one of `methods`.
    network: str | None
    chain_id: int | None
    asset: str | None
    token_address: str | None
    decimals: int | None
    to_addr: str | None
    shared: bool
    amount: int | None
    requested_amount: int | None
    created_at: int
    updated_at: int
    expire_at: int
    parent_id: str | None = None
    external_id: str | None = None
    price: str | None = None
    currency: str | None = None
    email: str | None = None
    payload: dict[str, Any] | None = None
    callback_url: str | None = None
    client_id: str | None = None  # the merchant's id of the paying customer
    redirect_url: str | None = None  # where the checkout sends the customer once COMPLETED
    #: Priced in a currency: the rate used (decimal string, currency per asset unit), where
    #: it came from and its time; None when the amount was given in the asset.
    rate: str | None = None
    rate_source: str | None = None
    rate_at: int | None = None
    derivation_index: int | None = None  # the xpub index its address was derived at
    closed_at: int | None = None  # stopped collecting: voided, accepted, refunded, remainder
    #: chain time its collecting window opens (`OPENS_EARLY` before it was created, on the
    #: chain's clock); None for invoices from before windows had a start
    opens_at: int | None = None
    refund_tx: str | None = None
    fingerprint: str | None = None
    title: str | None = None
    description: str | None = None
    #: The payment methods the customer may choose from (None: a classic invoice, created
    #: with its network and asset)
    methods: list[Method] | None = None
    #: Methods chosen before the current one, which stopped collecting when it was chosen
    legs: list[Leg] = field(default_factory=list)
    payments: list[Transfer] = field(default_factory=list)
    late_payments: list[Transfer] = field(default_factory=list)

    @property
    def chosen(self) -> bool:
        """It has its network, asset, address and amount (a classic invoice, or a method
        invoice once the customer chose)."""
        return self.network is not None

    @property
    def can_change_method(self) -> bool:
        """The customer may still choose (or switch) a method: PENDING, collecting and
        nothing received (the time is checked by the caller against `expire_at`)."""
        return (
            self.methods is not None
            and self.status == Status.PENDING
            and self.collects
            and not self.payments
            and not self.late_payments
        )

    def networks(self) -> set[str]:
        """The networks whose watch index holds this invoice: its method's and those of
        the methods chosen before."""
        found = {leg.network for leg in self.legs}
        if self.network is not None:
            found.add(self.network)
        return found

    def leg_for(self, t: Transfer) -> Leg | None:
        """The earlier method a transfer was sent to: same network, asset, address (and,
        at a shared address, amount); None when it is for the current method or none."""
        if self.network is not None and self.asset is not None and self.to_addr is not None \
                and receives(self.network, self.asset, self.to_addr, self.shared,
                             self.amount, t):
            return None
        for leg in reversed(self.legs):
            if leg.takes(t):
                return leg
        return None

    @property
    def amount_paid(self) -> int:
        return sum(p.amount for p in self.payments)

    @property
    def amount_due(self) -> int:
        """What is still missing: 0 once COMPLETED (also when accepted by hand or paid
        within the tolerance), else the amount less what was paid, never below 0."""
        if self.status == Status.COMPLETED or self.amount is None:
            return 0
        return max(0, self.amount - self.amount_paid)

    @property
    def latest_payment(self) -> Transfer | None:
        if not self.payments:
            return None
        return max(self.payments, key=lambda p: (p.block, p.log_index or -1))

    @property
    def collects(self) -> bool:
        """Not closed: neither voided, refunded, accepted by hand nor replaced by a remainder.
        A collecting invoice takes every transfer made before `expireAt`, even once paid."""
        return self.closed_at is None and self.status not in CLOSED_STATUSES

    @property
    def closed_for_window(self) -> int | None:
        """`closed_at` as `window_route` wants it: None while collecting."""
        if self.collects:
            return None
        return self.closed_at if self.closed_at is not None else self.expire_at

    @property
    def voided_at_expiry(self) -> bool:
        """Voided because nothing was seen by `expireAt` (not cancelled before it): a
        payment made in time that a rescan finds later is still a payment."""
        return self.status == Status.VOIDED and self.closed_at == self.expire_at

    def route(self, at: int, late_window: int) -> str:
        """"payment", "late" or "unmatched" for a transfer in a block with timestamp `at`."""
        return window_route(
            self.opens_at, self.expire_at, self.closed_for_window, at, late_window
        )

    def route_transfer(self, t: Transfer, late_window: int) -> tuple[str, Leg | None]:
        """`route` for a transfer routed to this invoice, and the method chosen before the
        current one it was sent to, if any: that is a late payment within the late window
        after the switch (never a payment: it is another asset or address)."""
        leg = self.leg_for(t) if self.legs else None
        if leg is not None:
            return leg.route(t.timestamp, late_window), leg
        return self.route(t.timestamp, late_window), None


@dataclass(frozen=True, slots=True)
class Method:
    """One way the customer may pay a method invoice: an asset on a network."""

    network: str
    asset: str


@dataclass(slots=True)
class Leg:
    """A method chosen before the invoice's current one: where it collected, from
    `opens_at` until `closed_at` (when the customer switched). A transfer to it later is a
    late payment of the invoice, within the late-payment window."""

    n: int  # 1, 2, ... in the order they were replaced
    network: str
    asset: str
    decimals: int
    to_addr: str
    shared: bool
    amount: int
    derivation_index: int | None
    opens_at: int | None
    closed_at: int

    def takes(self, t: Transfer) -> bool:
        return receives(self.network, self.asset, self.to_addr, self.shared, self.amount, t)

    def route(self, at: int, late_window: int) -> str:
        return retired_route(self.opens_at, self.closed_at, at, late_window)


def receives(
    network: str, asset: str, to_addr: str, shared: bool, amount: int | None, t: Transfer
) -> bool:
    """A method (network, asset, address and, at a shared address, amount) is where the
    transfer was sent."""
    return (
        network == t.network and asset == t.asset and to_addr.lower() == t.to_addr.lower()
        and (not shared or amount == t.amount)
    )


def retired_route(opens_at: int | None, closed_at: int, at: int, late_window: int) -> str:
    """What a transfer in a block with timestamp `at` is to a method the customer switched
    away from at `closed_at`: "late" from when it opened until the late window after the
    switch, else "unmatched" (never a payment)."""
    if opens_at is not None and at < opens_at:
        return "unmatched"
    return "late" if at <= closed_at + late_window else "unmatched"

