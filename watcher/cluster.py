"""Several instances on one PostgreSQL database: per network, one leader follows the chain.

Leadership of a network is a session-level advisory lock held by the store's writing
connection, the connection that commits the network's ranges. An instance that dies, or
loses its connection, loses the lock with its session, and a session that is gone cannot
commit. Before each range commit the follower's `fence` checks, inside the commit's own
transaction, that this session still holds the lock: a writer that reconnected holds
nothing until it wins the lock again, so a deposed leader never commits. The `leaders`
table says who leads (for `/v1/networks` and `payment-watcher status` on every instance).

These functions take the `Db` first (for `Store.run`) and need PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

from watcher.errors import NotLeader
from watcher.storage.base import Db


def default_instance_name() -> str:
    """The host name and the process id (`[cluster] instance_name` unset)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def lock_key(network: str) -> int:
    """The advisory lock of `network`'s leadership: 64 bits of a hash of its name."""
    digest = hashlib.blake2b(f"payment-watcher:lead:{network}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def holds(db: Db, network: str) -> bool:
    """This session holds `network`'s lock (a read of `pg_locks`, nothing written)."""
    key = lock_key(network) & 0xFFFFFFFFFFFFFFFF
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid = pg_backend_pid() AND granted AND objsubid = 1 "
        "AND classid = ? AND objid = ?)",
        [key >> 32, key & 0xFFFFFFFF],
    ).fetchone()
    return bool(row and row[0])


def try_lead(db: Db, network: str, instance: str, now: int) -> bool:
    """Take `network`'s leadership if nobody holds it (or this session already does);
    True when this session leads. Recorded in `leaders` when it does."""
    if not holds(db, network):
        row = db.execute("SELECT pg_try_advisory_lock(?)", [lock_key(network)]).fetchone()
        if not row or not row[0]:
            return False
    with db.transaction():
        db.execute(
            "INSERT INTO leaders (network, instance, since, seen_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (network) DO UPDATE SET instance = excluded.instance, "
            "since = CASE WHEN leaders.instance = excluded.instance THEN leaders.since "
            "ELSE excluded.since END, seen_at = excluded.seen_at",
            [network, instance, now, now],
        )
    return True


def still_leads(db: Db, network: str, instance: str, now: int) -> bool:
    """This session still holds `network`'s lock; its `leaders` row is refreshed if so."""
    if not holds(db, network):
        return False
    db.execute("UPDATE leaders SET seen_at = ? WHERE network = ? AND instance = ?",
               [now, network, instance])
    return True


def resign(db: Db, network: str) -> None:
    """Let go of `network`'s lock (a clean stop: a standby need not wait)."""
    if holds(db, network):
        db.execute("SELECT pg_advisory_unlock(?)", [lock_key(network)])


def fence(db: Db, network: str) -> None:
    """Inside a range commit's transaction: `NotLeader` unless this session leads."""
    if not holds(db, network):
        raise NotLeader(f"{network}: this instance no longer leads it; nothing committed")


def leaders(db: Db) -> dict[str, dict[str, Any]]:
    """network -> {instance, since, seen_at} as the leaders last wrote them."""
    return {r["network"]: {k: r[k] for k in ("instance", "since", "seen_at")}
            for r in db.query("SELECT network, instance, since, seen_at FROM leaders")}
