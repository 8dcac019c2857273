"""sd_notify against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert n.enabled
    assert n.ready()
    assert _recv(sock) == "READY=1"
    assert n.status("scanning polygon\nblock 12")
    assert _recv(sock) == "STATUS=scanning polygon block 12"
    assert n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert n.extend_timeout(1.5)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=1500000"
    assert n.stopping()
    assert _recv(sock) == "STOPPING=1"
    assert n.watchdog_interval() == 15.0
    n.close()


def test_abstract_socket() -> None:
    name = f"payment-watcher-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(sock) == "READY=1"
        n.close()
    finally:
        sock.close()


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready()
    assert not n.status("x")
    assert not n.watchdog()
    assert not n.stopping()
    assert n.watchdog_interval() is None


def test_watchdog_settings(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket
    assert Notifier({"NOTIFY_SOCKET": path}).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": path}).watchdog() is False
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    assert Notifier(env).watchdog_interval() == 1.0
    # WATCHDOG_PID names another process: the watchdog is not ours.
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None


def test_missing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert n.enabled
    assert n.ready() is False


async def test_watchdog_loop_pings_from_the_event_loop(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    task = asyncio.create_task(n.watchdog_loop())
    await asyncio.sleep(0.28)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = []
    while True:
        try:
            pings.append(sock.recv(64).decode())
        except BlockingIOError:
            break
    assert 2 <= len(pings) <= 7  # ~6 expected; lenient on a loaded machine
    assert set(pings) == {"WATCHDOG=1"}


async def test_watchdog_loop_skips_pings_when_unhealthy(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(n.watchdog_loop(healthy=lambda: False))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(BlockingIOError):
        sock.recv(64)


async def test_watchdog_loop_returns_without_watchdog() -> None:
    await asyncio.wait_for(Notifier({}).watchdog_loop(), 1)
