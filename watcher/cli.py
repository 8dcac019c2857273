"""The `payment-watcher` command line (also `python -m watcher`).

Every command runs inside `report_errors`: a `ConfigError` prints one `error: <problem>`
line per problem on stderr and exits 2; an `ApiError` prints `error: <message>` and exits 2.
The group applies it to every subcommand (nested groups included); `handles_errors` is the
same as a decorator for code that calls a command's function directly.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp
import click

from watcher import __version__
from watcher import networks as shipped
from watcher.amounts import format_amount
from watcher.config import (
    CONFIG_ENV,
    NetworkConfig,
    Settings,
    load_settings,
    redact_url,
    shipped_network,
)
from watcher.errors import ApiError, ConfigError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 2
ONLINE_TIMEOUT = 10.0


# ---------------------------------------------------------------- shared helpers


@contextmanager
def report_errors() -> Iterator[None]:
    """Turn the errors a user can fix into `error: ...` lines on stderr and exit code 2."""
    try:
        yield
    except ConfigError as e:
        for problem in e.problems or [str(e)]:
            click.echo(f"error: {problem}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    except ApiError as e:
        click.echo(f"error: {e.message}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of `report_errors`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with report_errors():
            return fn(*args, **kwargs)

    return wrapper


class WatcherGroup(click.Group):
    """A click group that runs every subcommand inside `report_errors`."""

    def invoke(self, ctx: click.Context) -> Any:
        with report_errors():
            return super().invoke(ctx)


#: `--config PATH` as every config-reading command takes it (falls back to $PAYMENT_WATCHER_CONFIG).
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="PATH",
    help=f"TOML configuration file (default: ${CONFIG_ENV}).",
)


def load_config(config_path: Path | None) -> Settings:
    """`load_settings` for commands: ConfigError reaches `report_errors`."""
    return load_settings(config_path)


def _duration(seconds: float) -> str:
    for unit, size, least in (("d", 86400, 172800), ("h", 3600, 3600), ("m", 60, 120)):
        if seconds >= least and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _describe_network(net: NetworkConfig, *, show_rpc: bool = True) -> list[str]:
    state = "" if net.enabled else ", DISABLED"
    lines = [
        f"network {net.name}: chain id {net.chain_id}, confirmations {net.confirmations}, "
        f"block time {net.block_time:g}s, poll every {net.effective_poll_interval:g}s, "
        f"max block range {net.max_block_range}, max lag {net.max_lag_blocks} blocks{state}"
    ]
    if show_rpc:
        lines.append("  rpc: " + (", ".join(redact_url(u) for u in net.rpc) or "(none)"))
        if net.ws:
            lines.append("  ws: " + ", ".join(redact_url(u) for u in net.ws))
    for asset in net.assets().values():
        where = f"token {asset.token}" if asset.token else "native"
        line = f"  asset {asset.symbol}: {where}, {asset.decimals} decimals"
        if asset.shared_address:
            step = format_amount(asset.amount_step, asset.decimals)
            line += f", shared address {asset.shared_address} (amount step {step})"
        lines.append(line)
    return lines


def summary(settings: Settings, source: str) -> list[str]:
    """The `check-config` report: everything but secret values and RPC URL paths."""
    api, cb, inv = settings.api, settings.callbacks, settings.invoices
    lines = [
        f"config: {source}",
        f"database: {settings.database}",
        f"log: {settings.log_level}, {settings.log_format}",
        f"api: listen {api.host}:{api.port}, {len(api.api_keys)} API key(s)",
        f"callbacks: url {redact_url(cb.url) if cb.url else '(per invoice only)'}, "
        f"secret {'set' if cb.secret else 'NOT SET'}, timeout {_duration(cb.timeout)}, "
        f"max age {_duration(cb.max_age)}, concurrency {cb.concurrency}",
        f"invoices: default ttl {_duration(inv.default_ttl)}, "
        f"late payment window {_duration(inv.late_payment_window)}, "
        f"underpayment tolerance {float(inv.underpayment_tolerance):.6g}",
        f"metrics: require auth {'yes' if settings.metrics.require_auth else 'no'}",
    ]
    for net in settings.networks.values():
        lines.extend(_describe_network(net))
    return lines


async def probe_chain_id(session: aiohttp.ClientSession, url: str) -> int:
    """`eth_chainId` of one RPC URL with a plain JSON-RPC POST."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        answer = await resp.json(content_type=None)
    if not isinstance(answer, dict) or not isinstance(answer.get("result"), str):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ValueError(f"no chain id in the answer ({error or 'malformed'})")
    return int(answer["result"], 16)


async def check_chain_ids(settings: Settings) -> tuple[list[str], list[str]]:
    """Ask every RPC URL of every enabled network for its chain id: (report, problems)."""
    targets = [
        (f"networks.{name}.rpc.{i}", net.chain_id, url)
        for name, net in settings.enabled_networks().items()
        for i, url in enumerate(net.rpc)
    ]
    timeout = aiohttp.ClientTimeout(total=ONLINE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(
            *(probe_chain_id(session, url) for _, _, url in targets), return_exceptions=True
        )
    report: list[str] = []
    problems: list[str] = []
    for (key, expected, url), got in zip(targets, answers, strict=True):
        shown = redact_url(url)
        if isinstance(got, BaseException):
            reason = (str(got) or type(got).__name__).replace(url, shown)
            problems.append(f"{key}: {shown} did not answer eth_chainId: {reason}")
        elif got != expected:
            problems.append(f"{key}: {shown} answers chain id {got}, configured {expected}")
        else:
            report.append(f"online: {key} {shown} chain id {got} ok")
    return report, problems


# ---------------------------------------------------------------- commands


@click.group(cls=WatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="payment-watcher")
def main() -> None:
    """payment-watcher: a self-hosted, watch-only payment daemon for EVM chains."""


@main.command("check-config")
@config_option
@click.option("--online", is_flag=True, help="Also ask every RPC URL for its chain id.")
@handles_errors
def check_config(config_path: Path | None, online: bool) -> None:
    """Validate the configuration and the networks, and print a summary (exit 2 on error)."""
    settings = load_config(config_path)
    for line in summary(settings, str(config_path or f"${CONFIG_ENV}")):
        click.echo(line)
    problems = settings.runtime_problems()
    if online:
        report, online_problems = asyncio.run(check_chain_ids(settings))
        for line in report:
            click.echo(line)
        problems += online_problems
    for warning in settings.warnings():
        click.echo(f"warning: {warning}", err=True)
    if problems:
        raise ConfigError(problems)
    click.echo("ok")


@main.command("networks")
@handles_errors
def networks_command() -> None:
    """The shipped networks and their assets (no configuration needed)."""
    names = shipped.available()
    if not names:
        raise ConfigError(["networks: no shipped network files found"])
    for name in names:
        for line in _describe_network(shipped_network(name), show_rpc=False):
            click.echo(line)


# ---------------------------------------------------------------- more commands
# `run`, `invoices create|list|show|cancel`, `callbacks list|redeliver`, `status` and `demo`
# go here. Declare them with `@main.command(...)` / `@main.group(...)`; take the config with
# `@config_option` and `load_config(config_path)`; raise ConfigError / ApiError for what the
# user can fix (the group prints it and exits 2). `run` should also call
# `settings.require_runnable()`.
