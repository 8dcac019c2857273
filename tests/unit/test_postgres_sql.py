"""`postgres.format_sql`: the shared SQL (with `?`) as psycopg takes it. Pure: checked with
psycopg's own query parser, no server."""

from __future__ import annotations

import pytest
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer

from watcher.storage.postgres import format_sql


def server_form(sql: str, params: list[object]) -> str:
    """What psycopg sends the server for `sql` (ValueError-like errors if it refuses it)."""
    query = PostgresQuery(Transformer())
    query.convert(format_sql(sql).encode(), params)
    return query.query.decode()


@pytest.mark.parametrize(("sql", "params", "sent"), [
    ("SELECT * FROM t WHERE a = ? AND b = ?", [1, "x"], "SELECT * FROM t WHERE a = $1 AND b = $2"),
    ("SELECT '?' , ? FROM t", [1], "SELECT '?' , $1 FROM t"),  # quoted: not a placeholder
    ("SELECT 'it''s ?', ?", [1], "SELECT 'it''s ?', $1"),
    ("SELECT a FROM t WHERE a LIKE 'x%' AND b = ?", [1],
     "SELECT a FROM t WHERE a LIKE 'x%' AND b = $1"),
    ("SELECT 5 % 2, ?", [1], "SELECT 5 % 2, $1"),
    ("SELECT * FROM invoices INDEXED BY invoices_updated WHERE x = ?", [1],
     "SELECT * FROM invoices WHERE x = $1"),
    ("SELECT 1 -- why? 100%\nFROM t WHERE a = ?", [1],
     "SELECT 1 -- why? 100%\nFROM t WHERE a = $1"),
])
def test_placeholders_and_percent_signs(sql: str, params: list[object], sent: str) -> None:
    assert server_form(sql, params) == sent


def test_numbered_placeholders_skip_quoted_text_and_comments() -> None:
    """The rows a multi-row INSERT sends with PostgreSQL's own placeholders (`$n`)."""
    from watcher.storage.postgres import numbered

    assert numbered("(?, '?', ?)", 1) == "($1, '?', $2)"
    assert numbered("(?, (SELECT seq FROM events WHERE id = ?), 'it''s ?', 5 % 2)", 7) == (
        "($7, (SELECT seq FROM events WHERE id = $8), 'it''s ?', 5 % 2)")
    assert numbered("(1, 2)", 3) == "(1, 2)"


@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT * FROM t WHERE a = ? AND b = ?", [1, "x"]),
    ("SELECT '?' , ? FROM t", [1]),
    ("SELECT 'it''s ?', ?", [1]),
    ("SELECT a FROM t WHERE a LIKE 'x%' AND b = ?", [1]),
    ("SELECT 5 % 2, ?", [1]),
    ("SELECT * FROM invoices INDEXED BY invoices_updated WHERE x = ?", [1]),
    ("SELECT 1 -- why? 100%\nFROM t WHERE a = ?", [1]),
])
def test_a_long_statement_reaches_the_server_as_a_short_one_would(
    sql: str, params: list[object]
) -> None:
    """`raw_sql` (statements too long for psycopg's parse cache, sent by a `RawCursor`)
    gives the server what psycopg makes of `format_sql`'s form."""
    from watcher.storage.postgres import raw_sql

    assert raw_sql(sql) == server_form(sql, params)


def test_connection_defaults_fill_in_only_what_the_url_does_not_name() -> None:
    from watcher.storage.postgres import CONNECTION_DEFAULTS, connection_options

    assert connection_options("postgresql://pw@db.internal/shop") == CONNECTION_DEFAULTS
    named = connection_options(
        "postgresql://pw@db.internal/shop?connect_timeout=30&keepalives_idle=60"
        "&application_name=shop-a")
    assert "connect_timeout" not in named and "keepalives_idle" not in named
    assert "application_name" not in named  # the operator's values are kept as given
    assert named["tcp_user_timeout"] == "30000" and named["keepalives_count"] == "3"
    # a URL libpq cannot read gets every default; connecting then says what is wrong
    assert connection_options("postgresql://pw@db.internal/shop?bogus=1") == CONNECTION_DEFAULTS
