import tracemalloc

import pytest

from tests.unit.factories import invoice
from watcher.matching import Route, WatchIndex
from watcher.models import Asset, Invoice, Leg, Status

SHARED = "0x" + "aa" * 20
TOKEN = "0x" + "bb" * 20
ADDR = "0x" + "11" * 20
ASSETS = {
    "ETH": Asset("local", "ETH", 18),
    "USDT": Asset("local", "USDT", 6, token=TOKEN, shared_address=SHARED),
}


def index() -> WatchIndex:
    return WatchIndex(ASSETS, late_window=100)


def test_dedicated_address_takes_any_amount_before_expiry() -> None:
    ix = index()
    ix.put(invoice(to_addr=ADDR, expire_at=2000))
    assert ix.route("ETH", ADDR.upper().replace("0X", "0x"), 1, 2000) == (Route.PAYMENT, "inv-1")
    assert ix.route("ETH", ADDR, 10**30, 1500) == (Route.PAYMENT, "inv-1")
    assert ix.route("ETH", ADDR, 5, 2001) == (Route.LATE, "inv-1")
    assert ix.route("ETH", ADDR, 5, 2101) == (Route.UNMATCHED, None)
    with pytest.raises(KeyError):
        ix.route("ETH", "0x" + "33" * 20, 5, 1500)
    with pytest.raises(KeyError):
        ix.route("USDT", ADDR, 5, 1500)  # the same address for another asset is not watched


def test_voided_invoice_takes_late_payments_within_window() -> None:
    ix = index()
    ix.put(invoice(to_addr=ADDR, status=Status.VOIDED, closed_at=1200, expire_at=2000))
    assert ix.route("ETH", ADDR, 5, 1250) == (Route.LATE, "inv-1")
    assert ix.route("ETH", ADDR, 5, 1301) == (Route.UNMATCHED, None)


def test_a_reused_dedicated_address_routes_by_block_time() -> None:
    ix = index()
    ix.put(invoice(id="old", seq=1, to_addr=ADDR, status=Status.VOIDED, closed_at=1200,
                   opens_at=1000))
    ix.put(invoice(id="new", seq=2, to_addr=ADDR, opens_at=1250, expire_at=5000))
    ix.put(invoice(id="old", seq=1, to_addr=ADDR, status=Status.VOIDED, closed_at=1200,
                   opens_at=1000))
    assert ix.route("ETH", ADDR, 5, 1300) == (Route.PAYMENT, "new")
    assert ix.route("ETH", ADDR, 5, 1250) == (Route.PAYMENT, "new")
    assert ix.route("ETH", ADDR, 5, 1100) == (Route.LATE, "old")  # sent before the cancel
    assert ix.route("ETH", ADDR, 5, 1249) == (Route.LATE, "old")
    assert ix.route("ETH", ADDR, 5, 960) == (Route.UNMATCHED, None)  # before either existed
    assert len(ix) == 2


def test_payment_in_time_stays_with_the_first_invoice_when_the_address_is_reused() -> None:
    """Defect 3: A is paid in time, the block is not scanned yet, B is created on the same
    address after A's expireAt: the payment is A's; B's window opens after the newest block
    the daemon had read when B was created."""
    ix = index()
    ix.put(invoice(id="A", seq=1, to_addr=ADDR, opens_at=1000, expire_at=2000))
    ix.put(invoice(id="B", seq=2, to_addr=ADDR, opens_at=1950, expire_at=5000))
    assert ix.route("ETH", ADDR, 5, 1990) == (Route.PAYMENT, "A")  # both windows hold it
    assert ix.route("ETH", ADDR, 5, 2005) == (Route.PAYMENT, "B")
    ix.put(invoice(id="C", seq=3, to_addr=ADDR, opens_at=9000, expire_at=9500))
    assert ix.route("ETH", ADDR, 5, 5010) == (Route.LATE, "B")
    assert ix.route("ETH", ADDR, 5, 5200) == (Route.UNMATCHED, None)
    assert ix.route("ETH", ADDR, 5, 900) == (Route.UNMATCHED, None)


def test_a_reused_shared_amount_routes_by_block_time() -> None:
    ix = index()
    ix.put(invoice(id="A", seq=1, asset="USDT", to_addr=SHARED, shared=True, amount=100,
                   opens_at=1000, expire_at=2000))
    ix.put(invoice(id="B", seq=2, asset="USDT", to_addr=SHARED, shared=True, amount=100,
                   opens_at=9000, expire_at=12000))
    assert ix.route("USDT", SHARED, 100, 1990) == (Route.PAYMENT, "A")
    assert ix.route("USDT", SHARED, 100, 5000) == (Route.UNMATCHED, None)
    assert ix.route("USDT", SHARED, 100, 9001) == (Route.PAYMENT, "B")


