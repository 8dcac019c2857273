"""The `payment-watcher` command line (also `python -m watcher`).

Every command runs inside `report_errors`: a `ConfigError` prints one `error: <problem>`
line per problem on stderr and exits 2; an `ApiError` prints `error: <message>` and exits 2.
The group applies it to every subcommand (nested groups included); `handles_errors` is the
same as a decorator for code that calls a command's function directly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from watcher import CONFIG_ENV, __version__
from watcher.amounts import format_amount
from watcher.errors import ApiError, ConfigError, StoreError, StoreRefused

if TYPE_CHECKING:  # imported where used: `--help` and light commands start fast
    import aiohttp

    from watcher.config import NetworkConfig, Settings

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 2
#: The database cannot be used (locked, read-only, disk full): may pass, so systemd retries.
EXIT_STORE = 1
ONLINE_TIMEOUT = 10.0


# ---------------------------------------------------------------- shared helpers

#: Colour of each status in listings (on a terminal, unless NO_COLOR is set).
_STATUS_COLOURS = {
    "PENDING": "cyan", "WAITING_FOR_CONFIRMATIONS": "yellow", "PARTIAL": "yellow",
    "COMPLETED": "green", "VOIDED": "red", "REVERSED": "red", "REFUNDED": "magenta",
}


def _colour() -> bool | None:
    """`color=` for click.echo: off when NO_COLOR is set to anything non-empty
    (no-color.org), else click's own choice (on for a terminal, off for a pipe)."""
    return False if os.environ.get("NO_COLOR") else None


def say(text: str, *, err: bool = False) -> None:
    """click.echo honouring NO_COLOR (ANSI styles are stripped when colour is off)."""
    click.echo(text, err=err, color=_colour())


def _error(text: str) -> None:
    say(click.style("error:", fg="red", bold=True) + " " + text, err=True)


def _status(status: str, width: int = 0) -> str:
    return click.style(status.ljust(width), fg=_STATUS_COLOURS.get(status))


@contextmanager
def report_errors() -> Iterator[None]:
    """Turn the errors a user can fix into `error: ...` lines on stderr and exit code 2."""
    try:
        yield
    except ConfigError as e:
        for problem in e.problems or [str(e)]:
            _error(problem)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    except ApiError as e:
        _error(e.message)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    except StoreRefused as e:
        _error(str(e))
        raise click.exceptions.Exit(EXIT_ERROR) from None
    except StoreError as e:
        _error(str(e))
        raise click.exceptions.Exit(EXIT_STORE) from None


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
    from watcher.config import load_settings

    return load_settings(config_path)


def redact_url(url: str) -> str:
    from watcher.config import redact_url as redact

    return redact(url)


def shipped_network(name: str) -> NetworkConfig:
    from watcher.config import shipped_network as load

    return load(name)


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
        f"max block range {net.max_block_range}, max lag {net.max_lag_blocks} blocks, "
        f"finality {net.finality}"
        + (f", start block {net.start_block}" if net.start_block is not None else "")
        + (f", internal transfers {net.internal_transfers}"
           if net.internal_transfers != "off" else "")
        + state
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


def _network_json(net: NetworkConfig) -> dict[str, Any]:
    """A network's settings as JSON (no RPC URL: they may carry keys)."""
    return {
        "name": net.name, "chainId": net.chain_id, "confirmations": net.confirmations,
        "finality": net.finality,
        "blockTime": net.block_time, "maxBlockRange": net.max_block_range,
        "explorer": net.explorer, "enabled": net.enabled,
        "assets": [
            {"symbol": a.symbol, "tokenAddress": a.token, "decimals": a.decimals,
             "sharedAddress": a.shared_address}
            for a in net.assets().values()
        ],
        "feeds": dict(net.feeds),
    }


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
        "checkout: " + (
            f"on {settings.checkout.listen}, links {settings.checkout.base_url}/pay/..., "
            f"languages {', '.join(settings.checkout.languages)}"
            if settings.checkout.enabled else "off"
        ),
        "rates: " + (
            f"{', '.join(settings.rates.pairs)}; max age {_duration(settings.rates.max_age)}, "
            f"refreshed every {_duration(settings.rates.refresh_interval)}"
            if settings.rates.pairs else "none (invoices need amount)"
        ),
        "addresses: " + (
            f"derived from key {deriver.key_id} (path {settings.addresses.path}), "
            f"from index {settings.addresses.start_index}"
            if (deriver := settings.addresses.deriver()) is not None
            else "no xpub (invoices need an address or a shared address)"
        ),
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
    import asyncio

    targets = [
        (f"networks.{name}.rpc.{i}", net.chain_id, url)
        for name, net in settings.enabled_networks().items()
        for i, url in enumerate(net.rpc)
    ]
    import aiohttp

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
    more_report, more_problems = await _check_features(settings)
    from watcher.capabilities import check_ws

    ws_report, ws_problems = await check_ws(settings, ONLINE_TIMEOUT)
    return report + more_report + ws_report, problems + more_problems + ws_problems


