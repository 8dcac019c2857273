"""Metrics: names, labels, units and the aiohttp handler, on a private registry."""

from __future__ import annotations

import re

import prometheus_client
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from watcher import __version__
from watcher.metrics import CALLBACK_EVENTS, CALLBACK_OUTCOMES, Metrics
from watcher.models import Status


def _text(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_uses_the_injected_registry_never_the_global() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert m.registry is reg
    assert "payment_watcher" not in generate_latest(prometheus_client.REGISTRY).decode()
    # A second instance on its own registry does not clash (no duplicate registration).
    other = Metrics()
    assert other.registry is not reg


def test_every_contract_series_is_exported() -> None:
    m = Metrics()
    m.add_network("anvil", ["ETH", "USDT"])
    m.set_heights("anvil", head=110, scanned=100)
    m.rpc_hook("anvil")("eth_getLogs", "ok", "rpc0", 0.02)
    m.detection_latency.labels(network="anvil").observe(3.0)
    text = _text(m)
    for name in [
        "chain_head_block", "scanned_block", "scan_lag_blocks", "blocks_scanned_total",
        "rpc_requests_total", "rpc_request_duration_seconds_bucket", "transfers_total",
        "invoices", "invoice_transitions_total", "detection_latency_seconds_bucket",
        "callbacks_total", "callback_queue_depth", "reorgs_total", "build_info",
    ]:  # fmt: skip
        assert re.search(rf"^payment_watcher_{name}[{{ ]", text, re.M), name
    assert "_created" not in text


def test_types_and_labels() -> None:
    m = Metrics()
    m.add_network("anvil", ["ETH"])
    text = _text(m)
    assert "# TYPE payment_watcher_blocks_scanned_total counter" in text
    assert "# TYPE payment_watcher_rpc_request_duration_seconds histogram" in text
    assert "# TYPE payment_watcher_detection_latency_seconds histogram" in text
    assert "# TYPE payment_watcher_invoices gauge" in text
    assert "# TYPE payment_watcher_callback_queue_depth gauge" in text
    assert _value(m, "payment_watcher_build_info", version=__version__) == 1


def test_known_label_sets_start_at_zero() -> None:
    m = Metrics()
    for status in Status:
        assert _value(m, "payment_watcher_invoices", status=status.value) == 0
    for event in CALLBACK_EVENTS:
        for outcome in CALLBACK_OUTCOMES:
            assert _value(m, "payment_watcher_callbacks_total", event=event, outcome=outcome) == 0
    assert "invoice.late_payment" in CALLBACK_EVENTS and "invoice.created" in CALLBACK_EVENTS
    m.add_network("polygon", ["USDT"])
    assert _value(m, "payment_watcher_blocks_scanned_total", network="polygon") == 0
    assert _value(m, "payment_watcher_reorgs_total", network="polygon") == 0
    assert (
        _value(
            m, "payment_watcher_transfers_total", network="polygon", asset="USDT", matched="false"
        )
        == 0
    )
    assert (
        _value(
            m, "payment_watcher_invoice_transitions_total", network="polygon", status="COMPLETED"
        )
        == 0
    )
    # Heights are unknown until set: no fake 0.
    assert _value(m, "payment_watcher_chain_head_block", network="polygon") is None


def test_helpers() -> None:
    m = Metrics()
    m.set_heights("anvil", head=100, scanned=120)
    assert _value(m, "payment_watcher_scan_lag_blocks", network="anvil") == 0
    m.set_heights("anvil", head=130, scanned=120)
    assert _value(m, "payment_watcher_scan_lag_blocks", network="anvil") == 10
    m.set_invoice_counts({Status.PENDING: 3, "COMPLETED": 2})
    assert _value(m, "payment_watcher_invoices", status="PENDING") == 3
    assert _value(m, "payment_watcher_invoices", status="COMPLETED") == 2
    m.set_invoice_counts({})
    assert _value(m, "payment_watcher_invoices", status="PENDING") == 0
    m.transfer_seen("anvil", "ETH", matched=False)
    assert (
        _value(m, "payment_watcher_transfers_total", network="anvil", asset="ETH", matched="false")
        == 1
    )


def test_rpc_hook_drops_the_url_label() -> None:
    m = Metrics()
    hook = m.rpc_hook("anvil")
    hook("eth_blockNumber", "ok", "https://rpc.example/SECRETKEY", 0.05)
    hook("eth_blockNumber", "timeout", "https://rpc.example/SECRETKEY", 10.0)
    text = _text(m)
    assert "SECRETKEY" not in text and "rpc.example" not in text
    labels = {"network": "anvil", "method": "eth_blockNumber"}
    assert _value(m, "payment_watcher_rpc_requests_total", outcome="ok", **labels) == 1
    assert _value(m, "payment_watcher_rpc_requests_total", outcome="timeout", **labels) == 1
    assert _value(m, "payment_watcher_rpc_request_duration_seconds_count", **labels) == 2
    assert _value(m, "payment_watcher_rpc_request_duration_seconds_sum", **labels) == 10.05


def test_detection_buckets_span_100ms_to_1h() -> None:
    m = Metrics()
    m.detection_latency.labels(network="anvil").observe(0.05)
    text = _text(m)
    assert 'detection_latency_seconds_bucket{le="0.1",network="anvil"} 1.0' in text
    assert 'detection_latency_seconds_bucket{le="3600.0",network="anvil"} 1.0' in text


async def test_aiohttp_handler_serves_the_exposition() -> None:
    m = Metrics()
    m.scanned_block.labels(network="anvil").set(1234)
    app = web.Application()
    app.router.add_get("/metrics", m.aiohttp_handler())
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = await resp.text()
        assert 'payment_watcher_scanned_block{network="anvil"} 1234.0' in body
        resp = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")
