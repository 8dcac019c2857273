"""Bad input. The API is fuzzed from its own OpenAPI document (hypothesis strategies built
from watcher/web/openapi.json, with values swapped for hostile ones) and by hand (deep nesting,
huge numbers, exponents, unicode, nulls, wrong types, 10 MB bodies, a client that trickles
its body): never a 5xx, never a traceback, always `{"error": {"code", "message", "field"}}`.
The config loader is fuzzed with generated TOML and env: always `ConfigError` lines."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import string
import threading
import time
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.config import load_settings
from watcher.errors import ConfigError
from watcher.ledger import Ledger, NetworkInfo
from watcher.models import Asset
from watcher.storage.store import Store
from watcher.web.api import ApiContext, create_app, load_openapi

KEY = "fuzz_key_0123456789abcdef"
NET = "anvil"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALLOWED = {200, 201, 202, 400, 401, 404, 405, 409, 413, 415, 422}
#: Requests made per test, for RELIABILITY.md.
CASES: Counter[str] = Counter()


# --------------------------------------------------------------------------- the server


class Server:
    """The API app with a real store, served on 127.0.0.1 from a thread of its own, so
    plain blocking clients (http.client, raw sockets) can talk to it."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        assets = {"ETH": Asset(NET, "ETH", 18),
                  "USDT": Asset(NET, "USDT", 6, token=TOKEN,
                                shared_address="0x" + "ab" * 20)}
        self.ledger = Ledger({NET: NetworkInfo(NET, 31337, 2, assets)}, tolerance=Fraction(0),
                             default_ttl=3600, late_window=3600, default_callback_url=None)
        self.store = await Store(self.db).open()
        await self.store.run(self.ledger.start_network, NET, 1, 0)
        await self.store.run(self.ledger.load_views)
        app = create_app(ApiContext(store=self.store, ledger=self.ledger, api_keys=[KEY]))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def start(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            await self.runner.cleanup()
            await self.store.close()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            h = {"Content-Type": "application/json", **(headers or {})}
            if auth:
                h["Authorization"] = f"Bearer {KEY}"
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("fuzz") / "api.db").start()
    yield s
    s.stop()


def check(status: int, body: bytes, what: object = "") -> Any:
    """No 5xx, no traceback, JSON, the error shape on every error."""
    assert status in ALLOWED, (status, body[:500], what)
    assert b"Traceback" not in body and b'File "' not in body, body[:500]
    data = json.loads(body)
    if status >= 400:
        assert set(data) == {"error"}, data
        err = data["error"]
        assert set(err) == {"code", "message", "field"}, err
        assert isinstance(err["code"], str) and isinstance(err["message"], str)
        assert err["field"] is None or isinstance(err["field"], str)
    return data


# --------------------------------------------------------------------------- strategies

