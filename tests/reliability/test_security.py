"""Security: every /v1 route needs the key (compared in constant time), callback URLs are
http/https only, SQL only with parameters, the database file is 0600, running as root is
warned about, and secrets never reach the log."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

import watcher.web.api as api_mod
from tests.integration.daemonproc import API_KEY, CALLBACK_SECRET, DaemonConfig, DaemonProc
from tests.reliability.rpcproxy import RpcProxy
from watcher.ledger import Ledger, NetworkInfo
from watcher.models import Asset
from watcher.storage.store import Store
from watcher.web.api import ApiContext, create_app, key_matches

KEY = "sec_key_0123456789abcdef0123"
OTHER_KEY = "sec_key_second_abcdefabcdef"
NET = "anvil"
HOSTILE = [
    "' OR 1=1 --", "' OR '1'='1", "\" OR \"\"=\"", "1; DROP TABLE invoices; --",
    "x' UNION SELECT id, email, payload FROM invoices --", "%' OR 1=1 --", "\\", "'",
    "1) OR (1=1", "PENDING') OR ('1'='1", "*", "%", "_", "0 OR 1=1",
]


def _ledger() -> Ledger:
    assets = {"ETH": Asset(NET, "ETH", 18)}
    return Ledger({NET: NetworkInfo(NET, 31337, 2, assets)}, tolerance=Fraction(0),
                  default_ttl=3600, late_window=3600, default_callback_url=None)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    ledger = _ledger()
    store = await Store(tmp_path / "api.db").open()
    await store.run(ledger.start_network, NET, 1, 0)
    await store.run(ledger.load_views)
    app = create_app(ApiContext(store=store, ledger=ledger, api_keys=[KEY, OTHER_KEY]))
    c: TestClient[Any, Any] = TestClient(TestServer(app))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()
        await store.close()


def _v1_routes() -> list[tuple[str, str]]:
    """(method, path with placeholders filled) of every /v1 route of the real router."""
    app = create_app(ApiContext(store=Store(":memory:"), ledger=_ledger(), api_keys=[]))
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith("/v1") or route.method == "*":
            continue
        for name in ("{id}", "{eventId}"):
            path = path.replace(name, "00000000-0000-0000-0000-000000000000")
        out.append((route.method, path))
    return sorted(set(out))


V1_ROUTES = _v1_routes()
BAD_AUTH = [
    None, "", "Bearer", "Bearer ", f"Basic {KEY}", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x",
    f"Bearer {KEY.upper()}", "Bearer wrong", f"Bearer {KEY} {KEY}", f"Token {KEY}",
    f"Bearer {KEY},{OTHER_KEY}", "Bearer \u00e9\u00e9",
]


def test_the_router_has_the_contract_routes() -> None:
    assert len(V1_ROUTES) >= 11, V1_ROUTES


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
async def test_every_v1_route_needs_the_key(
    client: TestClient[Any, Any], method: str, path: str
) -> None:
    for auth in BAD_AUTH:
        headers = {} if auth is None else {"Authorization": auth}
        resp = await client.request(method, path, headers=headers, json={})
        body = await resp.json()
        assert resp.status == 401, (method, path, auth, body)
        assert body["error"]["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for good in (KEY, OTHER_KEY):
        resp = await client.request(method, path, headers={"Authorization": f"Bearer {good}"})
        assert resp.status != 401, (method, path)


def test_key_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared with hmac.compare_digest, whichever matches, and
    the function holds no other comparison of the secret."""
    calls: list[tuple[bytes, bytes]] = []
    real = api_mod.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_mod.hmac, "compare_digest", spy)
    keys = ["first-key-aaaa", "second-key-bbbb", "third-key-cccc"]
    assert key_matches("Bearer first-key-aaaa", keys)
    assert len(calls) == 3
    calls.clear()
    assert not key_matches("Bearer nope", keys)
    assert len(calls) == 3
    src = inspect.getsource(key_matches)
    assert "compare_digest" in src
    assert not re.search(r"\b(given|token)\b\s*(==|!=|\bin\b)", src)
    assert not re.search(r"(==|!=)\s*(given|token|key)\b", src)


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "data:text/plain,hi",
    "gopher://example.com", "ws://example.com/x", "http://", "http:///path", "//example.com",
    "example.com/hook", "http://exa mple.com/", "http://example.com/\nX-Injected: 1",
    "HTTP", "",
])
async def test_callback_url_only_http_https(client: TestClient[Any, Any], url: str) -> None:
    resp = await client.post(
        "/v1/invoices", headers={"Authorization": f"Bearer {KEY}"},
        json={"network": NET, "asset": "ETH", "amount": "1", "address": "0x" + "1" * 40,
              "callbackUrl": url},
    )
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"]["field"] == "callbackUrl"


