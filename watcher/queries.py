"""Read-only queries shared by the API, the dashboard and the CLI. Free of the web stack,
so a CLI command that only reads starts without importing aiohttp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from watcher.models import Invoice
from watcher.storage.base import Db
from watcher.storage.rows import load_invoices

if TYPE_CHECKING:
    from watcher import requests as rq


def list_invoices(db: Db, q: rq.InvoiceQuery) -> tuple[list[Invoice], int | None]:
    """Newest first; (invoices, position for the next page or None)."""
    where: list[str] = []
    params: list[Any] = []
    if q.statuses:
        where.append(f"status IN ({','.join('?' * len(q.statuses))})")
        params.extend(s.value for s in q.statuses)
    if q.network:
        where.append("network = ?")
        params.append(q.network)
    if q.external_id:
        where.append("external_id = ?")
        params.append(q.external_id)
    if q.client_id:
        where.append("client_id = ?")
        params.append(q.client_id)
    if q.page.before is not None:
        where.append("seq < ?")
        params.append(q.page.before)
    sql = " AND ".join(where) or "1 = 1"
    rows = load_invoices(db, f"{sql} ORDER BY seq DESC LIMIT ?", [*params, q.page.limit + 1])
    more = len(rows) > q.page.limit
    rows = rows[: q.page.limit]
    return rows, (rows[-1].seq if more and rows else None)
