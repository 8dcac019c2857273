"""Two daemons on one PostgreSQL database (contract section 13): kill -9 of the leader every
few seconds during a payment storm loses and doubles nothing; one leader per network at any
moment; no callback is sent by both at once; stopping PostgreSQL gives 503s and the work
resumes without loss when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from tests.integration.daemonproc import DaemonProc, Daemons, arun_cli, poll
from tests.integration.receiver import Receiver, Reply
from tests.pgserver import PgDatabases
from watcher.amounts import format_amount
from watcher.devchain import DevChain

USDT = 10**6
#: the receiver holds each callback this long: two sends of one event that overlap (two
#: instances at once) arrive closer together than this
HOLD = 0.3


def cluster_config(name: str, url: str) -> dict[str, Any]:
    return {
        "database_url": url,
        "callback_timeout": 1.0,  # a claim's lease: 2 x 1 + 10 s
        "extra": {"cluster": {"failover_after": "3s", "instance_name": name}},
    }


async def leading(d: DaemonProc) -> bool | None:
    """Whether `d` says it follows the network (None: not answering)."""
    if not d.alive() or not d.port:
        return None
    try:
        status, body = await d.request("GET", "/v1/networks")
    except Exception:
        return None
    if status != 200:
        return None
    return bool(body["data"][0]["isLeader"])


async def leader_of(daemons: Iterable[DaemonProc]) -> DaemonProc:
    """The one of `daemons` that says it leads (waited for)."""
    async def find() -> DaemonProc | None:
        for d in daemons:
            if await leading(d):
                return d
        return None
    found: DaemonProc = await poll(find, 20, interval=0.1, what="a leader")
    return found


def drop_sessions(admin: psycopg.Connection[Any], application_name: str) -> int:
    """Terminate every server session of that application name (as the server does to a
    client it lost); how many there were."""
    return len(admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [application_name]).fetchall())


async def test_kill_9_of_the_leader_during_a_payment_storm(
    daemons: Daemons, chain: DevChain, token: str, payer: str, pg_databases: PgDatabases
) -> None:
    url = pg_databases.new()
    rx = Receiver(default=Reply(200, delay=HOLD))
    await rx.start()
    a = await daemons.start(callback_url=rx.url, **cluster_config("a", url))
    b = await daemons.start(callback_url=rx.url, **cluster_config("b", url))
    pair = (a, b)
    both_led: list[float] = []
    stop_watch = asyncio.Event()

    async def watch() -> None:  # never two instances saying they lead at once
        while not stop_watch.is_set():
            views = await asyncio.gather(*(leading(d) for d in pair))
            if all(views):
                both_led.append(time.monotonic())
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        first = await leader_of(pair)
        invoices: list[tuple[str, str, int]] = []  # (id, address, base units)
        for i in range(24):
            address = chain.new_account()
            units = (i + 1) * USDT + i  # distinct, not round
            amount = format_amount(units, 6)
            invoices.append((await pair[i % 2].create("USDT", amount, address), address, units))
        kills = 0
        for round_ in range(4):
            for _, address, units in invoices[round_ * 6:(round_ + 1) * 6]:
                chain.send_token(token, payer, address, units)
            doomed = await leader_of(pair)
            doomed.kill()
            kills += 1
            await asyncio.sleep(0.5)
            await doomed.start()
        assert kills == 4
        chain.mine(3)
        survivor = await leader_of(pair)
        for inv_id, _, units in invoices:
            inv = await survivor.wait_status(inv_id, "COMPLETED", timeout=60)
            assert inv["amountPaid"] == format_amount(units, 6)
            assert len(inv["payments"]) == 1  # recorded once, whoever recorded it
        # every event delivered at least once (a killed sender's claim goes to the other
        # after its lease)
        with psycopg.connect(url) as conn:
            events = {r[0] for r in conn.execute("SELECT id FROM events")}
            transfers = conn.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
        assert transfers == 24 and len(events) >= 24 * 3  # created, waiting, completed
        await rx.wait_for(lambda r: events <= r.delivery_ids(200), timeout=60)
        status = await arun_cli("status", "--json", "--config", str(a.config.path))
        leader_name = "a" if survivor is a else "b"
        assert json.loads(status.stdout)["networks"][0]["leader"] == leader_name, status
        for d, gauge in ((survivor, "1.0"), (b if survivor is a else a, "0.0")):
            _, text = await d.request("GET", "/metrics", auth=False)
            assert f'payment_watcher_leader{{network="anvil"}} {gauge}' in text
        # a rescan runs on the leader (fenced like its follower); a standby names it
        standby = b if survivor is a else a
        code, err = await standby.request("POST", "/v1/networks/anvil/rescan",
                                          {"from": chain.block_number() - 5})
        assert code == 409 and f"instance {leader_name}" in err["error"]["message"], err
        started = await survivor.ok("POST", "/v1/networks/anvil/rescan",
                                    {"from": chain.block_number() - 5}, expect=202)
        assert started["state"] == "running"
    finally:
        stop_watch.set()
        with contextlib.suppress(Exception):
            await watcher
        await rx.stop()
    assert first in pair
    for d, name in ((a, "a"), (b, "b")):  # the lead changed hands at each kill
        assert d.log_text().count(f"this instance ({name}) leads it now") >= 2, d.log_text()
    assert both_led == []
    arrivals: dict[str, list[float]] = {}
    for r in rx.requests:
        arrivals.setdefault(r.delivery_id, []).append(r.at)
    overlapping = {e: times for e, times in arrivals.items()
                   if any(t2 - t1 < HOLD for t1, t2 in itertools.pairwise(times))}
    assert overlapping == {}, overlapping  # never sent by both at once


async def test_postgres_down_gives_503_and_the_work_resumes(
    daemons: Daemons, rx: Receiver, chain: DevChain, token: str, payer: str,
    pg_databases: PgDatabases,
) -> None:
    url = pg_databases.new()
    d = await daemons.start(callback_url=rx.url, **cluster_config("solo", url))
    address = chain.new_account()
    inv_id = await d.create("USDT", "2.5", address)
    await poll(lambda: leading(d), 20, interval=0.1, what="leading")
    server = pg_databases.server
    server.stop("immediate")
    try:
        async def refused() -> bool:
            status, body = await d.request("GET", f"/v1/invoices/{inv_id}")
            return status == 503 and body["error"]["code"] == "unavailable"
        await poll(refused, 20, interval=0.2, what="503 while PostgreSQL is down")

        async def not_ready() -> bool:
            status, _ = await d.request("GET", "/readyz", auth=False)
            return status == 503
        await poll(not_ready, 10, interval=0.2, what="/readyz 503 while PostgreSQL is down")
        status, _ = await d.request("GET", "/healthz", auth=False)
        assert status == 200
        chain.send_token(token, payer, address, 2_500_000)  # paid while the database is away
        chain.mine(3)
        await asyncio.sleep(2)
    finally:
        server.start()
    inv = await d.wait_status(inv_id, "COMPLETED", timeout=60)
    assert inv["amountPaid"] == "2.5"
    await rx.wait_for(
        lambda r: [x.event for x in r.for_invoice(inv_id)][-1:] == ["invoice.completed"],
        timeout=30)
    status, _ = await d.request("GET", "/readyz", auth=False)
    assert status == 200


async def test_a_leader_cut_off_from_postgres_while_alive_hands_over_and_loses_nothing(
    daemons: Daemons, rx: Receiver, chain: DevChain, token: str, payer: str,
    pg_databases: PgDatabases,
) -> None:
    """The leader's process lives on, but PostgreSQL drops every session it has and every
    one it opens for a while (what the server does to a partitioned client once its TCP
    keepalive gives up): it answers 503 meanwhile, the standby takes over, and after the
    cut the old leader is a standby; every payment, made during the cut or after, is
    recorded once and exactly."""
    url = pg_databases.new()
    pair = {name: await daemons.start(
        callback_url=rx.url, **cluster_config(name, f"{url}?application_name=pw-{name}"))
        for name in ("a", "b")}
    cut = await leader_of(pair.values())
    cut_name = "a" if cut is pair["a"] else "b"
    other = pair["b" if cut_name == "a" else "a"]
    invoices: list[tuple[str, str, int]] = []
    for i in range(6):
        address = chain.new_account()
        units = (i + 1) * USDT + 7 * i
        invoices.append((await other.create("USDT", format_amount(units, 6), address),
                         address, units))
    refused: list[int] = []
    with psycopg.connect(pg_databases.server.url, autocommit=True) as admin:
        assert drop_sessions(admin, f"pw-{cut_name}") >= 2  # writer, reader, listener
        until = time.monotonic() + 6
        paid = False
        while time.monotonic() < until:
            drop_sessions(admin, f"pw-{cut_name}")
            if not paid:  # paid while the leader is cut off
                for _, address, units in invoices[:3]:
                    chain.send_token(token, payer, address, units)
                chain.mine(1)
                paid = True
            status, _ = await cut.request("GET", f"/v1/invoices/{invoices[0][0]}")
            refused.append(status)
            await asyncio.sleep(0.05)
    assert 503 in refused, refused
    await poll(lambda: leading(other), 20, interval=0.1, what="the standby leading")
    for _, address, units in invoices[3:]:  # paid after the cut
        chain.send_token(token, payer, address, units)
    chain.mine(3)
    for inv_id, _, units in invoices:
        inv = await other.wait_status(inv_id, "COMPLETED", timeout=60)
        assert inv["amountPaid"] == format_amount(units, 6)
        assert len(inv["payments"]) == 1
        seen_by_cut = await cut.invoice(inv_id)  # it serves the API again, same answer
        assert seen_by_cut["amountPaid"] == inv["amountPaid"]
    assert await leading(cut) is False  # a standby now: the lock stayed with the other
    log = cut.log_text()
    assert "connected again to PostgreSQL" in log
    # one line per refused request, naming the cause; no tracebacks for an outage
    assert "database unavailable in GET /v1/invoices/" in log and "Traceback" not in log, log
    with psycopg.connect(url) as conn:
        events = {r[0] for r in conn.execute("SELECT id FROM events")}
        assert conn.execute("SELECT COUNT(*) FROM transfers").fetchone()[0] == 6
    await rx.wait_for(lambda r: events <= r.delivery_ids(200), timeout=60)


async def test_a_leader_that_lost_its_session_stops_saying_it_leads_at_once(
    daemons: Daemons, chain: DevChain, pg_databases: PgDatabases
) -> None:
    """With `failover_after` 30 s a leader refreshes its row every 10 s; that its session
    still holds the lock it checks every second (`LEAD_CHECK`). Its session dropped right
    after it won, it stops following and saying it leads within a few seconds, not at the
    next refresh."""
    url = pg_databases.new()
    d = await daemons.start(
        database_url=f"{url}?application_name=pw-solo",
        extra={"cluster": {"failover_after": "30s", "instance_name": "solo"}})
    await poll(lambda: leading(d), 20, interval=0.05, what="leading")
    with psycopg.connect(pg_databases.server.url, autocommit=True) as admin:
        assert drop_sessions(admin, "pw-solo") >= 2

    async def deposed() -> bool:
        return await leading(d) is False
    await poll(deposed, 4, interval=0.1, what="the leader saying it no longer leads")
    assert "this instance (solo) no longer leads it" in d.log_text()
