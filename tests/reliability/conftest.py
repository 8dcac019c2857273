"""Reliability and security tests reuse the integration fixtures (a real anvil, the seeded
test tokens, free ports) and add a few of their own. The real daemon as a subprocess is
`tests.integration.daemonproc.DaemonProc`."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    _session_chain,
    anvil,
    anvil_factory,
    chain,
    dead_url,
    free_port,
    make_rpc,
    payer,
    rpc_url,
    token,
    token18,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> str:
    """The path of an operator tool; a missing one fails in CI and skips locally."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (CI=true: reliability tests never skip)",
                        pytrace=False)
        pytest.skip(f"{name} is not installed")
    return path