def test_zero_transfers_never_route_to_an_invoice() -> None:
    ix = index()
    ix.put(invoice(to_addr=ADDR, expire_at=2000))
    assert ix.route("ETH", ADDR, 0, 1500) == (Route.UNMATCHED, None)


def test_shared_address_matches_exact_amount_only() -> None:
    ix = index()
    ix.put(invoice(id="a", seq=1, asset="USDT", to_addr=SHARED, shared=True, amount=100))
    ix.put(invoice(id="b", seq=2, asset="USDT", to_addr=SHARED, shared=True, amount=101))
    assert ix.route("USDT", SHARED, 101, 1500) == (Route.PAYMENT, "b")
    assert ix.route("USDT", SHARED, 102, 1500) == (Route.UNMATCHED, None)
    assert ix.route("USDT", SHARED, 100, 2001) == (Route.UNMATCHED, None)
    ix.put(invoice(id="a", seq=1, asset="USDT", to_addr=SHARED, shared=True, amount=100,
                   status=Status.COMPLETED))
    assert ix.route("USDT", SHARED, 100, 1500) == (Route.PAYMENT, "a")  # overpays until expiry
    ix.put(invoice(id="a", seq=1, asset="USDT", to_addr=SHARED, shared=True, amount=100,
                   status=Status.REFUNDED, closed_at=1400))
    assert ix.route("USDT", SHARED, 100, 1500) == (Route.UNMATCHED, None)
    assert ix.is_watched("USDT", SHARED)  # the shared address stays watched when idle


def test_native_watching_follows_invoices() -> None:
    ix = index()
    assert not ix.watches_native()
    ix.put(invoice(to_addr=ADDR, expire_at=2000))
    assert ix.watches_native()
    assert ix.prune(None) == 0  # nothing confirmed yet: nothing leaves
    assert ix.prune(2050) == 0
    assert ix.prune(2101) == 1
    assert not ix.watches_native()


def test_token_lookup_is_case_insensitive() -> None:
    ix = index()
    assert ix.symbol_for_token(TOKEN.upper().replace("0X", "0x")) == "USDT"
    assert ix.symbol_for_token("0x" + "cc" * 20) is None


def test_holds_100k_open_invoices() -> None:
    tracemalloc.start()
    ix = index()
    for i in range(100_000):
        ix.put(invoice(id=f"i{i}", seq=i, to_addr=f"0x{i:040x}", expire_at=10**10))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ix) == 100_000
    assert ix.route("ETH", f"0x{99_999:040x}", 1, 1500) == (Route.PAYMENT, "i99999")
    assert size < 100 * 2**20  # the index itself, not the invoices that built it


def _reference_prune(held: dict[str, tuple[bool, int]], confirmed: int, late: int) -> set[str]:
    """The rule `prune` follows, as a plain walk: (shared, stopped_at) per invoice id; the
    ids that stay."""
    return {i for i, (shared, stopped) in held.items()
            if stopped >= (confirmed if shared else confirmed - late)}


@pytest.mark.parametrize("seed", range(5))
def test_prune_pops_what_a_full_walk_would_forget(seed: int) -> None:
    """Random puts (new invoices, the same invoice again after a cancel) and prunes: the
    index keeps exactly the invoices the walk over every invoice would keep."""
    import dataclasses
    import random

    rng = random.Random(seed)
    ix = index()
    made: dict[str, Invoice] = {}
    held: dict[str, tuple[bool, int]] = {}
    kept: set[str] = set()
    confirmed = 1000
    for step in range(400):
        roll = rng.random()
        if roll < 0.5 or not kept:
            shared = rng.random() < 0.4
            inv = invoice(id=f"inv-{step}", seq=step, shared=shared,
                          amount=rng.randrange(1, 20),
                          to_addr=SHARED if shared else f"0x{rng.randrange(1, 30):040x}",
                          asset="USDT" if shared else "ETH",
                          expire_at=confirmed + rng.randrange(0, 300))
            ix.put(inv)
            made[inv.id], held[inv.id] = inv, (shared, inv.expire_at)
            kept.add(inv.id)
        elif roll < 0.7:
            inv = made[rng.choice(sorted(kept))]  # cancelled now: stops collecting earlier
            closed = min(inv.expire_at, confirmed + rng.randrange(0, 50))
            ix.put(dataclasses.replace(inv, status=Status.VOIDED, closed_at=closed))
            held[inv.id] = (inv.shared, closed)
        else:
            confirmed += rng.randrange(0, 120)
            ix.prune(confirmed)
            kept = _reference_prune({i: held[i] for i in kept}, confirmed, ix.late_window)
            assert len(ix) == len(kept)
            assert set(ix._at) == kept


