"""A real PostgreSQL server for the tests, from Debian's `postgresql` package.

```
with start_postgres() as pg:        # initdb + pg_ctl in a temporary directory
    pg.psql("SELECT 1")             # -> "1"
    pg.url                          # postgresql://postgres@127.0.0.1:PORT/postgres
```
PostgreSQL refuses to run as root: as root, the server's directory is given to `nobody` and
`initdb`/`pg_ctl` run as that user (`runuser`). The binaries are found in
`$PAYMENT_WATCHER_PG_BIN`, else Debian's `/usr/lib/postgresql/<newest>/bin`, else `PATH`.
`require_postgres()` skips a test when they are missing, except in CI (`CI=true`), where it
fails: `make test` installs the package as root (scripts/need-tools).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.promfixture import free_port

#: the unprivileged user the server runs as when the tests run as root
SERVER_USER = "nobody"


def postgres_bindir() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None."""
    configured = os.environ.get("PAYMENT_WATCHER_PG_BIN")
    if configured:
        return Path(configured)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def require_postgres() -> Path:
    """The binaries' directory; fails the test in CI when PostgreSQL is missing, else skips."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (required in CI; make test installs it "
                        "as root)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return bindir


@dataclass
class PgServer:
    bindir: Path
    root: Path  # the server's own directory (data, socket, log)
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, timeout: float = 60) -> str:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}"
                               f"{self._log_tail()}")
        return done.stdout

    def _log_tail(self) -> str:
        log = self.root / "server.log"
        return "\n" + "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else ""

    def init(self) -> None:
        # trust on the loopback only: a throwaway server that lives as long as the test
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")

    #: a production server's durability (the bench); the tests' throwaway servers skip fsync
    durable: bool = False

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean) or `immediate` (as a crash: no shutdown checkpoint)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "stop")

    def running(self) -> bool:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "status")
        except RuntimeError:
            return False
        return True

    def psql(self, sql: str) -> str:
        """Run `sql` with psql over TCP; its unaligned, tuples-only output."""
        psql = self.bindir / "psql"
        exe = str(psql) if psql.exists() else (shutil.which("psql") or "psql")
        return self._run(exe, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql).strip()


@contextmanager
def start_postgres(*, durable: bool = False) -> Iterator[PgServer]:
    """A fresh server for the block; stopped and removed after it. `durable`: fsync on."""
    bindir = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="pw-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o700)
    server = PgServer(bindir, root, free_port(), durable)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            if server.data.exists() and server.running():
                server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


class PgDatabases:
    """Fresh, empty, migrated databases on one server, each a copy of a template that holds
    the schema (`CREATE DATABASE ... TEMPLATE`: milliseconds, not a migration per test)."""

    TEMPLATE = "pw_template"

    def __init__(self, server: PgServer) -> None:
        from watcher.storage import postgres

        self.server = server
        self._count = 0
        server.psql(f"CREATE DATABASE {self.TEMPLATE}")
        postgres.connect(self.url(self.TEMPLATE)).close()  # the schema, once

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/{name}"

    def new(self) -> str:
        """The URL of a new database with the schema and no rows."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {self.TEMPLATE}")
        return self.url(name)