async def _check_features(settings: Settings) -> tuple[list[str], list[str]]:
    """Every RPC URL of every network whose finality or internal_transfers asks something
    of its nodes: does it serve it?"""
    from watcher.capabilities import Needs, missing
    from watcher.rpc import RpcClient

    report: list[str] = []
    problems: list[str] = []
    for name, net in settings.enabled_networks().items():
        needs = Needs(name, net.finality, net.internal_transfers)
        if needs.finality == "confirmations" and needs.internal_transfers == "off":
            continue
        for i, url in enumerate(net.rpc):
            shown = redact_url(url)
            async with RpcClient(name, [url], timeout=ONLINE_TIMEOUT, max_attempts=1) as rpc:
                refused, unknown = await missing(rpc, needs)
            problems.extend(f"{line} (rpc.{i} {shown})" for line in refused + unknown)
            if not refused and not unknown:
                wanted = [f"finality {net.finality}"] * (net.finality != "confirmations")
                wanted += [f"internal_transfers {net.internal_transfers}"] * (
                    net.internal_transfers != "off")
                report.append(f"online: networks.{name}.rpc.{i} {shown} serves "
                              f"{' and '.join(wanted)}")
    return report, problems


# ---------------------------------------------------------------- commands


@click.group(cls=WatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="payment-watcher")
def main() -> None:
    """payment-watcher: a self-hosted, watch-only payment daemon for EVM chains."""


@main.command("check-config")
@config_option
@click.option("--online", is_flag=True,
              help="Also ask every RPC and ws URL for its chain id.")
@handles_errors
def check_config(config_path: Path | None, online: bool) -> None:
    """Validate the configuration and the networks, and print a summary (exit 2 on error)."""
    import asyncio

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
        say(click.style("warning:", fg="yellow") + f" {warning}", err=True)
    if problems:
        raise ConfigError(problems)
    say(click.style("ok", fg="green"))


@main.command("networks")
@click.option("--json", "as_json", is_flag=True, help="Print the networks as JSON.")
@handles_errors
def networks_command(as_json: bool) -> None:
    """The shipped networks and their assets (no configuration needed)."""
    from watcher import networks as shipped

    names = shipped.available()
    if not names:
        raise ConfigError(["networks: no shipped network files found"])
    if as_json:
        _echo_json({"data": [_network_json(shipped_network(name)) for name in names]})
        return
    for name in names:
        for line in _describe_network(shipped_network(name), show_rpc=False):
            click.echo(line)


# ---------------------------------------------------------------- more commands
# `run`, `invoices create|list|show|cancel`, `callbacks list|redeliver`, `status` and `demo`
# go here. Declare them with `@main.command(...)` / `@main.group(...)`; take the config with
# `@config_option` and `load_config(config_path)`; raise ConfigError / ApiError for what the
# user can fix (the group prints it and exits 2). `run` should also call
# `settings.require_runnable()`.


def _store_call(settings: Settings, fn: Callable[..., R], *args: Any) -> R:
    """Run `fn(db, *args)` on the database of `settings` and close it: on this thread, with
    no event loop or store threads to start."""
    import sqlite3

    from watcher.storage.sqlite import store_error
    from watcher.storage.store import connect_database

    try:
        db = connect_database(settings.database, password=settings.database_secret())
    except sqlite3.Error as exc:
        raise store_error(exc) from exc
    try:
        return fn(db, *args)
    except sqlite3.Error as exc:
        raise store_error(exc) from exc
    finally:
        db.close()


def _echo_json(data: object) -> None:
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


