"""A plain, non-editable install works: the wheel carries the network files, and the
installed command finds them without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NETWORKS = sorted(p.stem for p in (REPO / "networks").glob("*.toml"))


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAYMENT_WATCHER_", "PYTHON", "VIRTUAL_ENV"))
        and k != "CREDENTIALS_DIRECTORY"
    }
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_contains_networks_and_installs_clean(tmp_path: Path) -> None:
    assert len(NETWORKS) == 8
    dist = tmp_path / "dist"
    _ok(
        _run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
            cwd=tmp_path,
        )
    )
    (wheel,) = dist.glob("payment_watcher-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for network in NETWORKS:
        assert f"watcher/networks/{network}.toml" in names, sorted(names)
    assert "watcher/cli.py" in names and "watcher/config.py" in names

    venv = tmp_path / "v"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path))
    _ok(_run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=tmp_path))
    command = str(venv / "bin" / "payment-watcher")

    # run from an unrelated folder: the files must come from the installed package
    out = _ok(_run([command, "networks"], cwd=tmp_path))
    for network in NETWORKS:
        assert f"network {network}: chain id " in out
    where = _ok(
        _run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "from watcher.networks import networks_dir; print(networks_dir())",
            ],
            cwd=tmp_path,
        )
    )
    assert str(venv) in where

    example = tmp_path / "config.toml"
    example.write_text((REPO / "config.example.toml").read_text())
    result = _run([command, "check-config", "--config", str(example)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr

    broken = tmp_path / "broken.toml"
    broken.write_text("foo = 1\n")
    result = _run([command, "check-config", "--config", str(broken)], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "error: foo: unknown key\n"
