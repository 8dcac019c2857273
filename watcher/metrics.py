"""Every Prometheus series of the daemon, on an injected `CollectorRegistry`.

Names follow the contract (section 6): prefix `payment_watcher_`, base units (seconds),
counters exported with `_total`. No label ever carries an invoice id, an address or a hash:
label values come from small closed sets (network names, RPC method names, asset symbols,
statuses, event names, outcomes).

`_created` series are switched off with `prometheus_client.disable_created_metrics()`. In
prometheus-client 0.26 that is a process-wide switch (there is no per-registry one); it only
removes the `<name>_created` samples, which this daemon never wants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.aiohttp import make_aiohttp_handler

from watcher import __version__
from watcher.models import CREATED_EVENT, LATE_PAYMENT_EVENT, Status
from watcher.rates import Rate

NAMESPACE = "payment_watcher"

#: `outcome` of `rpc_requests_total` for a successful call; alerts treat anything else as an
#: error (`outcome!="ok"`), so RPC callers are free to name failures ("error", "timeout", ...).
RPC_OK = "ok"

#: `outcome` values of `callbacks_total` (those of `watcher.callbacks`).
CALLBACK_DELIVERED = "delivered"  # a 2xx within callbacks.timeout
CALLBACK_RETRY = "retry"  # the attempt failed and will be retried
CALLBACK_FAILED = "failed"  # given up (non-retryable 4xx or past callbacks.max_age)
CALLBACK_OUTCOMES = (CALLBACK_DELIVERED, CALLBACK_RETRY, CALLBACK_FAILED)

#: Every callback event name of the contract (section 3).
CALLBACK_EVENTS = (CREATED_EVENT, *(s.event for s in Status), LATE_PAYMENT_EVENT)

#: `kind` values of `retention_pruned_rows_total` (those of `watcher.retention`).
RETENTION_KINDS = ("attempts", "event_bodies", "unmatched_transfers")

#: `listener` values of the WebSocket series: the public checkout and the merchant API.
WS_LISTENERS = ("checkout", "api")

#: RPC call durations: loopback anvil (~1 ms) to a slow public endpoint near its timeout.
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Block timestamp to status change: ~0.1 s on a dev chain, minutes for deep confirmations,
#: up to an hour after downtime or on slow chains.
DETECTION_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip

RpcHook = Callable[[str, str, str, float], None]


class _Common(TypedDict):
    namespace: str
    registry: CollectorRegistry


class Metrics:
    """The daemon's metrics. One instance per process (or per test), on its own registry.

    Attributes are the `prometheus_client` objects themselves: call `.labels(...)` on them.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        _disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        kw = _Common(namespace=NAMESPACE, registry=self.registry)
        net = ("network",)

        self.chain_head_block = Gauge(
            "chain_head_block", "Latest block number reported by the chain's RPC.", net, **kw
        )
        self.scanned_block = Gauge(
            "scanned_block", "Highest block number fully scanned and committed.", net, **kw
        )
        self.scan_lag_blocks = Gauge(
            "scan_lag_blocks", "Blocks between the chain head and the scanned block.", net, **kw
        )
        self.leader = Gauge(
            "leader", "1 while this instance follows the network (it leads it; always 1 "
            "with SQLite), else 0.", net, **kw
        )
        self.blocks_scanned = Counter(
            "blocks_scanned", "Blocks scanned (rescanned after a reorg: counted again).", net, **kw
        )
        self.rpc_requests = Counter(
            "rpc_requests",
            "JSON-RPC requests by method and outcome (ok or a failure kind).",
            (*net, "method", "outcome"),
            **kw,
        )
        self.rpc_duration = Histogram(
            "rpc_request_duration_seconds",
            "Duration of JSON-RPC requests.",
            (*net, "method"),
            buckets=RPC_BUCKETS,
            **kw,
        )
        self.transfers = Counter(
            "transfers",
            "Transfers seen to watched addresses; matched is true or false.",
            (*net, "asset", "matched"),
            **kw,
        )
        self.invoices = Gauge("invoices", "Invoices by current status.", ("status",), **kw)
        self.invoice_transitions = Counter(
            "invoice_transitions",
            "Invoice status changes, by the status reached.",
            (*net, "status"),
            **kw,
        )
        self.detection_latency = Histogram(
            "detection_latency_seconds",
            "Time from the timestamp of the block holding a payment to the status change.",
            net,
            buckets=DETECTION_BUCKETS,
            **kw,
        )
        self.callbacks = Counter(
            "callbacks",
            "Callback delivery attempts by event and outcome (delivered, retry, failed).",
            ("event", "outcome"),
            **kw,
        )
        self.callback_queue_depth = Gauge(
            "callback_queue_depth", "Callback deliveries waiting to be sent (the outbox).", **kw
        )
        self.reorgs = Counter("reorgs", "Chain reorganisations detected.", net, **kw)
        self.ws_connections = Gauge(
            "ws_connections",
            "Open WebSocket connections by listener (checkout or api).",
            ("listener",),
            **kw,
        )
        self.ws_messages = Counter(
            "ws_messages",
            "Messages sent on WebSocket connections by listener.",
            ("listener",),
            **kw,
        )
        self.rate = Gauge(
            "rate",
            "The current rate of a pair (currency per asset unit), by the kind of source "
            "that gave it (fixed, chainlink, http).",
            ("pair", "source"),
            **kw,
        )
        self.rate_age = Gauge(
            "rate_age_seconds",
            "Age of the rate a pair would price with (from its source's own time).",
            ("pair",),
            **kw,
        )
        self.retention_pruned = Counter(
            "retention_pruned_rows",
            "Rows pruned by retention, by kind (attempts, event_bodies, unmatched_transfers).",
            ("kind",),
            **kw,
        )
        self.build_info = Gauge(
            "build_info", "Always 1; the version label names the running build.", ("version",), **kw
        )
        self.build_info.labels(version=__version__).set(1)

        # Known label sets: create the children now so dashboards and alerts see series at 0.
        for status in Status:
            self.invoices.labels(status=status.value).set(0)
        for event in CALLBACK_EVENTS:
            for outcome in CALLBACK_OUTCOMES:
                self.callbacks.labels(event=event, outcome=outcome)
        for listener in WS_LISTENERS:
            self.ws_connections.labels(listener=listener).set(0)
            self.ws_messages.labels(listener=listener)
        for kind in RETENTION_KINDS:
            self.retention_pruned.labels(kind=kind)

    def add_network(self, network: str, assets: Iterable[str] = ()) -> None:
        """Create the per-network series (at 0) for a watched network and its asset symbols.

        Call once per enabled network at start-up, so that `rate()`/`increase()` have a
        starting point and "no data" never hides a problem. The height gauges are left to
        `set_heights`: a head of 0 would be a lie, a missing series means "not known yet".
        """
        self.blocks_scanned.labels(network=network)
        self.leader.labels(network=network).set(0)
        self.reorgs.labels(network=network)
        self.detection_latency.labels(network=network)
        for status in Status:
            self.invoice_transitions.labels(network=network, status=status.value)
        for asset in assets:
            for matched in ("true", "false"):
                self.transfers.labels(network=network, asset=asset, matched=matched)

    def rate_hook(self) -> Callable[[str, str, Rate | None, int], None]:
        """For the rate book: after each refresh of a pair, its value and age. The value
        is a float here only: exposition is float, pricing never reads it back."""

        def hook(pair: str, kind: str, rate: Rate | None, now: int) -> None:
            if rate is None:  # never had one: infinitely old, so the stale alert fires
                self.rate_age.labels(pair=pair).set(float("inf"))
                return
            if kind:
                self.rate.labels(pair=pair, source=kind).set(float(rate.value))
            self.rate_age.labels(pair=pair).set(max(0, now - rate.at))

        return hook

    def set_heights(self, network: str, head: int, scanned: int) -> None:
        """Set head, scanned block and the lag between them (never negative)."""
        self.chain_head_block.labels(network=network).set(head)
        self.scanned_block.labels(network=network).set(scanned)
        self.scan_lag_blocks.labels(network=network).set(max(0, head - scanned))

    def set_invoice_counts(self, counts: Mapping[str, int]) -> None:
        """Set `invoices{status}` from a status -> count map; missing statuses become 0."""
        for status in Status:
            self.invoices.labels(status=status.value).set(counts.get(status.value, 0))

    def transfer_seen(self, network: str, asset: str, matched: bool) -> None:
        self.transfers.labels(
            network=network, asset=asset, matched="true" if matched else "false"
        ).inc()

    def rpc_hook(self, network: str) -> RpcHook:
        """A callback for the RPC client: `hook(method, outcome, url_label, seconds)`.

        `url_label` identifies the endpoint in logs but is deliberately not a metric label
        (RPC URLs often embed API keys); it is dropped here.
        """
        requests = self.rpc_requests
        duration = self.rpc_duration

        def hook(method: str, outcome: str, url_label: str, seconds: float) -> None:
            del url_label
            requests.labels(network=network, method=method, outcome=outcome).inc()
            duration.labels(network=network, method=method).observe(seconds)

        return hook

    def aiohttp_handler(self) -> Handler:
        """An aiohttp handler serving this registry (text or OpenMetrics by negotiation)."""
        return make_aiohttp_handler(self.registry)
