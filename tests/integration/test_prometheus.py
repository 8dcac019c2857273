"""Metrics through a real Prometheus, `promtool check metrics`, and the alert rules."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.integration.promfixture import JOB, promtool, start_prometheus
from watcher.metrics import Metrics

ALERTS = Path(__file__).resolve().parents[2] / "systemd" / "alerts.yml"


@pytest.fixture
async def served_metrics() -> AsyncIterator[tuple[Metrics, int]]:
    """A Metrics instance served at /metrics on a real TCP port of 127.0.0.1."""
    metrics = Metrics()
    metrics.add_network("anvil", ["ETH", "USDT"])
    app = web.Application()
    app.router.add_get("/metrics", metrics.aiohttp_handler())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield metrics, server.port
    finally:
        await server.close()


async def test_scanned_block_reaches_prometheus(
    served_metrics: tuple[Metrics, int], tmp_path: Path
) -> None:
    metrics, port = served_metrics
    metrics.scanned_block.labels(network="anvil").set(1234)
    with start_prometheus(port, tmp_path / "prom") as prom:
        await prom.wait_for_value('payment_watcher_scanned_block{network="anvil"}', 1234)
        up = await prom.aquery(f'up{{job="{JOB}"}}')
        assert [s["value"][1] for s in up] == ["1"]
        build = await prom.aquery("payment_watcher_build_info")
        assert build and build[0]["metric"]["version"]
        # A change is seen on the next scrape.
        metrics.scanned_block.labels(network="anvil").set(1300)
        await prom.wait_for_value('payment_watcher_scanned_block{network="anvil"}', 1300)
        # The exporter's own _created series are off.
        assert await prom.aquery('{__name__=~"payment_watcher_.*_created"}') == []


async def test_live_exposition_passes_promtool_lint(served_metrics: tuple[Metrics, int]) -> None:
    metrics, port = served_metrics
    metrics.set_heights("anvil", head=1300, scanned=1234)
    metrics.blocks_scanned.labels(network="anvil").inc(66)
    metrics.rpc_hook("anvil")("eth_getLogs", "ok", "rpc0", 0.02)
    metrics.rpc_hook("anvil")("eth_getLogs", "timeout", "rpc0", 10.0)
    metrics.transfer_seen("anvil", "USDT", matched=True)
    metrics.detection_latency.labels(network="anvil").observe(2.5)
    metrics.callbacks.labels(event="invoice.completed", outcome="delivered").inc()
    metrics.callback_queue_depth.set(3)
    metrics.reorgs.labels(network="anvil").inc()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    proc = promtool("check", "metrics", stdin=text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    assert "warning" not in (proc.stdout + proc.stderr).lower()


def _rules_without_annotations(tmp_path: Path) -> Path:
    """alerts.yml minus its annotations, so rule tests compare labels only."""
    text = ALERTS.read_text()
    stripped, n = re.subn(r"^(\s+)annotations:\n(?:\1  .*\n)+", "", text, flags=re.M)
    assert n >= 10
    path = tmp_path / "alerts.yml"
    path.write_text(stripped)
    return path


def _series(name: str, selector: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{selector}}}", "values": values}


def _daemon(
    sel: str, *, lag: str, scanned: str, head: str, rpc: dict[str, str], queue: str
) -> list[dict[str, str]]:
    """The series of one running daemon watching "polygon" (values in promtool notation)."""
    nsel = sel + ',network="polygon"'
    return [
        _series("up", sel, "1x40"),
        _series("payment_watcher_scan_lag_blocks", nsel, lag),
        _series("payment_watcher_blocks_scanned_total", nsel, scanned),
        _series("payment_watcher_chain_head_block", nsel, head),
        *(
            _series(
                "payment_watcher_rpc_requests_total",
                f'{nsel},method="eth_getLogs",outcome="{outcome}"',
                values,
            )
            for outcome, values in rpc.items()
        ),
        _series("payment_watcher_callback_queue_depth", sel, queue),
    ]


def _alert(name: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": lbl} for lbl in labels],
    }


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    rules = _rules_without_annotations(tmp_path)
    common = {"job": JOB, "instance": "w1"}
    sel = 'job="payment-watcher",instance="w1"'
    net = {**common, "network": "polygon"}
    nsel = sel + ',network="polygon"'
    tests = [
        {
            "interval": "1m",
            "input_series": [_series("up", sel, "0x10")],
            "alert_rule_test": [
                _alert("PaymentWatcherDown", "1m"),
                _alert("PaymentWatcherDown", "3m", {**common, "severity": "critical"}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # Lagging, stalled scanner; a third of RPC calls time out; receiver down.
                *_daemon(
                    sel,
                    lag="150x20",
                    scanned="100x40",
                    head="5+1x40",
                    rpc={"ok": "0+10x40", "timeout": "0+5x40"},
                    queue="200x40",
                ),
                _series(
                    "payment_watcher_callbacks_total",
                    sel + ',event="invoice.completed",outcome="failed"',
                    "0 0 0 1 1",
                ),
                _series("payment_watcher_reorgs_total", nsel, "0 0 1 1"),
            ],
            "alert_rule_test": [
                _alert("PaymentWatcherDown", "20m"),
                _alert("PaymentWatcherScanLagging", "5m"),
                _alert("PaymentWatcherScanLagging", "12m", {**net, "severity": "warning"}),
                _alert("PaymentWatcherScanStalled", "4m"),  # flat since 1m: pending for 5m
                _alert("PaymentWatcherScanStalled", "10m", {**net, "severity": "critical"}),
                _alert("PaymentWatcherChainHeadStuck", "30m"),
                _alert("PaymentWatcherRpcErrors", "20m", {**net, "severity": "warning"}),
                _alert("PaymentWatcherCallbackBacklog", "10m"),
                _alert("PaymentWatcherCallbackBacklog", "17m", {**common, "severity": "warning"}),
                _alert(
                    "PaymentWatcherCallbacksFailing",
                    "4m",
                    {**common, "event": "invoice.completed", "severity": "warning"},
                ),
                _alert("PaymentWatcherCallbacksFailing", "30m"),
                _alert("PaymentWatcherReorg", "3m", {**net, "severity": "info"}),
                _alert("PaymentWatcherReorg", "2h"),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # Healthy scanner, 1% RPC errors, small steady queue; but a stale head.
                *_daemon(
                    sel,
                    lag="3x40",
                    scanned="0+5x40",
                    head="100x40",
                    rpc={"ok": "0+100x40", "error": "0+1x40"},
                    queue="5x40",
                ),
            ],
            "alert_rule_test": [
                _alert("PaymentWatcherDown", "30m"),
                _alert("PaymentWatcherScanLagging", "30m"),
                _alert("PaymentWatcherScanStalled", "30m"),
                _alert("PaymentWatcherChainHeadStuck", "30m", {**net, "severity": "warning"}),
                _alert("PaymentWatcherRpcErrors", "30m"),
                _alert("PaymentWatcherCallbackBacklog", "30m"),
                _alert("PaymentWatcherCallbackQueueGrowing", "30m"),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # The receiver slows down: the queue grows, 3 of 4 attempts are retried.
                _series("payment_watcher_callback_queue_depth", sel, "20+1x60"),
                _series(
                    "payment_watcher_callbacks_total",
                    sel + ',event="invoice.completed",outcome="retry"',
                    "0+6x60",
                ),
                _series(
                    "payment_watcher_callbacks_total",
                    sel + ',event="invoice.completed",outcome="delivered"',
                    "0+2x60",
                ),
            ],
            "alert_rule_test": [
                _alert("PaymentWatcherCallbacksRetrying", "10m"),
                _alert("PaymentWatcherCallbacksRetrying", "30m", {**common, "severity": "warning"}),
                _alert("PaymentWatcherCallbackQueueGrowing", "10m"),
                _alert(
                    "PaymentWatcherCallbackQueueGrowing", "45m", {**common, "severity": "warning"}
                ),
            ],
        },
    ]
    tests.append({
        "interval": "1m",
        "input_series": [
            # ETH/USD fresh (refreshed every minute); EUR/USD stuck; GBP/USD never answered
            _series("payment_watcher_rate_age_seconds", sel + ',pair="ETH/USD"', "30x40"),
            _series("payment_watcher_rate_age_seconds", sel + ',pair="EUR/USD"', "3000+60x40"),
            _series("payment_watcher_rate_age_seconds", sel + ',pair="GBP/USD"',
                    " ".join(["+Inf"] * 40)),
        ],
        "alert_rule_test": [
            _alert("PaymentWatcherRateStale", "5m"),  # pending for 10m first
            _alert("PaymentWatcherRateStale", "25m",
                   {**common, "pair": "EUR/USD", "severity": "warning"},
                   {**common, "pair": "GBP/USD", "severity": "warning"}),
        ],
    })
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests})
    )
    proc = promtool("test", "rules", str(spec))
    assert proc.returncode == 0, proc.stdout + proc.stderr
