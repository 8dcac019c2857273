"""Operations on invoices, each run as one transaction on the store's writer thread.

Every status change writes its status event and its callback outbox row in the same
transaction as the change itself; the callback sender reads the outbox after commit.
Functions here take the `Db` first so they can be passed to `Store.run`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import orjson

from watcher import state
from watcher.errors import ApiError, Conflict, Invalid, NotFound, Unavailable
from watcher.models import (
    CREATED_EVENT,
    LATE_PAYMENT_EVENT,
    METHOD_SELECTED_EVENT,
    OPEN_STATUSES,
    OPENS_EARLY,
    Asset,
    Invoice,
    Leg,
    Method,
    Status,
    Transfer,
    window_route,
)
from watcher.rates import Rate, RateProvider, RateUnavailable, amount_for, format_rate
from watcher.render import Elsewhere, invoice_json, method_json
from watcher.storage.base import Db
from watcher.storage.rows import (
    assign_transfer,
    chunks,
    insert_derived_address,
    insert_invoice,
    insert_leg,
    insert_transfers,
    load_invoice,
    load_invoices,
    load_transfers_by_id,
    next_derivation_index,
    read_seqs,
    transfer_row,
    update_invoice,
    update_invoice_method,
)
from watcher.storage.store import transaction
from watcher.timeutil import iso
from watcher.timeutil import now as clock

if TYPE_CHECKING:
    from watcher.derivation import Deriver

#: How early a new invoice's window opens while the chain's clock is unknown (see _opens_at).
UNKNOWN_CHAIN_TIME_OPENS_EARLY = 3600
#: How long after `expireAt` a shared-address amount stays reserved for its invoice (while
#: not closed), so a payment the follower sees late still finds the invoice it was for.
SHARED_AMOUNT_HOLD = 3600
#: The `cause` of the events written when the merchant assigns a transfer by hand.
ASSIGNED_CAUSE = "assigned"
_OPEN_SQL = ",".join(f"'{s.value}'" for s in OPEN_STATUSES)


@dataclass(slots=True)
class NetworkInfo:
    name: str
    chain_id: int
    confirmations: int
    assets: dict[str, Asset]
    #: "confirmations" | "safe" | "finalized": with a tag, COMPLETED also waits for it
    finality: str = "confirmations"

    @property
    def tagged(self) -> bool:
        return self.finality != "confirmations"


@dataclass(slots=True)
class NewInvoice:
    """A validated create request (see api.py for the parsing)."""

    network: str | None  # None (and asset None): `methods` lists what the customer may choose
    asset: str | None
    amount: int | None  # None: priced, `price` in `currency` converted at the current rate
    address: str | None
    expire_at: int | None
    methods: list[Method] | None = None
    title: str | None = None
    description: str | None = None
    derive: bool = False  # take the next address derived from the xpub
    callback_url: str | None = None
    external_id: str | None = None
    payload: dict[str, Any] | None = None
    price: str | None = None
    currency: str | None = None
    email: str | None = None
    client_id: str | None = None
    redirect_url: str | None = None
    fingerprint: str | None = None


@dataclass(slots=True)
class Change:
    """One status change (or late payment) committed; what the daemon reports and counts."""

    invoice: Invoice
    event: str
    status: Status | None
    block_time: int | None = None  # timestamp of the block that caused it, if any


@dataclass(slots=True)
class ScanBatch:
    """What the follower found in blocks (`from_block`..`to_block`] of one network."""

    network: str
    to_block: int
    to_hash: str | None
    to_time: int
    head: int
    transfers: list[Transfer] = field(default_factory=list)
    # (number, hash, parentHash, timestamp) of blocks to remember for reorg detection
    blocks: list[tuple[int, str, str, int]] = field(default_factory=list)
    keep_blocks: int = 256
    #: finality "safe"/"finalized": the node's block of that tag, read with the head (None:
    #: not read, or the node has none yet); and its `finalized` block
    final_block: int | None = None
    finalized_block: int | None = None


@dataclass(slots=True)
class Outcome:
    changes: list[Change] = field(default_factory=list)
    touched: list[Invoice] = field(default_factory=list)  # every invoice whose row changed
    recorded: list[Transfer] = field(default_factory=list)  # transfers newly stored


def late_event_id(invoice_id: str, tx_hash: str, log_index: int, trace: str = "") -> str:
    """The event id of a late payment: the same for the same transfer to the same invoice
    (an internal transfer's trace address is added, so ids from before traces stay)."""
    where = f"{log_index}:{trace}" if trace else f"{log_index}"
    digest = hashlib.sha256(f"late:{invoice_id}:{tx_hash.lower()}:{where}".encode())
    return "evt_" + digest.hexdigest()[:32]


def request_fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class _Batch:
    """What the creates of one `create_many` share."""

    #: the invoices open on the batch's requested addresses, per (network, asset, address
    #: lowercased), read once for the batch (`_busy`); a create adds its own
    open_on: dict[tuple[str, str, str], list[tuple[str, int]]]
    #: the invoices written, whose seqs are read at the batch's end
    made: list[Invoice] = field(default_factory=list)


class Ledger:
    """The rules that turn requests and chain findings into committed invoice state."""

    def __init__(
        self,
        networks: dict[str, NetworkInfo],
        *,
        tolerance: Fraction,
        default_ttl: int,
        late_window: int,
        default_callback_url: str | None,
        checkout_url: str | None = None,
        rates: RateProvider | None = None,
        deriver: Deriver | None = None,
        start_index: int = 0,
    ) -> None:
        self.networks = networks
        self.tolerance = tolerance
        self.default_ttl = default_ttl
        self.late_window = late_window
        self.default_callback_url = default_callback_url
        #: The checkout's public URL (invoice `url`s start with it); None when it is off.
        self.checkout_url = checkout_url
        #: Rates for invoices priced in a currency (in memory; None: none configured).
        self.rates = rates
        #: Derives deposit addresses from the merchant's xpub (None: no xpub configured).
        self.deriver = deriver
        #: The first derivation index handed out (`addresses.start_index`).
        self.start_index = start_index
        #: Newest known head and scanned block time per network (set by the followers).
        self.views: dict[str, state.ChainView] = {
            n.name: state.ChainView(
                head=0, scanned_time=None, required=n.confirmations, tagged=n.tagged
            )
            for n in networks.values()
        }
        #: Per network, the WAITING invoices and the head at which each can next change
        #: (see `_waiting_due`); None until the first range since start has loaded them.
        self._waiting: dict[str, dict[str, int]] = {}
        self._waiting_seen: dict[str, int] = {}
        #: Networks whose start block is known to be written (see `started`).
        self._started: set[str] = set()
        #: inside `create_many`: what its creates share
        self._batch: _Batch | None = None
        #: Timestamp of the newest block the follower has read per network: an invoice's
        #: collecting window opens `OPENS_EARLY` before it (or before the host's clock when
        #: that is earlier), so a host clock ahead of the chain's loses no payment.
        self.tips: dict[str, int] = {}

    def note_tip(self, network: str, timestamp: int) -> None:
        """The follower read a head with this timestamp (called before it reads blocks)."""
        if timestamp > self.tips.get(network, -1):
            self.tips[network] = timestamp

    # ------------------------------------------------------------------ rendering

    def render(self, inv: Invoice) -> dict[str, Any]:
        view = self.views.get(inv.network) if inv.network is not None else None
        head = view.head if view and view.head else None
        required = view.required if view else 0
        final = state.finalized(inv.payments, view) if view else None
        if inv.methods is None and not inv.legs:
            return invoice_json(inv, head, required, self.checkout_url, final)
        return invoice_json(
            inv, head, required, self.checkout_url, final,
            methods=self._methods_json(inv), elsewhere=self._elsewhere(inv),
        )

    def _methods_json(self, inv: Invoice) -> list[dict[str, Any]] | None:
        """Each method with its amount: the invoice's locked amount for the chosen one; the
        amount at the current rate for the others while the customer may still switch;
        null once the choice is final, or when no rate is usable now."""
        if inv.methods is None:
            return None
        now = clock()
        open_choice = inv.can_change_method and now < inv.expire_at
        out = []
        for m in inv.methods:
            net = self.networks.get(m.network)
            asset = net.assets.get(m.asset) if net is not None else None
            if net is None or asset is None:
                continue  # no longer configured: it cannot be chosen
            chosen = (inv.network, inv.asset) == (m.network, m.asset)
            units = inv.amount if chosen else (
                self._price_in(asset, inv, now) if open_choice else None)
            out.append(method_json(m.network, m.asset, net.chain_id, asset.token,
                                   asset.decimals, units, chosen))
        return out

    def _price_in(self, asset: Asset, inv: Invoice, now: int) -> int | None:
        """The invoice's price in `asset` at the current rate; None when none is usable."""
        if self.rates is None or inv.price is None or inv.currency is None:
            return None
        try:
            rate = self.rates.rate(asset.symbol, inv.currency, now)
        except RateUnavailable:
            return None
        return amount_for(Fraction(inv.price), rate.value, asset.decimals, asset.amount_step)

    def _elsewhere(self, inv: Invoice) -> Elsewhere:
        """Decimals and head of each method the invoice was switched away from."""
        out: Elsewhere = {}
        for leg in inv.legs:
            view = self.views.get(leg.network)
            out[(leg.network, leg.asset)] = (leg.decimals, view.head if view else None)
        return out

    def load_views(self, db: Db) -> None:
        for row in db.query(
            "SELECT network, MAX(timestamp) AS t FROM blocks GROUP BY network"
        ):
            if row["t"] is not None:
                self.note_tip(row["network"], row["t"])
        for row in db.query(
            "SELECT network, head_block, scanned_block, scanned_time, final_block, "
            "finalized_block FROM cursors"
        ):
            view = self.views.get(row["network"])
            if view is not None:
                head = row["head_block"] or 0
                confirmed = None
                if row["scanned_block"] is not None:
                    confirmed = _confirmed_time(
                        db, row["network"], row["scanned_block"], row["scanned_time"], head,
                        view.required,
                    )
                self.views[row["network"]] = replace(
                    view, head=head, scanned_time=confirmed,
                    final_block=row["final_block"] if view.tagged else None,
                    finalized_block=row["finalized_block"] if view.tagged else None,
                )

    # ------------------------------------------------------------------ events + outbox

    def _emit(
        self,
        db: Db,
        inv: Invoice,
        event: str,
        status: Status | None,
        now: int,
        *,
        event_id: str | None = None,
        cause: str | None = None,
        data: dict[str, Any] | None = None,
        queued: bool = False,
    ) -> bool:
        """Write the event and its delivery; False when an event with this (derived) id
        was written before, so nothing is sent twice. `cause` says why it happened when
        that is not the chain itself (ASSIGNED_CAUSE: the merchant assigned a transfer).
        `data`: the invoice already rendered; `queued`: an earlier event of the invoice was
        queued for delivery in this transaction (so this one is not the head)."""
        fresh = event_id is None
        event_id = event_id or "evt_" + uuid.uuid4().hex
        body = orjson.dumps({
            "id": event_id, "event": event, "createdAt": iso(now),
            "data": self.render(inv) if data is None else data,
        })
        row = [event_id, inv.id, event, status.value if status else None, now, body, cause]
        if fresh:  # a new random id cannot have been written before: nothing to read back
            db.insert("INSERT INTO events (id, invoice_id, event, status, created_at, body, "
                      "cause) VALUES", "(?, ?, ?, ?, ?, ?, ?)", row)
        elif db.execute(
            "INSERT INTO events (id, invoice_id, event, status, created_at, body, cause) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq", row,
        ).fetchone() is None:
            return False
        db.notify()  # other instances publish it (and send it) at once
        url = inv.callback_url or self.default_callback_url
        if url:
            # the head (sendable now) unless an earlier event of the invoice still waits (a
            # new invoice's `invoice.created` has none before it); decided in the statement,
            # so nothing is read back (it pipelines)
            prefix = ("INSERT INTO deliveries (event_id, event_seq, invoice_id, event, url, "
                      "state, next_attempt_at, created_at, head) VALUES")
            values = "(?, (SELECT seq FROM events WHERE id = ?), ?, ?, ?, 'pending', ?, ?, {})"
            args = [event_id, event_id, inv.id, event, url, now, now]
            if event == CREATED_EVENT or queued:  # may wait to go with others (Db.insert)
                db.insert(prefix, values.format("0" if queued else "1"), args)
                return True
            decided = values.format("CASE WHEN EXISTS (SELECT 1 FROM deliveries WHERE "
                                    "invoice_id = ? AND state = 'pending') THEN 0 ELSE 1 END")
            if db.rows_see_earlier_rows:  # decided by the rows before it: it may wait too
                db.insert(prefix, decided, [*args, inv.id])
            else:  # goes now, after every row before it
                db.execute(f"{prefix} {decided}", [*args, inv.id])
        return True

    def _move(
        self,
        db: Db,
        inv: Invoice,
        statuses: Iterable[Status],
        now: int,
        out: Outcome,
        block_time: int | None = None,
        *,
        cause: str | None = None,
    ) -> None:
        moved = queued = False
        data: dict[str, Any] | None = None
        for s in statuses:
            inv.status = s
            inv.updated_at = now
            known = self._waiting.get(inv.network) if inv.network is not None else None
            if known is not None:  # checked at the next range (which computes when)
                if s == Status.WAITING_FOR_CONFIRMATIONS:
                    known[inv.id] = 0
                else:
                    known.pop(inv.id, None)
            if s == Status.VOIDED and inv.closed_at is None:
                inv.closed_at = inv.expire_at  # expired: it stopped collecting at expireAt
            # A classic invoice's body differs between the steps of one move only in its
            # status (a paid one goes WAITING -> COMPLETED in one range when already deep):
            # rendered once. A method invoice's methods may depend on it: rendered again.
            if data is None or inv.methods is not None or inv.legs:
                data = self.render(inv)
            else:
                data = {**data, "status": s.value}
            if self._emit(db, inv, s.event, s, now, cause=cause, data=data, queued=queued):
                queued = queued or bool(inv.callback_url or self.default_callback_url)
            out.changes.append(Change(inv, s.event, s, block_time))
            moved = True
        if moved:
            update_invoice(db, inv)
            out.touched.append(inv)

    # ------------------------------------------------------------------ merchant actions

    def get(self, db: Db, invoice_id: str) -> Invoice:
        inv = load_invoice(db, invoice_id)
        if inv is None:
            raise NotFound(f"no invoice {invoice_id}", field="id")
        return inv

    def create(self, db: Db, req: NewInvoice, now: int) -> tuple[Invoice, bool, Outcome]:
        """Create an invoice; (invoice, created, outcome). Idempotent on `externalId`."""
        with transaction(db):
            return self._create(db, req, now)

    def _create(self, db: Db, req: NewInvoice, now: int) -> tuple[Invoice, bool, Outcome]:
        """`create` in the caller's transaction. Every refusal (ApiError) comes before the
        first write, except with `derive` (derived addresses are recorded as it looks)."""
        if req.external_id is not None:
            found = load_invoices(db, "external_id = ?", [req.external_id])
            if found:
                if found[0].fingerprint != req.fingerprint:
                    raise Conflict(
                        "an invoice with this externalId exists with other values",
                        field="externalId",
                    )
                return found[0], False, Outcome()
        out = Outcome()
        inv = self._new_invoice(db, req, now, parent=None)
        self._emit(db, inv, CREATED_EVENT, Status.PENDING, now)
        out.changes.append(Change(inv, CREATED_EVENT, Status.PENDING))
        out.touched.append(inv)
        return inv, True, out

    def create_many(
        self, db: Db, requests: list[tuple[NewInvoice, int]]
    ) -> list[tuple[Invoice, bool, Outcome] | Exception]:
        """Several creates in one transaction (group commit); a refused one (ApiError)
        leaves nothing written (it refused before writing, or its savepoint rolled back)
        and is returned in its place."""
        results: list[tuple[Invoice, bool, Outcome] | Exception] = []
        with db.pipeline(), transaction(db):  # PostgreSQL: a round trip per read only
            batch = _Batch(self._open_on_addresses(db, [req for req, _ in requests]))
            self._batch = batch
            try:
                for req, now in requests:
                    # A savepoint only where a refusal can follow a write (`_create`): two
                    # statements fewer per create on PostgreSQL.
                    try:
                        results.append(self.create(db, req, now) if req.derive
                                       else self._create(db, req, now))
                    except ApiError as exc:
                        results.append(exc)
            finally:
                self._batch = None
            read_seqs(db, batch.made)  # after the rows went (the read sends them first)
        return results

    def _open_on_addresses(
        self, db: Db, requests: list[NewInvoice]
    ) -> dict[tuple[str, str, str], list[tuple[str, int]]]:
        """The open invoices on the addresses these requests give, in one read per
        (network, asset): `_busy` answers from it, so a create costs no round trip of its
        own (PostgreSQL). Every requested address is a key, found open or not."""
        wanted: dict[tuple[str, str], set[str]] = {}
        for req in requests:
            if req.address is not None and req.network is not None and req.asset is not None:
                wanted.setdefault((req.network, req.asset), set()).add(req.address.lower())
        found: dict[tuple[str, str, str], list[tuple[str, int]]] = {
            (network, asset, a): [] for (network, asset), addrs in wanted.items() for a in addrs
        }
        for (network, asset), addrs in wanted.items():
            for chunk in chunks(sorted(addrs)):
                for row in db.execute(
                    "SELECT to_lower, id, expire_at FROM invoices WHERE network = ? "
                    f"AND asset = ? AND to_lower IN ({','.join('?' * len(chunk))}) "
                    f"AND status IN ({_OPEN_SQL}) AND closed_at IS NULL ORDER BY seq",
                    [network, asset, *chunk],
                ).fetchall():
                    found[(network, asset, row[0])].append((str(row[1]), int(row[2])))
        return found

    def _new_invoice(
        self, db: Db, req: NewInvoice, now: int, parent: Invoice | None
    ) -> Invoice:
        if req.methods is not None:
            return self._new_unchosen(db, req, now)
        assert req.network is not None and req.asset is not None  # requests.parse_create
        net = self.networks.get(req.network)
        if net is None:
            raise Invalid(f"unknown network {req.network!r}", field="network")
        asset = net.assets.get(req.asset)
        if asset is None:
            raise Invalid(f"unknown asset {req.asset!r} on {req.network}", field="asset")
        if not self.started(db, net.name):
            raise Unavailable(
                f"{net.name} has not started yet: the daemon has not read its first block "
                "(is its RPC reachable?); try again shortly",
                field="network", code="network_not_started",
            )
        expire_at = self._expire_at(req, now)
        address = req.address
        derivation_index = parent.derivation_index if parent is not None else None
        shared = not req.derive and (
            address is None
            or (
                asset.shared_address is not None
                and address.lower() == asset.shared_address.lower()
            )
        )
        rate: Rate | None = None
        if req.amount is None:
            rate = self._rate(asset, req.currency, now)
            assert req.price is not None
            amount = amount_for(Fraction(req.price), rate.value, asset.decimals, asset.amount_step)
        else:
            amount = req.amount
        requested = amount
        if shared:
            if asset.shared_address is None:
                raise Invalid(
                    f"address is required: {req.asset} on {req.network} has no shared_address",
                    field="address",
                )
            address = asset.shared_address
            amount = self._unique_amount(db, asset, requested, now)
        elif req.derive:
            derivation_index, address = self._derive(db, req.network, req.asset, now)
        else:
            assert address is not None
            busy = self._busy(db, req.network, req.asset, address, now)
            if busy is not None:
                raise Conflict(f"invoice {busy} is still open on this address", field="address")
        inv = Invoice(
            id=str(uuid.uuid4()),
            seq=0,
            status=Status.PENDING,
            network=net.name,
            chain_id=net.chain_id,
            asset=asset.symbol,
            token_address=asset.token,
            decimals=asset.decimals,
            to_addr=address,
            shared=shared,
            amount=amount,
            requested_amount=requested,
            created_at=now,
            updated_at=now,
            expire_at=expire_at,
            opens_at=self._opens_at(net.name, now),
            parent_id=parent.id if parent else None,
            external_id=req.external_id,
            price=req.price,
            currency=req.currency,
            email=req.email,
            payload=req.payload,
            callback_url=req.callback_url,
            client_id=req.client_id,
            redirect_url=req.redirect_url,
            rate=format_rate(rate.value) if rate else None,
            rate_source=rate.source if rate else None,
            rate_at=rate.at if rate else None,
            derivation_index=derivation_index,
            fingerprint=req.fingerprint,
            title=req.title,
            description=req.description,
        )
        opened = self._batch.open_on.get((net.name, asset.symbol, address.lower())) \
            if self._batch is not None else None
        if opened is not None:  # the batch's next create to this address finds it
            opened.append((inv.id, expire_at))
        return self._insert(db, inv)

    def _expire_at(self, req: NewInvoice, now: int) -> int:
        expire_at = req.expire_at if req.expire_at is not None else now + self.default_ttl
        if expire_at <= now:
            raise Invalid("expireAt must be in the future", field="expireAt")
        return expire_at

    def _new_unchosen(self, db: Db, req: NewInvoice, now: int) -> Invoice:
        """A method invoice: PENDING with no network, asset, address or amount until the
        customer chooses one of `methods` (`choose`)."""
        assert req.methods and req.price is not None and req.currency is not None
        expire_at = self._expire_at(req, now)
        inv = Invoice(
            id=str(uuid.uuid4()), seq=0, status=Status.PENDING, network=None, chain_id=None,
            asset=None, token_address=None, decimals=None, to_addr=None, shared=False,
            amount=None, requested_amount=None, created_at=now, updated_at=now,
            expire_at=expire_at, external_id=req.external_id, price=req.price,
            currency=req.currency, email=req.email, payload=req.payload,
            callback_url=req.callback_url, client_id=req.client_id,
            redirect_url=req.redirect_url, fingerprint=req.fingerprint, title=req.title,
            description=req.description, methods=list(req.methods),
        )
        return self._insert(db, inv)

    def _insert(self, db: Db, inv: Invoice) -> Invoice:
        """Write a new invoice; in a batch of creates its row may wait to go with the
        others', its seq read at the end of the batch (`create_many`)."""
        if self._batch is None:
            return insert_invoice(db, inv)
        self._batch.made.append(inv)
        return insert_invoice(db, inv, read_seq=False)

    def choose(
        self, db: Db, invoice_id: str, network: str, asset_symbol: str, now: int
    ) -> tuple[Invoice, Outcome]:
        """The customer (or the merchant) chooses how to pay a method invoice, in one
        transaction: the rate is locked, the address given (derived, or shared with a
        unique amount), the invoice filled and `invoice.method_selected` written. Choosing
        another method while nothing was received switches: the previous address and amount
        stop collecting now and take only late payments. Choosing the chosen one: no change."""
        with transaction(db):
            inv = self.get(db, invoice_id)
            if inv.methods is None:
                raise Conflict(
                    f"invoice {inv.id} was created with its network and asset: it has no "
                    "payment methods to choose from", field="network")
            names = sorted({m.network for m in inv.methods})
            if network not in names:
                raise Invalid(f"{network!r} is not a network of this invoice's methods "
                              f"({', '.join(names)})", field="network")
            if Method(network, asset_symbol) not in inv.methods:
                offered = sorted(m.asset for m in inv.methods if m.network == network)
                raise Invalid(f"{asset_symbol!r} is not one of this invoice's assets on "
                              f"{network} ({', '.join(offered)})", field="asset")
            if (inv.network, inv.asset) == (network, asset_symbol):
                return inv, Outcome()
            if not inv.can_change_method:
                raise Conflict(
                    f"the payment method can no longer be changed: the invoice is "
                    f"{inv.status}" + (", with a payment received" if inv.payments
                                       or inv.late_payments else ""), field=None)
            if now >= inv.expire_at:
                raise Conflict("the invoice has expired: no method can be chosen", field=None)
            net = self.networks.get(network)
            asset = net.assets.get(asset_symbol) if net is not None else None
            if net is None or asset is None:
                raise Invalid(f"{asset_symbol} on {network} is no longer configured",
                              field="network" if net is None else "asset")
            if not self.started(db, network):
                raise Unavailable(
                    f"{network} has not started yet: the daemon has not read its first block; "
                    "try again shortly", field="network", code="network_not_started")
            rate = self._rate(asset, inv.currency, now)
            assert inv.price is not None
            requested = amount_for(Fraction(inv.price), rate.value, asset.decimals,
                                   asset.amount_step)
            out = Outcome()
            if inv.network is not None:
                self._retire(db, inv, now)
            index = inv.derivation_index
            if self.deriver is not None:
                if index is None:
                    index, address = self._derive(db, network, asset_symbol, now)
                else:  # the invoice's own address serves every method it switches to
                    address = self.deriver.address(index)
                shared, amount = False, requested
            elif asset.shared_address is not None:
                address, shared = asset.shared_address, True
                amount = self._unique_amount(db, asset, requested, now)
            else:
                raise Invalid(f"{asset_symbol} on {network} has neither an xpub to derive an "
                              "address nor a shared_address", field="asset")
            inv.network, inv.chain_id, inv.asset = network, net.chain_id, asset.symbol
            inv.token_address, inv.decimals = asset.token, asset.decimals
            inv.to_addr, inv.shared, inv.amount, inv.requested_amount = (
                address, shared, amount, requested)
            inv.derivation_index = index
            inv.rate, inv.rate_source, inv.rate_at = format_rate(rate.value), rate.source, rate.at
            inv.opens_at = self._opens_at(network, now)
            inv.updated_at = now
            update_invoice_method(db, inv)
            self._emit(db, inv, METHOD_SELECTED_EVENT, None, now)
            out.changes.append(Change(inv, METHOD_SELECTED_EVENT, None))
            out.touched.append(inv)
            return inv, out

    def _retire(self, db: Db, inv: Invoice, now: int) -> None:
        """The invoice's current method stops collecting now (the customer switched)."""
        assert inv.network is not None and inv.asset is not None and inv.to_addr is not None
        assert inv.decimals is not None and inv.amount is not None
        leg = Leg(n=len(inv.legs) + 1, network=inv.network, asset=inv.asset,
                  decimals=inv.decimals, to_addr=inv.to_addr, shared=inv.shared,
                  amount=inv.amount, derivation_index=inv.derivation_index,
                  opens_at=inv.opens_at, closed_at=now)
        insert_leg(db, inv.id, leg)
        inv.legs.append(leg)

    def _busy(self, db: Db, network: str, asset: str, address: str, now: int) -> str | None:
        """The id of an invoice still collecting `asset` at `address`, if any."""
        key = (network, asset, address.lower())
        opened = self._batch.open_on.get(key) if self._batch is not None else None
        if opened is not None:  # read for the batch
            return next((i for i, expire_at in opened if expire_at > now), None)
        row = db.execute(
            f"SELECT id FROM invoices WHERE network = ? AND asset = ? AND to_lower = ? "
            f"AND status IN ({_OPEN_SQL}) AND closed_at IS NULL AND expire_at > ? LIMIT 1",
            [network, asset, address.lower(), now],
        ).fetchone()
        return None if row is None else str(row[0])

    def _derive(self, db: Db, network: str, asset: str, now: int) -> tuple[int, str]:
        """Take the next derivation index in this transaction: committed with the invoice,
        rolled back with it, so indexes are unique and without gaps. An index whose address
        already collects this asset (a hand-given address) is recorded and passed over."""
        if self.deriver is None:
            raise Invalid(
                'address "derive" needs an xpub: set [addresses] xpub in the config',
                field="address",
            )
        while True:
            index = next_derivation_index(db, self.start_index)
            if index > self.deriver.max_index:
                raise Conflict(
                    "every derivation index up to 2^31-1 is taken: configure a new xpub",
                    field="address",
                )
            address = self.deriver.address(index)
            insert_derived_address(db, index, address, self.deriver.key_id, now)
            if self._busy(db, network, asset, address, now) is None:
                return index, address

    def _rate(self, asset: Asset, currency: str | None, now: int) -> Rate:
        """The rate to convert a price in `currency` into `asset` now (503 if none)."""
        if self.rates is None or currency is None:
            raise Invalid("no rates are configured: give amount", field="amount")
        try:
            return self.rates.rate(asset.symbol, currency, now)
        except RateUnavailable as exc:
            raise Unavailable(
                f"{exc}: every source failed or is older than rates.max_age; try again "
                "shortly, or give amount", field="currency", code="rate_unavailable",
            ) from None

    def _opens_at(self, network: str, now: int) -> int:
        """Chain time the collecting window opens: `OPENS_EARLY` before the create, on the
        chain's clock (the newest head read; the host's clock may run ahead of it). While
        no head of the network has been read since start (its RPC down), an hour before the
        host's clock: only blocks scanned later can pay it, and a reused address still
        gives an earlier invoice what was paid in its own window."""
        tip = self.tips.get(network)
        if tip is None:
            return now - UNKNOWN_CHAIN_TIME_OPENS_EARLY
        return min(now, tip + 1) - OPENS_EARLY

    def _unique_amount(self, db: Db, asset: Asset, amount: int, now: int) -> int:
        assert asset.shared_address is not None
        shared = asset.shared_address.lower()
        # An amount a switched invoice gave up stays its own for the late-payment window.
        taken = {
            int(r[0])
            for r in db.execute(
                "SELECT amount FROM invoices WHERE network = ? AND asset = ? AND to_lower = ? "
                "AND status NOT IN ('VOIDED', 'REFUNDED') AND closed_at IS NULL "
                "AND expire_at > ? UNION SELECT amount FROM invoice_legs WHERE network = ? "
                "AND asset = ? AND to_lower = ? AND closed_at > ?",
                [asset.network, asset.symbol, shared, now - SHARED_AMOUNT_HOLD,
                 asset.network, asset.symbol, shared, now - self.late_window],
            ).fetchall()
        }
        while amount in taken:
            amount += asset.amount_step
        return amount

    def _act(
        self, db: Db, invoice_id: str, rule: Any, now: int, refund_tx: str | None = None
    ) -> tuple[Invoice, Outcome]:
        """Apply a merchant action: the invoice stops collecting and moves to `rule`'s status."""
        inv = self.get(db, invoice_id)
        try:
            new: Status = rule(inv)
        except state.ActionRefused as exc:
            raise Conflict(str(exc)) from None
        out = Outcome()
        if inv.closed_at is None:
            inv.closed_at = now
        if refund_tx is not None:
            inv.refund_tx = refund_tx
        self._move(db, inv, [new], now, out)
        return inv, out

    def cancel(self, db: Db, invoice_id: str, now: int) -> tuple[Invoice, Outcome]:
        with transaction(db):
            return self._act(db, invoice_id, state.cancel, now)

    def accept(self, db: Db, invoice_id: str, now: int) -> tuple[Invoice, Outcome]:
        with transaction(db):
            return self._act(db, invoice_id, state.accept, now)

    def refund(
        self, db: Db, invoice_id: str, now: int, tx_hash: str | None
    ) -> tuple[Invoice, Outcome]:
        with transaction(db):
            return self._act(db, invoice_id, state.refund, now, refund_tx=tx_hash)

    def remainder(self, db: Db, invoice_id: str, now: int) -> tuple[Invoice, Outcome]:
        """Close a PARTIAL invoice and open a child for what is missing."""
        with transaction(db):
            parent = self.get(db, invoice_id)
            try:
                missing = state.remainder(parent, self.tolerance)
            except state.ActionRefused as exc:
                raise Conflict(str(exc)) from None
            parent.closed_at = now
            parent.updated_at = now
            update_invoice(db, parent)
            assert parent.network is not None and parent.asset is not None  # it was paid
            req = NewInvoice(
                network=parent.network,
                asset=parent.asset,
                amount=missing,
                address=None if parent.shared else parent.to_addr,
                expire_at=None,
                callback_url=parent.callback_url,
                payload=parent.payload,
                currency=parent.currency,
                email=parent.email,
                client_id=parent.client_id,
                redirect_url=parent.redirect_url,
            )
            child = self._new_invoice(db, req, now, parent=parent)
            out = Outcome(touched=[parent, child])
            self._emit(db, child, CREATED_EVENT, Status.PENDING, now)
            out.changes.append(Change(child, CREATED_EVENT, Status.PENDING))
            return child, out

    # ------------------------------------------------------------------ assign by hand

    def assign(
        self, db: Db, transfer_id: str, invoice_id: str, now: int
    ) -> tuple[Invoice, Outcome]:
        """Make a stored unmatched or late transfer a payment of an invoice (the merchant's
        `POST /v1/transfers/{id}/assign`), in one transaction. The invoice then settles
        exactly as for a scanned payment (a VOIDED one takes it too); every event written
        carries cause "assigned". A late payment leaves the late payments of its invoice and
        is never announced as late. The amount is not checked against the invoice."""
        with transaction(db):
            found = load_transfers_by_id(db, [transfer_id])
            if not found:
                raise NotFound(f"no transfer {transfer_id}", field="id")
            t = found[0]
            inv = load_invoice(db, invoice_id)
            if inv is None:
                raise Invalid(f"no invoice {invoice_id}", field="invoiceId")
            _check_assignable(t, inv)
            assert inv.network is not None
            view = self.views.get(inv.network)
            if view is None:
                raise Conflict(
                    f"network {inv.network} is not configured: its payments cannot settle"
                )
            out = Outcome()
            late_of = t.invoice_id if t.kind == "late" else None
            assign_transfer(db, t.id, inv.id)
            t.kind, t.invoice_id, t.assigned = "payment", inv.id, True
            if late_of is not None:
                owner = inv if late_of == inv.id else load_invoice(db, late_of)
                if owner is not None:
                    owner.late_payments = [p for p in owner.late_payments if p.id != t.id]
                    if owner is not inv:
                        owner.updated_at = now
                        update_invoice(db, owner)
                        out.touched.append(owner)
            inv.payments.append(t)
            inv.payments.sort(key=_stored_order)  # as `load_invoices` gives them
            steps = state.transitions(inv, view, self.tolerance, payments_added=True)
            self._move(db, inv, steps, now, out, cause=ASSIGNED_CAUSE)
            if inv not in out.touched:  # no status change (e.g. over-payment): still changed
                inv.updated_at = now
                update_invoice(db, inv)
                out.touched.append(inv)
            return inv, out

    # ------------------------------------------------------------------ chain findings

    def _settle(
        self,
        db: Db,
        invoices: Iterable[Invoice],
        view: state.ChainView,
        added: dict[str, int],
        now: int,
        out: Outcome,
    ) -> None:
        for inv in invoices:
            steps = state.transitions(
                inv, view, self.tolerance, payments_added=inv.id in added
            )
            self._move(db, inv, steps, now, out, block_time=added.get(inv.id))

    def apply_scan(self, db: Db, batch: ScanBatch, now: int) -> Outcome:
        """Record a scanned range and advance the cursor, in one transaction."""
        out = Outcome()
        # pipelined (PostgreSQL): a round trip only where something is read
        with self._view_kept_on_failure(batch.network), db.pipeline(), transaction(db):
            self._apply_scan(db, batch, self.networks[batch.network], now, out)
        return out

    @contextmanager
    def _view_kept_on_failure(self, network: str) -> Iterator[None]:
        """A chain operation sets the network's view inside its transaction (callback bodies
        render with it); if the transaction fails, the view it replaced comes back."""
        before = self.views.get(network)
        try:
            yield
        except BaseException:
            if before is not None:
                self.views[network] = before
            raise

    def _record(
        self, db: Db, transfers: list[Transfer], now: int, out: Outcome,
        *, in_time_after_expiry: bool = False,
    ) -> tuple[dict[str, Invoice], dict[str, int]]:
        """Store the transfers not stored before (a transfer is never counted twice), each as
        a payment, a late payment or unmatched by its block time against its invoice's
        window: (the invoices they were routed to, the newest block time of the payments
        added per invoice id). `in_time_after_expiry` (rescans): an invoice voided at its
        expiry still takes a payment made in its window."""
        added: dict[str, int] = {}
        routed = {t.invoice_id for t in transfers if t.invoice_id}
        owners = {i.id: i for i in load_invoices(db, _in_ids(routed), list(routed))}
        staged: list[tuple[Transfer, Invoice | None, str]] = []
        for t in transfers:
            if t.amount <= 0:
                continue  # zero transfers never count and are not kept (address poisoning)
            inv = owners.get(t.invoice_id) if t.invoice_id else None
            # The same window rule the index routed by, on the committed invoice.
            kind, leg = (inv.route_transfer(t, self.late_window) if inv is not None
                         else ("unmatched", None))
            if in_time_after_expiry and inv is not None and inv.voided_at_expiry and (
                leg is None
                and window_route(inv.opens_at, inv.expire_at, None, t.timestamp, 0)
                == "payment"
            ):
                kind = "payment"
            if kind == "late" and inv is not None and inv.shared and leg is None:
                kind = "unmatched"  # a shared address's late amount: nobody's (a switched
                # invoice's amount stays its own, see `_unique_amount`)
            t.kind = kind
            if kind == "unmatched":
                t.invoice_id = None
            staged.append((t, inv, kind))
        new = insert_transfers(db, [transfer_row(t, now) for t, _, _ in staged])
        for t, inv, kind in staged:
            if t.id not in new:
                continue  # seen before (or twice in this batch): never counted twice
            new.remove(t.id)
            out.recorded.append(t)
            if inv is not None and kind == "payment":
                inv.payments.append(t)
                added[inv.id] = max(added.get(inv.id, 0), t.timestamp)
            elif inv is not None and kind == "late":
                inv.late_payments.append(t)
                inv.updated_at = now
                update_invoice(db, inv)
                if inv not in out.touched:
                    out.touched.append(inv)
        return owners, added

    def _apply_scan(
        self, db: Db, batch: ScanBatch, net: NetworkInfo, now: int, out: Outcome
    ) -> None:
        owners, added = self._record(db, batch.transfers, now, out)
        self._advance(db, batch, now)
        old = self.views[batch.network]
        view = state.ChainView(
            batch.head,
            _confirmed_time(db, batch.network, batch.to_block, batch.to_time, batch.head,
                            net.confirmations),
            net.confirmations,
            tagged=net.tagged,
            # a tag read with an older head may lag (another backend): it never goes back
            final_block=_newest(batch.final_block, old.final_block),
            finalized_block=_newest(batch.finalized_block, old.finalized_block),
        )
        # Callback bodies are rendered with the head of this range, not the previous one.
        self.views[batch.network] = view
        self.note_tip(batch.network, batch.to_time)
        self._announce_late(db, batch.network, view, owners, now, out)
        # Invoices whose status may move: just paid, waiting for depth, or expiring.
        # Two index searches, not `status = .. OR (..)`, which SQLite answers by walking
        # every invoice of the network (~15 ms a range with 100,000 open). The order
        # is the one that walk gave: the order of the index (status, expire_at, seq).
        # Waiting invoices are reloaded only when their next payment can reach its depth
        # at this head (`_waiting`), or when another process changed them.
        # Invoices with no method chosen expire on the clock of any network's chain.
        expiring = "SELECT seq FROM invoices WHERE network = ? AND status = 'PENDING' " \
            "AND expire_at < ? UNION ALL SELECT seq FROM invoices WHERE network IS NULL " \
            "AND status = 'PENDING' AND expire_at < ?"
        scanned = view.scanned_time if view.scanned_time is not None else -1
        args: list[Any] = [batch.network, scanned, scanned]
        due = self._waiting_due(db, batch.network, view, old)
        if due is None:
            waiting = " UNION ALL SELECT seq FROM invoices WHERE network = ? " \
                "AND status = 'WAITING_FOR_CONFIRMATIONS'"
            args.append(batch.network)
        else:
            marks = _in_ids(due)
            waiting = f" UNION ALL SELECT seq FROM invoices WHERE {marks}"
            args.extend(due)
        sql = expiring + waiting
        pending = load_invoices(db, f"seq IN ({sql}) ORDER BY status, expire_at, seq", args)
        candidates = dict(owners)
        for inv in pending:
            candidates.setdefault(inv.id, inv)
        self._settle(db, candidates.values(), view, added, now, out)
        self._note_waiting(batch.network, candidates.values(), view, now)

    def _waiting_due(
        self, db: Db, network: str, view: state.ChainView, old: state.ChainView
    ) -> list[str] | None:
        """The WAITING invoices of a network whose status may change at this head: those
        whose next shallow payment reaches its confirmations by now, those another process
        changed since the last range (by `updated_at`), all of them when the finality tag
        moved. None: not known yet (the first range since start), load every one."""
        known = self._waiting.get(network)
        if known is None:
            return None
        if view.tagged and view.final_block != old.final_block:
            return list(known)
        ids = [i for i, at in known.items() if at <= view.head]
        since = self._waiting_seen.get(network, 0) - 1
        ids.extend(r[0] for r in db.execute(
            "SELECT id FROM invoices WHERE updated_at >= ? AND network = ? "
            "AND status = 'WAITING_FOR_CONFIRMATIONS'", [since, network]).fetchall())
        return list(dict.fromkeys(ids))

    def _note_waiting(
        self, network: str, invoices: Iterable[Invoice], view: state.ChainView, now: int
    ) -> None:
        """Keep, per WAITING invoice, the head at which its status can next change."""
        known = self._waiting.setdefault(network, {})
        for inv in invoices:
            if inv.status == Status.WAITING_FOR_CONFIRMATIONS:
                known[inv.id] = state.next_check(inv.payments, view)
            else:
                known.pop(inv.id, None)
        self._waiting_seen[network] = now

    def apply_rescan(
        self, db: Db, rescan_id: int, batch: ScanBatch, now: int
    ) -> Outcome:
        """Record what a rescan of blocks up to `batch.to_block` found, in one transaction
        with the rescan's progress: only transfers not stored before are added (so nothing
        is counted twice), the invoices they pay settle with the network's current view and
        send their callbacks; late payments are announced by the follower once deep. The
        live follower's cursor is not touched. A transfer in a block the follower has
        stored under another hash (replaced since the rescan read it) is left out."""
        out = Outcome()
        with transaction(db):
            row = db.execute(
                "SELECT state, to_block FROM rescans WHERE id = ?", [rescan_id]
            ).fetchone()
            if row is None or row[0] != "running":
                raise Conflict(f"rescan {rescan_id} is not running")
            stored = {
                n: h for n, h in db.execute(
                    "SELECT number, hash FROM blocks WHERE network = ? AND number BETWEEN ? "
                    "AND ?", [batch.network, min((t.block for t in batch.transfers),
                                                 default=0), batch.to_block],
                ).fetchall()
            }
            fresh = [t for t in batch.transfers if stored.get(t.block, t.block_hash)
                     == t.block_hash]
            owners, added = self._record(db, fresh, now, out, in_time_after_expiry=True)
            view = self.views[batch.network]
            for inv_id in added:
                inv = owners[inv_id]
                steps = state.transitions(inv, view, self.tolerance, payments_added=True)
                # no block time: the detection-latency metric is about live payments
                self._move(db, inv, steps, now, out, cause="rescan")  # writes it if moved
                if inv not in out.touched:  # a payment added without a move: written here
                    inv.updated_at = now
                    update_invoice(db, inv)
                    out.touched.append(inv)
            done = batch.to_block >= row[1]
            db.execute(
                "UPDATE rescans SET next_block = ?, added = added + ?, state = ?, "
                "updated_at = ? WHERE id = ?",
                [batch.to_block + 1, len(out.recorded), "done" if done else "running", now,
                 rescan_id],
            )
        return out

    def start_rescan(
        self, db: Db, network: str, start: int, end: int, now: int
    ) -> dict[str, Any]:
        """The rescan of `start..end` of a network: an unfinished one of the same range goes
        on where it stopped (resumed), else a new one starts. Its row as a dict."""
        with transaction(db):
            rows = list(db.query(
                "SELECT * FROM rescans WHERE network = ? AND from_block = ? AND to_block = ? "
                "AND state != 'done' ORDER BY id DESC LIMIT 1", [network, start, end]))
            if rows:
                db.execute("UPDATE rescans SET state = 'running', error = NULL, updated_at = ? "
                           "WHERE id = ?", [now, rows[0]["id"]])
                rescan_id = rows[0]["id"]
            else:
                rescan_id = db.execute(
                    "INSERT INTO rescans (network, from_block, to_block, next_block, state, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, 'running', ?, ?) RETURNING id",
                    [network, start, end, start, now, now],
                ).fetchone()[0]
        return dict(next(iter(db.query("SELECT * FROM rescans WHERE id = ?", [rescan_id]))))

    def stop_rescan(
        self, db: Db, rescan_id: int, now: int, error: str | None = None
    ) -> None:
        """Mark a rescan interrupted ("stopped", resumable) or failed (with its error)."""
        with transaction(db):
            db.execute(
                "UPDATE rescans SET state = ?, error = ?, updated_at = ? WHERE id = ? "
                "AND state = 'running'",
                ["failed" if error else "stopped", error, now, rescan_id],
            )

    def _announce_late(
        self,
        db: Db,
        network: str,
        view: state.ChainView,
        known: dict[str, Invoice],
        now: int,
        out: Outcome,
    ) -> None:
        """Write `invoice.late_payment` for late payments that reached the confirmations.
        Announced only once deep enough: a shallow reorg that drops or re-includes one
        never sends a retraction or a second event. The event id is derived from the
        invoice and the transfer, so even a re-announcement (after a reorg deeper than the
        confirmations) carries the id the receiver already deduped."""
        deep = view.head - view.required + 1
        rows = db.execute(
            "SELECT tx_hash, log_index, trace, invoice_id, timestamp FROM transfers "
            "WHERE network = ? AND announced = 0 AND block <= ? "
            "ORDER BY block, log_index, trace",
            [network, deep],
        ).fetchall()
        if not rows:
            return
        missing = {r[3] for r in rows} - known.keys()
        if missing:
            for loaded in load_invoices(db, _in_ids(missing), list(missing)):
                known[loaded.id] = loaded
        for tx_hash, log_index, trace, invoice_id, timestamp in rows:
            db.execute(
                "UPDATE transfers SET announced = 1 WHERE network = ? AND tx_hash = ? "
                "AND log_index = ? AND trace = ?",
                [network, tx_hash, log_index, trace],
            )
            inv = known.get(invoice_id)
            if inv is None:
                continue
            inv.updated_at = now
            update_invoice(db, inv)
            event_id = late_event_id(inv.id, tx_hash, log_index, trace)
            if self._emit(db, inv, LATE_PAYMENT_EVENT, None, now, event_id=event_id):
                out.changes.append(Change(inv, LATE_PAYMENT_EVENT, None, timestamp))
            if inv not in out.touched:
                out.touched.append(inv)

    def _advance(self, db: Db, batch: ScanBatch, now: int) -> None:
        net = self.networks[batch.network]
        db.execute(
            "INSERT INTO cursors (network, chain_id, scanned_block, scanned_hash, scanned_time, "
            "head_block, updated_at, final_block, finalized_block) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(network) DO UPDATE SET scanned_block = excluded.scanned_block, "
            "scanned_hash = excluded.scanned_hash, scanned_time = excluded.scanned_time, "
            "head_block = excluded.head_block, updated_at = excluded.updated_at, "
            "final_block = COALESCE(excluded.final_block, cursors.final_block), "
            "finalized_block = COALESCE(excluded.finalized_block, cursors.finalized_block)",
            [batch.network, net.chain_id, batch.to_block, batch.to_hash, batch.to_time,
             batch.head, now, batch.final_block, batch.finalized_block],
        )
        if batch.blocks:
            db.executemany(
                "INSERT INTO blocks (network, number, hash, parent_hash, timestamp) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (network, number) DO UPDATE SET "
                "hash = excluded.hash, parent_hash = excluded.parent_hash, "
                "timestamp = excluded.timestamp",
                [(batch.network, *b) for b in batch.blocks],
            )
        db.execute(
            "DELETE FROM blocks WHERE network = ? AND number < ?",
            [batch.network, batch.to_block - batch.keep_blocks],
        )

    def undo_above(
        self, db: Db, network: str, ancestor: int, head: int, now: int
    ) -> Outcome:
        """A reorg replaced the blocks above `ancestor`: forget what they held and re-settle
        every invoice they paid. The follower then rescans from `ancestor + 1`."""
        out = Outcome()
        with self._view_kept_on_failure(network), transaction(db):
            self._undo_above(db, network, ancestor, head, now, out)
        return out

    def _undo_above(
        self, db: Db, network: str, ancestor: int, head: int, now: int, out: Outcome
    ) -> None:
        net = self.networks[network]
        ids = [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT invoice_id FROM transfers WHERE network = ? AND block > ? "
                "AND invoice_id IS NOT NULL",
                [network, ancestor],
            ).fetchall()
        ]
        db.execute("DELETE FROM transfers WHERE network = ? AND block > ?", [network, ancestor])
        db.execute("DELETE FROM blocks WHERE network = ? AND number > ?", [network, ancestor])
        row = db.execute(
            "SELECT hash, timestamp FROM blocks WHERE network = ? AND number = ?",
            [network, ancestor],
        ).fetchone()
        scanned_hash, scanned_time = (row[0], row[1]) if row else (None, None)
        db.execute(
            "UPDATE cursors SET scanned_block = ?, scanned_hash = ?, "
            "scanned_time = COALESCE(?, scanned_time), head_block = ?, updated_at = ? "
            "WHERE network = ?",
            [ancestor, scanned_hash, scanned_time, head, now, network],
        )
        t = db.execute(
            "SELECT scanned_time FROM cursors WHERE network = ?", [network]
        ).fetchone()
        confirmed = _confirmed_time(
            db, network, ancestor, t[0] if t else None, head, net.confirmations
        )
        old = self.views[network]
        view = state.ChainView(
            head, confirmed, net.confirmations, tagged=net.tagged,
            final_block=_below(old.final_block, ancestor),
            finalized_block=_below(old.finalized_block, ancestor),
        )
        self.views[network] = view
        affected = load_invoices(db, _in_ids(ids), ids)
        self._settle(db, affected, view, {}, now, out)
        for inv in affected:
            if inv not in out.touched:
                out.touched.append(inv)

    def start_network(self, db: Db, network: str, block: int, now: int) -> bool:
        """Write a new network's start: the follower scans from `block` on. Written before
        any invoice of the network can be created (`create` refuses one without it), so no
        payment to an invoice can be in a block below the start. False if already started."""
        net = self.networks[network]
        with transaction(db):
            cur = db.execute(
                "INSERT INTO cursors (network, chain_id, scanned_block, "
                "scanned_hash, scanned_time, head_block, updated_at) "
                "VALUES (?, ?, ?, NULL, NULL, ?, ?) ON CONFLICT DO NOTHING",
                [network, net.chain_id, block - 1, block, now],
            )
            return bool(cur.rowcount)

    def started(self, db: Db, network: str) -> bool:
        """The network's start block is written (a network never stops being started, so
        a yes is remembered: creates do not ask the database again)."""
        if network in self._started:
            return True
        found = db.execute(
            "SELECT 1 FROM cursors WHERE network = ? AND scanned_block IS NOT NULL", [network]
        ).fetchone() is not None
        if found:
            self._started.add(network)
        return found

    def cursor(self, db: Db, network: str) -> dict[str, Any] | None:
        rows = list(db.query("SELECT * FROM cursors WHERE network = ?", [network]))
        return rows[0] if rows else None

    def recent_blocks(self, db: Db, network: str) -> dict[int, tuple[str, str]]:
        return {
            r["number"]: (r["hash"], r["parent_hash"])
            for r in db.query(
                "SELECT number, hash, parent_hash FROM blocks WHERE network = ?", [network]
            )
        }