async def test_callback_url_http_and_https_accepted(client: TestClient[Any, Any]) -> None:
    for n, url in enumerate(["http://127.0.0.1:9/hook", "https://shop.example.com/h?x=1"]):
        resp = await client.post(
            "/v1/invoices", headers={"Authorization": f"Bearer {KEY}"},
            json={"network": NET, "asset": "ETH", "amount": "1",
                  "address": f"0x{n + 1:040x}", "callbackUrl": url},
        )
        assert resp.status == 201, await resp.json()


async def test_hostile_strings_in_every_filter_and_id(client: TestClient[Any, Any]) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    made = []
    for n in range(3):
        resp = await client.post("/v1/invoices", headers=auth, json={
            "network": NET, "asset": "ETH", "amount": "1", "address": f"0x{n + 7:040x}",
            "externalId": f"order-{n}", "email": f"secret{n}@example.com"})
        assert resp.status == 201
        made.append((await resp.json())["id"])
    checked = 0
    for s in HOSTILE:
        for path, params in [
            ("/v1/invoices", {"status": s}), ("/v1/invoices", {"network": s}),
            ("/v1/invoices", {"externalId": s}), ("/v1/invoices", {"cursor": s}),
            ("/v1/invoices", {"limit": s}), ("/v1/transfers", {"network": s}),
            ("/v1/transfers", {"matched": s}), ("/v1/transfers", {"cursor": s}),
            ("/v1/transfers", {"limit": s}),
        ]:
            resp = await client.get(path, params=params, headers=auth)
            text = await resp.text()
            assert resp.status in (200, 400, 422), (path, params, text)
            if resp.status == 200:
                data = (await resp.json())["data"]
                assert data == [], (path, params, data)  # never a match through SQL
            assert "secret0@" not in text and "sqlite" not in text.lower()
            checked += 1
        for method, tpl in V1_ROUTES:
            if "00000000-" not in tpl:
                continue
            path = tpl.replace("00000000-0000-0000-0000-000000000000", _quote(s))
            resp = await client.request(method, path, headers=auth)
            text = await resp.text()
            assert resp.status in (400, 404, 422), (method, path, text)
            assert "secret0@" not in text and "sqlite" not in text.lower()
            checked += 1
    resp = await client.get("/v1/invoices", headers=auth)
    assert sorted(i["id"] for i in (await resp.json())["data"]) == sorted(made)
    assert checked > 200


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")


