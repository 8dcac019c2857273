"""`database` as a PostgreSQL URL, its password, and `[cluster]` (contract section 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import Write, clean_env, problems_of, write
from watcher.config import load_settings

ANVIL = '[networks.anvil]\nrpc = ["http://127.0.0.1:8545"]\n'
URL = "postgresql://watcher@db.internal:5432/payments"

__all__ = ["clean_env", "write"]  # the shared fixtures, used by name


def test_a_postgres_url_with_its_password_file_and_cluster(write: Write, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2-long-password\n")
    s = load_settings(write(
        f'database = "{URL}"\ndatabase_password_file = "{tmp_path / "pw"}"\n'
        '[cluster]\nfailover_after = "10s"\ninstance_name = "web-1"\n' + ANVIL))
    assert s.postgres and s.database == URL
    assert s.database_password is not None
    assert s.database_password.get_secret_value() == "hunter2-long-password"
    assert s.cluster is not None and (s.cluster.failover_after, s.cluster.instance_name) == (
        10, "web-1")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_the_password_from_a_systemd_credential(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "database_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings(write(f'database = "{URL}"\n' + ANVIL))
    assert s.database_password is not None
    assert s.database_password.get_secret_value() == "from-credential"
    assert load_settings(write(ANVIL)).database_password is None  # SQLite: not read


def test_sqlite_stays_the_default_without_cluster(write: Write) -> None:
    s = load_settings(write(ANVIL))
    assert not s.postgres and s.cluster is None and s.database.endswith("watcher.db")


@pytest.mark.parametrize(("text", "says"), [
    (f'database = "postgresql://watcher:hunter2@db/payments"\n{ANVIL}',
     "database: holds a password: put it in database_password_file"),
    (f'database = "postgresql://watcher@db"\n{ANVIL}', "database: names no database"),
    (f'database = "postgresql:///payments"\n{ANVIL}', "database: names no host"),
    (f'database = "postgresql://watcher@db:99999/payments"\n{ANVIL}',
     "database: not a valid URL"),
    (f'database = ""\n{ANVIL}', "database: must be a file path or a postgresql:// URL"),
    (f'[cluster]\nfailover_after = "10s"\n{ANVIL}',
     "cluster: only with a postgresql:// database"),
    (f'database_password_file = "/etc/hostname"\n{ANVIL}',
     "database_password_file: only with a postgresql:// database"),
    (f'database = "{URL}"\n[cluster]\nfailover_after = "0s"\n{ANVIL}',
     "cluster.failover_after"),
    (f'database = "{URL}"\n[cluster]\ninstance_name = "two words"\n{ANVIL}',
     "cluster.instance_name: "),
    (f'database = "{URL}"\ndatabase_password_file = "/nonexistent/pw"\n{ANVIL}',
     "database_password_file"),
])
def test_bad_values_name_their_key(write: Write, text: str, says: str) -> None:
    problems = problems_of(write(text))
    assert any(says in p for p in problems), problems
    assert not any("hunter2" in p for p in problems)
