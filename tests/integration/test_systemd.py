"""The shipped unit: `systemd-analyze verify` silent, `security --offline=yes` exposure <= 2.0."""

from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "payment-watcher.service"
MAX_EXPOSURE = 2.0


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (required in CI)")
        pytest.skip("systemd-analyze is not installed")
    return path


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify needs it)."""
    text = UNIT.read_text()
    exec_start = f"ExecStart={sys.executable} -c pass"
    text, n = re.subn(r"^ExecStart=.*$", exec_start, text, flags=re.M)
    assert n == 1
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_unit_has_the_contract_settings() -> None:
    d = _directives(UNIT.read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "TimeoutStopSec": "15",
        "KillSignal": "SIGTERM",
        "DynamicUser": "yes",
        "StateDirectory": "payment-watcher",
        "ConfigurationDirectory": "payment-watcher",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert d["ExecStart"] == [
        "/opt/payment-watcher/venv/bin/payment-watcher run"
        " --config /etc/payment-watcher/config.toml"
    ]
    assert sorted(d["LoadCredential"]) == [
        "api_keys:/etc/payment-watcher/api_keys",
        "callbacks_secret:/etc/payment-watcher/callbacks_secret",
    ]
    # The fallback when /etc/payment-watcher/callbacks_secret does not exist (no callbacks).
    assert d["SetCredential"] == ["callbacks_secret:\\n"]
    assert "PYTHONUNBUFFERED=1" in d["Environment"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "RestartSec" in d


def test_verify_prints_nothing(unit_copy: Path) -> None:
    tool = _systemd_analyze()
    proc = subprocess.run(
        [tool, "verify", str(unit_copy)],
        capture_output=True, text=True, cwd=unit_copy.parent, timeout=60,
    )  # fmt: skip
    # verify exits 0 on unknown keys: any output at all is a failure.
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


def test_verify_catches_an_unknown_key(unit_copy: Path) -> None:
    """Guard for the test above: a typo in the unit must produce output."""
    tool = _systemd_analyze()
    unit_copy.write_text(
        unit_copy.read_text().replace("[Install]", "ProtectSystm=strict\n[Install]")
    )
    proc = subprocess.run(
        [tool, "verify", str(unit_copy)],
        capture_output=True, text=True, cwd=unit_copy.parent, timeout=60,
    )  # fmt: skip
    assert "ProtectSystm" in proc.stdout + proc.stderr


def test_security_exposure_at_most_2(unit_copy: Path) -> None:
    tool = _systemd_analyze()
    proc = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit_copy)],
        capture_output=True, text=True, cwd=unit_copy.parent, timeout=60,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, out


# ---------------------------------------------------------------- optional callbacks secret


def _fallback_value(unit: Path) -> bytes:
    """What systemd puts in $CREDENTIALS_DIRECTORY/callbacks_secret when the file named by
    LoadCredential= is missing: the SetCredential= value, C-unescaped."""
    (value,) = _directives(unit.read_text())["SetCredential"]
    name, _, escaped = value.partition(":")
    assert name == "callbacks_secret"
    return codecs.decode(escaped, "unicode_escape").encode()


@pytest.mark.parametrize(("line", "complaint"), [
    ("SetCredential=callbacks_secret:", "Invalid syntax"),  # an empty value is refused
    ("SetCredential=callbacks_secret:\\q", "Can't unescape"),
])
def test_verify_reads_the_fallback_line(unit_copy: Path, line: str, complaint: str) -> None:
    """systemd-analyze parses the SetCredential= line (so the shipped one, on which
    `test_verify_prints_nothing` sees nothing, is one systemd takes): broken forms of it
    are reported."""
    tool = _systemd_analyze()
    text, n = re.subn(r"^SetCredential=.*$", lambda _: line, unit_copy.read_text(), flags=re.M)
    assert n == 1
    unit_copy.write_text(text)
    proc = subprocess.run(
        [tool, "verify", str(unit_copy)],
        capture_output=True, text=True, cwd=unit_copy.parent, timeout=60,
    )  # fmt: skip
    assert complaint in proc.stdout + proc.stderr


def _check_config(creds: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text('[networks.anvil]\nrpc = ["http://127.0.0.1:8545"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENT_WATCHER_")}
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    return subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_without_the_secret_file_the_daemon_starts_without_callbacks_signing(
    tmp_path: Path,
) -> None:
    """No /etc/payment-watcher/callbacks_secret: systemd passes the unit's fallback value,
    which the config loader takes as "not set" (a warning, not an error)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_keys").write_text("cred-key-0123456789abcdef\n")
    (creds / "callbacks_secret").write_bytes(_fallback_value(UNIT))
    proc = _check_config(creds, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "callbacks.secret: not set" in proc.stderr
    assert "secret NOT SET" in proc.stdout


def test_with_the_secret_file_its_secret_is_used(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_keys").write_text("cred-key-0123456789abcdef\n")
    (creds / "callbacks_secret").write_text("whsec_" + "A" * 43 + "=\n")
    proc = _check_config(creds, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "callbacks.secret" not in proc.stderr
    assert "secret set" in proc.stdout