def test_sql_is_parameterised_in_the_code() -> None:
    """No request value is formatted into SQL: every f-string SQL in the API, store and
    ledger only joins placeholders or fixed column names."""
    import watcher.ledger
    import watcher.outbox
    import watcher.queries
    import watcher.storage.rows
    import watcher.storage.sqlite

    pattern = re.compile(r"f\"[^\"]*(SELECT|INSERT|UPDATE|DELETE|WHERE)[^\"]*\{([^}]*)\}",
                         re.IGNORECASE)
    # placeholders ("?,?,?"), fixed fragments and WHERE clauses built of those
    allowed = {"where", "sql", "marks", "statuses", "skip", "_HEAD", "_OPEN_SQL",
               "_TRANSFER_ORDER", "changed", "','.join(row)", "','.join('?' * len(row))",
               "','.join('?' * len(q.statuses))", "','.join('?' * n)",
               "','.join('?' * len(busy))", "','.join('?' * len(chunk))",
               "sets"}  # "column = ?, ..." over invoice_row's fixed keys
    found = 0
    for mod in (api_mod, watcher.storage.rows, watcher.storage.sqlite, watcher.ledger,
                watcher.outbox, watcher.queries):
        for m in pattern.finditer(inspect.getsource(mod)):
            assert m.group(2) in allowed, (mod.__name__, m.group(0))
            found += 1
    assert found >= 8


async def test_database_file_is_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = await Store(tmp_path / "sub" / "new.db").open()
        await store.close()
    finally:
        os.umask(old)
    for name in ("new.db", "new.db-wal", "new.db-shm"):
        p = tmp_path / "sub" / name
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (name, oct(p.stat().st_mode))
    assert stat.S_IMODE((tmp_path / "sub" / "new.db").stat().st_mode) == 0o600


def test_root_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              caplog: pytest.LogCaptureFixture) -> None:
    import watcher.daemon
    import watcher.logs
    from watcher.cli import main

    async def no_serve(settings: Any) -> None:
        del settings

    cfg = DaemonConfig(tmp_path, rpc=["http://127.0.0.1:8545"]).write()
    monkeypatch.setattr(watcher.daemon, "serve", no_serve)
    monkeypatch.setattr(watcher.logs, "setup_logging", lambda *a, **k: None)
    for uid, warned in ((0, True), (1000, False)):
        monkeypatch.setattr(os, "geteuid", lambda uid=uid: uid)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = CliRunner().invoke(main, ["run", "--config", str(cfg)])
        assert result.exit_code == 0, result.output
        assert any("running as root" in r.getMessage() for r in caplog.records) is warned


@pytest.mark.slow
async def test_secrets_never_logged(tmp_path: Path, rpc_url: str, token: str,
                                    dead_url: str) -> None:
    """The real daemon at debug level, with an RPC key in a URL path, one dead URL carrying
    a key (its errors are logged), wrong keys tried on the API, a callback signed: neither
    the API key, nor the callback secret, nor an RPC key appears in its output."""
    from tests.integration.receiver import Receiver

    rpc_key = "RPCKEY0123456789abcdef"
    async with RpcProxy(rpc_url) as proxy, Receiver(secret=CALLBACK_SECRET) as rx:
        urls = [f"{dead_url}/v3/{rpc_key}", f"{proxy.url}/v3/{rpc_key}"]
        d = DaemonProc(DaemonConfig(tmp_path, urls, {"USDT": token}, callback_url=rx.url,
                                    log_level="debug"))
        try:
            await d.start()
            status, inv = await d.request("POST", "/v1/invoices", {
                "network": NET, "asset": "USDT", "amount": "1", "address": "0x" + "3" * 40})
            assert status == 201, inv
            await rx.wait_for(lambda r: len(r.requests) >= 1, timeout=15)
            for auth in (f"Bearer {API_KEY}x", f"Basic {API_KEY}"):
                status, _ = await d.request("GET", "/v1/invoices", auth=False,
                                            headers={"Authorization": auth})
                assert status == 401
            status, networks = await d.request("GET", "/v1/networks")
            assert rpc_key not in json.dumps(networks)
        finally:
            assert await d.stop(timeout=15) == 0
    log = d.log_text()
    assert "rpc" in log.lower()  # it did log about RPC (the dead URL)
    for secret in (API_KEY, CALLBACK_SECRET, rpc_key):
        assert secret not in log, secret
    assert "Traceback" not in log