def test_an_address_holding_several_invoices_and_then_one_again() -> None:
    """Three invoices reuse one dedicated address (one at a time): each keeps its window
    while the others come and go (several at the key, then one, then none)."""
    ix = index()
    ix.put(invoice(id="A", seq=1, to_addr=ADDR, status=Status.VOIDED, closed_at=1200,
                   opens_at=1000, expire_at=1500))
    ix.put(invoice(id="C", seq=3, to_addr=ADDR, opens_at=1400, expire_at=3000))
    ix.put(invoice(id="B", seq=2, to_addr=ADDR, status=Status.VOIDED, closed_at=1300,
                   opens_at=1250, expire_at=1600))  # put after C: still ordered by seq
    assert ix.route("ETH", ADDR, 5, 1100) == (Route.LATE, "A")
    assert ix.route("ETH", ADDR, 5, 1270) == (Route.LATE, "B")
    assert ix.route("ETH", ADDR, 5, 1450) == (Route.PAYMENT, "C")
    assert ix.prune(1301) == 1  # A: closed at 1200, late window 100
    assert ix.route("ETH", ADDR, 5, 1100) == (Route.UNMATCHED, None)
    assert ix.route("ETH", ADDR, 5, 1390) == (Route.LATE, "B")
    assert ix.prune(1401) == 1  # B
    assert len(ix) == 1 and ix.route("ETH", ADDR, 5, 1390) == (Route.UNMATCHED, None)
    ix.put(invoice(id="B", seq=2, to_addr=ADDR, status=Status.VOIDED, closed_at=1300,
                   opens_at=1250, expire_at=1600))  # seen again (a rescan): held again
    assert ix.route("ETH", ADDR, 5, 1390) == (Route.LATE, "B")
    assert ix.route("ETH", ADDR, 5, 3050) == (Route.LATE, "C")
    assert ix.prune(3101) == 2 and len(ix) == 0
    assert not ix.is_watched("ETH", ADDR) and ix.addresses() == {SHARED.lower()}


def test_a_put_that_keeps_the_deadline_adds_no_heap_item() -> None:
    """A payment or a status that keeps collecting changes nothing `prune` goes by: the
    entry is updated where it stands; a cancel moves its deadline (a new item), and the
    replaced one is dropped when it comes up."""
    ix = index()
    ix.put(invoice(to_addr=ADDR, expire_at=2000))
    ix.put(invoice(to_addr=ADDR, expire_at=2000, status=Status.WAITING_FOR_CONFIRMATIONS))
    ix.put(invoice(to_addr=ADDR, expire_at=2000, status=Status.COMPLETED))
    assert len(ix._deadlines) == 1
    assert ix.route("ETH", ADDR, 5, 1500) == (Route.PAYMENT, "inv-1")
    ix.put(invoice(to_addr=ADDR, expire_at=2000, status=Status.VOIDED, closed_at=1600))
    assert len(ix._deadlines) == 2
    assert ix.route("ETH", ADDR, 5, 1650) == (Route.LATE, "inv-1")
    assert ix.prune(1701) == 1 and len(ix) == 0
    assert ix.prune(2101) == 0 and not ix._deadlines


def test_a_retired_method_of_an_id_with_a_slash_routes_to_that_id() -> None:
    ix = index()
    leg = Leg(1, "local", "USDT", 6, ADDR, False, 7, None, 1000, 1100)
    ix.put(invoice(id="shop/42", to_addr=SHARED, asset="USDT", shared=True, amount=9,
                   legs=[leg]))
    assert ix.route("USDT", ADDR, 5, 1150) == (Route.LATE, "shop/42")
    assert ix.route("USDT", SHARED, 9, 1150) == (Route.PAYMENT, "shop/42")


def test_an_open_invoice_costs_the_index_under_600_bytes() -> None:
    """Ids and addresses as the daemon has them (UUIDs, checksummed addresses read from the
    database): the index's own memory per invoice (it was ~800 bytes; 100,000 of them are
    most of the daemon's RSS)."""
    import uuid

    count = 20_000
    tracemalloc.start()
    ix = index()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(count):
        ix.put(invoice(id=str(uuid.UUID(int=i)), seq=10**6 + i, to_addr=f"0x{i:040X}",
                       opens_at=10**9 + i, expire_at=2 * 10**9 + i))
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ix) == count
    assert (size - before) / count < 600
