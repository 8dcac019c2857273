from fractions import Fraction

import pytest

from tests.unit.factories import invoice, payment
from watcher import state
from watcher.models import Status
from watcher.state import ChainView, chain_status, transitions

S = Status
ZERO = Fraction(0)


def view(head: int, time: int = 1500, required: int = 3) -> ChainView:
    return ChainView(head=head, scanned_time=time, required=required)


def test_confirmations_formula() -> None:
    assert state.confirmations(10, 10) == 1
    assert state.confirmations(10, 12) == 3
    assert state.confirmations(None, 12) == 0
    assert state.confirmations(13, 12) == 0


def test_unpaid_is_pending_until_a_block_past_expiry_is_scanned() -> None:
    assert chain_status(1000, [], 2000, view(10, time=2000), ZERO) == S.PENDING
    assert chain_status(1000, [], 2000, view(10, time=2001), ZERO) == S.VOIDED
    assert chain_status(1000, [], 2000, ChainView(10, None, 3), ZERO) == S.PENDING


def test_full_payment_waits_then_completes() -> None:
    p = [payment(1000, 10)]
    assert chain_status(1000, p, 2000, view(11), ZERO) == S.WAITING_FOR_CONFIRMATIONS
    assert chain_status(1000, p, 2000, view(12), ZERO) == S.COMPLETED


def test_underpayment_becomes_partial_when_confirmed() -> None:
    p = [payment(400, 10)]
    assert chain_status(1000, p, 2000, view(11), ZERO) == S.WAITING_FOR_CONFIRMATIONS
    assert chain_status(1000, p, 2000, view(12), ZERO) == S.PARTIAL


def test_payments_are_summed_and_overpayment_completes() -> None:
    p = [payment(400, 10), payment(700, 11, log_index=1)]
    assert chain_status(1000, p, 2000, view(13), ZERO) == S.COMPLETED
    assert chain_status(1000, p, 2000, view(12), ZERO) == S.WAITING_FOR_CONFIRMATIONS


def test_only_payments_reaching_the_amount_need_depth() -> None:
    # block 10 pays in full; an extra shallow payment at block 20 does not hold it back
    p = [payment(1000, 10), payment(5, 20)]
    assert chain_status(1000, p, 2000, view(13), ZERO) == S.COMPLETED


def test_tolerance_accepts_small_shortfall() -> None:
    p = [payment(995, 10)]
    assert chain_status(1000, p, 2000, view(12), Fraction(1, 200)) == S.COMPLETED
    assert chain_status(1000, [payment(994, 10)], 2000, view(12), Fraction(1, 200)) == S.PARTIAL


def test_every_paid_invoice_passes_through_waiting() -> None:
    inv = invoice(payments=[payment(1000, 10)])
    steps = transitions(inv, view(50), ZERO, payments_added=True)
    assert steps == [S.WAITING_FOR_CONFIRMATIONS, S.COMPLETED]


def test_partial_paid_again_goes_back_through_waiting() -> None:
    inv = invoice(status=S.PARTIAL, payments=[payment(400, 10), payment(600, 20)])
    assert transitions(inv, view(30), ZERO, payments_added=True) == [
        S.WAITING_FOR_CONFIRMATIONS, S.COMPLETED,
    ]
    inv = invoice(status=S.PARTIAL, payments=[payment(400, 10), payment(100, 20)])
    assert transitions(inv, view(20), ZERO, payments_added=True) == [S.WAITING_FOR_CONFIRMATIONS]


def test_reorg_back_to_pending() -> None:
    inv = invoice(status=S.WAITING_FOR_CONFIRMATIONS, payments=[])
    assert transitions(inv, view(20), ZERO, payments_added=False) == [S.PENDING]


def test_reorg_of_completed_is_reversed_and_sticky() -> None:
    inv = invoice(status=S.COMPLETED, payments=[])
    assert transitions(inv, view(20), ZERO, payments_added=False) == [S.REVERSED]
    inv = invoice(status=S.REVERSED, payments=[])
    assert transitions(inv, view(20, time=5000), ZERO, payments_added=False) == []
    # paid again: waits, then completes
    inv = invoice(status=S.REVERSED, payments=[payment(1000, 19)])
    assert transitions(inv, view(20), ZERO, payments_added=True) == [S.WAITING_FOR_CONFIRMATIONS]


def test_expired_waiting_invoice_keeps_its_payment() -> None:
    inv = invoice(status=S.WAITING_FOR_CONFIRMATIONS, payments=[payment(1000, 10)])
    assert transitions(inv, view(12, time=9999), ZERO, payments_added=False) == [S.COMPLETED]