def _newest(read: int | None, known: int | None) -> int | None:
    if read is None:
        return known
    return read if known is None else max(read, known)


def _below(block: int | None, ancestor: int) -> int | None:
    """A tag's block after a reorg above `ancestor`: blocks above it are gone (a tag that
    was above them is read again with the next head)."""
    return None if block is None else min(block, ancestor)


def _confirmed_time(
    db: Db, network: str, scanned: int, scanned_time: int | None, head: int, required: int
) -> int | None:
    """Timestamp of the newest scanned block that has `required` confirmations."""
    deep = head - required + 1
    if scanned <= deep:
        return scanned_time
    row = db.execute(
        "SELECT timestamp FROM blocks WHERE network = ? AND number = ?", [network, deep]
    ).fetchone()
    return row[0] if row else None


def _check_assignable(t: Transfer, inv: Invoice) -> None:
    """The rules of `Ledger.assign` a transfer and an invoice must meet (else ApiError)."""
    if inv.network is None:
        raise Conflict(f"invoice {inv.id} has no payment method chosen yet: it takes no "
                       "payment until the customer chooses one", field="invoiceId")
    differs = [
        what for what, mine, theirs in (
            ("network", t.network, inv.network), ("asset", t.asset, inv.asset)
        ) if mine != theirs
    ]
    if differs:
        raise Invalid(
            f"the {' and the '.join(differs)} {'differ' if len(differs) > 1 else 'differs'}: "
            f"the transfer is {t.asset} on {t.network}, invoice {inv.id} is {inv.asset} on "
            f"{inv.network}",
            field="invoiceId",
        )
    if t.kind == "payment":
        raise Conflict(f"the transfer is already a payment of invoice {t.invoice_id}")
    if inv.status == Status.REFUNDED:
        raise Conflict(f"invoice {inv.id} is REFUNDED: it takes no payment")


def _stored_order(t: Transfer) -> tuple[int, int, str]:
    return (t.block, -1 if t.log_index is None else t.log_index, t.trace or "")


def _in_ids(ids: Iterable[str]) -> str:
    n = len(list(ids))
    return f"id IN ({','.join('?' * n)})" if n else "1 = 0"
