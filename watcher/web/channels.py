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

from watcher.errors import StoreError, Unavailable
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
        self.open = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.websockets: set[web.WebSocketResponse] = set()
        # the children of the labelled series, looked up once (a labels() call per message
        # would cost more than the rest of the send)
        self._gauge = metrics.ws_connections.labels(listener=listener) if metrics else None
        self._sent = metrics.ws_messages.labels(listener=listener) if metrics else None

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
        if self._gauge is not None:
            self._gauge.set(self.open)

    def closed(self) -> None:
        self.open -= 1
        if self._gauge is not None:
            self._gauge.set(self.open)

    def sent(self) -> None:
        if self._sent is not None:
            self._sent.inc()

    def connection(self) -> Connection:
        return Connection(self.listener, self.limits.queue_size)


class _Coalescing:
    """A transport proxy under aiohttp's WebSocket writer: the data frames written in one
    turn of the event loop leave in one `write`, so one system call instead of one per
    frame when a commit fans out dozens of events to a socket (the send was 80% of the cost
    of a message; 200 sockets x 400 frames: 1.0 s of CPU before, 0.3-0.5 s after).
    Control frames (close, ping, pong: opcode >= 8 in the frame's first byte) go at once,
    after what is buffered, because aiohttp may close the transport right after a close
    frame. Everything else is the real transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._parts: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        if chunk and chunk[0] & 0x0F >= 8:  # a control frame
            self._parts.append(chunk)
            self.flush()
            return
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(chunk)

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalesce(ws: web.WebSocketResponse) -> None:
    """Put `_Coalescing` under the socket's frame writer (aiohttp keeps it in `_writer`; an
    aiohttp without it just sends frame by frame)."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if writer is not None and isinstance(transport, asyncio.Transport):
        writer.transport = _Coalescing(transport)


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


#: a client message that needed the database while it could not be used (it did nothing)
_UNAVAILABLE = _error("unavailable", "the database cannot be used right now: nothing was "
                      "done; send the message again later")


#: A hub message as this socket sends it (None: nothing to send).
Encode = Callable[[Message], bytes | None]


async def _writer(
    ws: web.WebSocketResponse, conn: Connection, sockets: Sockets, encode: Encode
) -> None:
    """Send what the connection queues until the end mark; close 1013 if it was cut."""
    hub = sockets.hub
    queue = conn.queue
    ended = False
    while not ended:
        batch = [await queue.get()]
        while not queue.empty():  # what else is waiting goes in the same turn
            batch.append(queue.get_nowait())
        for item in batch:
            if item is None:
                ended = True
                break
            if isinstance(item, Replay):
                for msg in await hub.replay(item.key, item.since, item.upto):
                    await ws.send_frame(msg.encoded(item.key[0]), WSMsgType.TEXT)
                    sockets.sent()
                hub.release(conn, item.key, item.upto)
                continue
            raw = item if isinstance(item, bytes) else encode(item)
            if raw is not None:
                await ws.send_frame(raw, WSMsgType.TEXT)  # JSON is UTF-8 already
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
    _coalesce(ws)
    sockets.opened()
    sockets.websockets.add(ws)
    writer = asyncio.create_task(_writer(ws, conn, sockets, encode))
    sockets.tasks.add(writer)
    writer.add_done_callback(sockets.tasks.discard)
    try:
        try:
            opened = on_open is None or await on_open(ws)
        except StoreError:  # its first read failed: the page falls back to polling
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"database unavailable")
            opened = False
        if opened:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and on_text is not None:
                    try:
                        await on_text(msg.data)
                    except StoreError:
                        conn.push_raw(_UNAVAILABLE)
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
        upto = hub.subscribe(self.conn, key, hold=True)
        if since_seq is None:
            # live from the ack: the events committed before it are not sent, even those
            # the hub has not published yet; the ones after it wait in the hold
            try:
                upto = await hub.committed_seq()
            except BaseException:
                hub.unsubscribe(self.conn, key)
                raise
            if key not in self.conn.keys:  # the socket closed meanwhile
                return
        self.conn.push_raw(orjson.dumps({"subscribed": _describe(key)}))
        if since_seq is not None:
            self.conn.push_replay(Replay(key, since_seq, upto))
        else:
            hub.release(self.conn, key, upto)


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

    def encode(msg: Message) -> bytes | None:
        for key in msg.routes():
            if key in conn.keys:
                return msg.encoded(key[0])
        return None  # unsubscribed since it was queued

    return await serve_socket(request, sockets, conn, encode, session.on_text)
