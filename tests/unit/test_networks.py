"""The shipped network files."""

from __future__ import annotations

from pathlib import Path

import pytest
from web3 import Web3

from watcher import networks
from watcher.config import shipped_network

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {
    "anvil": 31337,
    "arbitrum": 42161,
    "avalanche": 43114,
    "base": 8453,
    "bsc": 56,
    "ethereum": 1,
    "optimism": 10,
    "polygon": 137,
}
NATIVE = {"bsc": "BNB", "polygon": "POL", "avalanche": "AVAX"}
REQUIRED = {"name", "chain_id", "native", "block_time", "confirmations", "max_block_range"}


def test_available() -> None:
    assert networks.available() == sorted(EXPECTED)


def test_found_in_repo_checkout() -> None:
    assert Path(str(networks.networks_dir())).resolve() == (REPO / "networks").resolve()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_file_loads_and_validates(name: str) -> None:
    raw = networks.load_network_file(name)
    assert set(raw) >= REQUIRED, REQUIRED - set(raw)
    assert raw["name"] == name and raw["chain_id"] == EXPECTED[name]
    assert raw["native"] == {"symbol": NATIVE.get(name, "ETH"), "decimals": 18}
    net = shipped_network(name)
    assert net.chain_id == EXPECTED[name]
    assert 1 <= net.max_block_range <= 2000
    if name == "anvil":
        assert net.rpc == ["http://127.0.0.1:8545"]
        assert (net.confirmations, net.block_time, net.max_block_range) == (2, 1, 1000)
    else:
        assert "rpc" not in raw and "ws" not in raw  # no provider URL is shipped


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_token_addresses_checksummed(name: str) -> None:
    for token in networks.load_network_file(name).get("tokens", []):
        assert Web3.is_checksum_address(token["address"]), token
        assert Web3.to_checksum_address(token["address"]) == token["address"]


def test_stablecoins() -> None:
    for name in EXPECTED:
        assets = shipped_network(name).assets()
        for symbol in ("USDT", "USDC"):
            if symbol in assets:
                assert assets[symbol].decimals == (18 if name == "bsc" else 6), (name, symbol)
    bsc = shipped_network("bsc").assets()
    assert bsc["USDT"].decimals == 18 and bsc["USDC"].decimals == 18
    assert "USDC" in shipped_network("base").assets()
    for name in ("ethereum", "polygon", "arbitrum", "optimism", "avalanche", "bsc"):
        assert {"USDT", "USDC"} <= set(shipped_network(name).assets()), name


def test_known_addresses() -> None:
    assert shipped_network("ethereum").assets()["USDT"].token == (
        "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    )
    assert shipped_network("polygon").assets()["USDC"].token == (
        "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359"
    )


@pytest.mark.parametrize("name", ["nope", "../pyproject", "ETHEREUM", ""])
def test_unknown_network(name: str) -> None:
    assert not networks.is_shipped(name)
    with pytest.raises(KeyError):
        networks.load_network_file(name)


def test_networks_command() -> None:
    from click.testing import CliRunner

    from watcher.cli import main

    result = CliRunner().invoke(main, ["networks"])
    assert result.exit_code == 0, result.output
    for name, chain_id in EXPECTED.items():
        assert f"network {name}: chain id {chain_id}," in result.output
    assert "0x55d398326f99059fF775485246999027B3197955, 18 decimals" in result.output


def test_shipped_feeds_are_pairs_of_checksummed_addresses() -> None:
    from web3 import Web3

    from watcher.config import shipped_network
    from watcher.rates import split_pair

    counted = 0
    for name in ("ethereum", "bsc", "polygon", "arbitrum", "base", "optimism", "avalanche"):
        net = shipped_network(name)
        assert {"ETH/USD", "EUR/USD", "USDT/USD", "USDC/USD"} <= set(net.feeds), name
        for pair, address in net.feeds.items():
            split_pair(pair)
            assert Web3.is_checksum_address(address), (name, pair)
            counted += 1
    assert counted >= 45
