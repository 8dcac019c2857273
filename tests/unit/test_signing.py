"""Signing, verify_signature and verify_webhook, checked against the official
`standardwebhooks` package and the Standard Webhooks test vector; the verification snippets
of docs/callbacks.md, run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from watcher import __version__
from watcher.callbacks import CallbackSender
from watcher.signing import (
    headers,
    sign,
    verify_signature,
    verify_webhook,
    webhook_key,
    webhook_signature,
)

SECRET = "whsec_dGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="  # key b"test-key-0123456789abcdef"
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
        "webhook-id": "evt_1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": webhook_signature(b"test-key-0123456789abcdef", "evt_1", NOW, BODY),
    }


def test_x_watcher_signature_is_keyed_with_the_whole_secret_string() -> None:
    # Even for a whsec_ secret: the legacy header's key is the string's UTF-8 bytes.
    mac = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256)
    assert headers("e", "evt_1", SECRET, BODY, NOW)["X-Watcher-Signature"] == (
        "sha256=" + mac.hexdigest()
    )


@pytest.mark.parametrize("secret", [None, ""])
def test_no_signature_header_without_secret(secret: str | None) -> None:
    h = headers("invoice.created", "evt_1", secret, BODY, NOW)
    assert "X-Watcher-Signature" not in h and "webhook-signature" not in h
    assert h["webhook-id"] == "evt_1" and h["webhook-timestamp"] == str(NOW)


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


# ------------------------------------------------------------------ Standard Webhooks

#: The test vector of the Standard Webhooks specification (and of Svix's documentation).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

PLAIN = "plain secret, not whsec: Grüße 0123456789"
#: (configured secret, what a receiver gives its standardwebhooks library, the HMAC key)
FORMS = [
    (VECTOR_SECRET, VECTOR_SECRET, base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
    (SECRET, SECRET, b"test-key-0123456789abcdef"),
    (PLAIN, "whsec_" + base64.b64encode(PLAIN.encode()).decode(), PLAIN.encode()),
]
FORM_IDS = ["whsec-vector", "whsec-padded", "plain-utf8"]


def test_webhook_signature_matches_the_specification_vector() -> None:
    key = webhook_key(VECTOR_SECRET)
    assert webhook_signature(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    vector = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    assert verify_webhook(VECTOR_SECRET, vector, VECTOR_BODY, now=VECTOR_TIMESTAMP)
    assert not verify_webhook(VECTOR_SECRET, vector, VECTOR_BODY + b" ", now=VECTOR_TIMESTAMP)


def test_headers_match_the_specification_vector() -> None:
    h = headers("invoice.created", VECTOR_ID, VECTOR_SECRET, VECTOR_BODY, VECTOR_TIMESTAMP)
    assert h["webhook-id"] == VECTOR_ID
    assert h["webhook-timestamp"] == str(VECTOR_TIMESTAMP)
    assert h["webhook-signature"] == VECTOR_SIGNATURE


@pytest.mark.parametrize(("secret", "given", "key"), FORMS, ids=FORM_IDS)
def test_webhook_key(secret: str, given: str, key: bytes) -> None:
    assert webhook_key(secret) == key
    # The key the official library derives from what the receiver is given is the same one.
    official = Webhook(given)
    assert official.sign(VECTOR_ID, _utc(NOW), BODY.decode()) == webhook_signature(
        key, VECTOR_ID, NOW, BODY
    )


def _utc(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


@pytest.mark.parametrize(("secret", "given", "key"), FORMS, ids=FORM_IDS)
def test_official_library_verifies_our_headers(secret: str, given: str, key: bytes) -> None:
    now = int(time.time())
    h = headers("invoice.completed", "evt_1", secret, BODY, now)
    assert Webhook(given).verify(BODY, h) == json.loads(BODY)
    assert Webhook(key).verify(BODY, h) == json.loads(BODY)  # raw key bytes, same answer
    assert verify_webhook(secret, h, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(given).verify(BODY.replace(b'"1"', b'"9"'), h)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook("whsec_" + base64.b64encode(b"another key entirely").decode()).verify(BODY, h)
    old = headers("invoice.completed", "evt_1", secret, BODY, now - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(given).verify(BODY, old)
    assert not verify_webhook(secret, old, BODY)
    assert verify_webhook(secret, old, BODY, tolerance=601)  # only the age was wrong


@pytest.mark.parametrize(("secret", "given", "key"), FORMS, ids=FORM_IDS)
def test_verify_webhook_accepts_what_the_official_library_signs(
    secret: str, given: str, key: bytes
) -> None:
    signature = Webhook(given).sign("evt_7", _utc(NOW), BODY.decode())
    h = {"Webhook-Id": "evt_7", "Webhook-Timestamp": str(NOW), "Webhook-Signature": signature}
    assert verify_webhook(secret, h, BODY, now=NOW)
    assert not verify_webhook(secret, {**h, "Webhook-Id": "evt_8"}, BODY, now=NOW)


def test_verify_webhook_rejects() -> None:
    h = headers("invoice.completed", "evt_1", SECRET, BODY, NOW)
    assert verify_webhook(SECRET, h, BODY, now=NOW)
    assert verify_webhook(SECRET, {k.upper(): v for k, v in h.items()}, BODY, now=NOW)
    assert not verify_webhook(SECRET, h, BODY + b" ", now=NOW)
    assert not verify_webhook("whsec_" + base64.b64encode(b"x" * 24).decode(), h, BODY, now=NOW)
    assert not verify_webhook(SECRET.removeprefix("whsec_"), h, BODY, now=NOW)  # other key
    assert not verify_webhook("whsec_!!", h, BODY, now=NOW)  # not a usable secret
    assert not verify_webhook("", h, BODY, now=NOW)
    for offset in (301, -301):
        assert not verify_webhook(SECRET, h, BODY, now=NOW + offset)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not verify_webhook(SECRET, {k: v for k, v in h.items() if k != name}, BODY, now=NOW)
    bad_stamp = {**h, "webhook-timestamp": str(NOW + 1)}
    assert not verify_webhook(SECRET, bad_stamp, BODY, now=NOW)
    for sig in ("v1,", "v2," + h["webhook-signature"][3:], "sha256=00", "v1,ÿ"):
        assert not verify_webhook(SECRET, {**h, "webhook-signature": sig}, BODY, now=NOW)


def test_verify_webhook_any_of_several_signatures() -> None:
    now = int(time.time())
    h = headers("invoice.completed", "evt_1", SECRET, BODY, now)
    other = webhook_signature(b"rotated-away key", "evt_1", now, BODY)
    h["webhook-signature"] = f"{other} {h['webhook-signature']}"
    assert verify_webhook(SECRET, h, BODY, now=now)
    assert Webhook(SECRET).verify(BODY, h) == json.loads(BODY)  # the library agrees
    h["webhook-signature"] = other
    assert not verify_webhook(SECRET, h, BODY, now=now)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, h)


@pytest.mark.parametrize(
    "secret",
    ["whsec_", "whsec_TOPSECRET!!", "whsec_TOP SECRET", "whsec_TOPSECRET_", "whsec_TOPSECR",
     "whsec_TOPSECRETA=", "whsec_TOPSECRÉT", "whsec_===="],
)  # fmt: skip
def test_webhook_key_refuses_a_bad_whsec_secret_without_quoting_it(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_") as info:
        webhook_key(secret)
    assert "TOP" not in str(info.value)
    with pytest.raises(ValueError, match=r"^secret starts with whsec_"):
        CallbackSender(cast(Any, None), secret=secret, timeout=1, max_age=1)


def test_signing_imports_nothing_from_the_daemon() -> None:
    code = (
        "import sys, watcher.signing\n"
        "print(sorted(m for m in sys.modules if m == 'watcher' or m.startswith('watcher.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['watcher',", "'watcher.signing']"]


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


def test_doc_standardwebhooks_python_snippet_verifies() -> None:
    code = _snippet("python", "from standardwebhooks import Webhook")
    assert '"whsec_..."' in code
    now = int(time.time())
    for secret, given, _ in FORMS:
        run = code.replace('"whsec_..."', repr(given))
        h = headers("invoice.completed", "evt_1", secret, BODY, now)
        scope: dict[str, Any] = {"raw_body": BODY, "request": SimpleNamespace(headers=h)}
        exec(run, scope)
        assert scope["event"] == json.loads(BODY)
        with pytest.raises(WebhookVerificationError):
            exec(run, {**scope, "raw_body": BODY + b" "})


def test_doc_plain_secret_mapping_commands() -> None:
    block = _snippet("sh", "base64.b64encode(sys.argv[1].encode())")
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2
    expected = "whsec_" + base64.b64encode(PLAIN.encode()).decode()
    for line in lines:
        out = subprocess.run(
            ["bash", "-c", line], env={"SECRET": PLAIN, "PATH": "/usr/bin:/bin",
                                       "LC_ALL": "C.UTF-8"},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert out.stdout.strip() == expected, line
        assert Webhook(out.stdout.strip()).sign("m", _utc(NOW), "x") == webhook_signature(
            webhook_key(PLAIN), "m", NOW, b"x"
        )
