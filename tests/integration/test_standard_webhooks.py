"""The daemon's real callbacks, verified by the official Standard Webhooks libraries: the
`standardwebhooks` package from PyPI inside an aiohttp receiver, and the `standardwebhooks`
package from npm, run by node (installed into .tools by `make install`; missing: the test
FAILS). Each runs with a `whsec_` secret and with a plain one, which the receiver's library
is given as `whsec_` + base64 of its UTF-8 bytes.

The receiver has three endpoints, and each invoice's `callbackUrl` picks one:
    /hook   the right secret, the real clock: the daemon's callbacks are accepted (204)
    /wrong  a near-miss secret: refused (401), so the daemon marks the delivery failed
    /late   the right secret with the verifier's clock SKEW seconds ahead, as if the request
            had been captured and replayed later: refused as too old (401)
and a genuine request replayed with one byte of its body changed is refused too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook, webhooks
from standardwebhooks.webhooks import WebhookVerificationError

from tests.integration.conftest import serving
from tests.integration.daemonproc import ROOT, DaemonConfig, DaemonProc, poll
from watcher.signing import headers as signed_headers
from watcher.signing import verify_signature

NODE_PACKAGE = ROOT / ".tools" / "node_modules" / "standardwebhooks"
DOC = ROOT / "docs" / "callbacks.md"
SKEW = 600  # seconds: twice the libraries' 5 minute tolerance


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


# (the configured callbacks.secret, what /hook's library is given, what /wrong's is given)
FORMS = {
    # /wrong: the whsec_ string's own UTF-8 bytes as the key (the X-Watcher-Signature key)
    "whsec": (
        _whsec(b"standard-webhooks-integration-key-0123"),
        _whsec(b"standard-webhooks-integration-key-0123"),
        _whsec(_whsec(b"standard-webhooks-integration-key-0123").encode()),
    ),
    # /wrong: the plain secret's Latin-1 bytes instead of its UTF-8 bytes
    "plain": (
        "plain secret: Grüße, 0123456789abcdef",
        _whsec("plain secret: Grüße, 0123456789abcdef".encode()),
        _whsec("plain secret: Grüße, 0123456789abcdef".encode("latin-1")),
    ),
}

#: verify(library secret, request headers, raw body, clock skew) -> None, or the library's error
Verify = Callable[[str, dict[str, str], bytes, int], Awaitable[str | None]]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    error: str | None


@dataclass
class Hooks:
    """The receiver: every request goes to `verify` with the secret and clock of its path."""

    verify: Verify
    secret: str
    wrong: str
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{kind}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in ("hook", "wrong", "late"):
            return web.Response(status=404)
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        secret = self.wrong if kind == "wrong" else self.secret
        error = await self.verify(secret, headers, body, SKEW if kind == "late" else 0)
        self.seen.append(Seen(kind, headers, body, error))
        if error is not None:
            return web.Response(status=401, text=error)
        return web.Response(status=204)


# ---------------------------------------------------------------- the two verifiers


async def python_verify(secret: str, headers: dict[str, str], body: bytes, skew: int) -> str | None:
    """The PyPI package, as a receiver uses it (`Webhook(secret).verify(body, headers)`)."""

    class Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(seconds=skew)

    try:
        with mock.patch.object(webhooks, "datetime", Later):  # the library's clock
            data = Webhook(secret).verify(body, headers)
    except WebhookVerificationError as exc:
        return str(exc)
    assert data == json.loads(body)
    return None


NODE_SCRIPT = r"""
const { Webhook } = require(process.argv[2]);
const realNow = Date.now;
require("readline").createInterface({ input: process.stdin }).on("line", (line) => {
  const req = JSON.parse(line);
  let out;
  Date.now = () => realNow() + req.skew * 1000;  // the library's clock
  try {
    const data = new Webhook(req.secret).verify(Buffer.from(req.body, "base64"), req.headers);
    out = { error: null, id: data.id };
  } catch (e) {
    out = { error: e.message };
  } finally {
    Date.now = realNow;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
});
"""


class NodeVerifier:
    """One node process running the npm package; requests go one line of JSON each way."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()

    async def verify(
        self, secret: str, headers: dict[str, str], body: bytes, skew: int
    ) -> str | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        req = {"secret": secret, "headers": headers, "body": base64.b64encode(body).decode(),
               "skew": skew}  # fmt: skip
        async with self.lock:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line, "node exited"
        out = json.loads(line)
        if out["error"] is None:
            assert out["id"] == json.loads(body)["id"]
        return None if out["error"] is None else str(out["error"])


def _node() -> str:
    """node, with the npm package installed; the test FAILS (never skips) without them."""
    node = shutil.which("node")
    if node is None or not (NODE_PACKAGE / "package.json").is_file():
        pytest.fail(
            f"node and the npm package standardwebhooks ({NODE_PACKAGE}) are needed: "
            "run `make install`",
            pytrace=False,
        )
    return node


@pytest.fixture
async def node_verifier(tmp_path: Path) -> AsyncIterator[NodeVerifier]:
    node = _node()
    script = tmp_path / "verify.js"
    script.write_text(NODE_SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        node, str(script), str(NODE_PACKAGE),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield NodeVerifier(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------- the run


def _address() -> str:
    return "0x" + secrets.token_hex(20)


async def _deliveries(d: DaemonProc, invoice: str) -> list[tuple[str, str, str | None]] | None:
    """(event, delivery state, last error) of each event, once none is pending."""
    events = (await d.ok("GET", f"/v1/invoices/{invoice}/events"))["data"]
    out = [(e["event"], e["delivery"]["state"], e["delivery"]["lastError"]) for e in events]
    return None if any(state == "pending" for _, state, _ in out) else out


async def _check(tmp_path: Path, rpc_url: str, form: str, verify: Verify) -> None:
    configured, given, wrong = FORMS[form]
    hooks = Hooks(verify, given, wrong)
    async with serving(hooks.app()) as base:
        cfg = DaemonConfig(
            tmp_path, rpc=[rpc_url], callback_url=f"{base}/hook", callback_secret=configured
        )
        async with DaemonProc(cfg) as d:
            good = await d.create("ETH", "1", _address())
            await d.ok("POST", f"/v1/invoices/{good}/cancel")
            refused = {
                kind: await d.create("ETH", "1", _address(), callbackUrl=f"{base}/{kind}")
                for kind in ("wrong", "late")
            }
            got = {
                inv: await poll(lambda inv=inv: _deliveries(d, inv), what=f"{inv} delivered")
                for inv in (good, *refused.values())
            }

    # The genuine callbacks were accepted by the library, so delivered.
    assert got[good] == [("invoice.created", "delivered", None),
                         ("invoice.voided", "delivered", None)]  # fmt: skip
    accepted = [s for s in hooks.seen if s.path == "hook"]
    assert [json.loads(s.body)["event"] for s in accepted] == ["invoice.created", "invoice.voided"]
    assert all(s.error is None for s in accepted)
    for s in accepted:  # the same request carries a valid X-Watcher-Signature as well
        assert verify_signature(configured, s.headers, s.body)
        assert s.headers["webhook-id"] == json.loads(s.body)["id"]

    # A near-miss secret, and a verifier clock SKEW s ahead, refuse them: the daemon's
    # delivery fails on the receiver's 401, with the library's reason.
    wrong_error, late_error = "No matching signature found", "Message timestamp too old"
    assert got[refused["wrong"]] == [("invoice.created", "failed", f"HTTP 401: {wrong_error}")]
    assert got[refused["late"]] == [("invoice.created", "failed", f"HTTP 401: {late_error}")]
    assert [s.error for s in hooks.seen if s.path == "wrong"] == [wrong_error]
    assert [s.error for s in hooks.seen if s.path == "late"] == [late_error]

    # A genuine request replayed with its body tampered is refused; as it is, accepted.
    genuine = accepted[0]
    tampered = genuine.body.replace(b'"amount":"1"', b'"amount":"9"', 1)
    assert tampered != genuine.body
    assert await verify(given, genuine.headers, tampered, 0) == wrong_error
    assert await verify(given, genuine.headers, genuine.body, 0) is None
    keep = {k: v for k, v in genuine.headers.items() if k.startswith("webhook-")}
    async with serving(hooks.app()) as base, aiohttp.ClientSession() as http:
        for body, status in [(tampered, 401), (genuine.body, 204)]:
            async with http.post(f"{base}/hook", data=body, headers=keep) as resp:
                assert resp.status == status, await resp.text()


@pytest.mark.parametrize("form", list(FORMS))
async def test_python_standardwebhooks_verifies_daemon_callbacks(
    tmp_path: Path, rpc_url: str, form: str
) -> None:
    await _check(tmp_path, rpc_url, form, python_verify)


@pytest.mark.parametrize("form", list(FORMS))
async def test_node_standardwebhooks_verifies_daemon_callbacks(
    tmp_path: Path, rpc_url: str, form: str, node_verifier: NodeVerifier
) -> None:
    await _check(tmp_path, rpc_url, form, node_verifier.verify)


def test_doc_node_snippet_verifies(tmp_path: Path) -> None:
    """The Node receiver of docs/callbacks.md, run as written (the secret filled in)."""
    node = _node()
    blocks = re.findall(r"```javascript\n(.*?)```", DOC.read_text(), re.S)
    (code,) = [b for b in blocks if 'require("standardwebhooks")' in b]
    assert '"whsec_..."' in code
    configured, given, _ = FORMS["plain"]
    body = b'{"id":"evt_doc","event":"invoice.created","data":{"amount":"1"}}'
    h = signed_headers("invoice.created", "evt_doc", configured, body, int(time.time()))
    results = {}
    for name, sent in [("genuine", body), ("tampered", body.replace(b'"1"', b'"2"'))]:
        script = tmp_path / f"{name}.js"
        script.write_text(
            f"const req = {{ body: Buffer.from({json.dumps(sent.decode())}), "
            f"headers: {json.dumps({k.lower(): v for k, v in h.items()})} }};\n"
            + code.replace('"whsec_..."', json.dumps(given))
            + "console.log(JSON.stringify(event));\n"
        )
        proc = subprocess.run(
            [node, str(script)], capture_output=True, text=True, timeout=30,
            env={"NODE_PATH": str(NODE_PACKAGE.parent), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        results[name] = (proc.returncode, proc.stdout.strip(), proc.stderr)
    assert results["genuine"][:2] == (0, json.dumps(json.loads(body), separators=(",", ":")))
    assert results["tampered"][0] != 0 and "No matching signature found" in results["tampered"][2]
