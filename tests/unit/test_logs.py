"""Logging: formats, secret redaction, throttling."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from watcher.logs import REDACTED, Throttle, setup_logging

SECRET = "sk_live_0123456789abcdef"
SECRET2 = "hmac-secret/with+chars"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _setup(fmt: str, monkeypatch: pytest.MonkeyPatch, journal: bool = False) -> io.StringIO:
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("debug", fmt, [SECRET, SECRET2, ""], stream=out)
    return out


def _log_everything(log: logging.Logger) -> None:
    log.info("key is %s", SECRET)
    log.warning("url https://rpc.example/v1/" + SECRET)
    log.error("callback failed", extra={"network": "polygon", "invoice": "inv1", "url": SECRET2})
    log.info("dict arg %s", {"secret": SECRET2})
    log.info("url-encoded %s", "a%2Fb hmac-secret%2Fwith%2Bchars")
    try:
        raise RuntimeError(f"bad key {SECRET}")
    except RuntimeError:
        log.exception("boom")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_appear(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup(fmt, monkeypatch)
    _log_everything(logging.getLogger("watcher.test"))
    text = out.getvalue()
    assert SECRET not in text
    assert SECRET2 not in text
    assert "hmac-secret%2Fwith%2Bchars" not in text
    assert text.count(REDACTED) >= 6
    assert "https://rpc.example/v1/***" in text


def test_json_lines_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup("json", monkeypatch)
    log = logging.getLogger("watcher.follower")
    log.info("block scanned", extra={"network": "anvil", "block": 12, "tx": "0xabc"})
    log.warning("status %s", "COMPLETED", extra={"invoice": "i-1", "status": "COMPLETED"})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("multi\nline")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    objs = [json.loads(line) for line in lines]
    assert objs[0]["level"] == "info"
    assert objs[0]["logger"] == "watcher.follower"
    assert objs[0]["message"] == "block scanned"
    assert objs[0]["network"] == "anvil" and objs[0]["block"] == 12 and objs[0]["tx"] == "0xabc"
    assert objs[0]["ts"].endswith("Z") and "T" in objs[0]["ts"]
    assert objs[1]["message"] == "status COMPLETED" and objs[1]["invoice"] == "i-1"
    assert objs[2]["message"] == "multi\nline"
    assert "ZeroDivisionError" in objs[2]["exc"]


def test_text_format_outside_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup("text", monkeypatch)
    logging.getLogger("watcher.x").info("hello", extra={"network": "anvil", "block": 7})
    line = out.getvalue().rstrip("\n")
    ts, rest = line.split(" ", 1)
    assert ts.endswith("Z") and ts[4] == "-" and "T" in ts
    assert rest == "INFO watcher.x: hello network=anvil block=7"


def test_text_format_under_journald(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup("text", monkeypatch, journal=True)
    log = logging.getLogger("watcher.x")
    log.info("hello")
    log.error("bad", extra={"status": "two words"})
    assert out.getvalue().splitlines() == [
        "<6>INFO watcher.x: hello",
        '<3>ERROR watcher.x: bad status="two words"',
    ]


def test_journal_stream_must_match_the_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    r, w = os.pipe()
    with os.fdopen(w, "w") as stream, os.fdopen(r):
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("info", "text", [], stream=stream)
        fmt = logging.getLogger().handlers[-1].formatter
        assert getattr(fmt, "journal", None) is True
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        setup_logging("info", "text", [], stream=stream)
        fmt = logging.getLogger().handlers[-1].formatter
        assert getattr(fmt, "journal", None) is False


def test_level_and_reconfigure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    first = io.StringIO()
    setup_logging("warning", "text", [], stream=first)
    second = io.StringIO()
    setup_logging("WARN", "text", [], stream=second)
    log = logging.getLogger("watcher.y")
    log.info("hidden")
    log.warning("shown")
    assert first.getvalue() == ""
    assert "hidden" not in second.getvalue() and "shown" in second.getvalue()
    with pytest.raises(ValueError):
        setup_logging("loud", "text", [])
    with pytest.raises(ValueError):
        setup_logging("info", "xml", [])


def test_bad_format_string_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup("text", monkeypatch)
    # A logger of its own: pytest's capture handler on the root re-raises formatting errors.
    log = logging.getLogger("watcher.isolated")
    log.propagate = False
    log.addHandler(logging.getLogger().handlers[-1])
    try:
        log.info("%d items", "not-a-number " + SECRET)
    finally:
        log.handlers.clear()
        log.propagate = True
    assert "items" in out.getvalue()
    assert SECRET not in out.getvalue()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_counts_suppressed() -> None:
    clock = FakeClock()
    t = Throttle(60, clock=clock)
    assert t.check("rpc") == 0
    for _ in range(17):
        clock.now += 1
        assert t.check("rpc") is None
    assert t.check("other") == 0  # keys are independent
    assert t.suppressed("rpc") == 17
    clock.now += 60
    assert t.check("rpc") == 17
    assert t.check("rpc") is None
    assert t.reset("rpc") == 1
    assert t.check("rpc") == 0


def test_throttle_log(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _setup("text", monkeypatch)
    clock = FakeClock()
    t = Throttle(30, clock=clock)
    log = logging.getLogger("watcher.rpc")
    assert t.log(log, logging.WARNING, "k", "rpc %s failed", "node1")
    for _ in range(17):
        assert not t.log(log, logging.WARNING, "k", "rpc %s failed", "node1")
    clock.now += 31
    assert t.log(log, logging.WARNING, "k", "rpc %s failed", "node1", extra={"network": "anvil"})
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "WARNING watcher.rpc: rpc node1 failed",
        "WARNING watcher.rpc: rpc node1 failed (repeated 17 times) network=anvil",
    ]
