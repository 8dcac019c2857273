"""Callback signing, and the verifiers for the receivers of those callbacks.

Every callback carries two sets of signing headers over the same raw body:

- `X-Watcher-Timestamp` (unix seconds of that attempt) and, when `callbacks.secret` is
  configured, `X-Watcher-Signature: sha256=<hex>`: HMAC-SHA256 keyed with the secret string's
  UTF-8 bytes over `f"{timestamp}."` followed by the raw body. `verify_signature` checks it.
- The Standard Webhooks headers (https://www.standardwebhooks.com, the `standardwebhooks`
  libraries for Python, Node, PHP, Go, ...): `webhook-id` (the event id), `webhook-timestamp`
  and `webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}." + body)>`, where
  `key` is `webhook_key(secret)`: the bytes after `whsec_` base64-decoded when the secret has
  that form, else the secret's UTF-8 bytes. `verify_webhook` checks it.

Signing the timestamp with the body lets a receiver refuse replays of old requests.

This module imports nothing from the rest of the daemon, so a receiver written in Python can
use it as is (or copy it: it is short).
"""

from __future__ import annotations

import base64
import binascii
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

#: The Standard Webhooks headers (the spec writes them in lower case).
HEADER_WEBHOOK_ID = "webhook-id"
HEADER_WEBHOOK_TIMESTAMP = "webhook-timestamp"
HEADER_WEBHOOK_SIGNATURE = "webhook-signature"
#: A secret of the Standard Webhooks form: this prefix, then the key in standard base64.
WHSEC_PREFIX = "whsec_"
WEBHOOK_VERSION = "v1"

#: How far (seconds) a timestamp may be from the receiver's clock, by default.
DEFAULT_TOLERANCE = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`"sha256=" + hex(HMAC-SHA256(secret, f"{timestamp}." + body))`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def webhook_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks signature for `secret`.

    `whsec_<base64>`: the base64 part decoded (standard alphabet, with its `=` padding).
    Any other secret: its UTF-8 bytes, so a receiver's library is given
    `"whsec_" + base64(secret.encode())` for it. ValueError (which never quotes the secret)
    when a `whsec_` secret is not valid base64 or decodes to nothing.
    """
    if not secret.startswith(WHSEC_PREFIX):
        if not secret:
            raise ValueError("the secret is empty")
        return secret.encode()
    encoded = secret[len(WHSEC_PREFIX) :]
    try:
        if len(encoded) % 4:
            raise ValueError("not a whole number of base64 quads")
        key = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise ValueError(
            "starts with whsec_ but what follows is not standard base64 "
            "(A-Z, a-z, 0-9, +, / with = padding)"
        ) from None
    if not key:
        raise ValueError("starts with whsec_ but holds no key after it")
    return key


def webhook_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`"v1," + base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}." + body))`, the value of
    `webhook-signature` (`key` from `webhook_key`)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"{WEBHOOK_VERSION},{base64.b64encode(mac.digest()).decode()}"


def headers(
    event: str, event_id: str, secret: str | None, body: bytes, now: int
) -> dict[str, str]:
    """The headers of one delivery attempt made at unix time `now`.

    `X-Watcher-Signature` and `webhook-signature` are left out when no secret is configured.
    ValueError for a `whsec_` secret that is not valid (see `webhook_key`).
    """
    out = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        HEADER_EVENT: event,
        HEADER_DELIVERY: event_id,
        HEADER_TIMESTAMP: str(now),
        HEADER_WEBHOOK_ID: event_id,
        HEADER_WEBHOOK_TIMESTAMP: str(now),
    }
    if secret:
        out[HEADER_SIGNATURE] = sign(secret, now, body)
        out[HEADER_WEBHOOK_SIGNATURE] = webhook_signature(webhook_key(secret), event_id, now, body)
    return out


def _pick(headers: Mapping[str, str], *names: str) -> list[str]:
    """The first value of each of `names` (looked up case-insensitively), "" when absent."""
    wanted = {n.lower(): "" for n in names}
    for name, value in headers.items():
        key = name.lower()
        if key in wanted and not wanted[key]:
            wanted[key] = value
    return [wanted[n.lower()].strip() for n in names]


def _timestamp(stamp: str, tolerance: int, now: int | None) -> int | None:
    """The header's unix seconds if it is digits within `tolerance` of `now`, else None."""
    if not stamp.isascii() or not stamp.isdigit():
        return None
    timestamp = int(stamp)
    current = int(time.time()) if now is None else now
    return timestamp if abs(current - timestamp) <= tolerance else None


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
    stamp, given = _pick(headers, HEADER_TIMESTAMP, HEADER_SIGNATURE)
    timestamp = _timestamp(stamp, tolerance, now)
    if timestamp is None or not given:
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int | None = None,
) -> bool:
    """True if the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`) sign `body` with `secret` at a time within `tolerance` seconds of
    `now`; what the `standardwebhooks` libraries check.

    `secret` is the configured `callbacks.secret` as it is (`whsec_...` or plain); `headers`
    any mapping (names looked up case-insensitively); `body` the raw request body.
    `webhook-signature` may list several space-separated `v1,<base64>` signatures: one
    matching is enough (compared in constant time). False when a header is missing or
    malformed, the secret is not valid (see `webhook_key`), nothing matches, or the
    timestamp is too far in the past or the future.
    """
    try:
        key = webhook_key(secret)
    except ValueError:
        return False
    msg_id, stamp, given = _pick(
        headers, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_TIMESTAMP, HEADER_WEBHOOK_SIGNATURE
    )
    timestamp = _timestamp(stamp, tolerance, now)
    if timestamp is None or not msg_id or not given:
        return False
    expected = webhook_signature(key, msg_id, timestamp, body).encode()
    ok = False
    for candidate in given.split():
        ok |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    return ok
