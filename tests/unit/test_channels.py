"""The live hub and the merchant channel `GET /v1/ws`, through a real aiohttp server, real
WebSocket clients and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tests.unit.test_ledger import NET, make_ledger, new, pay
from watcher.errors import StoreError
from watcher.ledger import Ledger, Outcome
from watcher.metrics import Metrics
from watcher.storage.store import Store
from watcher.timeutil import now as clock
from watcher.web.api import ApiContext, create_app
from watcher.web.channels import Limits, Sockets
from watcher.web.hub import Hub

KEY = "ws-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 5.0


@dataclass
class Env:
    client: TestClient[Any, Any]
    store: Store
    ledger: Ledger
    hub: Hub
    sockets: Sockets
    metrics: Metrics

    async def create(self, **kw: Any) -> dict[str, Any]:
        body = {"network": NET, "asset": "USDT", "amount": "10", **kw}
        resp = await self.client.post("/v1/invoices", json=body, headers=AUTH)
        assert resp.status == 201, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    async def cancel(self, invoice_id: str) -> None:
        resp = await self.client.post(f"/v1/invoices/{invoice_id}/cancel", headers=AUTH)
        assert resp.status == 200, await resp.text()

    async def socket(self) -> aiohttp.ClientWebSocketResponse:
        return await self.client.ws_connect("/v1/ws", headers=AUTH)

    async def event_ids(self, invoice_id: str) -> list[str]:
        resp = await self.client.get(f"/v1/invoices/{invoice_id}/events", headers=AUTH)
        return [e["id"] for e in (await resp.json())["data"]]


async def make_env(database: str, aiohttp_client: Any, **limits: Any) -> Env:
    store = await Store(database).open()
    ledger = make_ledger()
    await store.run(ledger.start_network, NET, 1, 0)
    hub = Hub(store, tick=0.05)
    await hub.start()
    metrics = Metrics()
    sockets = Sockets("api", hub, Limits(**{"queue_size": 64, **limits}), metrics)

    def on_outcome(_outcome: Outcome) -> None:
        hub.wake()

    ctx = ApiContext(store, ledger, [KEY], on_outcome=on_outcome, sockets=sockets)
    client = await aiohttp_client(create_app(ctx))
    return Env(client, store, ledger, hub, sockets, metrics)


@pytest.fixture
async def env(database: str, aiohttp_client: Any) -> AsyncIterator[Env]:
    e = await make_env(database, aiohttp_client)
    task = asyncio.create_task(e.hub.run())
    yield e
    task.cancel()
    await e.store.close()


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def subscribe(ws: aiohttp.ClientWebSocketResponse, **msg: Any) -> dict[str, Any]:
    await ws.send_json(msg)
    ack = await recv(ws)
    assert "subscribed" in ack, ack
    return ack


async def test_without_a_key_401_before_the_upgrade(env: Env) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await env.client.ws_connect("/v1/ws", headers=headers)
        assert exc.value.status == 401
    resp = await env.client.get("/v1/ws")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_invoice_channel_gets_exactly_the_callback_bodies(env: Env) -> None:
    inv = await env.create(clientId="cust-1")
    other = await env.create()
    ws = await env.socket()
    ack = await subscribe(ws, subscribe="invoice", id=inv["id"])
    assert ack == {"subscribed": {"channel": "invoice", "id": inv["id"]}}
    await env.cancel(other["id"])  # not subscribed: never arrives
    await env.cancel(inv["id"])
    msg = await recv(ws)
    assert msg["channel"] == "invoice" and msg["event"] == "invoice.voided"
    assert msg["data"]["id"] == inv["id"] and msg["data"]["status"] == "VOIDED"
    # the message is the stored callback body plus the channel
    body = await env.store.run(
        lambda db: db.execute("SELECT body FROM events WHERE id = ?", [msg["id"]]).fetchone()[0]
    )
    assert {k: v for k, v in msg.items() if k != "channel"} == json.loads(body)
    await ws.close()


async def test_a_live_subscription_starts_after_what_was_committed(
    database: str, aiohttp_client: Any
) -> None:
    """The hub has not pumped the invoice's creation yet (its task is not running) when the
    socket subscribes: that older event is not sent, the cancel committed after the ack is."""
    e = await make_env(database, aiohttp_client)
    try:
        inv = await e.create()
        ws = await e.socket()
        await subscribe(ws, subscribe="invoice", id=inv["id"])
        await e.cancel(inv["id"])
        await e.hub.pump()
        msg = await recv(ws)
        assert msg["event"] == "invoice.voided"
        await ws.close()
    finally:
        await e.store.close()


async def test_the_ack_comes_once_the_subscription_knows_where_it_starts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `subscribed` ack is sent only after the position the subscription starts from
    is read: a client that acts on the ack never misses what it caused."""
    gate = asyncio.Event()
    committed_seq = env.hub.committed_seq

    async def held() -> int:
        await gate.wait()
        return await committed_seq()

    monkeypatch.setattr(env.hub, "committed_seq", held)
    ws = await env.socket()
    await ws.send_json({"subscribe": "all"})
    with pytest.raises(asyncio.TimeoutError):  # no ack while the position is unknown
        await ws.receive(timeout=0.3)
    inv = await env.create()  # committed before the ack: not sent
    gate.set()
    assert await recv(ws) == {"subscribed": {"channel": "all"}}
    await env.cancel(inv["id"])
    msg = await recv(ws)
    assert msg["event"] == "invoice.voided" and msg["data"]["id"] == inv["id"]
    await ws.close()


