"""The shipped unit: `systemd-analyze verify` silent, `security --offline=yes` exposure <= 2.0."""

from __future__ import annotations

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