@main.command("run")
@config_option
@handles_errors
def run_command(config_path: Path | None) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    import asyncio
    import os

    from watcher.daemon import serve
    from watcher.logs import setup_logging

    settings = load_config(config_path)
    settings.require_runnable()
    secrets = [k.get_secret_value() for k in settings.api.api_keys]
    if settings.callbacks.secret is not None:
        secrets.append(settings.callbacks.secret.get_secret_value())
    setup_logging(settings.log_level, settings.log_format, secrets)
    import logging

    log = logging.getLogger("watcher")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        log.warning("running as root: use the systemd unit (DynamicUser=yes) or a service user")
    for warning in settings.warnings():
        log.warning("%s", warning)
    asyncio.run(serve(settings))


@main.group("invoices")
def invoices_group() -> None:
    """Create, list, show and cancel invoices directly on the database."""


@invoices_group.command("create")
@config_option
@click.option("--network", default=None, help="The network (or --method, several times).")
@click.option("--asset", default=None, help="The asset's symbol on --network.")
@click.option(
    "--method", "methods", multiple=True, metavar="NETWORK:ASSET",
    help="Instead of --network and --asset: a method the customer may choose on the checkout "
         "page (repeat it for each; needs --price and --currency).",
)
@click.option("--title", default=None, help="Shown to the customer (at most 200 characters).")
@click.option("--description", default=None,
              help="Shown to the customer (at most 1000 characters).")
@click.option("--amount", default=None,
              help="Decimal string in asset units, e.g. 12.5 (or --price and --currency).")
@click.option("--price", default=None,
              help="Without --amount: the price in --currency, converted at the current rate.")
@click.option("--currency", default=None, help="The currency of --price, e.g. EUR.")
@click.option("--address", default=None,
              help='Dedicated receiving address, or "derive" for the next one from the xpub.')
@click.option("--ttl", type=int, default=None, help="Seconds until it expires.")
@click.option("--expire-at", "expire_at", default=None, help="ISO 8601 time with zone.")
@click.option("--callback-url", "callback_url", default=None)
@click.option("--external-id", "external_id", default=None)
@click.option("--client-id", "client_id", default=None, help="Your id of the paying customer.")
@click.option(
    "--redirect-url", "redirect_url", default=None,
    help="Where the checkout page sends the customer once the invoice is COMPLETED.",
)
@handles_errors
def invoices_create(
    config_path: Path | None, methods: tuple[str, ...], **fields: Any
) -> None:
    """Create an invoice and print it as JSON.

    One asset on one network (--network, --asset), or several methods the customer chooses
    from on the checkout page (--method NETWORK:ASSET, repeated, with --price and
    --currency)."""
    import asyncio

    from watcher import timeutil
    from watcher.daemon import build_ledger
    from watcher.requests import parse_create

    body_methods = [_method_arg(m) for m in methods]
    settings = load_config(config_path)
    ledger = build_ledger(settings)
    names = {"expire_at": "expireAt", "callback_url": "callbackUrl", "external_id": "externalId",
             "client_id": "clientId", "redirect_url": "redirectUrl"}
    body: dict[str, Any] = {names.get(k, k): v for k, v in fields.items() if v is not None}
    if body_methods:
        body["methods"] = body_methods
    now = timeutil.now()
    if "amount" not in body and "price" in body and settings.rates.pairs:
        from watcher.pricing.book import read_once

        ledger.rates = asyncio.run(read_once(settings, ONLINE_TIMEOUT))
    req = parse_create(
        body, ledger.networks, now, ledger.rates, derivable=ledger.deriver is not None
    )

    def create(db: Any) -> dict[str, Any]:
        ledger.load_views(db)
        inv, _, _ = ledger.create(db, req, now)
        return ledger.render(inv)

    async def go() -> dict[str, Any]:
        from watcher.daemon import start_network
        from watcher.rpc import RpcClient
        from watcher.storage.store import Store

        store = await Store(settings.database, password=settings.database_secret()).open()
        try:
            net = settings.enabled_networks().get(req.network) if req.network else None
            if net is not None and req.network is not None:
                # The chain's clock for the window, and the start block if no daemon has run
                # for this network yet. If the RPC does not answer, the create below opens
                # the window by the host's clock, or (not started) says so in one line.
                import logging

                quiet = logging.getLogger("watcher")
                level = quiet.level
                quiet.setLevel(logging.ERROR)
                try:
                    async with RpcClient(req.network, net.rpc, max_attempts=2) as rpc:
                        await start_network(store, ledger, rpc, req.network, ONLINE_TIMEOUT,
                                            net.start_block)
                finally:
                    quiet.setLevel(level)
            return await store.run(create)
        finally:
            await store.close()

    _echo_json(asyncio.run(go()))


