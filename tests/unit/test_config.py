"""Configuration: sources, defaults, merging with shipped networks, and error reporting."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from watcher.cli import main
from watcher.config import (
    NetworkConfig,
    Settings,
    check_url,
    checksum_address,
    load_settings,
    merge_network,
)
from watcher.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"
ADDR = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc"
ADDR_BAD_SUM = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9ADc"
ANVIL = '[networks.anvil]\nrpc = ["http://127.0.0.1:8545"]\n'

Write = Callable[[str], Path]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PAYMENT_WATCHER_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def _write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return _write


def problems_of(path: Path | str | None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    problems = info.value.problems
    assert problems and all("\n" not in p for p in problems)
    return problems


def check_config(*args: str) -> Any:
    return CliRunner().invoke(main, ["check-config", *args])


# ---------------------------------------------------------------- defaults and sources


def test_defaults(write: Write) -> None:
    s = load_settings(write(ANVIL))
    assert s.database == "/var/lib/payment-watcher/watcher.db"
    assert (s.log_level, s.log_format) == ("info", "text")
    assert (s.api.listen, s.api.host, s.api.port) == ("127.0.0.1:8080", "127.0.0.1", 8080)
    assert s.api.api_keys == [] and s.api.api_keys_file is None
    cb = s.callbacks
    assert (cb.url, cb.secret, cb.timeout, cb.max_age, cb.concurrency) == (None, None, 10, 86400, 8)
    assert s.invoices.default_ttl == 86400
    assert s.invoices.late_payment_window == 86400
    assert s.invoices.underpayment_tolerance == Fraction(0)
    assert s.metrics.require_auth is False
    anvil = s.networks["anvil"]
    assert (anvil.name, anvil.chain_id, anvil.confirmations, anvil.block_time) == (
        "anvil",
        31337,
        2,
        1,
    )
    assert anvil.max_block_range == 1000 and anvil.enabled and anvil.ws == []
    assert anvil.effective_poll_interval == 0.5
    assert anvil.max_lag_blocks == 120  # two minutes of 1 s blocks
    assert s.runtime_problems() == []


def test_only_named_networks_are_watched(write: Write) -> None:
    assert list(load_settings(write(ANVIL)).networks) == ["anvil"]


def test_path_from_env(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_WATCHER_CONFIG", str(write(ANVIL)))
    assert "anvil" in load_settings(None).networks


def test_no_path_at_all() -> None:
    (problem,) = problems_of(None)
    assert "PAYMENT_WATCHER_CONFIG" in problem


def test_values_parsed(write: Write) -> None:
    s = load_settings(
        write(
            'log_level = "DEBUG"\nlog_format = "json"\n'
            '[api]\nlisten = "[::1]:0"\n'
            '[callbacks]\nurl = "https://shop.example/hook"\ntimeout = 2.5\nmax_age = "90m"\n'
            '[invoices]\ndefault_ttl = 3600\nlate_payment_window = "0"\n'
            'underpayment_tolerance = "0.005"\n[metrics]\nrequire_auth = true\n' + ANVIL
        )
    )
    assert (s.log_level, s.log_format) == ("debug", "json")
    assert (s.api.host, s.api.port) == ("::1", 0)
    assert s.callbacks.url == "https://shop.example/hook"  # no trailing slash added
    assert (s.callbacks.timeout, s.callbacks.max_age) == (2.5, 5400)
    assert (s.invoices.default_ttl, s.invoices.late_payment_window) == (3600, 0)
    assert s.invoices.underpayment_tolerance == Fraction(1, 200)
    assert s.metrics.require_auth is True


def test_env_overrides_toml(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("[callbacks]\ntimeout = 10\nconcurrency = 3\n" + ANVIL)
    monkeypatch.setenv("PAYMENT_WATCHER_CALLBACKS__TIMEOUT", "5")
    monkeypatch.setenv("PAYMENT_WATCHER_INVOICES__DEFAULT_TTL", "2h")
    monkeypatch.setenv("PAYMENT_WATCHER_DATABASE", "/tmp/w.db")
    monkeypatch.setenv("PAYMENT_WATCHER_NETWORKS__ANVIL__CONFIRMATIONS", "7")
    monkeypatch.setenv("PAYMENT_WATCHER_NETWORKS__ANVIL__RPC", '["http://10.0.0.1:8545"]')
    monkeypatch.setenv("PAYMENT_WATCHER_ANVIL", "/somewhere/anvil")  # not a setting: ignored
    s = load_settings(path)
    assert s.callbacks.timeout == 5 and s.callbacks.concurrency == 3  # deep-merged
    assert s.invoices.default_ttl == 7200
    assert s.database == "/tmp/w.db"
    anvil = s.networks["anvil"]
    assert anvil.confirmations == 7 and anvil.rpc == ["http://10.0.0.1:8545"]
    assert anvil.chain_id == 31337  # the rest still comes from the shipped file


def test_env_bad_value_names_key(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_WATCHER_CALLBACKS__TIMEOUT", "soon")
    assert problems_of(write(ANVIL))[0].startswith("callbacks.timeout: ")


def test_env_list_not_json(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_WATCHER_NETWORKS__ANVIL__RPC", "http://10.0.0.1:8545")
    (problem,) = problems_of(write(ANVIL))
    assert "JSON" in problem


# ---------------------------------------------------------------- secrets


def test_api_keys_file(write: Write, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# merchant backend\nkey-one-0123456789\n\n  key-two-0123456789  \n")
    s = load_settings(write(f'[api]\napi_keys_file = "{keys}"\n' + ANVIL))
    assert [k.get_secret_value() for k in s.api.api_keys] == [
        "key-one-0123456789",
        "key-two-0123456789",
    ]


@pytest.mark.parametrize(
    ("content", "expect"), [(None, "cannot read"), ("\n# nothing\n", "holds no API key")]
)
def test_api_keys_file_problems(
    write: Write, tmp_path: Path, content: str | None, expect: str
) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    (problem,) = problems_of(write(f'[api]\napi_keys_file = "{keys}"\n' + ANVIL))
    assert problem.startswith("api.api_keys_file: ") and expect in problem


def test_keys_and_keys_file_conflict(write: Write, tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("abc\n")
    path = write(f'[api]\napi_keys = ["x"]\napi_keys_file = "{tmp_path / "keys"}"\n' + ANVIL)
    (problem,) = problems_of(path)
    assert problem.startswith("api: ") and "not both" in problem


def test_secret_file(write: Write, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret-value-0123456789\n")
    s = load_settings(write(f'[callbacks]\nsecret_file = "{tmp_path / "secret"}"\n' + ANVIL))
    assert s.callbacks.secret is not None
    assert s.callbacks.secret.get_secret_value() == "s3cret-value-0123456789"


def test_systemd_credentials(write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_keys").write_text("cred-key-0123456789\n")
    (creds / "callbacks_secret").write_text("cred-secret-0123456789\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(write(ANVIL))
    assert [k.get_secret_value() for k in s.api.api_keys] == ["cred-key-0123456789"]
    assert s.callbacks.secret is not None
    assert s.callbacks.secret.get_secret_value() == "cred-secret-0123456789"
    # set in the config: the credential does not replace it
    s = load_settings(write('[api]\napi_keys = ["own-key"]\n[callbacks]\nsecret = "own"\n' + ANVIL))
    assert [k.get_secret_value() for k in s.api.api_keys] == ["own-key"]
    assert s.callbacks.secret is not None and s.callbacks.secret.get_secret_value() == "own"


def test_secrets_never_printed(write: Write) -> None:
    path = write(
        '[api]\napi_keys = ["TOPSECRETKEY"]\n[callbacks]\nsecret = "TOPSECRETHMAC"\n'
        'timeout = "x"\n' + ANVIL
    )
    result = check_config("--config", str(path))
    assert result.exit_code == 2
    assert "TOPSECRET" not in result.output
    s = load_settings(write('[api]\napi_keys = ["TOPSECRETKEY"]\n' + ANVIL))
    assert "TOPSECRET" not in repr(s) and "TOPSECRET" not in str(s.model_dump())
    result = check_config("--config", str(path.with_name("config.toml")))
    assert "TOPSECRET" not in result.output


# ---------------------------------------------------------------- networks


def test_shipped_override_field_by_field(write: Write) -> None:
    s = load_settings(
        write('[networks.polygon]\nrpc = ["https://polygon.example/KEY"]\nconfirmations = 64\n')
    )
    p = s.networks["polygon"]
    assert (p.chain_id, p.confirmations, p.block_time, p.native.symbol) == (137, 64, 2, "POL")
    assert set(p.assets()) == {"POL", "USDT", "USDC"}


def test_tokens_merge_by_symbol(write: Write) -> None:
    s = load_settings(
        write(
            '[networks.polygon]\nrpc = ["https://polygon.example"]\n'
            f'tokens = [{{ symbol = "USDT", shared_address = "{ADDR.lower()}", '
            'amount_step = "0.01" },\n'
            '  { symbol = "DAI", address = "0x8f3Cf7ad23Cd3CaDbD9735AFf958023239c6A063", '
            "decimals = 18 }]\n"
        )
    )
    assets = s.networks["polygon"].assets()
    usdt = assets["USDT"]
    assert usdt.token == "0xc2132D05D31c914a87C6611C10748AEb04B58e8F" and usdt.decimals == 6
    assert usdt.shared_address == ADDR  # stored checksummed
    assert usdt.amount_step == 10_000
    assert assets["USDC"].shared_address is None and assets["USDC"].amount_step == 1
    assert assets["DAI"].decimals == 18 and assets["DAI"].amount_step == 10**12
    assert assets["POL"].token is None and assets["POL"].network == "polygon"


def test_merge_network_function() -> None:
    base = {
        "chain_id": 1,
        "native": {"symbol": "ETH", "decimals": 18},
        "tokens": [{"symbol": "A", "address": "a", "decimals": 6}],
    }
    out = merge_network(
        base,
        {
            "native": {"shared_address": "x"},
            "tokens": [{"symbol": "A", "decimals": 8}, {"symbol": "B"}],
        },
    )
    assert out["native"] == {"symbol": "ETH", "decimals": 18, "shared_address": "x"}
    assert out["tokens"] == [{"symbol": "A", "address": "a", "decimals": 8}, {"symbol": "B"}]
    assert base["tokens"] == [{"symbol": "A", "address": "a", "decimals": 6}]  # not mutated


def test_custom_network_in_full(write: Write) -> None:
    s = load_settings(
        write(
            '[networks.local]\nchain_id = 31337\nrpc = "http://127.0.0.1:8545"\n'
            'ws = ["ws://127.0.0.1:8545"]\npoll_interval = 0.1\n'
            'native = { symbol = "ETH", decimals = 18 }\n'
            f'tokens = [{{ symbol = "USDT", address = "{ADDR}", decimals = 6, '
            f'shared_address = "{ADDR}" }}]\n'
        )
    )
    n = s.networks["local"]
    assert (n.name, n.rpc, n.ws) == ("local", ["http://127.0.0.1:8545"], ["ws://127.0.0.1:8545"])
    assert (n.block_time, n.confirmations, n.max_block_range) == (2, 12, 1000)
    assert n.effective_poll_interval == 0.1  # as configured (honoured, never raised)
    assert n.max_lag_blocks == 60
    usdt = n.assets()["USDT"]
    assert (usdt.token, usdt.shared_address, usdt.amount_step) == (ADDR, ADDR, 1)


def test_custom_network_incomplete(write: Write) -> None:
    problems = problems_of(write('[networks.local]\nrpc = ["http://127.0.0.1:8545"]\n'))
    assert any(p.startswith("networks.local.chain_id: required") for p in problems)
    assert any(p.startswith("networks.local.native: required") for p in problems)


def test_missing_rpc_is_a_runtime_problem(write: Write) -> None:
    s = load_settings(write("[networks.polygon]\nconfirmations = 64\n"))
    assert s.runtime_problems() == ["networks.polygon.rpc: at least one RPC URL is required"]
    with pytest.raises(ConfigError):
        s.require_runnable()
    result = check_config("--config", str(write("[networks.polygon]\nconfirmations = 64\n")))
    assert result.exit_code == 2
    assert "error: networks.polygon.rpc: at least one RPC URL" in result.stderr


def test_disabled_network_needs_no_rpc(write: Write) -> None:
    s = load_settings(write("[networks.polygon]\nenabled = false\n" + ANVIL))
    assert s.runtime_problems() == [] and list(s.enabled_networks()) == ["anvil"]


def test_no_network_is_a_runtime_problem(write: Write) -> None:
    assert load_settings(write("")).runtime_problems()[0].startswith("networks: ")


def test_effective_poll_interval() -> None:
    base: dict[str, Any] = {"name": "x", "chain_id": 1, "native": {"symbol": "E", "decimals": 18}}
    assert NetworkConfig.model_validate({**base, "block_time": 12}).effective_poll_interval == 6
    fast = NetworkConfig.model_validate({**base, "block_time": 0.25})
    assert fast.effective_poll_interval == 0.25
    n = NetworkConfig.model_validate({**base, "block_time": 12, "poll_interval": 3})
    assert n.effective_poll_interval == 3
    # an operator's value is honoured, never raised to the default's floor
    quick = NetworkConfig.model_validate({**base, "block_time": 12, "poll_interval": 0.05})
    assert quick.effective_poll_interval == 0.05
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.01"):
        NetworkConfig.model_validate({**base, "poll_interval": 0.001})
    assert NetworkConfig.model_validate({**base, "max_lag_blocks": 5}).max_lag_blocks == 5


def test_settings_direct_construction() -> None:
    """Other modules' tests build Settings without a file."""
    s = Settings(database=Path(":memory:"), networks={"anvil": {}})  # type: ignore[arg-type]
    assert s.networks["anvil"].chain_id == 31337


