"""The systemd notify protocol (`sd_notify(3)`), without a dependency.

systemd passes `NOTIFY_SOCKET` (a filesystem path, or `@name` for an abstract socket) to a
`Type=notify` service; the service sends newline-separated `KEY=VALUE` datagrams to it.
With `WatchdogSec=` set, systemd also passes `WATCHDOG_USEC` (and `WATCHDOG_PID`) and kills
and restarts the service when no `WATCHDOG=1` arrives within that time.

`Notifier.watchdog_loop()` pings from the event loop itself: if the loop is blocked (a
synchronous call that never returns, a busy loop), the pings stop and systemd restarts the
daemon. Everything is a no-op when `NOTIFY_SOCKET` is unset (running in a terminal, tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager. Cheap to create; safe when not under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _parse_watchdog(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given (the process runs under systemd)."""
        return self._address is not None

    # -- protocol messages -------------------------------------------------------------------

    def ready(self) -> bool:
        """Start-up finished: systemd considers the unit started (`READY=1`)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status` (`STATUS=...`)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> bool:
        """Shutdown began (`STOPPING=1`)."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive ping (`WATCHDOG=1`); sent only when systemd asked for a watchdog."""
        if self._watchdog_usec is None:
            return False
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (`EXTEND_TIMEOUT_USEC=...`)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of `WATCHDOG_USEC`), or None without a watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def watchdog_loop(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping every `watchdog_interval()` seconds from the event loop, until cancelled.

        `healthy`, when given, is asked before every ping; a False answer skips the ping, so
        a daemon whose essential tasks are wedged gets restarted even though its loop runs.
        Returns at once when there is no watchdog.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            else:
                log.warning("not healthy: skipping the watchdog ping")
            await asyncio.sleep(interval)

    # -- transport ---------------------------------------------------------------------------

    def notify(self, *fields: str) -> bool:
        """Send `fields` (each `KEY=VALUE`) in one datagram. True if it was sent."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full receive queue: drop the message instead.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", data, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _parse_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # `vsock:` and other transports are not used for a local service.
    log.warning("unsupported NOTIFY_SOCKET %r: notifications disabled", value)
    return None


def _parse_watchdog(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            return None
    return usec
