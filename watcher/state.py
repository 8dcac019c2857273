"""The invoice state machine: pure functions, no I/O.

An invoice's status follows from its counted payments, the chain head, the newest scanned
block time and a few facts that only the merchant can set (cancel, accept, refund,
remainder). `target_status` says where the chain puts an invoice; `transitions` says which
statuses it passes through to get there, each announced by its own callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from watcher.amounts import paid_threshold
from watcher.models import CLOSED_STATUSES, Invoice, Status, Transfer


@dataclass(frozen=True, slots=True)
class ChainView:
    """What the follower knows of one network when it settles an invoice."""

    head: int  # newest block number known
    #: timestamp of the newest scanned block that has `required` confirmations: an unpaid
    #: invoice is voided only once a block past its expiry is that deep, so no reorg can
    #: still bring in a payment made in time
    scanned_time: int | None
    required: int  # confirmations needed
    #: finality "safe"/"finalized": a payment also has to be at or below the node's block of
    #: that tag (`final_block`; None while not known yet: nothing completes)
    tagged: bool = False
    final_block: int | None = None
    #: the node's `finalized` block when it is read (for the invoice's `finalized`)
    finalized_block: int | None = None

    def settled(self, block: int) -> bool:
        """A payment in `block` is deep enough to count as final for this network."""
        if confirmations(block, self.head) < self.required:
            return False
        return not self.tagged or (self.final_block is not None and block <= self.final_block)


def finalized(payments: Sequence[Transfer], view: ChainView) -> bool | None:
    """Every payment at or below the node's `finalized` block; None when that block is not
    read for this network (finality "confirmations")."""
    if view.finalized_block is None:
        return None
    return bool(payments) and all(p.block <= view.finalized_block for p in payments)


def confirmations(block: int | None, head: int) -> int:
    if block is None or head < block:
        return 0
    return head - block + 1


def next_check(payments: Sequence[Transfer], view: ChainView) -> int:
    """The head at which a WAITING invoice's status can next change by depth alone: when
    the first of its payments still short of the confirmations gets them. All deep by count
    (waiting for a finality tag): the next head."""
    shallow = [p.block + view.required - 1 for p in payments
               if confirmations(p.block, view.head) < view.required]
    return min(shallow) if shallow else view.head + 1


def _ordered(payments: Sequence[Transfer]) -> list[Transfer]:
    return sorted(payments, key=lambda p: (p.block, -1 if p.log_index is None else p.log_index))


def chain_status(
    amount: int,
    payments: Sequence[Transfer],
    expire_at: int,
    view: ChainView,
    tolerance: Fraction,
) -> Status:
    """The status the chain alone gives an invoice: no history, no merchant action."""
    if not payments:
        if view.scanned_time is not None and view.scanned_time > expire_at:
            return Status.VOIDED
        return Status.PENDING
    threshold = paid_threshold(amount, tolerance)
    total = 0
    for p in _ordered(payments):
        total += p.amount
        if total >= threshold:
            # The payments that reach the amount decide; later ones may still be shallow.
            return Status.COMPLETED if view.settled(p.block) else Status.WAITING_FOR_CONFIRMATIONS
    if all(view.settled(p.block) for p in payments):
        return Status.PARTIAL
    return Status.WAITING_FOR_CONFIRMATIONS


def target_status(
    inv: Invoice, view: ChainView, tolerance: Fraction, *, payments_added: bool
) -> Status:
    """Where the invoice must be now, given where it is."""
    if inv.status in CLOSED_STATUSES and not (inv.status == Status.VOIDED and payments_added):
        # A voided invoice takes payments again only when one is added to it: a rescan
        # finding a payment made in time that was missed, or the merchant assigning one.
        return inv.status
    if inv.closed_at is not None and inv.status in (Status.COMPLETED, Status.PARTIAL):
        return inv.status  # accepted by hand, or a remainder took over: no longer collecting
    if inv.amount is None:
        # No method chosen yet, so nothing can be paid: only the expiry, on the chain's clock
        # of whichever of its methods' networks scanned past it first.
        base = chain_status(0, (), inv.expire_at, view, tolerance)
        return Status.VOIDED if base == Status.VOIDED else inv.status
    base = chain_status(inv.amount, inv.payments, inv.expire_at, view, tolerance)
    if base == Status.WAITING_FOR_CONFIRMATIONS and not payments_added:
        # Confirmations only fall when a reorg shortens the chain; payments that survived it
        # are still on the canonical chain and stay confirmed.
        if inv.status == Status.PARTIAL:
            return Status.PARTIAL
        if inv.status == Status.COMPLETED and inv.amount_paid >= paid_threshold(
            inv.amount, tolerance
        ):
            return Status.COMPLETED
    if base == Status.PENDING and inv.closed_at is not None:
        return Status.VOIDED  # cancelled, then a payment assigned to it vanished in a reorg
    was_paid = inv.status in (Status.COMPLETED, Status.REVERSED)
    fresh = payments_added and base == Status.WAITING_FOR_CONFIRMATIONS
    if was_paid and base != Status.COMPLETED and not fresh:
        return Status.REVERSED  # a confirmed payment vanished: only a new payment moves it on
    return base


def transitions(
    inv: Invoice, view: ChainView, tolerance: Fraction, *, payments_added: bool
) -> list[Status]:
    """The statuses to pass through, in order; empty when nothing changes.

    Every paid invoice passes through WAITING_FOR_CONFIRMATIONS, with its callback, even when
    its payment is already deep enough when first seen.
    """
    new = target_status(inv, view, tolerance, payments_added=payments_added)
    if new == inv.status:
        return []
    settled = (Status.COMPLETED, Status.PARTIAL)
    if (
        new in settled
        and inv.status != Status.WAITING_FOR_CONFIRMATIONS
        and (payments_added or inv.status in (Status.PENDING, Status.REVERSED))
    ):
        return [Status.WAITING_FOR_CONFIRMATIONS, new]
    if new == Status.VOIDED and inv.status != Status.PENDING:
        # A reorg took every payment of an expired invoice: it was never paid in time.
        return [Status.PENDING, Status.VOIDED]
    return [new]


class ActionRefused(Exception):
    """A merchant action not allowed from the invoice's status."""


def cancel(inv: Invoice) -> Status:
    if inv.status != Status.PENDING:
        raise ActionRefused(f"only a PENDING invoice can be cancelled; this one is {inv.status}")
    return Status.VOIDED


def accept(inv: Invoice) -> Status:
    if inv.status != Status.PARTIAL:
        raise ActionRefused(f"only a PARTIAL invoice can be accepted; this one is {inv.status}")
    return Status.COMPLETED


def refund(inv: Invoice) -> Status:
    if inv.status not in (Status.COMPLETED, Status.PARTIAL):
        raise ActionRefused(
            f"only a COMPLETED or PARTIAL invoice can be refunded; this one is {inv.status}"
        )
    return Status.REFUNDED


def remainder(inv: Invoice, tolerance: Fraction) -> int:
    """The amount still missing, for a child invoice of a PARTIAL one."""
    if inv.status != Status.PARTIAL:
        raise ActionRefused(
            f"a remainder can only be requested for a PARTIAL invoice; this one is {inv.status}"
        )
    if inv.closed_at is not None:
        raise ActionRefused("this invoice already stopped collecting")
    assert inv.amount is not None  # PARTIAL: it was paid, so it has its method
    missing = inv.amount - inv.amount_paid
    if missing <= 0:
        raise ActionRefused("nothing is missing on this invoice")
    return missing
