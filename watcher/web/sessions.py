"""Sessions of the merchant dashboard: sign-in with an API key, server-side sessions,
CSRF tokens, and the limit on failed sign-ins.

A session is a random id in an HttpOnly, SameSite=Strict cookie; the database keeps only
its SHA-256 (`dashboard_sessions`, migration 0011), so a copy of the database opens no
session. The API key it was opened with is kept as a fingerprint, never the key: a session
ends when its key leaves the configuration. Each session has its own CSRF token, compared
in constant time. Expiry (idle and absolute) uses the host's clock: sessions are not chain
decisions. Functions that take the `Db` first run on the store's writer thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from watcher.storage.base import Db
from watcher.storage.store import transaction

#: The session's cookie (path /dashboard).
SESSION_COOKIE = "pw_dashboard"
#: The sign-in form's own token (double submit: the cookie and the form field must agree).
SIGNIN_COOKIE = "pw_dashboard_signin"
#: How often a session's `last_seen` is written at most (every request would be a write).
TOUCH_EVERY = 30
#: Client addresses the sign-in limiter remembers at most (the oldest are forgotten).
MAX_TRACKED = 10_000


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a session id."""
    return hashlib.sha256(token.encode()).hexdigest()


def key_fingerprint(key: str) -> str:
    """A short, one-way name of an API key (which key opened a session, never the key)."""
    return hashlib.sha256(b"payment-watcher dashboard key\0" + key.encode()).hexdigest()[:16]


def same_token(given: object, expected: str | None) -> bool:
    """`given` is the non-empty string `expected`; compared in constant time."""
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def matching_key(given: str, keys: Iterable[str]) -> str | None:
    """The configured key equal to `given`, compared with every key in constant time;
    None when none is (or `given` is empty)."""
    found: str | None = None
    data = given.strip().encode()
    for key in keys:
        if hmac.compare_digest(data, key.encode()) and data:
            found = key
    return found


@dataclass(frozen=True, slots=True)
class Session:
    id_hash: str
    csrf: str
    key_fingerprint: str
    created_at: int
    last_seen: int


@dataclass(frozen=True, slots=True)
class Policy:
    """When a session is over: unused for `idle` seconds, `lifetime` seconds after sign-in,
    or its key is no longer configured."""

    idle: int
    lifetime: int

    def alive(self, s: Session, now: int, fingerprints: Iterable[str]) -> bool:
        return (
            now - s.last_seen <= self.idle
            and now - s.created_at <= self.lifetime
            and s.key_fingerprint in set(fingerprints)
        )


# ---------------------------------------------------------------- database functions


def open_session(
    db: Db, id_hash: str, csrf: str, fingerprint: str, now: int, policy: Policy
) -> None:
    """Store a new session (and forget the ones that are over by time)."""
    with transaction(db):
        db.execute(
            "DELETE FROM dashboard_sessions WHERE last_seen < ? OR created_at < ?",
            [now - policy.idle, now - policy.lifetime],
        )
        db.execute(
            "INSERT INTO dashboard_sessions (id_hash, csrf, key_fingerprint, created_at, "
            "last_seen) VALUES (?, ?, ?, ?, ?)",
            [id_hash, csrf, fingerprint, now, now],
        )


def load_session(db: Db, id_hash: str) -> Session | None:
    row = db.execute(
        "SELECT id_hash, csrf, key_fingerprint, created_at, last_seen FROM dashboard_sessions "
        "WHERE id_hash = ?",
        [id_hash],
    ).fetchone()
    return None if row is None else Session(*row)


def touch_session(db: Db, id_hash: str, now: int) -> None:
    db.execute("UPDATE dashboard_sessions SET last_seen = ? WHERE id_hash = ?", [now, id_hash])


def close_session(db: Db, id_hash: str) -> None:
    db.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", [id_hash])


def put_flash(db: Db, id_hash: str, kind: str, text: str) -> None:
    """One message for the session's next page (`kind` "ok" or "error")."""
    db.execute(
        "UPDATE dashboard_sessions SET flash = ? WHERE id_hash = ?",
        [orjson.dumps({"kind": kind, "text": text}).decode(), id_hash],
    )


def take_flash(db: Db, id_hash: str) -> dict[str, Any] | None:
    """The session's message, removed (a page without one writes nothing; this runs on the
    store's one thread, so nothing comes between the read and the removal)."""
    row = db.execute(
        "SELECT flash FROM dashboard_sessions WHERE id_hash = ?", [id_hash]
    ).fetchone()
    if row is None or row[0] is None:
        return None
    db.execute("UPDATE dashboard_sessions SET flash = NULL WHERE id_hash = ?", [id_hash])
    flash: dict[str, Any] = orjson.loads(row[0])
    return flash


# ---------------------------------------------------------------- failed sign-ins


class SignInLimiter:
    """At most `limit` failed sign-ins per client address in `window` seconds; beyond that
    the address waits until its oldest failure leaves the window. In memory: a restart
    forgets (the window is a minute)."""

    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str) -> deque[float]:
        now = self.clock()
        seen = self._failures.get(ip)
        if seen is None:
            return deque()
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if not seen:
            del self._failures[ip]
        return seen

    def wait(self, ip: str) -> int:
        """Seconds `ip` has to wait before it may try again (0: it may)."""
        seen = self._recent(ip)
        if len(seen) < self.limit:
            return 0
        return max(1, int(seen[0] + self.window - self.clock() + 0.999))

    def failed(self, ip: str) -> None:
        seen = self._recent(ip)
        seen.append(self.clock())
        self._failures.pop(ip, None)  # re-inserted: the dict stays in least-recent order
        self._failures[ip] = seen
        while len(self._failures) > MAX_TRACKED:
            del self._failures[next(iter(self._failures))]