# ---------------------------------------------------------------- every error kind

BAD_CONFIGS = [
    ("unknown top-level key", "foo = 1\n" + ANVIL, "foo: unknown key"),
    ("unknown section key", "[api]\nlisten_on = 1\n" + ANVIL, "api.listen_on: unknown key"),
    ("unknown network key", ANVIL + "colour = 1\n", "networks.anvil.colour: unknown key"),
    (
        "unknown token key",
        ANVIL + f'tokens = [{{symbol="T", address="{ADDR}", decimals=6, colour=1}}]\n',
        "networks.anvil.tokens.0.colour: unknown key",
    ),
    ("bad type", '[callbacks]\nconcurrency = "many"\n' + ANVIL, "callbacks.concurrency: "),
    ("bad network type", ANVIL + 'confirmations = "deep"\n', "networks.anvil.confirmations: "),
    ("out of range", ANVIL + "confirmations = 0\n", "networks.anvil.confirmations: "),
    ("infinite block time", ANVIL + "block_time = inf\n", "networks.anvil.block_time: "),
    ("bad listen", '[api]\nlisten = "localhost"\n' + ANVIL, "api.listen: must be"),
    ("bad port", '[api]\nlisten = "127.0.0.1:70000"\n' + ANVIL, "api.listen: port"),
    ("bad duration", '[callbacks]\nmax_age = "a day"\n' + ANVIL, "callbacks.max_age: must be"),
    ("bad timeout", '[callbacks]\ntimeout = "soon"\n' + ANVIL, "callbacks.timeout: must be"),
    (
        "bad tolerance",
        '[invoices]\nunderpayment_tolerance = "1.5"\n' + ANVIL,
        "invoices.underpayment_tolerance: must be",
    ),
    (
        "float tolerance",
        "[invoices]\nunderpayment_tolerance = 0.01\n" + ANVIL,
        "invoices.underpayment_tolerance: must be a decimal string",
    ),
    ("bad log format", 'log_format = "xml"\n' + ANVIL, "log_format: "),
    (
        "bad rpc URL",
        '[networks.anvil]\nrpc = ["ftp://127.0.0.1"]\n',
        "networks.anvil.rpc.0: must be an http:// or https:// URL",
    ),
    (
        "rpc URL without host",
        '[networks.anvil]\nrpc = ["http://"]\n',
        "networks.anvil.rpc.0: must be an http:// or https:// URL",
    ),
    (
        "duplicate rpc URL",
        '[networks.anvil]\nrpc = ["http://a:1", "http://a:1"]\n',
        "networks.anvil.rpc: http://a:1 is listed twice",
    ),
    (
        "bad ws URL",
        ANVIL + 'ws = ["http://127.0.0.1:8545"]\n',
        "networks.anvil.ws.0: must be a ws:// or wss:// URL",
    ),
    (
        "bad callback URL",
        '[callbacks]\nurl = "shop.example.com/hook"\n' + ANVIL,
        "callbacks.url: must be an http:// or https:// URL",
    ),
    (
        "bad address",
        ANVIL + 'tokens = [{symbol="T", address="0x123", decimals=6}]\n',
        "networks.anvil.tokens.0.address: not an EVM address",
    ),
    (
        "bad checksum",
        ANVIL + f'tokens = [{{symbol="T", address="{ADDR_BAD_SUM}", decimals=6}}]\n',
        "networks.anvil.tokens.0.address: bad checksum",
    ),
    (
        "bad shared address",
        ANVIL + 'native = {shared_address = "nope"}\n',
        "networks.anvil.native.shared_address: not an EVM address",
    ),
    (
        "duplicate symbol",
        ANVIL + f'tokens = [{{symbol="ETH", address="{ADDR}", decimals=6}}]\n',
        "networks.anvil.tokens: symbol ETH is used twice",
    ),
    (
        "too fine amount step",
        ANVIL
        + f'tokens = [{{symbol="T", address="{ADDR}", decimals=6, amount_step="0.0000001"}}]\n',
        "networks.anvil.tokens.0.amount_step: ",
    ),
    (
        "bad network name",
        '[networks.Big]\nchain_id = 5\nnative = {symbol="E", decimals=1}\n',
        "networks.Big.name: ",
    ),
    (
        "name differs from table",
        '[networks.anvil]\nname = "other"\n',
        "networks: [networks.anvil] sets name = 'other'",
    ),
    ("network not a table", "networks = 5\n", "networks: "),
]