def _method_arg(value: str) -> dict[str, str]:
    """`--method NETWORK:ASSET` as the API's method object (ApiError: one line, exit 2)."""
    from watcher.errors import Invalid
    from watcher.web.dashboard_forms import parse_method

    method = parse_method(value)
    if method is None:
        raise Invalid(f"--method must be NETWORK:ASSET (e.g. polygon:USDT), not {value!r}",
                      field="methods")
    return method


def _amount_text(units: int | None, decimals: int | None) -> str:
    """An amount for a listing; "—" while it is unknown (a method not chosen yet)."""
    return "—" if units is None or decimals is None else format_amount(units, decimals)


@invoices_group.command("list")
@config_option
@click.option("--status", default=None, help="One or several statuses, comma separated.")
@click.option("--network", default=None)
@click.option("--client-id", "client_id", default=None, help="Only this customer's invoices.")
@click.option("--limit", default="50")
@click.option("--json", "as_json", is_flag=True,
              help="Print the invoice objects as JSON (as GET /v1/invoices).")
@handles_errors
def invoices_list(
    config_path: Path | None, status: str | None, network: str | None, client_id: str | None,
    limit: str, as_json: bool,
) -> None:
    """Newest first: id, status, network, asset, amount, paid, to."""
    from watcher.queries import list_invoices
    from watcher.requests import encode_cursor, parse_invoice_query

    settings = load_config(config_path)
    query = {"limit": limit, **({"status": status} if status else {}),
             **({"network": network} if network else {}),
             **({"clientId": client_id} if client_id else {})}
    q = parse_invoice_query(query)
    if as_json:
        from watcher.daemon import build_ledger

        ledger = build_ledger(settings)

        def rendered(db: Any) -> dict[str, Any]:
            ledger.load_views(db)
            found, position = list_invoices(db, q)
            return {"data": [ledger.render(i) for i in found],
                    "nextCursor": encode_cursor(position) if position is not None else None}

        _echo_json(_store_call(settings, rendered))
        return
    invoices, _ = _store_call(settings, list_invoices, q)
    for inv in invoices:
        if inv.network is None:  # a method invoice whose customer has not chosen yet
            count = len(inv.methods or [])
            say(
                f"{inv.id}  {_status(inv.status.value, 26)} {'—':<10} {'—':<6} "
                f"{'—':>16}  choice pending ({count} method{'s' if count != 1 else ''}"
                + (f", {inv.price} {inv.currency})" if inv.price else ")")
            )
            continue
        say(
            f"{inv.id}  {_status(inv.status.value, 26)} {inv.network:<10} {inv.asset or '—':<6} "
            f"{_amount_text(inv.amount, inv.decimals):>16}  "
            f"paid {_amount_text(inv.amount_paid, inv.decimals):<14} {inv.to_addr or '—'}"
        )


def _show(settings: Settings, fn: Callable[..., Any], invoice_id: str, *args: Any) -> None:
    from watcher.daemon import build_ledger

    ledger = build_ledger(settings)

    def act(db: Any) -> dict[str, Any]:
        ledger.load_views(db)
        result = fn(ledger, db, invoice_id, *args)
        inv = result[0] if isinstance(result, tuple) else result
        return ledger.render(inv)

    _echo_json(_store_call(settings, act))


@invoices_group.command("show")
@config_option
@click.argument("invoice_id")
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: always JSON.")
@handles_errors
def invoices_show(config_path: Path | None, invoice_id: str, as_json: bool) -> None:
    """The invoice as JSON."""
    from watcher.ledger import Ledger

    _show(load_config(config_path), Ledger.get, invoice_id)


@invoices_group.command("cancel")
@config_option
@click.argument("invoice_id")
@handles_errors
def invoices_cancel(config_path: Path | None, invoice_id: str) -> None:
    """PENDING -> VOIDED; the invoice as JSON."""
    from watcher import timeutil
    from watcher.ledger import Ledger

    _show(load_config(config_path), Ledger.cancel, invoice_id, timeutil.now())


@main.group("transfers")
def transfers_group() -> None:
    """Transfers seen to watched addresses: list them, assign one to an invoice."""


