"""The hub's fan-out rules, without sockets: routing, once per connection, held
subscriptions and their floor, bounded queues."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from watcher.storage.store import Store
from watcher.web.hub import Connection, Hub, Message


def msg(seq: int, invoice: str = "i1", client: str | None = None) -> Message:
    data: dict[str, Any] = {"id": invoice, "clientId": client}
    raw = orjson.dumps({"id": f"evt_{seq}", "data": data})
    return Message(seq, f"evt_{seq}", invoice, raw, client)


def drain(conn: Connection) -> list[Any]:
    out = []
    while not conn.queue.empty():
        item = conn.queue.get_nowait()
        out.append(item.seq if isinstance(item, Message) else item)
    return out


@pytest.fixture
async def hub(database: str) -> Any:
    store = await Store(database).open()
    h = Hub(store)
    await h.start()
    yield h
    await store.close()


async def test_an_event_reaches_a_connection_once(hub: Hub) -> None:
    both, other = Connection("api", 10), Connection("api", 10)
    hub.subscribe(both, ("invoice", "i1"))
    hub.subscribe(both, ("all", ""))
    hub.subscribe(other, ("client", "c"))
    hub.publish(msg(1, "i1", "c"))
    hub.publish(msg(2, "i2", "d"))
    assert drain(both) == [1, 2]
    assert drain(other) == [1]
    assert msg(1, "i1", "c").routes() == [("invoice", "i1"), ("client", "c"), ("all", "")]


async def test_held_events_follow_the_replay_and_older_ones_never_come(hub: Hub) -> None:
    conn = Connection("checkout", 10)
    key = ("invoice", "i1")
    hub.subscribe(conn, key, hold=True)
    hub.publish(msg(5))
    hub.publish(msg(7))
    assert drain(conn) == []  # waiting for the replay / first view
    hub.release(conn, key, 5)  # the first view covered up to event 5
    assert drain(conn) == [7]
    hub.publish(msg(4))  # an older event published late: already in the view
    hub.publish(msg(9))
    assert drain(conn) == [9]


async def test_a_full_queue_cuts_the_connection(hub: Hub) -> None:
    conn = Connection("api", 3)
    hub.subscribe(conn, ("all", ""))
    for seq in range(1, 6):
        hub.publish(msg(seq))
    assert conn.cut
    assert drain(conn) == [1, 2, 3, None]  # the end mark after what fitted
    hub.publish(msg(6))
    assert drain(conn) == []


async def test_too_many_held_events_cut_too(hub: Hub) -> None:
    conn = Connection("api", 2)
    hub.subscribe(conn, ("all", ""), hold=True)
    for seq in range(1, 4):
        hub.publish(msg(seq))
    assert conn.cut and drain(conn) == [None]


async def test_unsubscribe_and_drop(hub: Hub) -> None:
    conn = Connection("api", 10)
    hub.subscribe(conn, ("all", ""))
    hub.subscribe(conn, ("invoice", "i1"))
    assert hub.subscriptions == 2
    assert hub.unsubscribe(conn, ("all", "")) and not hub.unsubscribe(conn, ("all", ""))
    hub.drop(conn)
    assert hub.subscriptions == 0
    hub.publish(msg(1))
    assert drain(conn) == []


def test_the_channel_is_added_to_the_stored_body_as_is() -> None:
    m = msg(3, "i9", "c")
    for channel in ("all", "client", "invoice"):
        assert orjson.loads(m.encoded(channel)) == {**orjson.loads(m.raw), "channel": channel}
    assert m.encoded("all") is m.encoded("all")  # made once for every socket
    assert m.body["data"]["clientId"] == "c"
