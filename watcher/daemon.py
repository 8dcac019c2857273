"""Wires the daemon together: store, ledger, one follower per network, the callback sender,
the HTTP API, metrics and systemd notification. The only module that knows them all."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from watcher import __version__, capabilities, cluster, timeutil
from watcher.callbacks import CallbackSender
from watcher.capabilities import Needs
from watcher.config import NetworkConfig, Settings
from watcher.errors import (
    ChainIdMismatch,
    ConfigError,
    Conflict,
    Invalid,
    RpcError,
    StoreError,
    WatcherError,
)
from watcher.follower import Follower, FollowerConfig
from watcher.ledger import Ledger, NetworkInfo, Outcome
from watcher.matching import WatchIndex
from watcher.metrics import Metrics
from watcher.outbox import queue_depth
from watcher.pricing.book import RateBook, build_sources
from watcher.rescan import RescanError, Rescanner
from watcher.retention import Retention
from watcher.rpc import RpcClient
from watcher.sdnotify import Notifier
from watcher.storage.base import Db
from watcher.storage.rows import (
    iter_index_invoices,
    last_event_seq,
    newest_derived_address,
    rescan_json,
    status_counts,
)
from watcher.storage.store import Store
from watcher.web.api import CREATES, ApiContext, create_app
from watcher.web.channels import Limits, Sockets
from watcher.web.checkout import CheckoutContext, create_checkout_app
from watcher.web.dashboard import (
    DashboardContext,
    dashboard_root,
    mount_dashboard,
    public_origin_of,
)
from watcher.web.hub import Hub
from watcher.web.sessions import Policy, SignInLimiter

log = logging.getLogger("watcher.daemon")

HOUSEKEEPING_INTERVAL = 10.0
#: PostgreSQL: how long, and how often, a new database's tables are checked for their first
#: statistics (`_first_statistics`)
FIRST_STATISTICS_FOR = 600.0
FIRST_STATISTICS_EVERY = 1.0
#: PostgreSQL: how often a leader checks that its session still holds the lock (a read of
#: pg_locks). One that lost it (its session dropped, a new one won nothing) stops following
#: and stops saying it leads within this, not at its next `failover_after / 3` refresh.
LEAD_CHECK = 1.0
#: A follower whose loop has not come round for this long is wedged (an RPC outage still
#: comes round: each call gives up after its retries): the watchdog stops pinging.
STALL_LIMIT = 300.0
#: How long start-up waits for the first rates before serving the API anyway.
RATES_START_TIMEOUT = 10.0
#: How long start-up waits for a new network's first head before serving the API anyway.
START_BLOCK_TIMEOUT = 5.0


def origin_of(url: str) -> str:
    """"https://pay.shop.example/x" -> "https://pay.shop.example" (scheme://host[:port])."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def fill_index(db: Db, index: WatchIndex, network: str, late_window: int) -> int:
    """Put the invoices a network's index starts with into it, streamed from the database
    (on the store's thread, before the follower runs); how many."""
    n = 0
    for inv in iter_index_invoices(db, network, late_window):
        index.put(inv)
        n += 1
    return n


def prune_index(index: WatchIndex, ledger: Ledger, network: str) -> int:
    """Forget the invoices of a network no transfer can reach any more, by the time of its
    newest confirmed scanned block, never by the host's clock (see `WatchIndex.prune`)."""
    return index.prune(ledger.views[network].scanned_time)


#: allocations between two young-generation collections (CPython's default is 700)
GC_YOUNG_THRESHOLD = 50_000


def freeze_heap() -> None:
    """Move everything the start built (the watch indexes of every open invoice, the
    settings, the modules) out of the cyclic garbage collector's reach: it never frees any
    of it, but walked all of it on every full collection, a pause of ~90 ms with 20,000
    open invoices (measured in the cold catch-up bench) at random moments of a scan.
    Objects made afterwards are collected as usual, but less often: one range's
    `eth_getLogs` answer (5,000 logs, ~50,000 objects freed by reference counting a moment
    later) set off ~70 young collections and 5-10 ms middle ones each time."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def start_network(
    store: Store,
    ledger: Ledger,
    rpc: RpcClient,
    network: str,
    timeout: float,
    start_block: int | None = None,
) -> bool:
    """Read the node's head once: its time is the chain's clock for new invoices' windows
    (`Ledger.note_tip`), and a network that has no start block gets it: the configured
    `start_block`, else that head. Until that is written the ledger refuses invoices for
    the network, so no invoice can be paid below it. True when the network has a start
    block (now or before)."""
    started: bool = await store.run(ledger.started, network)
    if not started and start_block is not None:
        await store.run(ledger.start_network, network, start_block, timeutil.now())
        log.info("%s: starting at the configured start_block %d", network, start_block,
                 extra={"network": network})
        started = True
    try:
        latest = await asyncio.wait_for(rpc.get_block("latest", False), timeout)
    except (RpcError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        if not started:
            log.warning(
                "%s: no start block yet (%s): invoices for it are refused until its RPC "
                "answers", network, exc, extra={"network": network},
            )
        return started
    if latest is None:
        return started
    ledger.note_tip(network, int(latest["timestamp"], 16))
    if not started:
        await store.run(
            ledger.start_network, network, int(latest["number"], 16), timeutil.now()
        )
    return True


def follower_config(name: str, net: NetworkConfig) -> FollowerConfig:
    """How a network is read (by its follower and by rescans)."""
    return FollowerConfig(
        name, net.confirmations, net.max_block_range, net.effective_poll_interval, net.ws,
        finality=net.finality, start_block=net.start_block,
        internal_transfers=net.internal_transfers, log_topic_chunk=net.log_topic_chunk,
    )


def claim_lease(timeout: float) -> float:
    """How long an instance keeps a claimed callback: past a send's `timeout` and the
    grace a stopping sender gives it, with room for recording the attempt."""
    return 2 * timeout + 10


def build_ledger(settings: Settings) -> Ledger:
    nets = {
        name: NetworkInfo(name, n.chain_id, n.confirmations, n.assets(), n.finality)
        for name, n in settings.enabled_networks().items()
    }
    return Ledger(
        nets,
        tolerance=settings.invoices.underpayment_tolerance,
        default_ttl=settings.invoices.default_ttl,
        late_window=settings.invoices.late_payment_window,
        default_callback_url=settings.callbacks.url,
        checkout_url=settings.checkout.base_url if settings.checkout.enabled else None,
        deriver=settings.addresses.deriver(),
        start_index=settings.addresses.start_index,
    )


class Daemon:
    """The running service. `await start()`, then `await wait()`; `await stop()` to end."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = Store(
            settings.database, checkpoints=True,
            password=settings.database_secret(),
        )
        self.ledger = build_ledger(settings)
        self.networks: dict[str, NetworkConfig] = settings.enabled_networks()
        self.indexes = {
            name: WatchIndex(n.assets(), settings.invoices.late_payment_window)
            for name, n in self.networks.items()
        }
        self.rpcs: dict[str, RpcClient] = {}
        self.followers: dict[str, Follower] = {}
        cl = settings.cluster
        #: this instance's name: who leads a network, on every instance's API
        self.instance = (cl.instance_name if cl and cl.instance_name
                         else cluster.default_instance_name())
        self.failover_after = cl.failover_after if cl else 30
        #: several instances on PostgreSQL: per network, who leads it and where it is
        #: (the leader's `leaders` row and the `cursors` row), read by the standbys
        self.cluster_view: dict[str, dict[str, Any]] = {}
        #: False after a store call failed, True after one worked (`/readyz`)
        self.database_ok = True
        self._rescans: dict[str, asyncio.Task[Any]] = {}
        self.sender: CallbackSender | None = None
        self.notifier = Notifier()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.hub = Hub(self.store, head_source=self._heads)
        self.retention = Retention(settings.retention, self.metrics)
        ch = settings.channels
        limits = Limits(ch.max_connections, ch.max_subscriptions, ch.queue_size, ch.heartbeat)
        self.api_sockets = Sockets("api", self.hub, limits, self.metrics)
        self.checkout_sockets = Sockets("checkout", self.hub, limits, self.metrics)
        self.dashboard_sockets = Sockets("dashboard", self.hub, limits, self.metrics)
        self.dashboard_runner: web.AppRunner | None = None
        #: The dashboard's own listener's port (None: on the API listener, or off).
        self.dashboard_port: int | None = None
        self.checkout_runner: web.AppRunner | None = None
        self.checkout_port: int | None = None
        self.rates: RateBook | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self.failed = False

    # ------------------------------------------------------------------ start

    async def start(self, *, check_chain_ids: bool = True) -> None:
        await self.store.open()
        await self.store.run(self.ledger.load_views)
        late = self.settings.invoices.late_payment_window
        for name, index in self.indexes.items():
            self.metrics.add_network(name, index.assets)
            if self.store.postgres:
                continue  # filled when this instance wins the network (`_lead`)
            await self.store.run(fill_index, index, name, late)
            log.info("%s: watching %d invoices", name, len(index), extra={"network": name})
        await self._announce_derivation()
        for name, net in self.networks.items():
            self.rpcs[name] = RpcClient(name, net.rpc, on_request=self.metrics.rpc_hook(name))
        if check_chain_ids:
            await self._check_chain_ids()
        await asyncio.gather(*(
            start_network(self.store, self.ledger, self.rpcs[name], name, START_BLOCK_TIMEOUT,
                          self.networks[name].start_block)
            for name in self.networks
        ))
        if not self.store.postgres:
            for name, net in self.networks.items():
                self.followers[name] = Follower(
                    follower_config(name, net), self.rpcs[name], self.store, self.ledger,
                    self.indexes[name], self.on_outcome, self.metrics,
                )
                self.metrics.leader.labels(network=name).set(1)
        cb = self.settings.callbacks
        self.sender = CallbackSender(
            self.store,
            secret=cb.secret.get_secret_value() if cb.secret else None,
            timeout=cb.timeout,
            max_age=cb.max_age,
            concurrency=cb.concurrency,
            metrics=self.metrics,
            lease=claim_lease(cb.timeout) if self.store.postgres else None,
        )
        if self.settings.rates.pairs:
            await self._start_rates()
        await self.hub.start()
        self.store.on_change(self._changed_elsewhere)
        await self._start_api()
        if self.settings.checkout.enabled:
            await self._start_checkout()
        for name, f in self.followers.items():
            self._spawn(f.run(), f"follow-{name}")
        if self.store.postgres:
            for name in self.networks:
                self._spawn(self._lead(name), f"lead-{name}")
            self._spawn(self._first_statistics(), "first-statistics")
        self._spawn(self.hub.run(), "hub")
        if self.rates is not None:
            self._spawn(self.rates.run(self.settings.rates.refresh_interval, timeutil.now),
                        "rates")
        self._spawn(self.sender.run(), "callbacks")
        self._spawn(self._housekeeping(), "housekeeping")
        self._spawn(self.notifier.watchdog_loop(self.healthy), "watchdog")
        self.metrics.build_info.labels(version=__version__).set(1)
        freeze_heap()
        self.notifier.ready()
        self.notifier.status("started")
        log.info(
            "payment-watcher %s: API on %s:%s, checkout %s, dashboard %s, networks %s",
            __version__, self.settings.api.host, self.port,
            f"on {self.settings.checkout.host}:{self.checkout_port}"
            if self.checkout_port is not None else "off",
            self._dashboard_where(),
            ", ".join(self.networks) or "none",
        )

    async def _announce_derivation(self) -> None:
        """Say which key derives deposit addresses (its fingerprint, never the key) and
        warn when it is not the key the newest address was derived with."""
        deriver = self.ledger.deriver
        if deriver is None:
            return
        newest = await self.store.run(newest_derived_address)
        start = self.settings.addresses.start_index
        following = start if newest is None else max(start, newest["idx"] + 1)
        log.info("addresses: derived from key %s, next index %d", deriver.key_id, following)
        if newest is not None and newest["key_id"] != deriver.key_id:
            log.warning(
                "addresses: the configured key (%s) is not the one that derived index %d "
                "(%s): new invoices are paid to the new key's addresses from index %d on",
                deriver.key_id, newest["idx"], newest["key_id"], following,
            )

    async def _check_chain_ids(self) -> None:
        problems = []
        for name, net in self.networks.items():
            try:
                rows = await self.rpcs[name].check_chain_id(net.chain_id)
            except ChainIdMismatch as exc:
                problems.append(f"networks.{name}.rpc: {exc}")
                continue
            for row in rows:
                if row["error"]:
                    log.warning(
                        "%s: %s unreachable at start: %s", name, row["label"], row["error"],
                        extra={"network": name},
                    )
            needs = Needs(name, net.finality, net.internal_transfers)
            refused, unknown = await capabilities.missing(self.rpcs[name], needs)
            problems.extend(refused)
            for line in unknown:
                log.warning("%s (checked again when it is used)", line, extra={"network": name})
        if problems:
            await self._close_clients()
            await self.store.close()
            raise ConfigError(problems)

    async def _start_api(self) -> None:
        ctx = ApiContext(
            store=self.store,
            ledger=self.ledger,
            api_keys=[k.get_secret_value() for k in self.settings.api.api_keys],
            metrics_handler=self.metrics.aiohttp_handler(),
            metrics_require_auth=self.settings.metrics.require_auth,
            on_outcome=self.on_outcome,
            networks_status=self.networks_status,
            readiness=self.readiness,
            on_redeliver=self._wake_sender,
            sockets=self.api_sockets,
            rates=self.rates,
            rpcs=self.rpcs,
            rescan=self.start_rescan,
        )
        api = self.settings.api
        app = create_app(ctx)
        dash = self.settings.dashboard
        dashboard = self._dashboard_context(ctx, app) if dash.enabled else None
        if dashboard is not None and dash.listen is None:
            mount_dashboard(app, dashboard)
        self.runner, self.port = await self._listen(app, api.host, api.port,
                                                    "api.listen", api.listen)
        if dashboard is not None and dash.listen is not None:
            assert dash.host is not None and dash.port is not None
            self.dashboard_runner, self.dashboard_port = await self._listen(
                dashboard_root(dashboard), dash.host, dash.port, "dashboard.listen", dash.listen
            )

    def _dashboard_context(self, api: ApiContext, app: web.Application) -> DashboardContext:
        """The dashboard over the API's context and its group commit of creates."""
        dash = self.settings.dashboard
        return DashboardContext(
            api=api,
            creates=app[CREATES],
            policy=Policy(dash.session_idle, dash.session_lifetime),
            limiter=SignInLimiter(dash.signin_attempts),
            sockets=self.dashboard_sockets,
            explorers={name: n.explorer for name, n in self.networks.items()},
            secure=dash.secure,
            public_origin=public_origin_of(dash.public_url),
        )

    def _dashboard_where(self) -> str:
        dash = self.settings.dashboard
        if not dash.enabled:
            return "off"
        if self.dashboard_port is not None:
            return f"on {dash.host}:{self.dashboard_port}/dashboard"
        return "at /dashboard"

    async def _start_checkout(self) -> None:
        co = self.settings.checkout
        ctx = CheckoutContext(
            store=self.store,
            ledger=self.ledger,
            sockets=self.checkout_sockets,
            languages=co.languages,
            explorers={name: n.explorer for name, n in self.networks.items()},
            frame_ancestors=co.frame_ancestors,
            redirect_delay=co.redirect_delay,
            hsts=co.base_url.startswith("https://"),
            on_outcome=self.on_outcome,
            public_origin=origin_of(co.base_url),
        )
        self.checkout_runner, self.checkout_port = await self._listen(
            create_checkout_app(ctx), co.host, co.port, "checkout.listen", co.listen
        )
        if co.public_url is None and co.port == 0:  # "any free port": links name the one got
            host = f"[{co.host}]" if ":" in co.host else co.host
            self.ledger.checkout_url = f"http://{host}:{self.checkout_port}"

    async def _listen(
        self, app: web.Application, host: str, port: int, key: str, listen: str
    ) -> tuple[web.AppRunner, int]:
        """Serve `app` on host:port; the port it got (listen port 0: any free one)."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=3)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # address in use, not ours: the operator fixes the key
            await runner.cleanup()
            for started in (self.dashboard_runner, self.runner):
                if started is not None:
                    await started.cleanup()
            await self._close_clients()
            await self.store.close()
            raise ConfigError(
                [f"{key}: cannot listen on {listen}: {exc.strerror or exc}"]
            ) from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return runner, sockets[0].getsockname()[1] if sockets else port

    async def _start_rates(self) -> None:
        """The rate book, filled once before the API opens (a source that does not answer
        leaves its pair empty until the refresher gets it), then kept warm."""
        rates = self.settings.rates
        if any(c.http for cs in rates.pairs.values() for c in cs):
            self._http = aiohttp.ClientSession()
        book = RateBook(build_sources(self.settings, self.rpcs, self._http), rates.max_age,
                        on_rate=self.metrics.rate_hook())
        self.rates = book
        self.ledger.rates = book
        with contextlib.suppress(TimeoutError):  # an unreachable source: the refresher retries
            await asyncio.wait_for(book.refresh(timeutil.now()), RATES_START_TIMEOUT)

    def _heads(self) -> dict[str, int]:
        return {name: view.head for name, view in self.ledger.views.items()}

    def _changed_elsewhere(self) -> None:
        """An instance (maybe this one) committed: publish and send what it wrote."""
        self.hub.wake()
        self._wake_sender()

    def _wake_sender(self, _event_id: str = "") -> None:
        if self.sender is not None:
            self.sender.wake()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("task %s died: %r", task.get_name(), exc, exc_info=exc)
            self.failed = True
            self._stopped.set()  # exit non-zero: systemd restarts us (Restart=on-failure)

    # ------------------------------------------------------------------ leadership

    async def _lead(self, name: str) -> None:
        """Several instances on PostgreSQL: follow `name` while this instance leads it;
        otherwise try to take it over every `failover_after / 3` seconds (a leader that
        dies frees its lock with its connection)."""
        every = max(0.5, min(self.failover_after / 3, 10.0))
        while True:
            try:
                won = await self.store.run(cluster.try_lead, name, self.instance,
                                           timeutil.now())
                self.database_ok = True
            except StoreError as exc:
                self.database_ok = False
                log.warning("%s: cannot reach the database to lead: %s", name, exc,
                            extra={"network": name})
                won = False
            if won:
                await self._follow_as_leader(name, every)
            await self._watch_leader(name)
            await asyncio.sleep(every)

    async def _watch_leader(self, name: str) -> None:
        """A standby's view of `name`: who leads it and how far it has scanned."""
        def read(db: Db) -> dict[str, Any]:
            return {"leader": cluster.leaders(db).get(name),
                    "cursor": self.ledger.cursor(db, name)}
        try:
            self.cluster_view[name] = await self.store.read(read)
            self.database_ok = True
        except StoreError:
            self.database_ok = False

    async def _follow_as_leader(self, name: str, every: float) -> None:
        """Won `name`: a fresh index and follower, fenced on the lock, until the lock is
        lost (connection gone) or the follower stops."""
        log.info("%s: this instance (%s) leads it now", name, self.instance,
                 extra={"network": name})
        late = self.settings.invoices.late_payment_window
        index = WatchIndex(self.networks[name].assets(), late)
        try:
            seq = await self.store.run(last_event_seq)  # before the fill: nothing between
            await self.store.run(fill_index, index, name, late)
        except StoreError as exc:  # the database went away: let go, try again later
            self.database_ok = False
            log.warning("%s: won the lead but cannot read the database: %s", name, exc,
                        extra={"network": name})
            with contextlib.suppress(StoreError):
                await self.store.run(cluster.resign, name)
            return
        self.indexes[name] = index
        follower = Follower(
            follower_config(name, self.networks[name]), self.rpcs[name], self.store,
            self.ledger, index, self.on_outcome, self.metrics,
            fence=functools.partial(cluster.fence, network=name), event_seq=seq,
        )
        self.followers[name] = follower
        self.metrics.leader.labels(network=name).set(1)
        task = asyncio.create_task(follower.run(), name=f"follow-{name}")
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=min(every, LEAD_CHECK))
                if task.done():
                    break
                try:
                    if loop.time() - refreshed >= every:  # still leads; the row refreshed
                        refreshed = loop.time()
                        leads = await self.store.run(cluster.still_leads, name,
                                                     self.instance, timeutil.now())
                    else:
                        leads = await self.store.run(cluster.holds, name)
                    if not leads:
                        break
                except StoreError:
                    self.database_ok = False
                    break  # the connection, and the lock with it, is gone
        finally:
            follower.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.followers.pop(name, None)
            self.metrics.leader.labels(network=name).set(0)
            with contextlib.suppress(StoreError):
                await self.store.run(cluster.resign, name)
        log.warning("%s: this instance (%s) no longer leads it", name, self.instance,
                    extra={"network": name})

    # ------------------------------------------------------------------ outcomes

    def on_outcome(self, outcome: Outcome) -> None:
        """After every commit: keep the indexes in step, count, log, wake the sender."""
        for inv in outcome.touched:
            for network in inv.networks():  # its method's, and those it switched from
                index = self.indexes.get(network)
                if index is not None and network in self.followers:  # followed here
                    index.put(inv)
        now = timeutil.now()
        for ch in outcome.changes:
            inv = ch.invoice
            latest = inv.latest_payment
            if ch.status is not None:
                # an invoice whose customer has not chosen a method yet has no network
                self.metrics.invoice_transitions.labels(
                    inv.network or "unchosen", ch.status.value).inc()
            if ch.block_time is not None:
                self.metrics.detection_latency.labels(inv.network).observe(
                    max(0, now - ch.block_time)
                )
            log.info(
                "invoice %s %s on %s tx %s",
                inv.id, ch.event.removeprefix("invoice."), inv.network,
                latest.tx_hash if latest else "-",
                extra={"invoice": inv.id, "network": inv.network,
                       "status": ch.status.value if ch.status else inv.status.value,
                       "tx": latest.tx_hash if latest else None},
            )
        if outcome.changes and self.sender is not None:
            self.sender.wake()
        self.hub.wake()  # new events to publish, or at least a new head

    # ------------------------------------------------------------------ status

    async def start_rescan(self, network: str, start: int, end: int | None) -> dict[str, Any]:
        """Check a rescan of `network` (API errors for a range it cannot do) and run it as a
        task beside the follower: its row as JSON (`state` "running")."""
        if self.store.postgres and network not in self.followers:
            leader = ((self.cluster_view.get(network) or {}).get("leader") or {}).get(
                "instance")
            raise Conflict(
                f"this instance does not follow {network}"
                + (f": ask its leader, instance {leader}" if leader else
                   ": no instance leads it yet") + " (GET /v1/networks says which)",
                field="name")
        running = self._rescans.get(network)
        if running is not None and not running.done():
            raise Conflict(f"a rescan of {network} is running; wait for it or stop the daemon",
                           field="name")
        net = self.networks[network]
        scanner = Rescanner(
            follower_config(network, net), net.assets(), self.rpcs[network], self.store,
            self.ledger, self.settings.invoices.late_payment_window, self.on_outcome,
            fence=functools.partial(cluster.fence, network=network)
            if self.store.postgres else None,
        )
        try:
            first, last = await scanner.check(start, end)
        except RescanError as exc:
            raise Invalid(str(exc), field=exc.field) from None
        row = await self.store.run(
            self.ledger.start_rescan, network, first, last, timeutil.now()
        )

        async def run() -> None:
            try:
                await scanner.run(first, last)
            except (RpcError, StoreError, WatcherError) as exc:
                log.error("%s: rescan %d..%d stopped: %s", network, first, last, exc,
                          extra={"network": network})
            except Exception as exc:  # a bug in a rescan must not stop the service
                log.exception("%s: rescan %d..%d failed: %r", network, first, last, exc,
                              extra={"network": network})

        self._rescans[network] = self._spawn(run(), f"rescan-{network}")
        return rescan_json(row)

    def networks_status(self) -> list[dict[str, Any]]:
        out = []
        for name, net in self.networks.items():
            f = self.followers.get(name)
            rpc = self.rpcs.get(name)
            head = f.head if f else None
            scanned = f.scanned if f else None
            leader: str | None = self.instance if f else None
            view = self.cluster_view.get(name)
            if f is None and view is not None:  # a standby: as the leader last wrote it
                cursor = view.get("cursor") or {}
                head, scanned = cursor.get("head_block"), cursor.get("scanned_block")
                leader = (view.get("leader") or {}).get("instance")
            out.append({
                "name": name,
                "chainId": net.chain_id,
                "headBlock": head,
                "scannedBlock": scanned,
                "lagBlocks": head - scanned if head is not None and scanned is not None else None,
                "confirmations": net.confirmations,
                "rpc": rpc.health() if rpc else [],
                "lastError": f.last_error if f else None,
                "leader": leader,
                "isLeader": f is not None,
                "assets": [
                    {"symbol": a.symbol, "decimals": a.decimals, "tokenAddress": a.token,
                     "sharedAddress": a.shared_address}
                    for a in net.assets().values()
                ],
            })
        return out

    def healthy(self) -> bool:
        """For the systemd watchdog: every follower's loop comes round (it may be failing,
        waiting for a head or catching up, but it is not wedged)."""
        stalled = [n for n, f in self.followers.items() if f.stalled(STALL_LIMIT)]
        for name in stalled:
            log.error("%s: the follower has not come round for %.0f s", name, STALL_LIMIT,
                      extra={"network": name})
        return not stalled

    def readiness(self) -> tuple[bool, str]:
        if not self.database_ok:
            return False, "the database is unreachable"
        behind = []
        for name, net in self.networks.items():
            f = self.followers.get(name)
            if f is None and self.store.postgres:
                if (self.cluster_view.get(name) or {}).get("leader") is None:
                    behind.append(f"{name}: no instance leads it yet")
                continue  # another instance follows it
            if f is None or f.head is None or f.scanned is None:
                behind.append(f"{name}: not synced yet")
            elif f.head - f.scanned > net.max_lag_blocks:
                behind.append(
                    f"{name}: {f.head - f.scanned} blocks behind (max {net.max_lag_blocks})"
                )
        return (not behind, "; ".join(behind) or "ok")

    async def _housekeeping(self) -> None:
        while True:
            try:
                counts = await self.store.run(status_counts)
                self.metrics.set_invoice_counts(counts)
                self.metrics.callback_queue_depth.set(await self.store.run(queue_depth))
                for name, index in self.indexes.items():
                    prune_index(index, self.ledger, name)
                ready, reason = self.readiness()
                self.notifier.status(
                    "ready" if ready else reason
                )
                await self.retention.tick(self.store)  # old rows, in short batches
            except StoreError as exc:
                log.error("housekeeping: %s", exc)
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def _first_statistics(self) -> None:
        """PostgreSQL: a new database's busiest tables are analysed as soon as they hold
        rows (`postgres.analyze_new_tables`), not a minute later by autovacuum: creates on
        a new database were ~25% slower until then (bench/RESULTS.md, finding 38). Ends
        when none is left unanalysed, or after `FIRST_STATISTICS_FOR` seconds."""
        from watcher.storage.postgres import analyze_new_tables

        loop = asyncio.get_running_loop()
        until = loop.time() + FIRST_STATISTICS_FOR
        while loop.time() < until:
            try:
                if not await self.store.run(analyze_new_tables):
                    return
            except StoreError as exc:  # the database is away: the next turn tries again
                log.debug("first statistics: %s", exc)
            await asyncio.sleep(FIRST_STATISTICS_EVERY)

    # ------------------------------------------------------------------ stop

    async def wait(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Stop taking work, let the write in flight finish, close everything."""
        self.notifier.stopping()
        for f in self.followers.values():
            f.stop()
        for runner in (self.checkout_runner, self.dashboard_runner, self.runner):
            if runner is not None:
                await runner.cleanup()
        if self.sender is not None:
            await self.sender.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_clients()
        await self.store.close()

    async def _close_clients(self) -> None:
        for rpc in self.rpcs.values():
            await rpc.close()
        if self._http is not None:
            await self._http.close()


async def serve(settings: Settings) -> None:
    """`payment-watcher run`: until SIGTERM/SIGINT; a second signal exits at once."""
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            os._exit(1)
        log.info("stopping")
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await daemon.start()
    try:
        await daemon.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(daemon.stop(), 8)
    if daemon.failed:
        raise SystemExit(1)