SPEC = json.loads(load_openapi())
HOSTILE_TEXT = st.sampled_from([
    "' OR 1=1 --", "\"; DROP TABLE invoices; --", "0x" + "0" * 40, "0x" + "G" * 40, "",
    " ", "\x00", "null", "1e400", "-1", "0", "0.0000000000000000000001", "9" * 400,
    "../../etc/passwd", "%00", "\u202e", "😀" * 10, "NaN", "Infinity", "1_000", "٣",
    "2024-13-45T99:99:99Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00",
])
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30), HOSTILE_TEXT,
)
ANY_JSON = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12,
)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = SPEC
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema allows, mixed with hostile values of any type."""
    schema = _resolve(schema)
    kind = schema.get("type")
    good: st.SearchStrategy[Any]
    if "enum" in schema:
        good = st.sampled_from(schema["enum"])
    elif kind == "string":
        if "pattern" in schema:
            good = st.from_regex(schema["pattern"], fullmatch=True)
        elif schema.get("format") == "date-time":
            good = st.datetimes().map(lambda d: d.isoformat() + "Z")
        else:
            good = st.text(max_size=schema.get("maxLength", 64))
    elif kind == "integer":
        good = st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    elif kind == "boolean":
        good = st.booleans()
    elif kind == "object" and "properties" in schema:
        props = schema["properties"]
        required = set(schema.get("required", []))
        good = st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    else:
        good = ANY_JSON
    return st.one_of(good, good, good, HOSTILE_TEXT, ANY_JSON)


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method in ("get", "post"):
                params = [_resolve(p) for p in [*item.get("parameters", []),
                                                 *op.get("parameters", [])]]
                ops.append((method.upper(), path, {"params": params, "op": op}))
    return ops


OPERATIONS = _operations()


@st.composite
def requests_from_spec(draw: st.DrawFn) -> tuple[str, str, bytes | None, str]:
    method, path, info = draw(st.sampled_from(OPERATIONS))
    query: list[tuple[str, str]] = []
    for p in info["params"]:
        value = draw(from_schema(p.get("schema", {})))
        text = value if isinstance(value, str) else json.dumps(value)
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", _quote(text) or "x")
        elif p["in"] == "query" and draw(st.booleans()):
            query.append((p["name"], text))
    if query:
        from urllib.parse import urlencode

        path += "?" + urlencode(query)
    body = None
    schema = (info["op"].get("requestBody") or {}).get("content", {}).get(
        "application/json", {}).get("schema")
    if method == "POST":
        value = draw(from_schema(schema) if schema else st.one_of(st.just({}), ANY_JSON))
        body = json.dumps(value).encode()
    return method, path, body, info["op"].get("operationId", path)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=requests_from_spec())
def test_every_operation_from_the_spec(server: Server, req: tuple[str, str, Any, str]) -> None:
    method, path, body, _op = req
    CASES["spec"] += 1
    check(*server.request(method, path, body), (method, path, body))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=from_schema(SPEC["components"]["schemas"]["CreateInvoice"]))
def test_create_invoice_bodies(server: Server, body: Any) -> None:
    CASES["create"] += 1
    status, raw = server.request("POST", "/v1/invoices", json.dumps(body).encode())
    data = check(status, raw, body)
    if status in (200, 201):
        assert data["network"] == NET and data["status"] == "PENDING"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HAND_BODIES: list[tuple[str, bytes]] = [
    ("nested arrays 100k", _nested(100_000)),
    ("nested objects 5k", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ("nested payload 200", json.dumps({"network": NET, "asset": "ETH", "amount": "1",
                                       "payload": json.loads('{"a":' * 200 + "1" + "}" * 200)
                                       }).encode()),
    ("huge number", b'{"network":"anvil","asset":"ETH","amount":' + b"9" * 5000 + b"}"),
    ("huge amount string", json.dumps({"network": NET, "asset": "ETH",
                                       "amount": "9" * 5000}).encode()),
    ("exponent amount", json.dumps({"network": NET, "asset": "ETH", "amount": "1e5"}).encode()),
    ("exponent number", b'{"network":"anvil","asset":"ETH","amount":"1","ttl":1e400}'),
    ("huge ttl", b'{"network":"anvil","asset":"ETH","amount":"1","ttl":' + b"9" * 40 + b"}"),
    ("negative ttl", b'{"network":"anvil","asset":"ETH","amount":"1","ttl":-5}'),
    ("float ttl", b'{"network":"anvil","asset":"ETH","amount":"1","ttl":1.5}'),
    ("bool ttl", b'{"network":"anvil","asset":"ETH","amount":"1","ttl":true}'),
    ("nan", b'{"network":"anvil","asset":"ETH","amount":NaN}'),
    ("unicode digits", json.dumps({"network": NET, "asset": "ETH", "amount": "١٢"}).encode()),
    ("unicode network", json.dumps({"network": "ánvil😀", "asset": "ETH",
                                    "amount": "1"}).encode()),
    ("lone surrogate", b'{"network":"\\ud800","asset":"ETH","amount":"1"}'),
    ("nul byte", b'{"network":"anvil\\u0000","asset":"ETH","amount":"1"}'),
    ("invalid utf-8", b'{"network":"\xff\xfe","asset":"ETH","amount":"1"}'),
    ("nulls", b'{"network":null,"asset":null,"amount":null}'),
    ("all null optional", json.dumps({"network": NET, "asset": "ETH", "amount": "1",
                                      "address": None, "payload": None, "ttl": None}).encode()),
    ("wrong types", b'{"network":1,"asset":["ETH"],"amount":{"v":1}}'),
    ("array body", b'[{"network":"anvil"}]'),
    ("string body", b'"hello"'),
    ("number body", b"12"),
    ("trailing garbage", b'{"network":"anvil"} x'),
    ("duplicate keys", b'{"network":"anvil","network":"other","asset":"ETH","amount":"1"}'),
    ("expireAt and ttl", json.dumps({"network": NET, "asset": "ETH", "amount": "1",
                                     "ttl": 60, "expireAt": "2030-01-01T00:00:00Z"}).encode()),
    ("expireAt year 9999", json.dumps({"network": NET, "asset": "ETH", "amount": "1",
                                       "expireAt": "9999-12-31T23:59:59Z"}).encode()),
    ("expireAt no zone", json.dumps({"network": NET, "asset": "ETH", "amount": "1",
                                     "expireAt": "2030-01-01T00:00:00"}).encode()),
    ("payload 5 KiB", json.dumps({"network": NET, "asset": "ETH", "amount": "1",
                                  "payload": {"x": "y" * 5000}}).encode()),
    ("too many decimals", json.dumps({"network": NET, "asset": "USDT",
                                      "amount": "1.0000001"}).encode()),
    ("empty", b""),
    ("whitespace", b"   \n"),
]


@pytest.mark.parametrize("body", [b for _, b in HAND_BODIES], ids=[n for n, _ in HAND_BODIES])
def test_hand_written_bodies(server: Server, body: bytes) -> None:
    CASES["hand"] += 1
    for path in ("/v1/invoices", "/v1/invoices/nope/refund", "/v1/invoices/nope/cancel"):
        check(*server.request("POST", path, body), body[:80])


def test_ten_megabyte_body(server: Server) -> None:
    CASES["hand"] += 1
    body = b'{"network":"anvil","payload":"' + b"x" * (10 * 2**20) + b'"}'
    try:
        status, raw = server.request("POST", "/v1/invoices", body)
    except (ConnectionError, BrokenPipeError):
        return  # the server may close the connection on an over-long body: fine
    assert status == 413
    check(status, raw)


def test_ten_megabyte_body_chunked(server: Server) -> None:
    """No Content-Length: the limit applies while reading."""
    CASES["hand"] += 1
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"x" * 2**20 for _ in range(10))
    try:
        conn.request("POST", "/v1/invoices", body=chunks, encode_chunked=True,
                     headers={"Authorization": f"Bearer {KEY}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    except (ConnectionError, BrokenPipeError):
        return
    finally:
        conn.close()
    assert status == 413
    check(status, raw)


def test_slow_client_trickling_a_body(server: Server) -> None:
    """A client sending its body a few bytes at a time gets a normal answer; meanwhile the
    server keeps serving others."""
    CASES["hand"] += 1
    body = json.dumps({"network": NET, "asset": "ETH", "amount": "1.25",
                       "address": "0x" + "5" * 40}).encode()
    head = (f"POST /v1/invoices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        for i in range(0, len(body), 8):
            sock.sendall(body[i : i + 8])
            if i == 40:
                status, raw = server.request("GET", "/healthz", auth=False)
                assert status == 200, raw
            time.sleep(0.05)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head_part.split()[1])
    assert status == 201, answer[:300]
    check(status, payload)


def test_slow_client_that_stops(server: Server) -> None:
    """A client that announces a body and then stalls ties up nothing else: other requests
    are answered while it waits."""
    CASES["hand"] += 1
    head = (f"POST /v1/invoices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Length: 1000\r\n\r\n{\"network\":").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        t0 = time.monotonic()
        for _ in range(20):
            status, raw = server.request("GET", "/v1/invoices?limit=1")
            check(status, raw)
        assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("path", [
    "/v1/invoices?limit=0", "/v1/invoices?limit=-1", "/v1/invoices?limit=1e3",
    "/v1/invoices?limit=" + "9" * 100, "/v1/invoices?limit=NaN", "/v1/invoices?cursor=%00",
    "/v1/invoices?cursor=" + "A" * 5000, "/v1/invoices?status=COMPLETED,BOGUS",
    "/v1/invoices?status=", "/v1/invoices?status=" + ",".join(["PENDING"] * 500),
    "/v1/transfers?matched=maybe", "/v1/transfers?matched=", "/v1/transfers?limit=%F0%9F%98%80",
    "/v1/invoices/" + "x" * 8000, "/v1/invoices/%00", "/v1/invoices/%FF%FE",
    "/v1/invoices?externalId=" + "%C3%A9" * 1000, "/v1/callbacks/%27%20OR%201%3D1%20--/redeliver",
])
def test_hand_written_queries(server: Server, path: str) -> None:
    CASES["hand"] += 1
    method = "POST" if path.endswith("/redeliver") else "GET"
    check(*server.request(method, path))


def test_request_line_over_8_kib(server: Server) -> None:
    """aiohttp refuses a request line over 8190 bytes before the app sees it: a plain 400
    (documented in RELIABILITY.md), never a 5xx or a traceback."""
    CASES["hand"] += 1
    status, raw = server.request("GET", "/v1/invoices/" + "x" * 10000)
    assert status == 400
    assert b"Traceback" not in raw and b'File "' not in raw


# --------------------------------------------------------------------------- config

KNOWN_KEYS = {
    "": ["database", "log_level", "log_format"],
    "api": ["listen", "api_keys", "api_keys_file"],
    "callbacks": ["url", "secret", "secret_file", "timeout", "max_age", "concurrency"],
    "invoices": ["default_ttl", "late_payment_window", "underpayment_tolerance"],
    "metrics": ["require_auth"],
}
NET_KEYS = ["chain_id", "rpc", "ws", "confirmations", "block_time", "max_block_range",
            "poll_interval", "max_lag_blocks", "enabled", "native", "tokens", "name"]
TOML_LEAF = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), HOSTILE_TEXT,
    st.sampled_from(["http://127.0.0.1:8545", "ftp://x", "24h", "0", "-1s", "1w", "0.005",
                     "127.0.0.1:99999", "[::1]:8080", TOKEN, "0x" + "AB" * 20]),
)
TOML_VALUE = st.recursive(
    TOML_LEAF,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["symbol", "address", "decimals", "shared_address", "amount_step",
                         "x"]), kids, max_size=3),
    max_leaves=6,
)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines = []
    for table, keys in KNOWN_KEYS.items():
        body = [f"{k} = {toml_value(draw(TOML_VALUE))}" for k in keys if draw(st.booleans())]
        if draw(st.integers(0, 9)) == 0:
            body.append(f"{draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))} = 1")
        if table:
            lines.append(f"[{table}]")
        lines += body
    for name in draw(st.lists(st.sampled_from(["anvil", "polygon", "bsc", "mine", "Bad Name"]),
                              max_size=2, unique=True)):
        lines.append(f"[networks.{json.dumps(name)}]")
        lines += [f"{k} = {toml_value(draw(TOML_VALUE))}"
                  for k in NET_KEYS if draw(st.integers(0, 3)) == 0]
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 9)) == 0:  # break the syntax somewhere
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["[", "=", '"', "\x00", "]]", "\n= 1"])) + \
            text[cut:]
    return text


ENV_NAMES = st.sampled_from([
    "PAYMENT_WATCHER_DATABASE", "PAYMENT_WATCHER_API__LISTEN", "PAYMENT_WATCHER_API__API_KEYS",
    "PAYMENT_WATCHER_CALLBACKS__TIMEOUT", "PAYMENT_WATCHER_CALLBACKS__URL",
    "PAYMENT_WATCHER_NETWORKS__ANVIL__RPC", "PAYMENT_WATCHER_NETWORKS__ANVIL__CONFIRMATIONS",
    "PAYMENT_WATCHER_NETWORKS__ANVIL__TOKENS", "PAYMENT_WATCHER_NETWORKS", "PAYMENT_WATCHER_API",
    "PAYMENT_WATCHER_INVOICES__UNDERPAYMENT_TOLERANCE", "PAYMENT_WATCHER_BOGUS",
])
ENV_VALUES = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
            max_size=30),
    st.sampled_from(['["http://127.0.0.1:1"]', "[", "{}", '{"a": 1}', "null", "1e999", "-1",
                     '[{"symbol": "X"}]', "true"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=toml_documents(), env=st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=3))
def test_config_loader_fuzz(tmp_path_factory: pytest.TempPathFactory, doc: str,
                            env: dict[str, str]) -> None:
    CASES["config"] += 1
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_text(doc, encoding="utf-8")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        load_settings(path)
    except ConfigError as exc:
        assert exc.problems, doc
        for line in exc.problems:
            assert isinstance(line, str) and line.strip() and "Traceback" not in line
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_fuzz_figures() -> None:
    """Prints the number of fuzz cases run in this session (for RELIABILITY.md)."""
    print("\nfuzz cases:", dict(CASES))
