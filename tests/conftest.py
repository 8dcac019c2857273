"""Fixtures shared by every test directory: the database engines a test can run on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgDatabases, start_postgres

ENGINES = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    """One PostgreSQL server for the whole run (started on first use)."""
    with start_postgres() as server:
        yield PgDatabases(server)


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives, once per engine: a SQLite file, or the URL of a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "watcher.db")
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    return databases.new()
