"""Callback signing, and `verify_signature` for the receivers of those callbacks.

Every callback carries `X-Watcher-Timestamp` (unix seconds of that attempt) and, when
`callbacks.secret` is configured, `X-Watcher-Signature: sha256=<hex>` where the hex is
HMAC-SHA256 keyed with the secret over `f"{timestamp}."` followed by the raw request body.
Signing the timestamp with the body lets a receiver refuse replays of old requests.

This module imports nothing from the rest of the daemon, so a receiver written in Python can
use it as is (or copy it: it is short).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from watcher import __version__

SIGNATURE_PREFIX = "sha256="
USER_AGENT = f"payment-watcher/{__version__}"

HEADER_EVENT = "X-Watcher-Event"
HEADER_DELIVERY = "X-Watcher-Delivery"
HEADER_TIMESTAMP = "X-Watcher-Timestamp"
HEADER_SIGNATURE = "X-Watcher-Signature"

#: How far (seconds) a timestamp may be from the receiver's clock, by default.
DEFAULT_TOLERANCE = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`"sha256=" + hex(HMAC-SHA256(secret, f"{timestamp}." + body))`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def headers(
    event: str, event_id: str, secret: str | None, body: bytes, now: int
) -> dict[str, str]:
    """The headers of one delivery attempt made at unix time `now`.

    `X-Watcher-Signature` is left out when no secret is configured.
    """
    out = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_EVENT: event,
        HEADER_DELIVERY: event_id,
        HEADER_TIMESTAMP: str(now),
    }
    if secret:
        out[HEADER_SIGNATURE] = sign(secret, now, body)
    return out


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int | None = None,
) -> bool:
    """True if `body` was signed with `secret` at a time within `tolerance` seconds of `now`.

    `headers` is any mapping of the request headers (a dict, aiohttp's `request.headers`,
    Flask's `request.headers`, ...); names are looked up case-insensitively. `body` must be
    the raw request body, byte for byte, before any JSON parsing. False when a header is
    missing or malformed, when the signature does not match (compared in constant time),
    or when the timestamp is more than `tolerance` seconds in the past or the future.

    Example, in an aiohttp handler::

        from watcher.signing import verify_signature

        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            if not verify_signature(SECRET, request.headers, body):
                return web.Response(status=401)
            event = json.loads(body)
            if already_processed(request.headers["X-Watcher-Delivery"]):
                return web.Response(status=200)  # a retry of something already handled
            ...
            return web.Response(status=200)
    """
    if not secret:
        return False
    wanted = {HEADER_TIMESTAMP.lower(): "", HEADER_SIGNATURE.lower(): ""}
    for name, value in headers.items():
        key = name.lower()
        if key in wanted and not wanted[key]:
            wanted[key] = value
    stamp = wanted[HEADER_TIMESTAMP.lower()].strip()
    given = wanted[HEADER_SIGNATURE.lower()].strip()
    if not stamp.isascii() or not stamp.isdigit() or not given:
        return False
    timestamp = int(stamp)
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