async def test_a_subscription_while_the_database_is_away_gets_an_error_and_no_socket_dies(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscribing needs a read (the position to start from, or the `since` event): with
    the database away the client gets `unavailable`, nothing is subscribed, and the same
    socket subscribes once the database is back."""
    async def away(*_args: Any) -> int:
        raise StoreError("database unreachable")

    inv = await env.create()
    ws = await env.socket()
    with monkeypatch.context() as m:
        m.setattr(env.hub, "committed_seq", away)
        m.setattr(env.hub, "event_seq", away)
        for msg in ({"subscribe": "all"}, {"subscribe": "all", "since": "evt_x"}):
            await ws.send_json(msg)
            answer = await recv(ws)
            assert answer["error"]["code"] == "unavailable", answer
        assert env.hub.subscriptions == 0
    await subscribe(ws, subscribe="all")
    await env.cancel(inv["id"])
    assert (await recv(ws))["event"] == "invoice.voided"
    await ws.close()


async def test_client_channel_follows_one_customer(env: Env) -> None:
    ws = await env.socket()
    await subscribe(ws, subscribe="client", clientId="alice")
    mine = await env.create(clientId="alice")
    await env.create(clientId="bob")
    await env.create()
    await env.cancel(mine["id"])
    first, second = await recv(ws), await recv(ws)
    assert [first["event"], second["event"]] == ["invoice.created", "invoice.voided"]
    assert {first["channel"], second["channel"]} == {"client"}
    assert first["data"]["clientId"] == "alice" and second["data"]["id"] == mine["id"]
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.3)
    await ws.close()


async def test_since_replays_then_goes_live_in_order_without_duplicates(env: Env) -> None:
    a = await env.create()
    first_event = (await env.event_ids(a["id"]))[0]
    b = await env.create()
    await env.cancel(a["id"])
    ws = await env.socket()
    await subscribe(ws, subscribe="all", since=first_event)
    c = await env.create()
    await env.cancel(b["id"])
    got = [await recv(ws) for _ in range(4)]
    assert [(m["data"]["id"], m["event"]) for m in got] == [
        (b["id"], "invoice.created"),
        (a["id"], "invoice.voided"),
        (c["id"], "invoice.created"),
        (b["id"], "invoice.voided"),
    ]
    assert {m["channel"] for m in got} == {"all"}
    assert len({m["id"] for m in got}) == 4
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.3)
    await ws.close()


async def test_replay_of_one_invoice_and_an_unknown_since(env: Env) -> None:
    a = await env.create()
    await env.cancel(a["id"])
    created, voided = await env.event_ids(a["id"])
    ws = await env.socket()
    await subscribe(ws, subscribe="invoice", id=a["id"], since=created)
    assert (await recv(ws))["id"] == voided
    await ws.send_json({"subscribe": "all", "since": "evt_nope"})
    err = await recv(ws)
    assert err["error"]["code"] == "unknown_event"
    await ws.close()


async def test_events_written_elsewhere_reach_the_sockets(env: Env) -> None:
    """An event committed without telling the hub (another process: the CLI) arrives by
    the hub's tick."""
    ws = await env.socket()
    await subscribe(ws, subscribe="all")
    now = clock()
    inv, _, _ = await env.store.run(env.ledger.create, new(address=None), now)
    await env.store.run(pay, env.ledger, inv, inv.amount, deep=True, now=now)
    events = [(await recv(ws))["event"] for _ in range(3)]
    assert events == [
        "invoice.created", "invoice.waiting_for_confirmations", "invoice.completed"
    ]
    await ws.close()


async def test_bad_messages_get_errors_and_the_socket_stays(env: Env) -> None:
    ws = await env.socket()
    cases = [
        ("not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        ('{"hello": 1}', "bad_message"),
        ('{"subscribe": "everything"}', "bad_subscription"),
        ('{"subscribe": "invoice"}', "bad_subscription"),
        ('{"subscribe": "client", "clientId": ""}', "bad_subscription"),
        ('{"subscribe": "all", "extra": 1}', "bad_subscription"),
        ('{"subscribe": "all", "since": 5}', "bad_subscription"),
        ('{"unsubscribe": "all"}', "not_subscribed"),
    ]
    for text, code in cases:
        await ws.send_str(text)
        reply = await recv(ws)
        assert reply["error"]["code"] == code, (text, reply)
        assert set(reply["error"]) == {"code", "message"}
    await ws.send_bytes(b"\x00\x01")
    assert (await recv(ws))["error"]["code"] == "bad_message"
    await subscribe(ws, subscribe="all")  # still open and working
    await ws.send_json({"subscribe": "all"})
    assert (await recv(ws))["error"]["code"] == "already_subscribed"
    await ws.send_json({"unsubscribe": "all"})
    assert (await recv(ws)) == {"unsubscribed": {"channel": "all"}}
    await env.create()
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.3)
    await ws.close()


async def test_an_oversized_message_closes_with_1009(env: Env) -> None:
    ws = await env.socket()
    await ws.send_str(json.dumps({"subscribe": "all", "since": "x" * 10_000}))
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == 1009


async def test_a_slow_consumer_is_cut_off(database: str,
                                                             aiohttp_client: Any) -> None:
    e = await make_env(database, aiohttp_client, queue_size=4)
    slow = await e.socket()
    await subscribe(slow, subscribe="all")
    for _ in range(12):  # committed before the hub pumps: one burst of 12 > 4
        await e.store.run(e.ledger.create, new(address=None), clock())
    await e.hub.pump()
    # the slow one never read: it is closed with 1013 after at most its queue
    seen = 0
    while True:
        msg = await slow.receive(timeout=TIMEOUT)
        if msg.type != WSMsgType.TEXT:
            break
        seen += 1
    assert seen <= 4 and slow.close_code == 1013
    for _ in range(50):
        if e.hub.subscriptions == 0:
            break
        await asyncio.sleep(0.02)
    assert e.hub.subscriptions == 0  # the cut socket dropped its subscription
    await e.store.close()


async def test_a_reading_client_gets_every_message_of_a_burst(database: str,
                                                              aiohttp_client: Any) -> None:
    e = await make_env(database, aiohttp_client, queue_size=64)
    ws = await e.socket()
    await subscribe(ws, subscribe="all")
    for _ in range(40):
        await e.store.run(e.ledger.create, new(address=None), clock())
    await e.hub.pump()
    got = [await recv(ws) for _ in range(40)]
    assert [m["event"] for m in got] == ["invoice.created"] * 40
    seqs = [m["data"]["id"] for m in got]
    assert len(set(seqs)) == 40
    await ws.close()
    await e.store.close()


async def test_connection_and_subscription_limits(database: str, aiohttp_client: Any) -> None:
    e = await make_env(database, aiohttp_client, max_connections=1, max_subscriptions=2)
    ws = await e.socket()
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await e.socket()
    assert exc.value.status == 503
    await subscribe(ws, subscribe="all")
    await subscribe(ws, subscribe="client", clientId="a")
    await ws.send_json({"subscribe": "client", "clientId": "b"})
    assert (await recv(ws))["error"]["code"] == "too_many_subscriptions"
    metrics = e.metrics.registry.get_sample_value
    assert metrics("payment_watcher_ws_connections", {"listener": "api"}) == 1
    await ws.close()
    for _ in range(50):
        if e.sockets.open == 0:
            break
        await asyncio.sleep(0.02)
    assert metrics("payment_watcher_ws_connections", {"listener": "api"}) == 0
    again = await e.socket()  # the slot is free again
    await again.close()
    await e.store.close()


async def test_messages_are_counted(env: Env) -> None:
    ws = await env.socket()
    await subscribe(ws, subscribe="all")
    await env.create()
    await recv(ws)
    value = env.metrics.registry.get_sample_value(
        "payment_watcher_ws_messages_total", {"listener": "api"}
    )
    assert value is not None and value >= 2  # the ack and the event
    await ws.close()


async def test_heartbeat_pings_and_closes_a_silent_client(database: str,
                                                         aiohttp_client: Any) -> None:
    e = await make_env(database, aiohttp_client, heartbeat=1.0)
    ws = await e.client.ws_connect("/v1/ws", headers=AUTH, autoping=False)
    kinds = []
    while True:
        msg = await ws.receive(timeout=10)
        kinds.append(msg.type)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
    assert kinds[0] == WSMsgType.PING  # it was pinged, never answered, and closed
    for _ in range(50):
        if e.sockets.open == 0:
            break
        await asyncio.sleep(0.05)
    assert e.sockets.open == 0
    await e.store.close()


class _Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_frames_of_one_loop_turn_leave_in_one_write() -> None:
    from watcher.web.channels import _Coalescing

    real = _Recorder()
    proxy = _Coalescing(real)
    proxy.write(b"\x81\x01a")
    proxy.write(b"\x81\x01b")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"\x81\x01a\x81\x01b"]
    proxy.write(b"\x81\x01c")
    proxy.write(b"\x88\x02\x03\xe8")  # a close frame: at once, after what waits
    assert real.writes[1:] == [b"\x81\x01c\x88\x02\x03\xe8"]
    proxy.write(b"\x81\x01d")
    proxy.close()  # what waits goes first
    assert real.writes[2:] == [b"\x81\x01d"] and real.closed
    await asyncio.sleep(0)
    assert len(real.writes) == 3


async def test_a_plain_get_is_a_400_json(env: Env) -> None:
    resp = await env.client.get("/v1/ws", headers=AUTH)
    assert resp.status == 400
    data = await resp.json()
    assert set(data["error"]) == {"code", "message", "field"}
