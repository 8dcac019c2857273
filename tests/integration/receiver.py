"""A real callback receiver on 127.0.0.1, for tests, the demo and the bench.

`Receiver` is a small aiohttp server that records every request (headers, raw body, whether
the `X-Watcher-Signature` and the Standard Webhooks `webhook-signature` verified) and answers
from a script: a queue of `Reply`s consumed one per request, or a `responder` function
deciding per request (by delivery id, invoice, attempt), else `default`.

    async with Receiver(secret="s3cret") as rx:
        rx.script(Reply(500), Reply(500))          # then the default 200
        ...  # point callbacks at rx.url
        await rx.wait_for(lambda r: len(r.delivery_ids()) >= 3, timeout=5)

Also here: `make_ledger` and `create_invoices`, which make real outbox rows through
`watcher.ledger.Ledger` (one network, one native asset).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import orjson
from aiohttp import web
from sqlite_utils import Database

from watcher.ledger import Ledger, NetworkInfo, NewInvoice
from watcher.models import Asset
from watcher.signing import HEADER_DELIVERY, verify_signature, verify_webhook

NETWORK = "local"
ASSET = "ETH"


@dataclass(frozen=True, slots=True)
class Reply:
    """How to answer one request: after `delay` seconds, with `status` and `headers`."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(slots=True)
class Received:
    """One request as the receiver saw it."""

    at: float
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    signature_ok: bool | None  # X-Watcher-Signature; None when the receiver has no secret
    status: int = 0  # what was answered (0 while the answer is pending)
    webhook_ok: bool | None = None  # webhook-signature (Standard Webhooks); None: no secret

    @property
    def delivery_id(self) -> str:
        return self.headers.get(HEADER_DELIVERY.lower(), "")

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def invoice_id(self) -> str:
        return str(self.json()["data"]["id"])

    @property
    def event(self) -> str:
        return str(self.json()["event"])


Responder = Callable[[Received], Reply | None]


class Receiver:
    """An aiohttp server recording callbacks; start with `await start()` or `async with`."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/hook",
        default: Reply | None = None,
        responder: Responder | None = None,
    ) -> None:
        self.secret = secret
        self.host = host
        self.port = port
        self.path = path
        self.default = default or Reply()
        self.responder = responder
        self.requests: list[Received] = []
        self._script: deque[Reply] = deque()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- scripting

    def script(self, *replies: Reply | int) -> None:
        """Queue answers for the next requests, in order (an int is a status)."""
        self._script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def _reply_for(self, rec: Received) -> Reply:
        if self.responder is not None:
            reply = self.responder(rec)
            if reply is not None:
                return reply
        if self._script:
            return self._script.popleft()
        return self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        ok = None if self.secret is None else verify_signature(self.secret, headers, body)
        webhook_ok = None if self.secret is None else verify_webhook(self.secret, headers, body)
        rec = Received(
            time.time(), request.method, request.path, headers, body, ok, webhook_ok=webhook_ok
        )
        async with self._changed:
            self.requests.append(rec)
            self._changed.notify_all()
        reply = self._reply_for(rec)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        rec.status = reply.status
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    # ---------------------------------------------------------------- looking

    def delivery_ids(self, status: int | None = None) -> set[str]:
        """Distinct delivery ids received (only those answered `status`, if given)."""
        return {r.delivery_id for r in self.requests if status is None or r.status == status}

    def attempts(self) -> Counter[str]:
        """How many requests each delivery id got."""
        return Counter(r.delivery_id for r in self.requests)

    def for_invoice(self, invoice_id: str) -> list[Received]:
        return [r for r in self.requests if r.invoice_id == invoice_id]

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 10) -> None:
        """Wait until `predicate(self)` holds; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))


# -------------------------------------------------------------------- outbox rows


def make_ledger(default_callback_url: str | None = None) -> Ledger:
    """A ledger over one network (`local`, chain 31337) with one native asset (`ETH`)."""
    asset = Asset(network=NETWORK, symbol=ASSET, decimals=18)
    net = NetworkInfo(name=NETWORK, chain_id=31337, confirmations=2, assets={ASSET: asset})
    return Ledger(
        {NETWORK: net},
        tolerance=Fraction(0),
        default_ttl=86400,
        late_window=86400,
        default_callback_url=default_callback_url,
    )


def create_invoices(
    db: Database,
    ledger: Ledger,
    count: int,
    url: str | None,
    now: int,
    *,
    cancel: bool = False,
    first: int = 0,
) -> list[str]:
    """Create `count` invoices on dedicated addresses (each writes `invoice.created`), and
    cancel each right away if `cancel` (a second event, `invoice.voided`). Their ids."""
    ids = []
    ledger.start_network(db, NETWORK, 1, now)
    for n in range(first, first + count):
        req = NewInvoice(
            network=NETWORK, asset=ASSET, amount=10**18, address=f"0x{n + 1:040x}",
            expire_at=None, callback_url=url,
        )  # fmt: skip
        inv, _, _ = ledger.create(db, req, now)
        if cancel:
            ledger.cancel(db, inv.id, now)
        ids.append(inv.id)
    return ids


def event_ids(db: Database, invoice_ids: Iterable[str] | None = None) -> list[str]:
    """Event ids in commit order (of the given invoices, or all)."""
    rows = db.execute("SELECT id, invoice_id FROM events ORDER BY seq").fetchall()
    wanted = None if invoice_ids is None else set(invoice_ids)
    return [r[0] for r in rows if wanted is None or r[1] in wanted]


async def _main(port: int) -> None:  # pragma: no cover - manual use
    def show(rec: Received) -> None:  # a responder that only prints: the default answers
        print(rec.headers.get("x-watcher-event"), rec.delivery_id, flush=True)

    async with Receiver(port=port, responder=show) as rx:
        print(f"listening on {rx.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    import sys

    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
