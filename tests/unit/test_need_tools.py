"""scripts/need-tools, which `make test` runs before the tests (`install`) and after them
(`report`). Run with a PATH of stubs: a fake `id` (root or not), a fake `apt-get` that logs its
arguments and "installs" stubs, and stub programs for what is present."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "need-tools"
BASH = shutil.which("bash") or "/bin/bash"
ALL = ("prometheus", "promtool", "node", "npm", "systemd-analyze")
#: Debian package -> the programs it brings (what the fake apt-get creates).
BRINGS = {"prometheus": ["prometheus", "promtool"], "chromium": ["CHROMIUM"], "nodejs": ["node"],
          "npm": ["npm"], "systemd": ["systemd-analyze"], "postgresql": ["PGCTL"]}


@dataclass
class Machine:
    bin: Path
    chromium: Path
    apt_log: Path
    pg_bin: Path

    def _path(self, name: str) -> Path:
        if name == "CHROMIUM":
            return self.chromium
        return self.pg_bin / "pg_ctl" if name == "PGCTL" else self.bin / name

    def add(self, *names: str) -> None:
        for name in names:
            path = self._path(name)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)

    def run(self, mode: str, *, uid: int = 1000, ci: str | None = None,
            apt: str | None = "ok") -> subprocess.CompletedProcess[str]:
        (self.bin / "id").write_text(f"#!/bin/sh\necho {uid}\n")
        (self.bin / "id").chmod(0o755)
        apt_get = self.bin / "apt-get"
        if apt is None:
            apt_get.unlink(missing_ok=True)
        else:
            installs = "\n".join(
                f'  {pkg}) {" ; ".join(self._create(p) for p in progs)} ;;'
                for pkg, progs in BRINGS.items()
            )
            apt_get.write_text(
                "#!/bin/bash\n"
                f'echo "$*" >> {self.apt_log}\n'
                + ("exit 100\n" if apt == "fail" else "")
                + '[ "$1" = install ] || exit 0\n'
                + 'for p in "$@"; do case "$p" in\n' + installs + "\n esac; done\n"
            )
            apt_get.chmod(0o755)
        env = {"PATH": str(self.bin), "PAYMENT_WATCHER_CHROMIUM": str(self.chromium),
               "PAYMENT_WATCHER_PG_BIN": str(self.pg_bin)}
        if ci is not None:
            env["CI"] = ci
        return subprocess.run([BASH, str(SCRIPT), mode], capture_output=True, text=True,
                              env=env, timeout=30)

    def _create(self, name: str) -> str:
        path = self._path(name)
        return f"printf '#!/bin/sh\\n' > {path} && chmod +x {path}"

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cut", "tr", "sed", "grep", "chmod", "printf"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (tmp_path / "pg").mkdir()
    return Machine(bin_dir, tmp_path / "chromium", tmp_path / "apt.log", tmp_path / "pg")


def test_nothing_missing_says_nothing(machine: Machine) -> None:
    machine.add(*ALL, "CHROMIUM", "PGCTL")
    for mode in ("install", "report"):
        for uid in (0, 1000):
            proc = machine.run(mode, uid=uid, ci="true")
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert machine.apt_calls() == []


def test_not_root_installs_nothing_and_reports_one_line(machine: Machine) -> None:
    machine.add("node", "npm", "systemd-analyze", "prometheus", "PGCTL")  # no promtool, chromium
    proc = machine.run("install")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert machine.apt_calls() == []
    proc = machine.run("report")
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        f"missing for the tests: promtool {machine.chromium} (install: sudo apt-get install "
        "--no-install-recommends prometheus chromium)"
    ]


@pytest.mark.parametrize(("ci", "code"), [("true", 1), ("1", 1), ("false", 0), ("", 0)])
def test_in_ci_a_missing_tool_fails(machine: Machine, ci: str, code: int) -> None:
    machine.add("prometheus", "promtool", "node", "npm", "CHROMIUM", "PGCTL")
    proc = machine.run("report", ci=ci)
    assert proc.returncode == code
    assert "systemd-analyze" in proc.stderr and "apt-get install" in proc.stderr
    assert machine.run("install", ci=ci).returncode == 0  # install itself never fails


def test_root_installs_what_is_missing(machine: Machine) -> None:
    machine.add("node", "npm", "systemd-analyze")
    proc = machine.run("install", uid=0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "need-tools: apt-get install prometheus chromium postgresql\n"
    assert machine.apt_calls() == [
        "update -qq",
        "install -y -qq --no-install-recommends prometheus chromium postgresql"]
    proc = machine.run("report", uid=0, ci="true")
    assert (proc.returncode, proc.stderr) == (0, "")


def test_root_without_apt_or_with_apt_failing_goes_on(machine: Machine) -> None:
    machine.add("node", "npm", "systemd-analyze", "CHROMIUM", "PGCTL")
    proc = machine.run("install", uid=0, apt=None)
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = machine.run("install", uid=0, apt="fail")
    assert proc.returncode == 0
    assert "apt-get failed; the tests go on without: prometheus" in proc.stderr
    proc = machine.run("report", uid=0)
    assert proc.stderr == ("missing for the tests: prometheus (install: apt-get install "
                           "--no-install-recommends prometheus)\n")


def test_without_npm_the_line_comes_before_make_install_stops(machine: Machine) -> None:
    machine.add("prometheus", "promtool", "systemd-analyze", "CHROMIUM", "PGCTL")
    proc = machine.run("install")
    assert proc.returncode == 0
    assert proc.stderr == ("missing for the tests: node npm (install: sudo apt-get install "
                           "--no-install-recommends nodejs npm)\n")


def test_make_test_runs_it_around_the_tests() -> None:
    """`make -n test`: install before anything else (it may bring npm), report after pytest,
    and pytest's own failure is kept as the exit status."""
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    # under `make test` itself: the outer make's variables would make this one print
    # "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run([make, "--no-print-directory", "-n", "test"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "bash scripts/need-tools install"
    recipe = "\n".join(lines[lines.index(next(x for x in lines if "pytest -q" in x)):])
    assert "|| rc=$?" in recipe
    assert recipe.index("pytest -q") < recipe.index("bash scripts/need-tools report")
    assert recipe.rstrip().endswith("exit $rc")
