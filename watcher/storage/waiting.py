"""Rows that wait inside `Db.pipeline()` (`Db.insert`, `Db.update`) until the engine sends
them together: kept per statement in the order the statements came, and within one by key
(an update's: a later one replaces it) or by arrival. Each engine sends them its own way."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

#: one waiting row: its "(?, ...)" text and its parameters
Row = tuple[str, Sequence[Any]]


class WaitingRows:
    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[Any, Row]] = {}

    def __bool__(self) -> bool:
        return bool(self._rows)

    def hold(
        self, prefix: str, row: str, params: Sequence[Any], suffix: str, key: str | None
    ) -> None:
        rows = self._rows.setdefault((prefix, suffix), {})
        rows[len(rows) if key is None else key] = (row, params)

    def drop(self) -> None:
        """Forget every waiting row (its transaction or savepoint rolled back)."""
        self._rows = {}

    def take(self) -> Iterator[tuple[str, str, list[Row]]]:
        """Each statement's (prefix, suffix, rows in order), and none wait any more."""
        pending, self._rows = self._rows, {}
        for (prefix, suffix), by_key in pending.items():
            yield prefix, suffix, list(by_key.values())
