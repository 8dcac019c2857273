"""WebSocket channels over the hub: the merchant's `GET /v1/ws` and the customer's
`GET /pay/{id}/ws`.

Each socket has one writer task, the only one that sends on it: it drains the
connection's queue (hub messages, replies, replays) so frames never interleave, and a
client that stops reading blocks only its own writer until the queue overflows and it is
cut off (close 1013). Incoming messages are small JSON objects; a bigger one closes the
socket with 1009 (aiohttp's `max_msg_size`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from watcher.errors import Unavailable
from watcher.metrics import Metrics
from watcher.web.hub import CHANNELS, Connection, Hub, Key, Message

log = logging.getLogger(__name__)

#: Largest message a client may send (a subscribe is ~100 bytes).
MAX_CLIENT_MESSAGE = 4096
#: Close code of a socket whose invoice does not exist (4000-4999: application codes).
CLOSE_NOT_FOUND = 4404
#: How long a cut-off client gets to take its close frame before the connection is dropped.
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 5000
    max_subscriptions: int = 100
    queue_size: int = 1024
    heartbeat: float = 25.0


@dataclass(slots=True)
class Replay:
    """Queued for the writer: send the events of `key` after `since` up to `upto`, then
    release the live messages that waited meanwhile."""

    key: Key
    since: int
    upto: int


class Sockets:
    """The open sockets of one listener: the limit, the gauge, the message counter."""

    def __init__(self, listener: str, hub: Hub, limits: Limits, metrics: Metrics | None) -> None:
        self.listener = listener
        self.hub = hub
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.websockets: set[web.WebSocketResponse] = set()

    async def close_all(self) -> None:
        """On shutdown: close every socket (1001, going away) so handlers end promptly."""
        for ws in list(self.websockets):
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(
                    ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"),
                    CLOSE_TIMEOUT,
                )

    async def on_shutdown(self, _app: web.Application) -> None:
        await self.close_all()

    def admit(self) -> None:
        if self.open >= self.limits.max_connections:
            raise Unavailable(
                f"too many open sockets (channels.max_connections = "
                f"{self.limits.max_connections}); try again later",
                code="too_many_connections",
            )

    def opened(self) -> None:
        self.open += 1
        if self.metrics is not None:
            self.metrics.ws_connections.labels(listener=self.listener).set(self.open)

    def closed(self) -> None:
        self.open -= 1
        if self.metrics is not None:
            self.metrics.ws_connections.labels(listener=self.listener).set(self.open)

    def sent(self) -> None:
        if self.metrics is not None:
            self.metrics.ws_messages.labels(listener=self.listener).inc()

    def connection(self) -> Connection:
        return Connection(self.listener, self.limits.queue_size)


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


Encode = Callable[[Message], Awaitable[bytes | None]]


async def _writer(
    ws: web.WebSocketResponse, conn: Connection, sockets: Sockets, encode: Encode
) -> None:
    """Send what the connection queues until the end mark; close 1013 if it was cut."""
    hub = sockets.hub
    while True:
        item = await conn.queue.get()
        if item is None:
            break
        if isinstance(item, Replay):
            for msg in await hub.replay(item.key, item.since, item.upto):
                await ws.send_str(msg.encoded(item.key[0]).decode())
                sockets.sent()
            hub.release(conn, item.key, item.upto)
            continue
        raw = item if isinstance(item, bytes) else await encode(item)
        if raw is not None:
            await ws.send_str(raw.decode())
            sockets.sent()
    if conn.cut:
        log.info("%s socket cut off: it fell %d messages behind", sockets.listener,
                 sockets.limits.queue_size)
        await ws.close(
            code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow: messages were not read"
        )


async def serve_socket(
    request: web.Request,
    sockets: Sockets,
    conn: Connection,
    encode: Encode,
    on_text: Callable[[str], Awaitable[None]] | None,
    on_open: Callable[[web.WebSocketResponse], Awaitable[bool]] | None = None,
) -> web.WebSocketResponse:
    """Run one socket: upgrade, start the writer, read client messages until it closes."""
    ws = web.WebSocketResponse(
        heartbeat=sockets.limits.heartbeat, max_msg_size=MAX_CLIENT_MESSAGE, compress=False
    )
    await ws.prepare(request)
    sockets.opened()
    sockets.websockets.add(ws)
    writer = asyncio.create_task(_writer(ws, conn, sockets, encode))
    sockets.tasks.add(writer)
    writer.add_done_callback(sockets.tasks.discard)
    try:
        if on_open is None or await on_open(ws):
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and on_text is not None:
                    await on_text(msg.data)
                elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    conn.push_raw(_error("bad_message", "send JSON text messages"))
                if writer.done():
                    break
    finally:
        sockets.hub.drop(conn)
        if not writer.done():
            if conn.cut:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), CLOSE_TIMEOUT)
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
            await writer
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT)
        sockets.websockets.discard(ws)
        sockets.closed()
    return ws


# ---------------------------------------------------------------- merchant channel


def _subscription(data: dict[str, Any], verb: str) -> Key:
    """The key a subscribe/unsubscribe message names; ValueError with the reason if none."""
    channel = data.get(verb)
    if channel not in CHANNELS:
        raise ValueError(f"{verb} must be one of {', '.join(CHANNELS)}")
    if channel == "all":
        return ("all", "")
    name = "id" if channel == "invoice" else "clientId"
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ValueError(f'{verb} "{channel}" needs "{name}" (a string of 1 to 128 characters)')
    return (channel, value)


class MerchantSession:
    """The client messages of one `/v1/ws` socket."""

    def __init__(self, sockets: Sockets, conn: Connection) -> None:
        self.sockets = sockets
        self.conn = conn

    async def on_text(self, text: str) -> None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.conn.push_raw(_error("bad_message", "the message is not valid JSON"))
            return
        if not isinstance(data, dict):
            self.conn.push_raw(_error("bad_message", "the message must be a JSON object"))
            return
        verbs = [v for v in ("subscribe", "unsubscribe") if v in data]
        if len(verbs) != 1:
            self.conn.push_raw(
                _error("bad_message", 'send {"subscribe": ...} or {"unsubscribe": ...}')
            )
            return
        verb = verbs[0]
        unknown = set(data) - {verb, "id", "clientId", "since"}
        try:
            if unknown:
                raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
            key = _subscription(data, verb)
        except ValueError as exc:
            self.conn.push_raw(_error("bad_subscription", str(exc)))
            return
        if verb == "unsubscribe":
            if not self.sockets.hub.unsubscribe(self.conn, key):
                self.conn.push_raw(_error("not_subscribed", "no such subscription"))
                return
            self.conn.push_raw(orjson.dumps({"unsubscribed": _describe(key)}))
            return
        await self._subscribe(key, data.get("since"))

    async def _subscribe(self, key: Key, since: object) -> None:
        hub = self.sockets.hub
        if key in self.conn.keys:
            self.conn.push_raw(_error("already_subscribed", "already subscribed to this"))
            return
        if len(self.conn.keys) >= self.sockets.limits.max_subscriptions:
            self.conn.push_raw(
                _error(
                    "too_many_subscriptions",
                    f"at most {self.sockets.limits.max_subscriptions} subscriptions per "
                    "connection (channels.max_subscriptions)",
                )
            )
            return
        since_seq: int | None = None
        if since is not None:
            if not isinstance(since, str) or not since:
                self.conn.push_raw(_error("bad_subscription", "since must be an event id"))
                return
            since_seq = await hub.event_seq(since)
            if since_seq is None:
                self.conn.push_raw(_error("unknown_event", f"no event {since!r} to replay after"))
                return
        upto = hub.subscribe(self.conn, key, hold=since_seq is not None)
        self.conn.push_raw(orjson.dumps({"subscribed": _describe(key)}))
        if since_seq is not None:
            self.conn.push_replay(Replay(key, since_seq, upto))


def _describe(key: Key) -> dict[str, str]:
    channel, value = key
    if channel == "invoice":
        return {"channel": channel, "id": value}
    if channel == "client":
        return {"channel": channel, "clientId": value}
    return {"channel": channel}


async def merchant_socket(request: web.Request, sockets: Sockets) -> web.WebSocketResponse:
    """`GET /v1/ws` (the API's auth middleware has checked the key before the upgrade)."""
    sockets.admit()
    conn = sockets.connection()
    session = MerchantSession(sockets, conn)

    async def encode(msg: Message) -> bytes | None:
        for key in msg.routes():
            if key in conn.keys:
                return msg.encoded(key[0])
        return None  # unsubscribed since it was queued

    return await serve_socket(request, sockets, conn, encode, session.on_text)
