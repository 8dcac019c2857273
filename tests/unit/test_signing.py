"""Signing and verify_signature; the verification snippets of docs/callbacks.md, run."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from watcher import __version__
from watcher.signing import headers, sign, verify_signature

SECRET = "whsec_test_0123456789abcdef"
BODY = b'{"id":"evt_1","event":"invoice.completed","data":{"id":"inv","amount":"1"}}'
NOW = 1_722_386_968
DOC = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1722386968." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == "sha256=" + expected


def test_headers_carry_event_delivery_timestamp_signature() -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    assert h == {
        "Content-Type": "application/json",
        "User-Agent": f"payment-watcher/{__version__}",
        "X-Watcher-Event": "invoice.completed",
        "X-Watcher-Delivery": "evt_1",
        "X-Watcher-Timestamp": str(NOW),
        "X-Watcher-Signature": sign(SECRET, NOW, BODY),
    }


def test_no_signature_header_without_secret() -> None:
    assert "X-Watcher-Signature" not in headers("invoice.created", "evt_1", None, BODY, NOW)
    assert "X-Watcher-Signature" not in headers("invoice.created", "evt_1", "", BODY, NOW)


def test_round_trip() -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    assert verify_signature(SECRET, h, BODY, now=NOW)
    assert verify_signature(SECRET, h, BODY, now=NOW + 300)  # at the edge of tolerance


def test_header_names_are_case_insensitive() -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    assert verify_signature(SECRET, {k.lower(): v for k, v in h.items()}, BODY, now=NOW)
    assert verify_signature(SECRET, {k.upper(): v for k, v in h.items()}, BODY, now=NOW)


def test_tampered_body_or_wrong_secret_fails() -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    assert not verify_signature(SECRET, h, BODY.replace(b'"1"', b'"9"'), now=NOW)
    assert not verify_signature(SECRET, h, BODY + b" ", now=NOW)
    assert not verify_signature("other secret", h, BODY, now=NOW)
    assert not verify_signature("", h, BODY, now=NOW)


def test_tampered_timestamp_fails() -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    h["X-Watcher-Timestamp"] = str(NOW + 1)
    assert not verify_signature(SECRET, h, BODY, now=NOW)


@pytest.mark.parametrize("offset", [301, -301, 86400])
def test_stale_or_future_timestamp_fails(offset: int) -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    assert not verify_signature(SECRET, h, BODY, now=NOW + offset)
    assert verify_signature(SECRET, h, BODY, tolerance=abs(offset), now=NOW + offset)


def test_default_now_is_the_clock() -> None:
    now = int(time.time())
    assert verify_signature(SECRET, headers("e", "evt_1", SECRET, BODY, now), BODY)
    old = headers("e", "evt_1", SECRET, BODY, now - 3600)
    assert not verify_signature(SECRET, old, BODY)


@pytest.mark.parametrize("missing", ["X-Watcher-Signature", "X-Watcher-Timestamp"])
def test_missing_header_fails(missing: str) -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    del h[missing]
    assert not verify_signature(SECRET, h, BODY, now=NOW)


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [("abc", None), ("-5", None), ("1.5", None), ("", None), (str(NOW), "sha256=00"),
     (str(NOW), "md5=x"), (str(NOW), "sha256=ÿ")],
)  # fmt: skip
def test_malformed_headers_fail(timestamp: str, signature: str | None) -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    h["X-Watcher-Timestamp"] = timestamp
    if signature is not None:
        h["X-Watcher-Signature"] = signature
    assert not verify_signature(SECRET, h, BODY, now=NOW)


# ------------------------------------------------------------------ the documented snippets


def _snippet(lang: str, marker: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"one {lang} block with {marker!r} in {DOC.name}"
    return str(found[0])


def test_doc_python_standalone_snippet_verifies() -> None:
    scope: dict[str, Any] = {}
    exec(_snippet("python", "def verify("), scope)
    verify = scope["verify"]
    now = int(time.time())
    h = {k.lower(): v for k, v in headers("e", "evt_1", SECRET, BODY, now).items()}
    assert verify(SECRET, h, BODY)
    assert not verify(SECRET, h, BODY + b"x")
    assert not verify("wrong", h, BODY)
    stale = {k.lower(): v for k, v in headers("e", "evt_1", SECRET, BODY, now - 301).items()}
    assert not verify(SECRET, stale, BODY)


def test_doc_python_helper_snippet_compiles() -> None:
    code = _snippet("python", "from watcher.signing import verify_signature")
    compile(code, "callbacks.md", "exec")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_doc_node_snippet_verifies(tmp_path: Path) -> None:
    (tmp_path / "verify.js").write_text(_snippet("javascript", "timingSafeEqual"))
    now = int(time.time())
    cases = {
        "good": (headers("e", "evt_1", SECRET, BODY, now), BODY),
        "tampered": (headers("e", "evt_1", SECRET, BODY, now), BODY + b"x"),
        "stale": (headers("e", "evt_1", SECRET, BODY, now - 301), BODY),
        "unsigned": (headers("e", "evt_1", None, BODY, now), BODY),
    }
    spec = {
        name: {"headers": {k.lower(): v for k, v in h.items()}, "body": b.decode()}
        for name, (h, b) in cases.items()
    }
    script = (
        "const { verify } = require('./verify.js');\n"
        f"const cases = {json.dumps(spec)};\n"
        "const out = {};\n"
        "for (const [name, c] of Object.entries(cases)) {\n"
        f"  out[name] = verify({json.dumps(SECRET)}, c.headers, Buffer.from(c.body));\n"
        "}\n"
        "console.log(JSON.stringify(out));\n"
    )
    (tmp_path / "run.js").write_text(script)
    proc = subprocess.run(
        ["node", "run.js"], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(proc.stdout) == {
        "good": True, "tampered": False, "stale": False, "unsigned": False,
    }  # fmt: skip
