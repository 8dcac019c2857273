"""Times are integer unix seconds inside and UTC ISO 8601 with `Z` outside."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from functools import lru_cache

_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def now() -> int:
    return int(time.time())


@lru_cache(maxsize=8192)  # the same few times are rendered in every event body
def iso(ts: int | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> int:
    """Parse an ISO 8601 time with a zone (`Z` or an offset) into unix seconds."""
    if not isinstance(text, str) or len(text) > 40:
        raise ValueError("must be an ISO 8601 time like 2024-08-01T00:48:53Z")
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError("must be an ISO 8601 time like 2024-08-01T00:48:53Z") from None
    if dt.tzinfo is None:
        raise ValueError("must carry a time zone (`Z` or an offset)")
    return int(dt.timestamp())


def parse_duration(value: object) -> int:
    """`"24h"`, `"90m"`, `"30s"`, `"2d"`, `"1w"` or a whole number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like \"24h\" or a number of seconds")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("must be a duration like \"24h\", \"90m\", \"30s\" or a number of seconds")
