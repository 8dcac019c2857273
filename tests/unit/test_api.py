"""The HTTP API through a real aiohttp test client and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlite_utils import Database

from tests.unit.test_ledger import (
    DEDICATED,
    HOOK,
    NET,
    OTHER,
    RULES,
    SHARED,
    invoice_in,
    make_ledger,
    new,
    pay,
    tx_hash,
)
from watcher.errors import StoreError
from watcher.ledger import Ledger, Outcome, ScanBatch
from watcher.models import Invoice, Status, Transfer
from watcher.storage.store import Store
from watcher.timeutil import now as clock
from watcher.web.api import ApiContext, create_app, key_matches, load_openapi

KEY = "test-key-1"
KEY2 = "test-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
NOW = clock()
ClientFactory = Any


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: Store
    ledger: Ledger
    ctx: ApiContext
    outcomes: list[Outcome] = field(default_factory=list)

    async def call(
        self, method: str, path: str, *, auth: bool = True, **kw: Any
    ) -> tuple[int, Any]:
        """One request: never a traceback, always JSON; (status, decoded body)."""
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers.update(AUTH)
        resp = await self.client.request(method, path, headers=headers, **kw)
        text = await resp.text()
        assert "Traceback" not in text
        assert resp.content_type == "application/json", (resp.status, text)
        data = json.loads(text)
        if resp.status >= 400 and path != "/readyz":
            assert set(data) == {"error"}
            assert set(data["error"]) == {"code", "message", "field"}
        return resp.status, data

    async def make(self, status: Status, **kw: Any) -> Invoice:
        return await self.store.run(invoice_in, self.ledger, status, clock(), **kw)


@pytest.fixture
async def env(database: str, aiohttp_client: ClientFactory) -> AsyncIterator[Env]:
    """The API over a store on each engine (SQLite, PostgreSQL)."""
    store = await Store(database).open()
    ledger = make_ledger()
    await store.run(ledger.start_network, NET, 1, 0)
    outcomes: list[Outcome] = []
    ctx = ApiContext(store, ledger, [KEY, KEY2], on_outcome=outcomes.append)
    client = await aiohttp_client(create_app(ctx))
    yield Env(client, store, ledger, ctx, outcomes)
    await store.close()


def create_body(**kw: Any) -> dict[str, Any]:
    return {"network": NET, "asset": "USDT", "amount": "10", **kw}


# ---------------------------------------------------------------- auth


def _routes(app: web.Application) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and path:
            out.append((route.method, path))
    return out


async def test_every_v1_route_needs_a_valid_key(env: Env) -> None:
    routes = [(m, p) for m, p in _routes(env.client.app) if p.startswith("/v1/")]
    assert len(routes) == 18
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": "Bearer "},
    ]
    for method, path in routes:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for headers in bad_headers:
            status, data = await env.call(method, concrete, auth=False, headers=headers)
            assert status == 401, (method, path, headers)
            assert data["error"]["code"] == "unauthorized"
    status, _ = await env.call("GET", "/v1/invoices", auth=False,
                               headers={"Authorization": f"Bearer {KEY2}"})
    assert status == 200
    status, _ = await env.call("GET", "/v1/nothing-here", auth=False)
    assert status == 401


def test_key_matches() -> None:
    assert key_matches("Bearer a", ["b", "a"])
    assert key_matches("bearer  a", ["a"])
    assert not key_matches("Bearer a", [])
    assert not key_matches(None, ["a"])
    assert not key_matches("Bearer ab", ["a"])


async def test_no_configured_key_locks_the_api(env: Env) -> None:
    env.ctx.api_keys = []
    status, _ = await env.call("GET", "/v1/invoices")
    assert status == 401


# ---------------------------------------------------------------- malformed, 404, 405, 413


@pytest.mark.parametrize("path", ["/v1/invoices", "/v1/invoices/x/refund", "/v1/invoices/x/cancel"])
@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1, 2]", b'"text"'])
async def test_malformed_json_is_400(env: Env, path: str, raw: bytes) -> None:
    status, data = await env.call("POST", path, data=raw)
    assert status == 400 and data["error"]["code"] == "bad_request"


async def test_empty_create_body_is_400(env: Env) -> None:
    status, _ = await env.call("POST", "/v1/invoices", data=b"")
    assert status == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/invoices/missing"),
        ("GET", "/v1/invoices/missing/events"),
        ("POST", "/v1/invoices/missing/cancel"),
        ("POST", "/v1/invoices/missing/accept"),
        ("POST", "/v1/invoices/missing/remainder"),
        ("POST", "/v1/invoices/missing/refund"),
        ("POST", "/v1/callbacks/evt_missing/redeliver"),
        ("GET", "/v1/nothing-here"),
        ("GET", "/nothing-here"),
        ("GET", "/metrics"),  # no metrics handler configured
    ],
)
async def test_not_found_is_json(env: Env, method: str, path: str) -> None:
    status, data = await env.call(method, path)
    assert status == 404 and data["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v1/invoices"), ("PUT", "/v1/invoices/x"), ("GET", "/v1/invoices/x/cancel"),
     ("POST", "/healthz")],
)
async def test_wrong_method_is_405_json(env: Env, method: str, path: str) -> None:
    status, data = await env.call(method, path)
    assert status == 405 and data["error"]["code"] == "method_not_allowed"


async def test_405_is_as_the_openapi_document_says(env: Env) -> None:
    resp = await env.client.request("DELETE", "/v1/invoices", headers=AUTH)
    doc = json.loads(load_openapi())
    documented = doc["components"]["responses"]["MethodNotAllowed"]
    assert "405" in doc["info"]["description"] and "Allow" in documented["headers"]
    assert resp.status == 405 and set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert set((await resp.json())["error"]) == {"code", "message", "field"}


async def test_body_over_64_kib_is_413(env: Env) -> None:
    big = json.dumps(create_body(payload={"k": "x" * 65 * 1024})).encode()
    status, data = await env.call("POST", "/v1/invoices", data=big)
    assert status == 413 and data["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own 413
        for _ in range(65):
            yield b" " * 1024

    status, data = await env.call("POST", "/v1/invoices", data=chunks())
    assert status == 413 and data["error"]["code"] == "payload_too_large"


async def test_unexpected_errors_are_500_json_without_traceback(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(inv: Invoice) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(env.ledger, "render", boom)
    status, data = await env.call("POST", "/v1/invoices", json=create_body())
    assert status == 500 and data["error"]["code"] == "internal"
    assert "secret internals" not in data["error"]["message"]
    assert "RuntimeError: secret internals" in caplog.text  # the traceback stays server-side


# ---------------------------------------------------------------- create


async def test_create_returns_the_invoice(env: Env) -> None:
    body = create_body(amount="12.50", ttl=600, callbackUrl=HOOK, externalId="order-1",
                       payload={"someKey": "someValue"}, price="500.00", currency="EUR",
                       email="customer@example.com")
    status, inv = await env.call("POST", "/v1/invoices", json=body)
    assert status == 201
    assert inv["status"] == "PENDING" and inv["amount"] == "12.5"
    assert inv["requestedAmount"] == "12.5" and inv["to"] == SHARED
    assert inv["externalId"] == "order-1" and inv["payload"] == {"someKey": "someValue"}
    assert inv["price"] == "500.00" and inv["currency"] == "EUR"
    assert inv["chainId"] == 31337 and inv["decimals"] == 6
    assert len(env.outcomes) == 1
    assert [c.event for c in env.outcomes[0].changes] == ["invoice.created"]
    status, got = await env.call("GET", f"/v1/invoices/{inv['id']}")
    assert status == 200 and got == inv


async def test_external_id_is_idempotent(env: Env) -> None:
    body = create_body(externalId="order-9", ttl=600)
    status, first = await env.call("POST", "/v1/invoices", json=body)
    assert status == 201
    status, again = await env.call("POST", "/v1/invoices", json=dict(reversed(body.items())))
    assert status == 200 and again == first
    assert len(env.outcomes) == 1  # a replay writes nothing
    status, data = await env.call("POST", "/v1/invoices", json={**body, "amount": "11"})
    assert status == 409 and data["error"]["field"] == "externalId"


async def test_second_open_invoice_on_a_dedicated_address_is_409(env: Env) -> None:
    body = create_body(asset="ETH", address=DEDICATED)
    assert (await env.call("POST", "/v1/invoices", json=body))[0] == 201
    status, data = await env.call("POST", "/v1/invoices",
                                  json={**body, "address": DEDICATED.lower()})
    assert status == 409 and data["error"]["field"] == "address"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "1.1234567"}, "amount"),
        ({"amount": "1e5"}, "amount"),
        ({"amount": 10}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"expireAt": "2099-01-01T00:00:00Z", "ttl": 60}, "ttl"),
        ({"expireAt": "2099-01-01T00:00:00"}, "expireAt"),
        ({"address": "0xabc"}, "address"),
        ({"address": DEDICATED.replace("F", "f", 1)}, "address"),
        ({"network": "mainnet"}, "network"),
        ({"asset": "DOGE"}, "asset"),
        ({"ttl": 0}, "ttl"),
        ({"callbackUrl": "file:///etc/passwd"}, "callbackUrl"),
        ({"externalId": "x" * 129}, "externalId"),
        ({"payload": {"k": "x" * 5000}}, "payload"),
        ({"price": "a lot"}, "price"),
        ({"currency": "C" * 17}, "currency"),
        ({"email": "no-at-sign"}, "email"),
        ({"favourite": 1}, "favourite"),
    ],
)
async def test_invalid_values_are_422_naming_the_field(
    env: Env, changes: dict[str, Any], field: str
) -> None:
    status, data = await env.call("POST", "/v1/invoices", json=create_body(**changes))
    assert status == 422
    assert data["error"]["code"] == "invalid" and data["error"]["field"] == field


async def test_amount_as_json_number_says_decimal_string(env: Env) -> None:
    _, data = await env.call("POST", "/v1/invoices", json=create_body(amount=10.5))
    assert "must be a decimal string" in data["error"]["message"]


async def test_fifty_concurrent_creates_at_a_shared_address_get_distinct_amounts(
    env: Env,
) -> None:
    results = await asyncio.gather(
        *(env.call("POST", "/v1/invoices", json=create_body(amount="25")) for _ in range(50))
    )
    assert {status for status, _ in results} == {201}
    amounts = [inv["amount"] for _, inv in results]
    assert len(set(amounts)) == 50
    assert {inv["requestedAmount"] for _, inv in results} == {"25"}
    assert {inv["to"] for _, inv in results} == {SHARED}
    assert sorted(amounts) == sorted(f"25.{k:06d}".rstrip("0").rstrip(".") for k in range(50))


async def test_on_outcome_failure_does_not_fail_the_request(env: Env) -> None:
    def broken(outcome: Outcome) -> None:
        raise RuntimeError("index down")

    env.ctx.on_outcome = broken
    status, _ = await env.call("POST", "/v1/invoices", json=create_body())
    assert status == 201


# ---------------------------------------------------------------- listing


async def _seed(env: Env, n: int) -> list[Invoice]:
    def seed(db: Database) -> list[Invoice]:
        made = []
        for k in range(n):
            inv, _, _ = env.ledger.create(db, new(amount=1_000_000 + k, external_id=f"o-{k}"),
                                          NOW)
            if k % 3 == 0:
                inv, _ = env.ledger.cancel(db, inv.id, NOW)
            made.append(inv)
        return made

    return await env.store.run(seed)


async def _pages(env: Env, path: str, limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        sep = "&" if "?" in path else "?"
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, page = await env.call("GET", f"{path}{sep}{query}")
        assert status == 200 and set(page) == {"data", "nextCursor"}
        assert len(page["data"]) <= limit
        seen.extend(page["data"])
        cursor = page["nextCursor"]
        if cursor is None:
            return seen
    raise AssertionError("paging never ended")


async def test_list_pages_through_120_invoices_newest_first(env: Env) -> None:
    made = await _seed(env, 120)
    for limit in (7, 50, 120, 500):
        listed = await _pages(env, "/v1/invoices", limit)
        ids = [i["id"] for i in listed]
        assert ids == [i.id for i in reversed(made)]  # all, once each, newest first
    _, page = await env.call("GET", "/v1/invoices")
    assert len(page["data"]) == 50 and page["nextCursor"]


async def test_list_filters(env: Env) -> None:
    made = await _seed(env, 30)
    voided = await _pages(env, "/v1/invoices?status=VOIDED", 4)
    assert [i["id"] for i in voided] == [i.id for i in reversed(made) if i.status == "VOIDED"]
    both = await _pages(env, "/v1/invoices?status=VOIDED,pending", 100)
    assert len(both) == 30
    _, page = await env.call("GET", "/v1/invoices?externalId=o-7")
    assert [i["id"] for i in page["data"]] == [made[7].id]
    _, page = await env.call("GET", f"/v1/invoices?network={NET}&status=PENDING&limit=500")
    assert len(page["data"]) == 20
    _, page = await env.call("GET", "/v1/invoices?network=elsewhere")
    assert page == {"data": [], "nextCursor": None}


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("status=PAID", 422, "status"),
        ("limit=0", 422, "limit"),
        ("limit=501", 422, "limit"),
        ("limit=x", 422, "limit"),
        ("cursor=%21%21", 400, "cursor"),
        ("cursor=bm9wZQ", 400, "cursor"),
        ("colour=red", 422, "colour"),
    ],
)
async def test_list_query_errors(env: Env, query: str, status: int, field: str) -> None:
    got, data = await env.call("GET", f"/v1/invoices?{query}")
    assert got == status and data["error"]["field"] == field


# ---------------------------------------------------------------- actions


EXPECTED_ACTION = {
    "cancel": RULES["cancel"],
    "accept": RULES["accept"],
    "refund": RULES["refund"],
    "remainder": ({Status.PARTIAL}, Status.PENDING),  # the child's status
}


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("action", sorted(EXPECTED_ACTION))
async def test_actions_from_every_status(env: Env, action: str, status: Status) -> None:
    inv = await env.make(status)
    allowed, target = EXPECTED_ACTION[action]
    got, data = await env.call("POST", f"/v1/invoices/{inv.id}/{action}")
    if status not in allowed:
        assert got == 409 and data["error"]["code"] == "conflict"
        _, same = await env.call("GET", f"/v1/invoices/{inv.id}")
        assert same["status"] == status
        assert env.outcomes == []
        return
    assert got == (201 if action == "remainder" else 200)
    assert data["status"] == target
    assert len(env.outcomes) == 1


async def test_refund_records_the_tx_hash(env: Env) -> None:
    inv = await env.make(Status.COMPLETED)
    tx = "0x" + "Ab" * 32
    status, data = await env.call("POST", f"/v1/invoices/{inv.id}/refund", json={"txHash": tx})
    assert status == 200 and data["status"] == "REFUNDED"
    assert data["refundTxHash"] == tx.lower()


@pytest.mark.parametrize("body", [{"txHash": "0x12"}, {"txHash": 5}, {"hash": "0x"}])
async def test_refund_rejects_a_bad_tx_hash(env: Env, body: dict[str, Any]) -> None:
    inv = await env.make(Status.COMPLETED)
    status, data = await env.call("POST", f"/v1/invoices/{inv.id}/refund", json=body)
    assert status == 422 and data["error"]["field"] in ("txHash", "hash")


async def test_remainder_creates_a_child_for_the_missing_amount(env: Env) -> None:
    status, parent = await env.call(
        "POST", "/v1/invoices", json=create_body(amount="8", callbackUrl=HOOK)
    )
    inv = await env.store.run(env.ledger.get, parent["id"])
    await env.store.run(pay, env.ledger, inv, 3_000_000, deep=True, now=clock())
    status, child = await env.call("POST", f"/v1/invoices/{inv.id}/remainder")
    assert status == 201
    assert child["parentId"] == inv.id and child["id"] != inv.id
    assert child["requestedAmount"] == "5" and child["amountPaid"] == "0"
    assert child["to"] == SHARED and child["status"] == "PENDING"
    assert child["callbackUrl"] == HOOK
    _, again = await env.call("GET", f"/v1/invoices/{inv.id}")
    assert again["status"] == "PARTIAL" and again["amountPaid"] == "3"
    status, _ = await env.call("POST", f"/v1/invoices/{inv.id}/remainder")
    assert status == 409


# ---------------------------------------------------------------- events and redelivery


async def test_events_show_history_and_deliveries(env: Env) -> None:
    _, inv = await env.call("POST", "/v1/invoices", json=create_body(callbackUrl=HOOK))
    await env.call("POST", f"/v1/invoices/{inv['id']}/cancel")

    def attempt(db: Database) -> str:
        event_id: str = db.execute(
            "SELECT id FROM events WHERE invoice_id = ? ORDER BY seq LIMIT 1", [inv["id"]]
        ).fetchone()[0]
        db.execute("INSERT INTO attempts (event_id, at, status_code, error, duration_ms) "
                   "VALUES (?, ?, 503, 'HTTP 503', 41)", [event_id, NOW + 0.5])
        db.execute("UPDATE deliveries SET state = 'failed', attempts = 1, "
                   "last_error = 'HTTP 503' WHERE event_id = ?", [event_id])
        return event_id

    event_id = await env.store.run(attempt)
    status, data = await env.call("GET", f"/v1/invoices/{inv['id']}/events")
    assert status == 200 and data["nextCursor"] is None
    events = data["data"]
    assert [e["event"] for e in events] == ["invoice.created", "invoice.voided"]
    assert [e["status"] for e in events] == ["PENDING", "VOIDED"]
    first = events[0]
    assert set(first) == {"id", "event", "status", "createdAt", "cause", "delivery"}
    assert [e["cause"] for e in events] == [None, None]
    assert first["id"] == event_id and first["createdAt"].endswith("Z")
    assert first["delivery"] == {
        "url": HOOK,
        "state": "failed",
        "attempts": [{"at": first["delivery"]["attempts"][0]["at"], "statusCode": 503,
                      "error": "HTTP 503", "durationMs": 41}],
        "nextAttemptAt": None,
        "deliveredAt": None,
        "lastError": "HTTP 503",
    }
    assert events[1]["delivery"]["state"] == "pending"
    assert events[1]["delivery"]["nextAttemptAt"].endswith("Z")

    woken: list[str] = []
    env.ctx.on_redeliver = woken.append
    status, data = await env.call("POST", f"/v1/callbacks/{event_id}/redeliver")
    assert status == 202 and data["id"] == event_id and data["state"] == "pending"
    assert woken == [event_id]
    _, after = await env.call("GET", f"/v1/invoices/{inv['id']}/events")
    again = after["data"][0]["delivery"]
    assert again["state"] == "pending" and len(again["attempts"]) == 1


async def test_events_without_a_callback_url_have_no_delivery(env: Env) -> None:
    env.ledger.default_callback_url = None
    _, inv = await env.call("POST", "/v1/invoices", json=create_body())
    _, data = await env.call("GET", f"/v1/invoices/{inv['id']}/events")
    assert [e["delivery"] for e in data["data"]] == [None]
    event_id = data["data"][0]["id"]
    status, _ = await env.call("POST", f"/v1/callbacks/{event_id}/redeliver")
    assert status == 404


# ---------------------------------------------------------------- transfers


def _scan(db: Database, ledger: Ledger, transfers: list[Transfer]) -> None:
    head = 2000 + db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
    ledger.apply_scan(db, ScanBatch(NET, head, None, NOW, head, transfers), NOW)


async def test_transfers_filters_and_paging(env: Env) -> None:
    paid = await env.make(Status.COMPLETED)
    unmatched = [
        Transfer(NET, "USDT", tx_hash(), 1, OTHER, SHARED, 1_234_567 + k, 1500, tx_hash(), NOW)
        for k in range(5)
    ]
    await env.store.run(_scan, env.ledger, unmatched)
    _, all_ = await env.call("GET", "/v1/transfers")
    assert len(all_["data"]) == 6 and all_["nextCursor"] is None
    t = all_["data"][0]  # newest first
    assert t["amount"] == "1.234571" and t["invoiceId"] is None and t["matched"] is False
    assert {"network", "asset", "txHash", "logIndex", "from", "to", "amount", "block",
            "timestamp", "invoiceId", "matched"} <= set(t)
    _, matched = await env.call("GET", "/v1/transfers?matched=true")
    assert [m["invoiceId"] for m in matched["data"]] == [paid.id]
    assert matched["data"][0]["matched"] is True
    assert matched["data"][0]["amount"] == "10"
    _, free = await env.call("GET", f"/v1/transfers?matched=false&network={NET}")
    assert len(free["data"]) == 5
    _, none = await env.call("GET", "/v1/transfers?network=elsewhere")
    assert none["data"] == []
    pages = await _pages(env, "/v1/transfers?matched=false", 2)
    assert [p["txHash"] for p in pages] == [p["txHash"] for p in free["data"]]
    status, data = await env.call("GET", "/v1/transfers?matched=maybe")
    assert status == 422 and data["error"]["field"] == "matched"


async def test_late_payments_count_as_matched(env: Env) -> None:
    inv = await env.store.run(
        lambda db: env.ledger.create(db, new(asset="ETH", address=DEDICATED, amount=10**18),
                                     NOW)[0]
    )
    await env.call("POST", f"/v1/invoices/{inv.id}/cancel")
    late = Transfer(NET, "ETH", tx_hash(), None, OTHER, DEDICATED, 10**18, 1600, tx_hash(),
                    NOW, invoice_id=inv.id, kind="late")
    await env.store.run(_scan, env.ledger, [late])
    _, data = await env.call("GET", "/v1/transfers?matched=true")
    assert [(t["kind"], t["invoiceId"], t["matched"]) for t in data["data"]] == [
        ("late", inv.id, True)
    ]
    _, got = await env.call("GET", f"/v1/invoices/{inv.id}")
    assert got["status"] == "VOIDED" and len(got["latePayments"]) == 1


# ---------------------------------------------------------------- networks, health, metrics


async def test_networks_fallback_and_live_status(env: Env) -> None:
    _, data = await env.call("GET", "/v1/networks")
    (net,) = data["data"]
    assert net["name"] == NET and net["chainId"] == 31337
    # the fixture wrote the start block (1): nothing below it is scanned
    assert net["headBlock"] == 1 and net["scannedBlock"] == 0 and net["lagBlocks"] == 1
    assert {a["symbol"] for a in net["assets"]} == {"ETH", "USDT"}
    await env.store.run(_scan, env.ledger, [])
    _, data = await env.call("GET", "/v1/networks")
    assert data["data"][0]["headBlock"] == 2000 and data["data"][0]["lagBlocks"] == 0
    live = [{"name": NET, "chainId": 31337, "headBlock": 9, "scannedBlock": 7, "lagBlocks": 2,
             "rpc": {"healthy": 1}, "assets": []}]
    env.ctx.networks_status = lambda: live
    _, data = await env.call("GET", "/v1/networks")
    assert data["data"] == live


async def test_health_and_readiness_need_no_key(env: Env) -> None:
    assert await env.call("GET", "/healthz", auth=False) == (200, {"status": "ok"})
    assert await env.call("GET", "/readyz", auth=False) == (200, {"ready": True, "reason": "ok"})
    env.ctx.readiness = lambda: (False, "polygon lags 300 blocks")
    assert await env.call("GET", "/readyz", auth=False) == (
        503, {"ready": False, "reason": "polygon lags 300 blocks"})


async def test_metrics_auth_follows_the_setting(env: Env) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="payment_watcher_up 1\n")

    env.ctx.metrics_handler = metrics
    resp = await env.client.get("/metrics")
    assert resp.status == 200 and "payment_watcher_up" in await resp.text()
    env.ctx.metrics_require_auth = True
    status, _ = await env.call("GET", "/metrics", auth=False)
    assert status == 401
    resp = await env.client.get("/metrics", headers=AUTH)
    assert resp.status == 200


# ---------------------------------------------------------------- OpenAPI


async def test_openapi_documents_exactly_the_registered_routes(env: Env) -> None:
    doc = json.loads(load_openapi())
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == set(_routes(env.client.app))
    status, served = await env.call("GET", "/v1/openapi.json")
    for schema in ("CreateInvoice", "MethodChoice"):
        props = served["components"]["schemas"][schema]["properties"]
        assert (props["network"]["enum"], props["asset"]["enum"]) == ([NET], ["ETH", "USDT"])
        for name in ("network", "asset"):
            del props[name]["enum"]  # the configured ones, added to the shipped document
    assert status == 200 and served == doc
    invoice = doc["components"]["schemas"]["Invoice"]["properties"]
    _, sample = await env.call("POST", "/v1/invoices", json=create_body())
    assert set(sample) == set(invoice)


async def test_unique_ids_in_paths_are_not_guessable_routes(env: Env) -> None:
    status, _ = await env.call("GET", f"/v1/invoices/{uuid.uuid4()}")
    assert status == 404


async def test_a_database_failure_is_503_json(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database error: disk I/O error")

    monkeypatch.setattr(env.store, "run", down)
    monkeypatch.setattr(env.store, "read", down)
    status, data = await env.call("GET", "/v1/invoices")
    assert status == 503 and data["error"]["code"] == "unavailable"
    assert "disk" not in data["error"]["message"]