def test_partial_after_expiry_stays_partial() -> None:
    inv = invoice(status=S.PARTIAL, payments=[payment(400, 10)])
    assert transitions(inv, view(40, time=9999), ZERO, payments_added=False) == []


def test_expired_invoice_losing_its_payment_is_voided_through_pending() -> None:
    inv = invoice(status=S.WAITING_FOR_CONFIRMATIONS, payments=[])
    assert transitions(inv, view(20, time=9999), ZERO, payments_added=False) == [
        S.PENDING, S.VOIDED,
    ]


@pytest.mark.parametrize("final", [S.VOIDED, S.REFUNDED])
def test_final_statuses_do_not_move(final: Status) -> None:
    inv = invoice(status=final, payments=[payment(1000, 10)])
    assert transitions(inv, view(50), ZERO, payments_added=False) == []
    if final == S.REFUNDED:  # a voided one takes a payment added to it (test below)
        assert transitions(inv, view(50), ZERO, payments_added=True) == []


def test_accepted_partial_stays_completed() -> None:
    inv = invoice(status=S.COMPLETED, closed_at=1600, payments=[payment(400, 10)])
    assert transitions(inv, view(50), ZERO, payments_added=False) == []


ACTIONS = {
    "cancel": (state.cancel, {S.PENDING: S.VOIDED}),
    "accept": (state.accept, {S.PARTIAL: S.COMPLETED}),
    "refund": (state.refund, {S.COMPLETED: S.REFUNDED, S.PARTIAL: S.REFUNDED}),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("status", list(Status))
def test_actions_from_every_status(action: str, status: Status) -> None:
    rule, allowed = ACTIONS[action]
    inv = invoice(status=status)
    if status in allowed:
        assert rule(inv) == allowed[status]
    else:
        with pytest.raises(state.ActionRefused):
            rule(inv)


@pytest.mark.parametrize("status", list(Status))
def test_remainder_only_from_partial(status: Status) -> None:
    inv = invoice(status=status, payments=[payment(400, 10)])
    if status == S.PARTIAL:
        assert state.remainder(inv, ZERO) == 600
    else:
        with pytest.raises(state.ActionRefused):
            state.remainder(inv, ZERO)
    with pytest.raises(state.ActionRefused):
        state.remainder(invoice(status=S.PARTIAL, closed_at=5, payments=[]), ZERO)


def test_shorter_head_after_reorg_does_not_unconfirm_surviving_payments() -> None:
    paid = invoice(status=S.COMPLETED, payments=[payment(600, 10), payment(400, 11)])
    assert transitions(paid, view(12), ZERO, payments_added=False) == []
    partial = invoice(status=S.PARTIAL, payments=[payment(400, 10)])
    assert transitions(partial, view(11), ZERO, payments_added=False) == []
    lost = invoice(status=S.COMPLETED, payments=[payment(600, 10)])
    assert transitions(lost, view(12), ZERO, payments_added=False) == [S.REVERSED]


def test_a_voided_invoice_takes_a_payment_added_to_it() -> None:
    # A payment made in time that a rescan found, or one the merchant assigned: an invoice
    # voided at expiry (or cancelled) goes on as if the payment had been seen.
    for closed_at in (None, 1800):
        inv = invoice(status=S.VOIDED, closed_at=closed_at, payments=[payment(1000, 10)])
        assert transitions(inv, view(20, time=2500), ZERO, payments_added=True) == [
            S.WAITING_FOR_CONFIRMATIONS, S.COMPLETED]
        # without a payment added (the head moves on), voided stays voided
        assert transitions(inv, view(20, time=2500), ZERO, payments_added=False) == []
    refunded = invoice(status=S.REFUNDED, payments=[payment(1000, 10)])
    assert transitions(refunded, view(20), ZERO, payments_added=True) == []


def test_a_cancelled_invoice_whose_assigned_payment_vanished_is_voided_again() -> None:
    inv = invoice(status=S.WAITING_FOR_CONFIRMATIONS, closed_at=1800, payments=[])
    # announced as for an expired invoice whose payment a reorg took: pending, then voided
    assert transitions(inv, view(20, time=1700), ZERO, payments_added=False) == [
        S.PENDING, S.VOIDED]


def test_next_check_is_when_the_first_shallow_payment_gets_deep() -> None:
    v = view(20, required=3)  # block b is deep from head b + 2 on
    assert state.next_check([payment(1, 19), payment(1, 20)], v) == 21
    assert state.next_check([payment(1, 10), payment(1, 20)], v) == 22  # 10 is deep already
    assert state.next_check([payment(1, 10)], v) == 21  # all deep by count: the next head
