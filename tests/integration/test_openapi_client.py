"""A Python client generated from the daemon's own served OpenAPI document by a real generator
(`openapi-python-client` from PyPI, `--fail-on-warning`: every operation and schema must be
understood), used against the real daemon on anvil: create, get, list and cancel an invoice,
and read the documented errors. A missing generator FAILS the test (never skips)."""

from __future__ import annotations

import importlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemonproc import NETWORK, DaemonConfig, DaemonProc

PACKAGE = "pw_generated_client"


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Path]:
    """Where the client goes; its modules are forgotten again after the test."""
    yield tmp_path
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _generate(document: Path, into: Path) -> None:
    generator = Path(sys.executable).parent / "openapi-python-client"
    if not generator.is_file():
        pytest.fail(
            f"{generator} is missing: openapi-python-client comes with the test extras "
            "(`make install`)",
            pytrace=False,
        )
    config = into / "generator.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    proc = subprocess.run(
        [str(generator), "generate", "--path", str(document), "--config", str(config),
         "--meta", "none", "--output-path", str(into / PACKAGE), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_generated_client_drives_the_daemon(
    tmp_path: Path, rpc_url: str, token: str, generated: Path
) -> None:
    cfg = DaemonConfig(tmp_path / "daemon", rpc=[rpc_url], tokens={"USDT": token})
    async with DaemonProc(cfg) as d:
        status, served = await d.request("GET", "/v1/openapi.json")
        assert status == 200
        document = generated / "openapi.json"
        document.write_text(json.dumps(served))
        _generate(document, generated)
        sys.path.insert(0, str(generated))
        client_mod = _module("client")
        models = _module("models")
        api = {
            name: _module(f"api.default.{name}")
            for name in ("create_invoice", "get_invoice", "list_invoices", "cancel_invoice",
                         "list_networks")
        }  # fmt: skip

        # The configured network and assets are enums of the generated create request.
        assert [n.value for n in models.CreateInvoiceNetwork] == [NETWORK]
        assert {a.value for a in models.CreateInvoiceAsset} == {"ETH", "USDT"}

        address = "0x" + secrets.token_hex(20)
        async with client_mod.AuthenticatedClient(
            base_url=d.base_url, token=d.api_key, raise_on_unexpected_status=True
        ) as client:
            body = models.CreateInvoice(
                network=models.CreateInvoiceNetwork(NETWORK),
                asset=models.CreateInvoiceAsset("USDT"),
                amount="12.5",
                address=address,
                external_id="order-generated-1",
                ttl=600,
            )
            created = await api["create_invoice"].asyncio_detailed(client=client, body=body)
            assert created.status_code == 201
            inv = created.parsed
            assert isinstance(inv, models.Invoice)
            assert (inv.status, inv.amount, inv.asset) == (models.Status.PENDING, "12.5", "USDT")
            assert inv.to.lower() == address and inv.external_id == "order-generated-1"

            again = await api["create_invoice"].asyncio_detailed(client=client, body=body)
            assert again.status_code == 200 and again.parsed.id == inv.id  # idempotent

            got = await api["get_invoice"].asyncio(inv.id, client=client)
            assert isinstance(got, models.Invoice) and got.id == inv.id

            page = await api["list_invoices"].asyncio(
                client=client, status="PENDING", external_id="order-generated-1", limit=10
            )
            assert [i.id for i in page.data] == [inv.id]

            cancelled = await api["cancel_invoice"].asyncio(inv.id, client=client)
            assert isinstance(cancelled, models.Invoice)
            assert cancelled.status == models.Status.VOIDED

            # The documented errors come back parsed, in the documented shape.
            twice = await api["cancel_invoice"].asyncio_detailed(inv.id, client=client)
            assert twice.status_code == 409 and isinstance(twice.parsed, models.Error)
            assert twice.parsed.error.code == "conflict"
            missing = await api["get_invoice"].asyncio_detailed(
                "00000000-0000-4000-8000-000000000000", client=client
            )
            assert missing.status_code == 404 and missing.parsed.error.field == "id"
            bad = models.CreateInvoice(
                network=models.CreateInvoiceNetwork(NETWORK),
                asset=models.CreateInvoiceAsset("USDT"),
                amount="1.0000001",  # more decimals than USDT has
                address=address,
            )
            invalid = await api["create_invoice"].asyncio_detailed(client=client, body=bad)
            assert invalid.status_code == 422 and invalid.parsed.error.field == "amount"

            networks = await api["list_networks"].asyncio(client=client)
            assert [n.name for n in networks.data] == [NETWORK]

        async with client_mod.AuthenticatedClient(
            base_url=d.base_url, token="not-a-key"
        ) as stranger:
            denied = await api["get_invoice"].asyncio_detailed(inv.id, client=stranger)
            assert denied.status_code == 401 and denied.parsed.error.code == "unauthorized"
