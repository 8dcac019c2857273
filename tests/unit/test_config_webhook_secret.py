"""`callbacks.secret` in both forms: plain, or a Standard Webhooks `whsec_<base64>` secret whose
base64 part must decode to a key, from the TOML, a `secret_file` or a systemd credential."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from watcher.cli import main
from watcher.config import load_settings
from watcher.errors import ConfigError

ANVIL = '[networks.anvil]\nrpc = ["http://127.0.0.1:8545"]\n'
#: The part after whsec_ in each bad secret: it must never be printed.
BAD = ["TOPSECRET!!", "TOPSECR", "TOP SECRET=", "TOPSECRET_", "TOPSECRETA=", "TOPSECRÉT", ""]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PAYMENT_WATCHER_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def _config(tmp_path: Path, callbacks: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[callbacks]\n{callbacks}" + ANVIL, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


@pytest.mark.parametrize(
    "secret",
    ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_dGVzdA==", "a plain secret 0123456789",
     "whsec", "WHSEC_not-the-prefix!"],
)  # fmt: skip
def test_accepted_forms(tmp_path: Path, secret: str) -> None:
    s = load_settings(_config(tmp_path, f'secret = "{secret}"\n'))
    assert s.callbacks.secret is not None and s.callbacks.secret.get_secret_value() == secret


@pytest.mark.parametrize("rest", BAD)
def test_bad_whsec_secret_inline(tmp_path: Path, rest: str) -> None:
    (problem,) = _problems(_config(tmp_path, f'secret = "whsec_{rest}"\n'))
    assert problem.startswith("callbacks.secret: starts with whsec_"), problem
    assert "TOP" not in problem


@pytest.mark.parametrize("rest", BAD)
def test_bad_whsec_secret_from_secret_file(tmp_path: Path, rest: str) -> None:
    file = tmp_path / "callbacks_secret"
    file.write_text(f"whsec_{rest}\n", encoding="utf-8")
    (problem,) = _problems(_config(tmp_path, f'secret_file = "{file}"\n'))
    assert problem.startswith(f"callbacks.secret_file: {file}: callbacks.secret starts with whsec_")
    assert "TOP" not in problem


def test_bad_whsec_secret_from_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "callbacks_secret").write_text("whsec_TOPSECRET!!\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    (problem,) = _problems(_config(tmp_path, ""))
    assert problem.startswith(
        f"callbacks: {creds / 'callbacks_secret'}: callbacks.secret starts with whsec_"
    ), problem
    assert "TOP" not in problem
    (creds / "callbacks_secret").write_text("whsec_dGVzdA==\n")
    s = load_settings(_config(tmp_path, ""))
    assert s.callbacks.secret is not None
    assert s.callbacks.secret.get_secret_value() == "whsec_dGVzdA=="


def test_env_override_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_WATCHER_CALLBACKS__SECRET", "whsec_TOPSECRET!!")
    (problem,) = _problems(_config(tmp_path, ""))
    assert problem.startswith("callbacks.secret: ") and "TOP" not in problem


def test_check_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = _config(tmp_path, 'secret = "whsec_TOPSECRET!!"\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "callbacks.secret: starts with whsec_" in result.output
    assert "TOPSECRET" not in result.output
    good = _config(tmp_path, 'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(good)])
    assert result.exit_code == 0, result.output
    assert "MfKQ9r8" not in result.output
