"""Logging: text (journald-friendly) or JSON lines, secret redaction, throttled repeats.

`setup_logging(level, fmt, secrets)` configures the root logger once at start-up:

- `text`: `2024-07-31T00:49:20.123Z INFO watcher.follower: message network=polygon block=1`.
  Under journald (`JOURNAL_STREAM` names our stderr) the timestamp is left out, since the
  journal stamps every line itself, and each line starts with a `<N>` syslog priority prefix
  that journald turns into the entry's priority (`SyslogLevelPrefix=`, on by default).
- `json`: one object per line: `ts`, `level`, `logger`, `message`, then any context passed
  with `extra=` (`network`, `block`, `invoice`, `tx`, `status`, ...), and `exc` for tracebacks.

Every configured secret (API keys, the callback secret, RPC URLs with keys inside) is
replaced by `***` in messages, arguments, context fields and tracebacks before formatting.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "***"

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

#: syslog priorities for the `<N>` prefix journald understands.
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

#: Secrets shorter than this are not redacted: replacing "a" everywhere would wreck the logs
#: and a secret that short protects nothing anyway (config validation should refuse it).
MIN_SECRET_LENGTH = 4


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name == "WARN":
        name = "WARNING"
    value = logging.getLevelNamesMapping().get(name)
    if value is None:
        raise ValueError(f"unknown log level {level!r}")
    return value


def _journal_stream(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd connected (`JOURNAL_STREAM`)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return True  # not a real file (tests): trust the environment
    return expected == f"{st.st_dev}:{st.st_ino}"


def _iso(created: float) -> str:
    dt = datetime.fromtimestamp(created, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got through `extra=` (in the order they were given)."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class RedactSecrets(logging.Filter):
    """Replaces every secret string with `***` in a record's message, args, extras, traceback.

    Attach it to handlers (handler filters see records propagated from every logger).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        variants: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_LENGTH:
                continue
            variants.add(secret)
            variants.add(urllib.parse.quote(secret, safe=""))
            variants.add(urllib.parse.quote_plus(secret))
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(variants, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        # Render the message once, then drop the args: nothing unredacted is left to format.
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not raise from the logging call
            message = f"{record.msg} {record.args!r}"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in context_fields(record).items():
            if isinstance(value, str):
                setattr(record, key, self.redact(value))
            elif not isinstance(value, int | float | bool | type(None)):
                setattr(record, key, self.redact(str(value)))
        return True


class TextFormatter(logging.Formatter):
    """`[ts ]LEVEL logger: message key=value ...`; journal mode drops ts, adds `<N>`."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        ctx = context_fields(record)
        if ctx:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in ctx.items())
        extra = self._exc(record)
        if extra:
            line += "\n" + extra
        if self.journal:
            prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return f"<{prio}>{line}"
        return f"{_iso(record.created)} {line}"

    def _exc(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        return "\n".join(parts)


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonFormatter(TextFormatter):
    """One JSON object per line (a traceback stays inside the `exc` string)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in context_fields(record).items():
            obj.setdefault(key, value)
        exc = self._exc(record)
        if exc:
            obj["exc"] = exc
        return json.dumps(obj, ensure_ascii=False, default=str)


_installed: list[logging.Handler] = []


def setup_logging(
    level: str | int,
    fmt: str,
    secrets: Iterable[str] = (),
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger; call again to reconfigure (it replaces its own handler).

    `fmt` is "text" or "json"; output goes to `stream` (default: stderr, which systemd
    connects to the journal). Returns the installed handler.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(_journal_stream(out)))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    while _installed:
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(_parse_level(level))
    _installed.append(handler)
    # Libraries that are chatty at INFO: keep their warnings only.
    for name in ("aiohttp.access", "web3", "urllib3"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    return handler


class Throttle:
    """Lets a repeated message with the same key through at most once per `interval` seconds.

    ```
    throttle = Throttle(60)
    throttle.log(log, logging.WARNING, ("rpc", url_label), "RPC %s failed: %s", url_label, exc)
    ```
    The first occurrence is logged; repeats within the interval are counted; the next one
    logged after the interval carries `(repeated N times)` with the number suppressed.
    Thread-safe; the clock is injectable for tests.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def check(self, key: object) -> int | None:
        """None to suppress this occurrence; else how many were suppressed before it."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if len(self._last) > 1024:
                self._prune(now)
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def suppressed(self, key: object) -> int:
        """How many occurrences of `key` are suppressed and not yet reported."""
        with self._lock:
            return self._suppressed.get(key, 0)

    def reset(self, key: object) -> int:
        """Forget `key` (the condition cleared); returns the count that was still suppressed."""
        with self._lock:
            self._last.pop(key, None)
            return self._suppressed.pop(key, 0)

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: object,
        msg: str,
        *args: object,
        **kwargs: Any,
    ) -> bool:
        """Log `msg % args` unless throttled. True if it was logged."""
        repeated = self.check(key)
        if repeated is None:
            return False
        if repeated:
            msg = f"{msg} (repeated {repeated} times)"
        kwargs.setdefault("stacklevel", 2)
        logger.log(level, msg, *args, **kwargs)
        return True

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._last.items() if now - t >= self.interval]:
            if not self._suppressed.get(key):
                del self._last[key]
