"""`[dashboard]`: defaults, bad values named by their key path, the listener cross-checks
(exit code 2 from `check-config`), and the warning for a dashboard reachable in clear."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from watcher.cli import main
from watcher.config import load_settings
from watcher.errors import ConfigError

ANVIL = '[networks.anvil]\nrpc = ["http://127.0.0.1:8545"]\n'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PAYMENT_WATCHER_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text + "\n" + ANVIL)
    return path


def test_defaults_serve_it_on_the_api_listener(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""))
    d = s.dashboard
    assert d.enabled and d.listen is None and d.host is None and d.port is None
    assert (d.session_idle, d.session_lifetime, d.signin_attempts) == (1800, 43200, 5)
    assert d.public_url is None and not d.secure
    assert s.runtime_problems() == [] and s.warnings() == [
        "api.api_keys: none configured: every /v1 request will be refused (401)",
        "callbacks.secret: not set: callbacks cannot be signed",
    ]


def test_values(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, (
        '[dashboard]\nlisten = "[::1]:8082"\npublic_url = "https://admin.shop.example"\n'
        'session_idle = "10m"\nsession_lifetime = "2h"\nsignin_attempts = 3\n'
    )))
    d = s.dashboard
    assert (d.host, d.port, d.session_idle, d.session_lifetime) == ("::1", 8082, 600, 7200)
    assert d.secure and d.signin_attempts == 3


@pytest.mark.parametrize(
    "table,key",
    [
        ('listen = "nowhere"', "dashboard.listen"),
        ('listen = "127.0.0.1:70000"', "dashboard.listen"),
        ('public_url = "ftp://x.example"', "dashboard.public_url"),
        ('session_idle = "10s"', "dashboard.session_idle"),
        ('session_idle = "soon"', "dashboard.session_idle"),
        ('session_lifetime = "60d"', "dashboard.session_lifetime"),
        ("signin_attempts = 0", "dashboard.signin_attempts"),
        ('enabled = "maybe"', "dashboard.enabled"),
        ("colour = 1", "dashboard.colour"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "[dashboard]\n" + table))
    assert any(p.startswith(key + ":") for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(
    "text,key,words",
    [
        ('[api]\nlisten = "127.0.0.1:8080"\n[dashboard]\nlisten = "127.0.0.1:8080"',
         "dashboard.listen", "api.listen"),
        ('[checkout]\nenabled = true\nlisten = "127.0.0.1:8081"\n'
         '[dashboard]\nlisten = "127.0.0.1:8081"', "dashboard.listen", "checkout"),
        ('[dashboard]\nsession_idle = "2h"\nsession_lifetime = "1h"',
         "dashboard.session_idle", "session_lifetime"),
    ],
)
def test_cross_checks_stop_the_start_with_exit_code_2(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    problems = load_settings(path).runtime_problems()
    (problem,) = [p for p in problems if p.startswith(key + ":")]
    assert words in problem
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2 and key in result.output


def test_no_cross_check_when_it_is_off_or_on_a_free_port(tmp_path: Path) -> None:
    for text in ('[dashboard]\nenabled = false\nlisten = "127.0.0.1:8080"',
                 '[api]\nlisten = "127.0.0.1:0"\n[dashboard]\nlisten = "127.0.0.1:0"'):
        assert load_settings(write(tmp_path, text)).runtime_problems() == []


def test_a_dashboard_reachable_in_clear_is_warned_about(tmp_path: Path) -> None:
    warned = [w for w in load_settings(write(tmp_path, '[api]\nlisten = "0.0.0.0:8080"'))
              .warnings() if w.startswith("dashboard.")]
    assert warned == [
        "dashboard.public_url: the dashboard listens on 0.0.0.0 without an https:// "
        "public_url: sign-ins and session cookies could cross the network in clear"
    ]
    for text in ('[api]\nlisten = "0.0.0.0:8080"\n[dashboard]\n'
                 'public_url = "https://admin.example"',
                 '[api]\nlisten = "0.0.0.0:8080"\n[dashboard]\nenabled = false',
                 '[dashboard]\nlisten = "127.0.0.1:9000"'):
        assert not [w for w in load_settings(write(tmp_path, text)).warnings()
                    if w.startswith("dashboard.")]