@pytest.mark.parametrize(
    ("text", "expect"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_error_kinds(write: Write, text: str, expect: str) -> None:
    problems = problems_of(write(text))
    assert any(p.startswith(expect) for p in problems), problems


@pytest.mark.parametrize(
    ("text", "expect"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_error_kinds_cli(write: Write, text: str, expect: str) -> None:
    result = check_config("--config", str(write(text)))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines and all(ln.startswith(("error: ", "warning: ")) for ln in lines)
    assert f"error: {expect}" in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.toml")
    assert problem == f"{tmp_path / 'nope.toml'}: no such file"
    result = check_config("--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2 and result.stderr == f"error: {problem}\n"


def test_toml_syntax_error(write: Write) -> None:
    path = write('[api]\nlisten = "127.0.0.1:8080\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: TOML syntax error") and "line 2" in problem
    result = check_config("--config", str(path))
    assert result.exit_code == 2 and result.stderr == f"error: {problem}\n"
    assert "Traceback" not in result.output


def test_several_problems_one_line_each(write: Write) -> None:
    result = check_config("--config", str(write('foo = 1\n[api]\nlisten = "x"\n' + ANVIL)))
    assert result.exit_code == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert sorted(errors) == [
        'error: api.listen: must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"',
        "error: foo: unknown key",
    ]


# ---------------------------------------------------------------- the CLI's good paths


def test_check_config_summary(write: Write) -> None:
    path = write(
        '[callbacks]\nurl = "https://shop.example/hooks/KEY?token=abc"\nsecret = "s"\n'
        '[networks.polygon]\nrpc = ["https://polygon.example/v3/RPCKEY"]\n'
        f'tokens = [{{ symbol = "USDT", shared_address = "{ADDR}" }}]\n'
    )
    result = check_config("--config", str(path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "database: /var/lib/payment-watcher/watcher.db" in out
    assert "network polygon: chain id 137, confirmations 128" in out
    assert "0xc2132D05D31c914a87C6611C10748AEb04B58e8F" in out and ADDR in out
    assert "RPCKEY" not in out and "token=abc" not in out  # URLs redacted
    assert out.rstrip().endswith("ok")


class _ChainIdHandler(BaseHTTPRequestHandler):
    chain_id = 31337

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {"jsonrpc": "2.0", "id": body["id"], "result": hex(self.chain_id)}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def rpc_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _ChainIdHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_check_config_online(write: Write, rpc_url: str) -> None:
    ok = write(f'[networks.anvil]\nrpc = ["{rpc_url}"]\n')
    result = check_config("--config", str(ok), "--online")
    assert result.exit_code == 0, result.output
    assert "chain id 31337 ok" in result.stdout
    wrong = write(f'[networks.polygon]\nrpc = ["{rpc_url}/secret-path"]\n')
    result = check_config("--config", str(wrong), "--online")
    assert result.exit_code == 2
    assert "error: networks.polygon.rpc.0: " in result.stderr
    assert "answers chain id 31337, configured 137" in result.stderr
    assert "secret-path" not in result.output


def test_check_config_online_unreachable(write: Write) -> None:
    path = write('[networks.anvil]\nrpc = ["http://127.0.0.1:9"]\n')
    result = check_config("--config", str(path), "--online")
    assert result.exit_code == 2
    assert "error: networks.anvil.rpc.0: http://127.0.0.1:9 did not answer" in result.stderr


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "payment-watcher" in result.output


def test_usage_error_exits_2() -> None:
    assert CliRunner().invoke(main, ["check-config", "--bogus"]).exit_code == 2


# ---------------------------------------------------------------- the example file


def _field_names(model: type[BaseModel]) -> Iterator[str]:
    for name, field in model.model_fields.items():
        yield name
        for t in _model_types(field.annotation):
            yield from _field_names(t)


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg)


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    names = set(_field_names(Settings))
    assert {"listen", "tokens", "amount_step", "address", "max_lag_blocks"} <= names
    missing = [
        n for n in sorted(names)
        # a section only valid with PostgreSQL ([cluster]) is shown commented out
        if not re.search(rf"(\b{n}\s*=|^(?:# )?\[(?:\w+\.)?{n}[.\]])", text, re.M)
    ]
    assert not missing, f"config.example.toml does not mention: {missing}"


def test_example_validates() -> None:
    s = load_settings(EXAMPLE)
    assert s.runtime_problems() == []
    assert list(s.networks) == ["anvil"]
    result = check_config("--config", str(EXAMPLE))
    assert result.exit_code == 0, result.output


def test_example_commented_networks_validate(tmp_path: Path) -> None:
    """The commented network examples at the end of the example are valid when uncommented."""
    text = EXAMPLE.read_text()
    head, _, tail = text.partition("# [networks.polygon]")
    uncommented = [re.sub(r"^# ?", "", ln) for ln in ("# [networks.polygon]" + tail).splitlines()]
    path = tmp_path / "full.toml"
    path.write_text(head + "\n".join(ln for ln in uncommented if not ln.startswith("A ")))
    s = load_settings(path)
    assert set(s.networks) == {"anvil", "polygon", "sepolia"}
    assert s.networks["polygon"].assets()["USDT"].shared_address == ADDR
    assert s.networks["sepolia"].assets()["USDC"].amount_step == 10_000


# ---------------------------------------------------------------- reusable validators


def test_checksum_address() -> None:
    assert checksum_address(ADDR.lower()) == ADDR
    assert checksum_address(ADDR) == ADDR
    for bad, message in [
        (ADDR_BAD_SUM, "bad checksum"),
        ("0x12", "not an EVM address"),
        (ADDR[2:], "not an EVM address"),
        (None, "not an EVM address"),
    ]:
        with pytest.raises(ValueError, match=message):
            checksum_address(bad)


def test_check_url() -> None:
    assert check_url("https://shop.example/hook") == "https://shop.example/hook"
    assert check_url("wss://node.example/ws", ("ws", "wss")) == "wss://node.example/ws"
    for bad in ["http://[::1", "http://a:99999", "ftp://a", "https://", "http://a b", "a.com"]:
        with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
            check_url(bad)


# ---------------------------------------------------------------- checkout and channels


def test_checkout_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[checkout]\nenabled = true\nlisten = "127.0.0.1:9001"\n'
        'public_url = "https://pay.shop.example/"\nlanguages = ["de", "en"]\n'
        "frame_ancestors = [\"'self'\", \"https://shop.example\"]\n"
        "[channels]\nmax_connections = 10\nqueue_size = 5\nheartbeat = \"30s\"\n"
    )
    s = load_settings(path)
    assert s.checkout.base_url == "https://pay.shop.example"
    assert s.checkout.languages == ["de", "en"] and s.checkout.port == 9001
    assert s.channels.max_connections == 10 and s.channels.heartbeat == 30
    (tmp_path / "empty.toml").write_text("")
    default = load_settings(tmp_path / "empty.toml").checkout
    assert not default.enabled and default.base_url == "http://127.0.0.1:8081"


@pytest.mark.parametrize(
    "table,key",
    [
        ('[checkout]\nlanguages = ["fr"]', "checkout.languages"),
        ('[checkout]\nlanguages = []', "checkout.languages"),
        ('[checkout]\nlanguages = ["en", "en"]', "checkout.languages"),
        ('[checkout]\nlisten = "nowhere"', "checkout.listen"),
        ('[checkout]\npublic_url = "ftp://x"', "checkout.public_url"),
        ('[checkout]\nframe_ancestors = ["*"]', "checkout.frame_ancestors"),
        ("[checkout]\nframe_ancestors = [\"https://a.example; script-src *\"]",
         "checkout.frame_ancestors"),
        ("[checkout]\nredirect_delay = -1", "checkout.redirect_delay"),
        ("[checkout]\ncolour = 1", "checkout.colour"),
        ("[channels]\nqueue_size = 0", "channels.queue_size"),
        ("[channels]\nmax_connections = 0", "channels.max_connections"),
    ],
)
def test_checkout_and_channels_refuse_bad_values(tmp_path: Path, table: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert any(p.startswith(key) for p in exc.value.problems), exc.value.problems


def test_checkout_needs_its_own_listener(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[api]\nlisten = "127.0.0.1:8080"\n[checkout]\nenabled = true\n'
        'listen = "127.0.0.1:8080"\n[networks.anvil]\n'
    )
    problems = load_settings(path).runtime_problems()
    assert any(p.startswith("checkout.listen:") for p in problems)


# ---------------------------------------------------------------- rates


@pytest.mark.parametrize(
    "pairs,key",
    [
        ('"ETHUSD" = [{ fixed = "1" }]', "rates.pairs"),
        ('"ETH/ETH" = [{ fixed = "1" }]', "rates.pairs"),
        ('"ETH/USD" = []', "rates.pairs.ETH/USD"),
        ('"ETH/USD" = [{ fixed = "0" }]', "rates.pairs.ETH/USD.0"),
        ('"ETH/USD" = [{ fixed = "-1" }]', "rates.pairs.ETH/USD.0"),
        ('"ETH/USD" = [{ fixed = 1 }]', "rates.pairs.ETH/USD.0.fixed"),
        ('"ETH/USD" = [{ feed = "0x1105F97fBAB9674Ef069331F2b48E9B870ed9Adc" }]',
         "rates.pairs.ETH/USD.0"),
        ('"ETH/USD" = [{ chainlink = "anvil", feed = "0x12" }]', "rates.pairs.ETH/USD.0.feed"),
        ('"ETH/USD" = [{ http = "ftp://x.example", path = "a" }]', "rates.pairs.ETH/USD.0.http"),
        ('"ETH/USD" = [{ http = "https://x.example" }]', "rates.pairs.ETH/USD.0"),
        ('"ETH/USD" = [{ http = "https://x.example", path = "a..b" }]', "rates.pairs.ETH/USD.0"),
        ('"ETH/USD" = [{ fixed = "1", http = "https://x.example", path = "a" }]',
         "rates.pairs.ETH/USD.0"),
        ('"ETH/USD" = [{ colour = "red" }]', "rates.pairs.ETH/USD.0.colour"),
    ],
)
def test_rates_refuse_bad_pairs(tmp_path: Path, pairs: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[rates.pairs]\n{pairs}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert any(p.startswith(key) for p in exc.value.problems), exc.value.problems


def test_a_feed_on_a_network_that_is_not_configured(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[rates]\nmax_age = "30m"\n[rates.pairs]\n'
        f'"ETH/USD" = [{{ chainlink = "ethereum", feed = "{ADDR}" }}, {{ fixed = "3000" }}]\n'
        "[networks.anvil]\n"
    )
    s = load_settings(path)
    assert s.rates.max_age == 1800 and [c.kind for c in s.rates.pairs["ETH/USD"]] == [
        "chainlink", "fixed"
    ]
    assert any(p.startswith("rates.pairs.ETH/USD.0.chainlink: network 'ethereum'")
               for p in s.runtime_problems())


def test_a_feed_may_come_from_the_network_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[rates.pairs]\n"ETH/USD" = [{ chainlink = "anvil" }]\n'
        '"EUR/USD" = [{ chainlink = "anvil" }]\n'
        f'[networks.anvil]\nfeeds = {{ "ETH/USD" = "{ADDR}" }}\n'
    )
    s = load_settings(path)
    src = s.rates.pairs["ETH/USD"][0]
    assert s.feed_of("ETH/USD", src) == ADDR
    problems = s.runtime_problems()
    assert problems == [
        'rates.pairs.EUR/USD.0.feed: anvil has no feed for EUR/USD (its feeds: ETH/USD); '
        'give feed = "0x..."'
    ]


# ---------------------------------------------------------------- [addresses]


def test_addresses_defaults_and_xpub(write: Write) -> None:
    from tests import hdkeys

    s = load_settings(write(ANVIL))
    assert s.addresses.xpub is None and s.addresses.deriver() is None
    assert (s.addresses.path, s.addresses.start_index) == ("0/{index}", 0)
    x = hdkeys.xpub()
    s = load_settings(write(ANVIL + f'[addresses]\nxpub = " {x} "\npath = "{{index}}"\n'
                            'start_index = 1000\n'))
    d = s.addresses.deriver()
    assert d is not None and s.addresses.start_index == 1000
    assert d.address(5) == hdkeys.reference_address("m/44'/60'/0'/5")
    assert x not in repr(s) and x not in str(s.model_dump())


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ("xpub = '{xprv}'", "addresses.xpub", "PRIVATE key"),
        ("xpub = '{mnemonic}'", "addresses.xpub", "seed phrase"),
        ("xpub = '{bad}'", "addresses.xpub", "checksum"),
        ("xpub = '{master}'", "addresses.xpub", "depth 0"),
        ("path = \"0'/{{index}}\"", "addresses.path", "hardened"),
        ("path = '0/1'", "addresses.path", "exactly once"),
        ("start_index = -1", "addresses.start_index", "greater than or equal to 0"),
        ("start_index = 2147483648", "addresses.start_index", "less than or equal"),
        ("seed = 'x'", "addresses.seed", "unknown key"),
    ],
)
def test_addresses_refused_naming_the_key(
    write: Write, table: str, key: str, reason: str
) -> None:
    from tests import hdkeys

    secret = {
        "xprv": hdkeys.xprv(), "mnemonic": hdkeys.MNEMONIC, "master": hdkeys.xpub("m"),
        "bad": hdkeys.xpub()[:-1] + ("1" if hdkeys.xpub()[-1] != "1" else "2"),
    }
    path = write(ANVIL + "[addresses]\n" + table.format(**secret) + "\n")
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(key + ":"), problems
    assert reason in problems[0]
    result = check_config("--config", str(path))
    assert result.exit_code == 2
    assert key in result.output
    for value in secret.values():
        assert value not in result.output


@settings(max_examples=2000, deadline=None)
@given(raw=st.binary(min_size=20, max_size=20), upper=st.booleans())
def test_the_fast_eip55_checksum_is_eth_utils(raw: bytes, upper: bool) -> None:
    """`watcher.addresses.checksum_address` (the hot paths' EIP-55) answers what eth_utils
    answers, for any address in either case."""
    from eth_utils.address import to_checksum_address

    from watcher.addresses import checksum_address as fast

    text = "0x" + (raw.hex().upper() if upper else raw.hex())
    assert fast(text) == to_checksum_address(text)
