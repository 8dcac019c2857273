"""The OpenAPI document against the server that serves it.

- The document (as shipped, and as served with the configured networks and assets as enums)
  is valid OpenAPI 3.1 for `openapi-spec-validator`.
- It documents exactly the routes the API registers.
- Every status code documented for every operation is answered by a real app (real aiohttp,
  a real SQLite store and ledger, a rate book, the live hub and sockets) when triggered, with
  a body of the documented schema: errors are exactly `{"error": {"code", "message",
  "field"}}`. A status nobody can trigger without a bug is listed in INFEASIBLE with why.
- Probes sent to every documented operation (no key, a body over 64 KiB, a body that is not
  JSON) only ever get statuses the operation documents.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from prometheus_client import CollectorRegistry

from tests import hdkeys
from tests.unit.test_ledger import NET, OTHER, SHARED, invoice_in, make_networks, tx_hash
from tests.unit.test_pricing_api import Failing
from watcher.derivation import Deriver
from watcher.errors import Conflict
from watcher.ledger import Ledger, NetworkInfo, ScanBatch
from watcher.metrics import Metrics
from watcher.models import Asset, Status, Transfer
from watcher.pricing.book import RateBook
from watcher.pricing.sources import FixedSource
from watcher.retention import stub_body
from watcher.storage.store import Store
from watcher.timeutil import now as clock
from watcher.web.api import ApiContext, create_app, load_openapi
from watcher.web.channels import Limits, Sockets
from watcher.web.hub import Hub

KEY = "openapi-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOOK = "https://shop.example.com/hooks/payment"
LATER = "later"  # a configured network whose follower has not read its first block yet
ADDRESS = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc"
ERROR_KEYS = {"code", "message", "field"}
#: Documented statuses no request brings about without a bug in the server, and why. (The
#: 500 shape itself is checked on GET /v1/networks, whose status source can fail.)
INFEASIBLE = {500: "answered only for an unexpected exception"}

SPEC: dict[str, Any] = json.loads(load_openapi())


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in SPEC["paths"].items()
        for method, op in item.items()
    }


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@dataclass
class Answer:
    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: Store
    ledger: Ledger
    ctx: ApiContext
    sockets: Sockets
    hub_task: asyncio.Task[None]
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    async def stop_hub(self) -> None:
        self.hub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.hub_task

    async def send(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        template: str | None = None,
    ) -> Answer:
        """One request; its answer is checked against the document (see `check`)."""
        hdrs = {**(AUTH if auth else {}), **(headers or {})}
        if body is not None:
            data, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
        resp = await self.client.request(method, path, data=data, headers=hdrs)
        answer = Answer(resp.status, resp.content_type, await resp.text())
        self.check(method, template or path.split("?")[0], answer)
        return answer

    def check(self, method: str, template: str, answer: Answer) -> None:
        """The status is documented for the operation, and the body has its schema."""
        op = documented()[(method, template)]
        status = str(answer.status)
        assert status in op["responses"], f"{method} {template} answered undocumented {status}"
        assert "Traceback" not in answer.text
        response = _deref(op["responses"][status])
        content = response.get("content", {})
        if answer.status >= 400 and not (template == "/readyz" and answer.status == 503):
            assert answer.content_type == "application/json", answer
            body = answer.json()
            assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
            assert isinstance(body["error"]["code"], str) and body["error"]["message"]
        if "application/json" in content:
            assert answer.content_type == "application/json", (method, template, answer)
            schema = content["application/json"]["schema"]
            Draft202012Validator({**schema, "components": SPEC["components"]}).validate(
                answer.json()
            )
        elif "text/plain" in content:
            assert answer.content_type == "text/plain", answer
        self.seen.add((method, template, answer.status))


@pytest.fixture
async def env(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Env]:
    store = await Store(tmp_path / "watcher.db").open()
    networks = make_networks()
    networks[LATER] = NetworkInfo(LATER, 5, 2, {"ETH": Asset(LATER, "ETH", 18)})
    ledger = Ledger(networks, tolerance=Fraction(0), default_ttl=3600, late_window=3600,
                    default_callback_url=HOOK)  # fmt: skip
    await store.run(ledger.start_network, NET, 1, 0)
    book = RateBook({"ETH/GBP": [Failing()]}, 3600)
    await book.refresh(clock())
    ledger.rates = book
    hub = Hub(store, tick=0.05)
    await hub.start()
    hub_task = asyncio.create_task(hub.run())
    sockets = Sockets("api", hub, Limits(max_connections=1), None)
    ctx = ApiContext(
        store, ledger, [KEY], metrics_handler=Metrics(CollectorRegistry()).aiohttp_handler(),
        sockets=sockets, rates=book,
    )  # fmt: skip
    client = await aiohttp_client(create_app(ctx))
    env = Env(client, store, ledger, ctx, sockets, hub_task)
    yield env
    await env.stop_hub()
    await store.close()


# ---------------------------------------------------------------- the document itself


def test_the_shipped_document_is_valid_openapi() -> None:
    assert SPEC["openapi"].startswith("3.1")
    validate_spec(SPEC)


async def test_the_served_document_is_valid_with_the_configured_enums(env: Env) -> None:
    served = (await env.send("GET", "/v1/openapi.json")).json()
    validate_spec(served)
    create = served["components"]["schemas"]["CreateInvoice"]["properties"]
    assert create["network"]["enum"] == [LATER, NET]
    assert create["asset"]["enum"] == ["ETH", "USDT"]


def _registered(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and path:
            out.add((route.method, path))
    return out


async def test_every_registered_route_is_documented_and_no_other(env: Env) -> None:
    assert set(documented()) == _registered(env.client.app)


# ---------------------------------------------------------------- every documented status


def _upgrade_headers() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(uuid.uuid4().bytes).decode(),
    }


async def _trigger_all(env: Env) -> None:
    """Bring about every documented status of every operation (see the module docstring)."""
    send = env.send
    big = b'{"pad": "' + b"x" * (65 * 1024) + b'"}'
    unknown = str(uuid.uuid4())
    new = {"network": NET, "asset": "USDT", "amount": "10", "address": ADDRESS}

    # POST /v1/invoices
    created = (await send("POST", "/v1/invoices", body={**new, "externalId": "o-1"})).json()
    assert created["status"] == "PENDING"
    again = await send("POST", "/v1/invoices", body={**new, "externalId": "o-1"})
    assert again.status == 200 and again.json()["id"] == created["id"]
    assert (await send("POST", "/v1/invoices", data=b"{not json")).status == 400
    assert (await send("POST", "/v1/invoices", auth=False, body=new)).status == 401
    conflict = await send("POST", "/v1/invoices", body={**new, "externalId": "o-1", "amount": "9"})
    assert conflict.status == 409
    assert (await send("POST", "/v1/invoices", data=big)).status == 413
    invalid = await send("POST", "/v1/invoices", body={**new, "network": "nowhere"})
    assert (invalid.status, invalid.json()["error"]["field"]) == (422, "network")
    not_started = await send("POST", "/v1/invoices", body={**new, "network": LATER,
                                                            "asset": "ETH"})  # fmt: skip
    assert (not_started.status, not_started.json()["error"]["code"]) == (
        503, "network_not_started")  # fmt: skip
    no_rate = await send("POST", "/v1/invoices", body={"network": NET, "asset": "ETH",
                         "price": "10", "currency": "GBP", "address": ADDRESS})  # fmt: skip
    assert (no_rate.status, no_rate.json()["error"]["code"]) == (503, "rate_unavailable")

    # GET /v1/invoices
    page = (await send("GET", "/v1/invoices?status=PENDING&limit=1")).json()
    assert [i["id"] for i in page["data"]] == [created["id"]]
    assert (await send("GET", "/v1/invoices?cursor=garbage")).status == 400
    assert (await send("GET", "/v1/invoices", auth=False)).status == 401
    assert (await send("GET", "/v1/invoices?status=LOST")).status == 422

    # GET /v1/invoices/{id}
    one = "/v1/invoices/{id}"
    assert (await send("GET", f"/v1/invoices/{created['id']}", template=one)).status == 200
    assert (await send("GET", f"/v1/invoices/{unknown}", template=one, auth=False)).status == 401
    assert (await send("GET", f"/v1/invoices/{unknown}", template=one)).status == 404

    # the actions: the state each needs, then a second time (409), and the generic failures
    now = clock()
    states = {
        "cancel": Status.PENDING, "accept": Status.PARTIAL, "remainder": Status.PARTIAL,
        "refund": Status.COMPLETED,
    }  # fmt: skip
    for action, status in states.items():
        template = f"/v1/invoices/{{id}}/{action}"
        inv = await env.store.run(invoice_in, env.ledger, status, now)
        url = f"/v1/invoices/{inv.id}/{action}"
        ok = await send("POST", url, template=template)
        assert ok.status == (201 if action == "remainder" else 200), ok
        assert (await send("POST", url, template=template)).status == 409
        assert (await send("POST", url, template=template, data=b"[1")).status == 400
        assert (await send("POST", url, template=template, auth=False)).status == 401
        missing = f"/v1/invoices/{unknown}/{action}"
        assert (await send("POST", missing, template=template)).status == 404
        assert (await send("POST", url, template=template, data=big)).status == 413
    paid = await env.store.run(invoice_in, env.ledger, Status.COMPLETED, now)
    bad_tx = await send("POST", f"/v1/invoices/{paid.id}/refund", body={"txHash": "0x12"},
                        template="/v1/invoices/{id}/refund")  # fmt: skip
    assert (bad_tx.status, bad_tx.json()["error"]["field"]) == (422, "txHash")

    # GET /v1/invoices/{id}/events
    events = "/v1/invoices/{id}/events"
    got = await send("GET", f"/v1/invoices/{created['id']}/events", template=events)
    assert [e["event"] for e in got.json()["data"]] == ["invoice.created"]
    assert (await send("GET", f"/v1/invoices/{unknown}/events", template=events)).status == 404
    no_key = await send("GET", f"/v1/invoices/{unknown}/events", template=events, auth=False)
    assert no_key.status == 401

    # GET /v1/transfers
    assert (await send("GET", "/v1/transfers?matched=false")).status == 200
    assert (await send("GET", "/v1/transfers?cursor=pw1.x")).status == 400
    assert (await send("GET", "/v1/transfers", auth=False)).status == 401
    assert (await send("GET", "/v1/transfers?matched=maybe")).status == 422

    # POST /v1/transfers/{id}/assign: an unmatched transfer (a wrong amount at the shared
    # address) made a payment of an open invoice
    assign = "/v1/transfers/{id}/assign"
    loose = Transfer(NET, "USDT", tx_hash(), 0, OTHER, SHARED, 3_333_333, 10, tx_hash(), now)
    await env.store.run(
        lambda db: env.ledger.apply_scan(db, ScanBatch(NET, 10, None, now, 10, [loose]), now)
    )
    target = await env.store.run(invoice_in, env.ledger, Status.PENDING, now)
    url = f"/v1/transfers/{loose.id}/assign"
    to_target = {"invoiceId": target.id}
    assigned = await send("POST", url, template=assign, body=to_target)
    assert assigned.status == 200 and assigned.json()["payments"][0]["assigned"] is True
    assert (await send("POST", url, template=assign, body=to_target)).status == 409
    assert (await send("POST", url, template=assign, data=b"{")).status == 400
    assert (await send("POST", url, template=assign, auth=False, body=to_target)).status == 401
    missing = f"/v1/transfers/tr_{'0' * 24}/assign"
    assert (await send("POST", missing, template=assign, body=to_target)).status == 404
    assert (await send("POST", url, template=assign, data=big)).status == 413
    no_invoice = await send("POST", url, template=assign, body={"invoiceId": unknown})
    assert (no_invoice.status, no_invoice.json()["error"]["field"]) == (422, "invoiceId")

    # GET /v1/addresses (an invoice at a derived address first: "address": "derive")
    env.ledger.deriver = Deriver(hdkeys.xpub())
    derived = await send("POST", "/v1/invoices", body={
        "network": NET, "asset": "USDT", "amount": "1", "address": "derive"})
    assert derived.status == 201 and derived.json()["derivationIndex"] == 0
    page = (await send("GET", "/v1/addresses")).json()
    assert page["data"][0]["invoices"][0]["id"] == derived.json()["id"]
    balances = (await send("GET", "/v1/addresses?withBalance=true")).json()
    assert balances["balanceErrors"][NET] == f"{NET}: no RPC client"
    assert (await send("GET", "/v1/addresses?cursor=pw1.x")).status == 400
    assert (await send("GET", "/v1/addresses", auth=False)).status == 401
    assert (await send("GET", "/v1/addresses?withBalance=maybe")).status == 422

    # POST /v1/invoices/{id}/method: an invoice created with methods (its method's fields
    # null: the Invoice schema says they may be), chosen; a rate that cannot be read (503),
    # a method not offered (422), an invoice created with network + asset (409)
    choose = "/v1/invoices/{id}/method"
    rates = env.ledger.rates
    book = RateBook({"ETH/GBP": [Failing()], "USDT/GBP": [FixedSource("0.8")]}, 3600)
    await book.refresh(clock())
    env.ledger.rates = book
    made = await send("POST", "/v1/invoices", body={
        "methods": [{"network": NET, "asset": "USDT"}, {"network": NET, "asset": "ETH"}],
        "price": "8", "currency": "GBP", "title": "Order 7", "description": "Two mugs"})
    assert made.status == 201, made
    pending = made.json()
    assert (pending["method"], pending["network"], pending["amount"], pending["to"]) == (
        None, None, None, None)
    assert [(m["asset"], m["amount"]) for m in pending["methods"]] == [
        ("USDT", "10"), ("ETH", None)]  # no usable ETH/GBP rate now
    url = f"/v1/invoices/{pending['id']}/method"
    no_rate = await send("POST", url, template=choose, body={"network": NET, "asset": "ETH"})
    assert (no_rate.status, no_rate.json()["error"]["code"]) == (503, "rate_unavailable")
    chosen = await send("POST", url, template=choose, body={"network": NET, "asset": "USDT"})
    assert chosen.status == 200 and chosen.json()["method"] == {"network": NET, "asset": "USDT"}
    assert chosen.json()["amount"] == "10" and chosen.json()["to"] is not None
    same = await send("POST", url, template=choose, body={"network": NET, "asset": "USDT"})
    assert same.status == 200 and same.json()["updatedAt"] == chosen.json()["updatedAt"]
    for body, at in (({"network": NET, "asset": "DOGE"}, "asset"),
                     ({"network": "nowhere", "asset": "USDT"}, "network"),
                     ({"asset": "USDT"}, "network")):
        refused = await send("POST", url, template=choose, body=body)
        assert (refused.status, refused.json()["error"]["field"]) == (422, at), refused
    classic = await send("POST", f"/v1/invoices/{created['id']}/method", template=choose,
                         body={"network": NET, "asset": "USDT"})
    assert classic.status == 409
    assert (await send("POST", url, template=choose, data=b"{")).status == 400
    assert (await send("POST", url, template=choose, data=big)).status == 413
    no_key = await send("POST", url, template=choose, auth=False,
                        body={"network": NET, "asset": "USDT"})
    assert no_key.status == 401
    nobody = await send("POST", f"/v1/invoices/{unknown}/method", template=choose,
                        body={"network": NET, "asset": "USDT"})
    assert nobody.status == 404
    read = await send("GET", f"/v1/invoices/{pending['id']}", template="/v1/invoices/{id}")
    assert read.json()["methods"][0]["chosen"] is True
    env.ledger.rates = rates

    # POST /v1/networks/{name}/rescan: the route's own checks here; the daemon's rescan (a
    # stand-in of the callable it passes) answers the rest, as it does for real in
    # tests/integration/test_rescan.py
    rescan, at = "/v1/networks/{name}/rescan", f"/v1/networks/{NET}/rescan"
    assert (await send("POST", at, template=rescan, body={"from": 1})).status == 503

    async def daemon_rescan(network: str, start: int, end: int | None) -> dict[str, Any]:
        if start == 2:
            raise Conflict(f"a rescan of {network} is running", field="name")
        stamp = "2026-11-30T00:00:00Z"
        return {"id": 1, "network": network, "from": start, "to": end or 9, "nextBlock": start,
                "state": "running", "added": 0, "error": None, "createdAt": stamp,
                "updatedAt": stamp}

    env.ctx.rescan = daemon_rescan
    assert (await send("POST", at, template=rescan, body={"from": 1})).status == 202
    assert (await send("POST", at, template=rescan, body={"from": 2})).status == 409
    assert (await send("POST", at, template=rescan, body={"from": 5, "to": 4})).status == 422
    assert (await send("POST", at, template=rescan, data=b"{")).status == 400
    assert (await send("POST", at, template=rescan, data=big)).status == 413
    assert (await send("POST", at, template=rescan, auth=False, body={"from": 1})).status == 401
    nowhere = await send("POST", "/v1/networks/nowhere/rescan", template=rescan,
                         body={"from": 1})
    assert nowhere.status == 404
    env.ctx.rescan = None

    # GET /v1/networks: 500 when the daemon's status callable fails
    assert (await send("GET", "/v1/networks")).status == 200
    assert (await send("GET", "/v1/networks", auth=False)).status == 401

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("secret internals")

    env.ctx.networks_status = broken
    internal = await send("GET", "/v1/networks")
    assert (internal.status, internal.json()["error"]["code"]) == (500, "internal")
    assert "secret internals" not in internal.text
    env.ctx.networks_status = list

    # GET /v1/rates
    rates = (await send("GET", "/v1/rates")).json()["data"]
    assert [(r["pair"], r["fresh"]) for r in rates] == [("ETH/GBP", False)]
    assert (await send("GET", "/v1/rates", auth=False)).status == 401

    # POST /v1/callbacks/{eventId}/redeliver
    redeliver = "/v1/callbacks/{eventId}/redeliver"
    event_id = got.json()["data"][0]["id"]
    url = f"/v1/callbacks/{event_id}/redeliver"
    assert (await send("POST", url, template=redeliver)).status == 202
    assert (await send("POST", url, template=redeliver, auth=False)).status == 401
    missing = f"/v1/callbacks/evt_{uuid.uuid4().hex}/redeliver"
    assert (await send("POST", missing, template=redeliver)).status == 404
    assert (await send("POST", url, template=redeliver, data=big)).status == 413

    def prune(db: Any) -> None:  # as retention leaves an old delivered event
        db.execute("UPDATE events SET body = ?, pruned_at = 1 WHERE id = ?",
                   [stub_body(event_id, "invoice.created", 0, "x"), event_id])

    await env.store.run(prune)
    gone = await send("POST", url, template=redeliver)
    assert (gone.status, gone.json()["error"]["code"]) == (410, "gone")

    # GET /v1/ws: 101, not an upgrade (400), no key (401), over max_connections (503)
    ws = await env.client.ws_connect("/v1/ws", headers=AUTH)
    env.check("GET", "/v1/ws", Answer(101, "", ""))
    deadline = time.monotonic() + 5
    while env.sockets.open < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    full = await send("GET", "/v1/ws", headers=_upgrade_headers())
    assert (full.status, full.json()["error"]["code"]) == (503, "too_many_connections")
    await ws.close()
    assert (await send("GET", "/v1/ws")).status == 400
    assert (await send("GET", "/v1/ws", auth=False, headers=_upgrade_headers())).status == 401

    # GET /v1/openapi.json
    assert (await send("GET", "/v1/openapi.json")).status == 200
    assert (await send("GET", "/v1/openapi.json", auth=False)).status == 401

    # GET /healthz, /readyz, /metrics (no key unless metrics.require_auth)
    assert (await send("GET", "/healthz", auth=False)).status == 200
    assert (await send("GET", "/readyz", auth=False)).status == 200
    env.ctx.readiness = lambda: (False, "testnet: 99 blocks behind")
    lagging = await send("GET", "/readyz", auth=False)
    assert lagging.json() == {"ready": False, "reason": "testnet: 99 blocks behind"}
    assert (await send("GET", "/metrics", auth=False)).status == 200
    env.ctx.metrics_require_auth = True
    assert (await send("GET", "/metrics", auth=False)).status == 401
    assert (await send("GET", "/metrics")).status == 200
    env.ctx.metrics_handler = None
    assert (await send("GET", "/metrics")).status == 404


async def _database_down(env: Env) -> None:
    """503 `unavailable` from every operation that needs the database, once it is closed."""
    inv = await env.store.run(invoice_in, env.ledger, Status.PENDING, clock())
    event_id = (await env.send("GET", f"/v1/invoices/{inv.id}/events",
                               template="/v1/invoices/{id}/events")).json()["data"][0]["id"]
    await env.stop_hub()  # it reads the database too
    await env.store.close()
    for (method, template), op in documented().items():
        if "503" not in op["responses"] or template in ("/v1/ws", "/readyz"):
            continue
        path = template.replace("{id}", inv.id).replace("{eventId}", event_id)
        path = path.replace("{name}", NET)
        bodies = {"/v1/invoices": {"network": NET, "asset": "USDT", "amount": "1"},
                  "/v1/transfers/{id}/assign": {"invoiceId": inv.id},
                  "/v1/invoices/{id}/method": {"network": NET, "asset": "USDT"},
                  "/v1/networks/{name}/rescan": {"from": 1}}
        answer = await env.send(method, path, template=template, body=bodies.get(template))
        assert (answer.status, answer.json()["error"]["code"]) == (503, "unavailable"), (
            method, template, answer)  # fmt: skip


async def test_every_documented_status_is_answered_with_its_schema(env: Env) -> None:
    await _trigger_all(env)
    await _database_down(env)
    wanted = {
        (method, template, int(status))
        for (method, template), op in documented().items()
        for status in op["responses"]
    }
    infeasible = {
        (m, t, s) for m, t, s in wanted if s in INFEASIBLE and (m, t) != ("GET", "/v1/networks")
    }
    missing = sorted(wanted - env.seen - infeasible)
    assert not missing, f"documented but never triggered: {missing}"
    assert env.seen <= wanted


# ---------------------------------------------------------------- probes of every operation


async def test_probes_get_only_documented_statuses(env: Env) -> None:
    """Whatever the operation: no key, a body over 64 KiB, a body that is not JSON."""
    inv = await env.store.run(invoice_in, env.ledger, Status.PENDING, clock())
    for (method, template), op in documented().items():
        path = re.sub(r"\{[^}]+\}", inv.id, template)
        if op.get("security") != [] and op.get("security") != [{}, {"bearer": []}]:
            assert (await env.send(method, path, template=template, auth=False)).status == 401
        if method == "POST":
            big = await env.send(method, path, template=template, data=b"[" * (65 * 1024))
            assert big.status == 413
            await env.send(method, path, template=template, data=b"\xff not json")
        else:
            await env.send(method, path, template=template)  # a status it documents

