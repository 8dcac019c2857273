"""`[retention]`: defaults, durations and "off", and bad values named by their key path
(exit 2 from `check-config`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from watcher.cli import main
from watcher.config import load_settings
from watcher.errors import ConfigError

ANVIL = '[networks.anvil]\nrpc = ["http://127.0.0.1:8545"]\n'
DAY = 86400


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PAYMENT_WATCHER_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def _config(tmp_path: Path, retention: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[retention]\n{retention}\n" + ANVIL, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    r = load_settings(_config(tmp_path, "")).retention
    assert (r.attempts, r.event_bodies, r.unmatched_transfers) == (90 * DAY, 180 * DAY, 365 * DAY)
    assert (r.batch, r.interval) == (500, 3600)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('attempts = "30d"', ("attempts", 30 * DAY)),
        ('attempts = "2w"', ("attempts", 14 * DAY)),
        ('event_bodies = "off"', ("event_bodies", 0)),
        ('event_bodies = "OFF"', ("event_bodies", 0)),
        ("unmatched_transfers = 0", ("unmatched_transfers", 0)),
        ('unmatched_transfers = "0"', ("unmatched_transfers", 0)),
        ("attempts = 86400", ("attempts", DAY)),
        ('attempts = "24h"', ("attempts", DAY)),
        ("batch = 1", ("batch", 1)),
        ('interval = "10m"', ("interval", 600)),
    ],
)
def test_good_values(tmp_path: Path, text: str, expect: tuple[str, int]) -> None:
    r = load_settings(_config(tmp_path, text)).retention
    key, value = expect
    assert getattr(r, key) == value


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_WATCHER_RETENTION__EVENT_BODIES", "off")
    monkeypatch.setenv("PAYMENT_WATCHER_RETENTION__BATCH", "50")
    r = load_settings(_config(tmp_path, 'event_bodies = "10d"')).retention
    assert (r.event_bodies, r.batch) == (0, 50)


BAD = [
    ("short-age", 'attempts = "12h"', 'retention.attempts: must be at least "1d"'),
    ("bare-seconds", "unmatched_transfers = 90",
     'retention.unmatched_transfers: must be at least "1d"'),
    ("negative", "event_bodies = -1", "retention.event_bodies: must not be negative"),
    ("word", 'event_bodies = "never"',
     'retention.event_bodies: must be a duration like "90d" (at least "1d"), or "off"'),
    ("bool", "attempts = true", "retention.attempts: must be a duration like"),
    ("float", "attempts = 1.5", "retention.attempts: must be a duration like"),
    ("batch-zero", "batch = 0", "retention.batch: "),
    ("batch-huge", "batch = 1000000", "retention.batch: "),
    ("batch-text", 'batch = "many"', "retention.batch: "),
    ("interval-short", 'interval = "10s"', "retention.interval: "),
    ("interval-off", 'interval = "off"', "retention.interval: must be a duration"),
    ("unknown", 'transfers = "90d"', "retention.transfers: unknown key"),
]


@pytest.mark.parametrize(("text", "expect"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_values_name_the_key(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_config(tmp_path, text))
    problems = info.value.problems
    assert any(p.startswith(expect) for p in problems), problems
    result = CliRunner().invoke(main, ["check-config", "--config", str(tmp_path / "config.toml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: {expect}" in result.stderr


def test_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('retention = "90d"\n' + ANVIL, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert any(p.startswith("retention: ") for p in info.value.problems), info.value.problems
