"""Method invoices on the chain model with the real follower, ledger and store: a switch
while the follower is behind, a late payment to the retired method that a reorg takes
away (and one it keeps), and an unchosen invoice that expires on chain time."""

from __future__ import annotations

from fractions import Fraction
from typing import ClassVar

from tests import hdkeys
from tests.chainmodel import ChainModel, NativeTx, TokenTx
from tests.daemonparts import CONF, LATE, NET, PAYER, TOKEN, Node, clock, running
from watcher.derivation import Deriver
from watcher.ledger import NewInvoice
from watcher.models import Method, Status
from watcher.rates import Rate, RateUnavailable

ETH = 10**18


class FixedRates:
    """ETH at 2000 USD, USDT at 1 USD, always fresh (pure: no source, no I/O)."""

    pair_names = ("ETH/USD", "USDT/USD")
    values: ClassVar[dict[str, Fraction]] = {"ETH": Fraction(2000), "USDT": Fraction(1)}

    def rate(self, asset: str, currency: str, now: int) -> Rate:
        if currency != "USD" or asset not in self.values:
            raise RateUnavailable(f"{asset}/{currency}")
        return Rate(f"{asset}/USD", self.values[asset], "fixed", now)

    def can_price(self, asset: str, currency: str) -> bool:
        return currency == "USD" and asset in self.values


async def methods_invoice(node: Node, model: ChainModel, ttl: int = 10_000) -> str:
    node.ledger.rates = FixedRates()  # type: ignore[assignment]
    node.ledger.deriver = Deriver(hdkeys.xpub())
    now = clock(model)
    req = NewInvoice(None, None, None, None, now + ttl, price="20", currency="USD",
                     methods=[Method(NET, "ETH"), Method(NET, "USDT")])
    inv, _, out = await node.store.run(node.ledger.create, req, now)
    node.on_outcome(out)
    return inv.id


async def choose(node: Node, model: ChainModel, invoice_id: str, asset: str) -> str:
    inv, out = await node.store.run(node.ledger.choose, invoice_id, NET, asset, clock(model))
    node.on_outcome(out)
    assert inv.to_addr is not None
    return inv.to_addr


async def test_a_late_payment_to_the_retired_method_survives_only_if_the_chain_keeps_it(
    database: str,
) -> None:
    async with running(database) as (model, _, node):
        inv_id = await methods_invoice(node, model)
        address = await choose(node, model, inv_id, "USDT")
        assert await choose(node, model, inv_id, "ETH") == address  # same derived address
        # the follower is behind: the old method is paid, then a reorg drops that block
        model.mine([TokenTx(TOKEN, PAYER, address, 20_000_000)])
        await node.catch_up(model.head.number)
        got = await node.get(inv_id)
        assert [(p.asset, p.amount) for p in got.late_payments] == [("USDT", 20_000_000)]
        assert got.payments == [] and got.status == Status.PENDING
        model.reorg(1, [[], []])
        await node.catch_up(model.head.number)
        got = await node.get(inv_id)
        assert got.late_payments == [] and got.status == Status.PENDING
        # paid again to the old method, and this time it stays: announced once deep
        model.mine([TokenTx(TOKEN, PAYER, address, 20_000_000)])
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        got = await node.get(inv_id)
        assert len(got.late_payments) == 1
        events = [e for _, e, _ in await node.events(inv_id)]
        assert events == ["invoice.created", "invoice.method_selected",
                          "invoice.method_selected", "invoice.late_payment"]
        # the chosen method pays the invoice
        model.mine([NativeTx(PAYER, address, ETH // 100)])
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        got = await node.get(inv_id)
        assert got.status == Status.COMPLETED and got.amount_paid == ETH // 100


async def test_past_the_late_window_the_retired_method_is_forgotten(database: str) -> None:
    async with running(database) as (model, _, node):
        inv_id = await methods_invoice(node, model)
        address = await choose(node, model, inv_id, "USDT")
        await choose(node, model, inv_id, "ETH")
        model.mine_empty(LATE // 12 + 6 + CONF)
        model.mine([TokenTx(TOKEN, PAYER, address, 20_000_000)])  # after the late window
        model.mine_empty(CONF)
        await node.catch_up(model.head.number)
        got = await node.get(inv_id)
        assert got.late_payments == [] and got.payments == []
        assert not node.index.is_watched("USDT", address)


async def test_an_unchosen_invoice_expires_on_chain_time(database: str) -> None:
    async with running(database) as (model, _, node):
        inv_id = await methods_invoice(node, model, ttl=60)
        await node.catch_up(model.head.number)
        assert (await node.get(inv_id)).status == Status.PENDING
        model.mine_empty(8 + CONF)  # 12 s blocks: past expireAt on the chain's clock
        await node.catch_up(model.head.number)
        got = await node.get(inv_id)
        assert got.status == Status.VOIDED and got.network is None
        events = [e for _, e, _ in await node.events(inv_id)]
        assert events == ["invoice.created", "invoice.voided"]
