"""The PostgreSQL server the storage tests run against (issue 17): a real server from
Debian's package, started by the tests themselves as a non-root user, that can be stopped
(as a crash, or to cut the daemon off from it) and started again with its data."""

from __future__ import annotations

import os

from tests.pgserver import start_postgres


def test_a_throwaway_server_starts_stops_and_keeps_its_data() -> None:
    with start_postgres() as pg:
        assert pg.psql("SHOW server_version_num").isdigit()
        owner = pg.psql("SELECT rolname FROM pg_roles WHERE oid = 10")
        assert owner == "postgres"
        if os.geteuid() == 0:  # the server process itself is not root
            pid = int((pg.data / "postmaster.pid").read_text().split()[0])
            assert os.stat(f"/proc/{pid}").st_uid != 0
        # uint256's largest value, exact (the type amounts will have there)
        pg.psql(f"CREATE TABLE t (amount NUMERIC(78, 0)); INSERT INTO t VALUES ({2**256 - 1})")
        pg.stop("immediate")  # as a crash: no shutdown checkpoint
        assert not pg.running()
        pg.start()
        assert pg.psql("SELECT amount FROM t") == str(2**256 - 1)
