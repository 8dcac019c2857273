"""Starting on PostgreSQL: the CLI reads and writes there; an unreachable server, refused
names and a newer schema each give one line naming `database` (contract section 13)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from click.testing import CliRunner

from tests.integration.promfixture import free_port
from tests.integration.test_cli import one_error_line as cli_error_line
from tests.pgserver import PgDatabases
from watcher.cli import main
from watcher.storage import postgres
from watcher.storage.sqlite import connect


def run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--config", str(config)])
    return result.exit_code, result.output


def config(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'database = "{database}"\n[api]\napi_keys = ["k"]\n'
                    '[networks.anvil]\nchain_id = 31337\nrpc = ["http://127.0.0.1:9"]\n')
    return path


def one_error_line(output: str) -> str:
    """One `error: database: ...` line and no traceback (`test_cli.one_error_line`)."""
    line = cli_error_line(output)
    assert line.startswith("error: database: "), output
    return line


def test_the_cli_works_on_postgres(tmp_path: Path, pg_databases: PgDatabases) -> None:
    path = config(tmp_path, pg_databases.new())
    code, out = run(path, "invoices", "list")
    assert code == 0, out
    code, out = run(path, "status", "--json")
    assert code == 0 and '"invoices": {}' in out, out


def test_an_unreachable_server_exits_1_for_systemd_to_retry(tmp_path: Path) -> None:
    path = config(tmp_path, f"postgresql://watcher@127.0.0.1:{free_port()}/payments")
    code, out = run(path, "invoices", "list")
    line = one_error_line(out)
    assert code == 1 and "cannot connect to PostgreSQL" in line and "/payments" in line


def test_refused_names_exit_2(tmp_path: Path, pg_databases: PgDatabases) -> None:
    path = config(tmp_path, pg_databases.url("no_such_database"))
    code, out = run(path, "invoices", "list")
    line = one_error_line(out)
    assert code == 2 and "does not exist" in line, out


def test_a_newer_schema_is_refused_naming_both_versions(
    tmp_path: Path, pg_databases: PgDatabases
) -> None:
    url = pg_databases.new()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    code, out = run(config(tmp_path, url), "invoices", "list")
    line = one_error_line(out)
    assert code == 2 and "version 99" in line and f"'s {postgres.SCHEMA_VERSION}" in line


def test_a_newer_sqlite_schema_is_refused(tmp_path: Path) -> None:
    db_path = tmp_path / "w.db"
    connect(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                     "VALUES ('payment-watcher', '0099_future', '2030-01-01')")
    code, out = run(config(tmp_path, str(db_path)), "invoices", "list")
    line = one_error_line(out)
    assert code == 2 and "0099_future" in line and "0015_heads_in_event_order" in line


def connection_settings(url: str) -> tuple[dict[str, str], str]:
    """The libpq parameters a daemon's connection to `url` was made with, and the
    application name the server sees."""
    db = postgres.connect(url, migrate=False)
    try:
        return db.conn.info.get_parameters(), db.execute("SHOW application_name").fetchone()[0]
    finally:
        db.close()


def test_connections_detect_a_silent_server_and_keep_the_operators_values(
    pg_databases: PgDatabases,
) -> None:
    """Every connection has keepalives and a TCP user timeout (a partition fails it within
    ~30 s instead of hours); a value the URL names is used as given."""
    url = pg_databases.new()
    params, name = connection_settings(url)
    assert name == "payment-watcher" and params["connect_timeout"] == "10"
    assert params["keepalives_idle"] == "10" and params["tcp_user_timeout"] == "30000"
    params, name = connection_settings(f"{url}?connect_timeout=30&application_name=shop-a")
    assert name == "shop-a" and params["connect_timeout"] == "30"
    assert params["keepalives_count"] == "3"