@transfers_group.command("list")
@config_option
@click.option("--unmatched", is_flag=True, help="Only transfers that belong to no invoice.")
@click.option("--network", default=None)
@click.option("--limit", default="50")
@click.option("--json", "as_json", is_flag=True,
              help="Print the transfer objects as JSON (as GET /v1/transfers).")
@handles_errors
def transfers_list(
    config_path: Path | None, unmatched: bool, network: str | None, limit: str, as_json: bool
) -> None:
    """Newest first: id, kind, network, asset, amount, to, tx, block."""
    from watcher.daemon import build_ledger
    from watcher.requests import encode_cursor, parse_transfer_query
    from watcher.web.api import list_transfers

    settings = load_config(config_path)
    q = parse_transfer_query({"limit": limit, **({"matched": "false"} if unmatched else {}),
                              **({"network": network} if network else {})})
    data, position = _store_call(settings, list_transfers, q, build_ledger(settings).networks)
    if as_json:
        _echo_json({"data": data,
                    "nextCursor": encode_cursor(position) if position is not None else None})
        return
    for t in data:
        say(f"{t['id']}  {t['kind']:<9} {t['network']:<10} {t['asset']:<6} {t['amount']:>16}  "
            f"{t['to']}  {t['txHash']}  {t['block']}")


@transfers_group.command("assign")
@config_option
@click.argument("transfer_id")
@click.argument("invoice_id")
@handles_errors
def transfers_assign(config_path: Path | None, transfer_id: str, invoice_id: str) -> None:
    """Make an unmatched or late transfer a payment of the invoice; the invoice as JSON."""
    from watcher import timeutil
    from watcher.ledger import Ledger
    from watcher.requests import parse_assign

    invoice_id = parse_assign({"invoiceId": invoice_id})
    _show(load_config(config_path), Ledger.assign, transfer_id, invoice_id, timeutil.now())


@main.group("callbacks")
def callbacks_group() -> None:
    """Callback deliveries: list them, queue one again."""


@callbacks_group.command("list")
@config_option
@click.option("--failed", is_flag=True, help="Only deliveries that gave up.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100)
@click.option("--json", "as_json", is_flag=True, help="Print the deliveries as JSON.")
@handles_errors
def callbacks_list(config_path: Path | None, failed: bool, limit: int, as_json: bool) -> None:
    """Newest first: event id, state, attempts, event, invoice, last error."""
    from watcher.outbox import list_deliveries

    rows = _store_call(load_config(config_path), list_deliveries, failed, limit)
    if as_json:
        from watcher.timeutil import iso

        def when(value: float | None) -> str | None:
            return None if value is None else iso(int(value))

        _echo_json({"data": [{
            "eventId": r["event_id"], "invoiceId": r["invoice_id"], "event": r["event"],
            "url": redact_url(r["url"]) if r["url"] else None, "state": r["state"],
            "attempts": r["attempts"],
            "nextAttemptAt": when(r["next_attempt_at"]) if r["state"] == "pending" else None,
            "createdAt": when(r["created_at"]), "deliveredAt": when(r["delivered_at"]),
            "lastError": r["last_error"],
        } for r in rows]})
        return
    for r in rows:
        click.echo(
            f"{r['event_id']}  {r['state']:<9} {r['attempts']:>3}  {r['event']:<36} "
            f"{r['invoice_id']}  {r.get('last_error') or ''}"
        )


@callbacks_group.command("redeliver")
@config_option
@click.argument("event_id")
@handles_errors
def callbacks_redeliver(config_path: Path | None, event_id: str) -> None:
    """Queue an event's delivery again (the daemon sends it within seconds)."""
    from watcher import timeutil
    from watcher.errors import NotFound
    from watcher.outbox import redeliver

    if not _store_call(load_config(config_path), redeliver, event_id, timeutil.now()):
        raise NotFound(f"no delivery for event {event_id}")
    click.echo(f"queued {event_id}")


@main.group("addresses")
def addresses_group() -> None:
    """Deposit addresses derived from the configured xpub."""


@addresses_group.command("list")
@config_option
@click.option("--network", default=None, help="Only this network's invoices and balances.")
@click.option("--with-balance", "with_balance", is_flag=True,
              help="Also read each address's native and token balances from the chain.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of GET /v1/addresses.")
@handles_errors
def addresses_list(
    config_path: Path | None, network: str | None, with_balance: bool, as_json: bool
) -> None:
    """Index order: index, address, its invoices' statuses (and balances): what to sweep."""
    import asyncio

    from watcher.daemon import build_ledger
    from watcher.requests import MAX_LIMIT, encode_cursor, parse_address_query
    from watcher.rpc import RpcClient
    from watcher.storage.store import Store
    from watcher.web.api import address_report

    settings = load_config(config_path)
    ledger = build_ledger(settings)
    nets = settings.enabled_networks()

    async def go() -> dict[str, Any]:
        store = await Store(settings.database, password=settings.database_secret()).open()
        rpcs = {
            n: RpcClient(n, net.rpc, max_attempts=2)
            for n, net in nets.items() if with_balance and network in (None, n)
        }
        pages: list[dict[str, Any]] = []
        try:
            after: int | None = None
            while True:
                query = {"limit": str(MAX_LIMIT), "withBalance": str(with_balance).lower(),
                         **({"network": network} if network else {}),
                         **({"cursor": encode_cursor(after)} if after is not None else {})}
                q = parse_address_query(query, ledger.networks)
                page = await address_report(store, ledger.networks, rpcs, q)
                pages.append(page)
                if page["nextCursor"] is None:
                    break
                after = page["data"][-1]["index"]
        finally:
            await store.close()
            for rpc in rpcs.values():
                await rpc.close()
        merged: dict[str, Any] = {"data": [a for p in pages for a in p["data"]],
                                  "nextCursor": None}
        if with_balance:
            merged["balanceBlocks"] = pages[0]["balanceBlocks"]
            merged["balanceErrors"] = {k: v for p in pages for k, v in p["balanceErrors"].items()}
        return merged

    report = asyncio.run(go())
    if as_json:
        _echo_json(report)
    else:
        if not report["data"]:
            click.echo("no derived addresses yet" + (
                "" if settings.addresses.xpub else " (no [addresses] xpub is configured)"))
        for a in report["data"]:
            invoices = ", ".join(
                f"{i['id'][:8]} {i['status']} ({i['network']} {i['asset']})" for i in a["invoices"]
            ) or "no invoice"
            click.echo(f"{a['index']:>7}  {a['address']}  {invoices}")
            for net_name, held in a.get("balances", {}).items():
                figures = ", ".join(f"{v} {k}" for k, v in held.items())
                click.echo(f"{'':>7}  {net_name}: {figures}")
    errors = report.get("balanceErrors") or {}
    for message in errors.values():
        _error(f"balances not read: {message}")
    if errors:
        raise SystemExit(1)


@addresses_group.command("preview")
@config_option
@click.option("--from", "start", type=click.IntRange(0, 2**31 - 1), default=None,
              help="First index to show (default: addresses.start_index).")
@click.option("--count", type=click.IntRange(1, 1000), default=5)
@handles_errors
def addresses_preview(config_path: Path | None, start: int | None, count: int) -> None:
    """Print the addresses the configured xpub derives, without handing any out: compare
    them with your wallet's before taking payments."""
    from watcher.errors import ConfigError

    settings = load_config(config_path)
    deriver = settings.addresses.deriver()
    if deriver is None:
        raise ConfigError(["addresses.xpub: not set: there is nothing to derive from"])
    first = settings.addresses.start_index if start is None else start
    for index in range(first, min(first + count, deriver.max_index + 1)):
        click.echo(f"{index:>7}  {deriver.address(index)}  xpub/{deriver.template.render(index)}")


@main.command("rescan")
@config_option
@click.option("--network", required=True, help="The network to read again.")
@click.option("--from", "start", type=int, required=True, help="First block.")
@click.option("--to", "end", type=int, default=None,
              help="Last block (default: the newest block the daemon has scanned).")
@handles_errors
def rescan_command(config_path: Path | None, network: str, start: int, end: int | None) -> None:
    """Read a past range of blocks again beside the running daemon: add what was missed,
    never count a transfer twice, send the callbacks of what changed. Interrupted, the same
    command goes on where it stopped."""
    import asyncio
    import sys

    from watcher.daemon import build_ledger, follower_config
    from watcher.errors import ConfigError
    from watcher.rescan import Progress, RescanError, Rescanner
    from watcher.rpc import RpcClient
    from watcher.storage.store import Store

    settings = load_config(config_path)
    net = settings.enabled_networks().get(network)
    if net is None:
        known = ", ".join(settings.enabled_networks()) or "none"
        raise ConfigError([f"--network: {network!r} is not an enabled network ({known})"])
    ledger = build_ledger(settings)
    terminal = sys.stdout.isatty()

    async def go() -> Progress:
        store = await Store(settings.database, password=settings.database_secret()).open()
        try:
            await store.run(ledger.load_views)
            async with RpcClient(network, net.rpc, max_attempts=3) as rpc:
                scanner = Rescanner(follower_config(network, net), net.assets(), rpc, store,
                                    ledger, settings.invoices.late_payment_window)
                try:
                    first, last = await scanner.check(start, end)
                except RescanError as exc:
                    raise ConfigError([str(exc)]) from None
                if not terminal:
                    return await scanner.run(first, last, _progress_lines(first, last))
                with click.progressbar(length=last - first + 1,
                                       label=f"rescan {network} {first}..{last}") as bar:
                    seen = [first]

                    def advance(p: Progress) -> None:
                        bar.update(p.next_block - seen[0])
                        seen[0] = p.next_block

                    return await scanner.run(first, last, advance)
        finally:
            await store.close()

    from watcher.errors import RpcError
    from watcher.follower import ChainMoved

    try:
        done = asyncio.run(go())
    except (RpcError, ChainMoved) as exc:
        _error(f"rescan stopped: {exc}; run the same command again to go on")
        raise click.exceptions.Exit(1) from None
    except KeyboardInterrupt:
        say("interrupted: run the same command again to go on where it stopped", err=True)
        raise click.exceptions.Exit(130) from None
    say(f"rescan {done.rescan_id} of {network}: blocks {done.start}..{done.end} done, "
        f"{done.added} transfer(s) added")


def _progress_lines(first: int, last: int) -> Callable[[Any], None]:
    """Progress for a pipe or a log: a line at every tenth of the range."""
    total = last - first + 1
    shown = [-1]

    def show(p: Any) -> None:
        tenth = (p.next_block - first) * 10 // total
        if tenth > shown[0]:
            shown[0] = tenth
            say(f"rescan {p.rescan_id}: block {min(p.next_block, last)} of {first}..{last} "
                f"({tenth * 10}%), {p.added} transfer(s) added")

    return show


@main.command("rates")
@config_option
@handles_errors
def rates_command(config_path: Path | None) -> None:
    """Read every configured rate pair once from its sources and print it."""
    import asyncio

    from watcher import timeutil
    from watcher.pricing.book import read_once

    settings = load_config(config_path)
    problems = [p for p in settings.runtime_problems() if p.startswith("rates.")]
    if problems:
        raise ConfigError(problems)
    if not settings.rates.pairs:
        click.echo("no rate pairs are configured ([rates.pairs])")
        return
    book = asyncio.run(read_once(settings, ONLINE_TIMEOUT))
    for row in book.status(timeutil.now()):
        if row["rate"] is None:
            click.echo(f"{row['pair']:<12} -  no rate: {row['error']}")
            continue
        state = "fresh" if row["fresh"] else f"STALE (older than {settings.rates.max_age} s)"
        click.echo(f"{row['pair']:<12} {row['rate']:<24} {row['source']}, "
                   f"{row['ageSeconds']} s old, {state}")


@main.command("migrate-to-postgres")
@click.option("--from", "source", required=True, metavar="SQLITE",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The SQLite database file (stop the daemon first).")
@click.option("--to", "target", required=True, metavar="URL",
              help="postgresql://USER@HOST[:PORT]/DATABASE of a new, empty database.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A file holding the PostgreSQL password.")
@handles_errors
def migrate_to_postgres(source: Path, target: str, password_file: Path | None) -> None:
    """Copy everything from a SQLite database into an empty PostgreSQL one (one
    transaction; row counts and amount sums checked before it commits)."""
    from watcher.config import postgres_url_problem
    from watcher.errors import ConfigError
    from watcher.storage import migrate, postgres
    from watcher.storage.base import is_postgres_url
    from watcher.storage.sqlite import connect

    problem = (postgres_url_problem(target) if is_postgres_url(target)
               else "must be a postgresql:// URL")
    if problem:
        raise ConfigError([f"--to: {problem}"])
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError([f"--password-file: cannot read {password_file}: "
                               f"{exc.strerror}"]) from None
    pg = postgres.connect(target, password=password)
    try:
        lite = connect(source)
        try:
            report = migrate.copy(lite, pg)
        finally:
            lite.close()
    finally:
        pg.close()
    for table, n in report.rows.items():
        say(f"{table:<20} {n:>10} rows")
    for name, total in report.sums.items():
        say(f"{name:<28} sum {total}")
    say(click.style("copied", fg="green") + f": {sum(report.rows.values())} rows; counts and "
        "amount sums match. Point `database` at the PostgreSQL URL and start the daemon.")


@main.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handles_errors
def status_command(config_path: Path | None, as_json: bool) -> None:
    """Networks (head, scanned, lag, RPC health), invoices by status, callback queue."""
    from watcher.outbox import queue_depth
    from watcher.storage.rows import status_counts

    settings = load_config(config_path)

    def read(db: Any) -> tuple[list[dict[str, Any]], dict[str, int], int, dict[str, Any]]:
        from watcher import cluster

        cursors = list(db.query("SELECT * FROM cursors"))
        leaders = cluster.leaders(db) if settings.postgres else {}
        return cursors, status_counts(db), queue_depth(db), leaders

    cursors, counts, depth, leaders = _store_call(settings, read)
    live = _live_networks(settings)
    by_name = {c["network"]: c for c in cursors}
    networks: list[dict[str, Any]] = []
    for name in settings.enabled_networks():
        row = live.get(name) or {}
        c = by_name.get(name, {})
        head = row.get("headBlock", c.get("head_block"))
        scanned = row.get("scannedBlock", c.get("scanned_block"))
        lag = head - scanned if head is not None and scanned is not None else None
        # who follows the network: the leaders table (several instances on PostgreSQL),
        # else the running daemon itself
        leader = (leaders.get(name) or {}).get("instance") if settings.postgres \
            else row.get("leader")
        networks.append({"name": name, "headBlock": head, "scannedBlock": scanned,
                         "lagBlocks": lag, "rpc": row.get("rpc"), "daemonReachable": bool(row),
                         "leader": leader})
    if as_json:
        _echo_json({"networks": networks, "invoices": dict(sorted(counts.items())),
                    "callbackQueue": depth})
        return
    say(f"{'network':<12} {'head':>12} {'scanned':>12} {'lag':>6}  {'leader':<16} rpc")
    for n in networks:
        rpc = n["rpc"]
        health = ", ".join(
            f"{r['label']} " + (click.style("ok", fg="green") if r.get("healthy")
                                else click.style("DOWN", fg="red"))
            for r in rpc
        ) if rpc else "daemon not reachable"
        head, scanned, lag = n["headBlock"], n["scannedBlock"], n["lagBlocks"]
        say(f"{n['name']:<12} {head if head is not None else '-':>12} "
            f"{scanned if scanned is not None else '-':>12} "
            f"{lag if lag is not None else '-':>6}  {n['leader'] or '-':<16} {health}")
    say("")
    say("invoices: " + (", ".join(f"{_status(k)} {v}" for k, v in sorted(counts.items()))
                        or "none"))
    say(f"callback queue: {depth}")


def _live_networks(settings: Settings) -> dict[str, dict[str, Any]]:
    """`/v1/networks` of the running daemon, if it answers."""
    import asyncio

    import aiohttp

    if not settings.api.api_keys:
        return {}
    key = settings.api.api_keys[0].get_secret_value()
    host = settings.api.host if settings.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{host}:{settings.api.port}/v1/networks"

    async def ask() -> dict[str, dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(
            url, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            data = await r.json()
            return {n["name"]: n for n in data.get("data", [])}

    try:
        return asyncio.run(ask())
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError):
        return {}


@main.command("demo")
@click.option(
    "--exit-after-script",
    is_flag=True,
    help="Exit 0 once every invoice is COMPLETED and its callbacks received (no prompt).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=90.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up (exit 1) if the scripted part is not done by then.",
)
def demo_command(exit_after_script: bool, timeout: float) -> None:
    """A local dev chain (anvil), a test token, the daemon, invoices paid live, callbacks shown.

    Runs until Ctrl-C, then stops everything it started. Needs anvil (`make install`).
    """
    from watcher.demo import main as demo_main

    code = demo_main(exit_after_script=exit_after_script, timeout=timeout)
    if code:
        raise click.exceptions.Exit(code)
