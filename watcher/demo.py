"""`payment-watcher demo`: the whole flow on a local dev chain, live.

It starts anvil (a block every second), deploys a test USDT token and a withdrawal contract,
starts a callback receiver and the daemon in this process (API on 127.0.0.1 with a generated
key, a temporary database), creates four invoices through the HTTP API (a native one at an
address derived from an xpub, a token one, a native one the withdrawal contract pays by
an internal call, found in traces, and one priced in euros where the customer chooses how
to pay: USDT first, then switches to ETH), pays them (the token one in two parts), and prints one
line per event, with the time since the start: what it does on chain, each status change
(read back from the API) and each callback the receiver gets (with both its signatures
checked: `X-Watcher-Signature` and the Standard Webhooks `webhook-signature`).

Then it keeps everything running and prints curl lines to try, until Ctrl-C (or SIGTERM),
which stops what it started: daemon, receiver, anvil. `--exit-after-script` exits 0 as soon
as every invoice is COMPLETED and every callback of theirs has arrived; `--timeout` bounds
the scripted part (exit 1 with the step it was waiting for).

Exit codes: 0 done (or stopped during the interactive part), 1 failed or timed out, 2 no
anvil, 130 interrupted before the scripted part was done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from watcher.amounts import parse_amount
from watcher.config import Settings
from watcher.daemon import Daemon
from watcher.devchain import Anvil, AnvilNotFound, DevChain, find_anvil
from watcher.signing import HEADER_DELIVERY, verify_signature, verify_webhook

NETWORK: Final = "anvil"
CONFIRMATIONS: Final = 2
BLOCK_TIME: Final = 1
POLL_INTERVAL: Final = 0.25
TOKEN_SYMBOL: Final = "USDT"
TOKEN_DECIMALS: Final = 6
NATIVE_SYMBOL: Final = "ETH"
#: The demo feed's ETH/USD answer and the fixed EUR/USD rate (ETH/EUR = 3000).
ETH_USD: Final = 3240
EUR_USD: Final = "1.08"
#: (asset, amount) of the invoice paid in full, and of the one paid in two parts.
FULL: Final = (NATIVE_SYMBOL, "0.5")
SPLIT: Final = (TOKEN_SYMBOL, "25", ("10", "15"))
#: (asset, amount) of the invoice an exchange's withdrawal contract pays by an internal call.
INTERNAL: Final = (NATIVE_SYMBOL, "0.2")
INVOICE_TTL: Final = 3600
#: Deposit addresses are derived from the account xpub of anvil's well-known test mnemonic,
#: from an index clear of anvil's own funded accounts (indexes 0..9).
DEMO_MNEMONIC: Final = "test test test test test test test test test test test junk"
DERIVE_FROM: Final = 1000
DEFAULT_TIMEOUT: Final = 90.0
STOP_GRACE: Final = 8.0

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_NO_ANVIL: Final = 2
EXIT_INTERRUPTED: Final = 130


class DemoError(RuntimeError):
    """A step of the demo failed: its message is printed as one `error:` line."""


class Console:
    """One line per event, `  12.34s  kind      message`, flushed at once; no colour."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def line(self, kind: str, message: str) -> None:
        print(f"{self.elapsed():8.2f}s  {kind:<8}  {message}", flush=True)

    def plain(self, text: str = "") -> None:
        print(text, flush=True)

    def error(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)


class _ConsoleLogHandler(logging.Handler):
    """The daemon's warnings and errors, as console lines (no tracebacks)."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.console.line("daemon", f"{record.levelname.lower()}: {record.getMessage()}")


def _label(invoice: dict[str, Any]) -> str:
    """Short id and asset ("choice" while the customer has not chosen a method)."""
    return f"{str(invoice.get('id', '?'))[:8]} {invoice.get('asset') or 'choice'}"


# ---------------------------------------------------------------- callback receiver


@dataclass(slots=True)
class Callback:
    delivery: str
    event: str
    invoice_id: str
    signature_ok: bool


class CallbackReceiver:
    """A merchant's callback endpoint on 127.0.0.1: checks each signature, prints each
    callback, answers 200 (401 on a bad signature, as a real receiver should)."""

    def __init__(self, secret: str, console: Console) -> None:
        self.secret = secret
        self.console = console
        self.received: dict[str, Callback] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/payment"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/hooks/payment", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        # both signatures: X-Watcher-Signature and the Standard Webhooks webhook-signature
        ok = verify_signature(self.secret, request.headers, body) and verify_webhook(
            self.secret, request.headers, body)
        delivery = request.headers.get(HEADER_DELIVERY, "")
        try:
            payload = json.loads(body)
            event = str(payload["event"])
            data = payload["data"]
            invoice_id = str(data["id"])
        except (ValueError, KeyError, TypeError):
            self.console.line("callback", f"unreadable body (delivery {delivery or '-'})")
            return web.Response(status=400)
        again = " (again)" if delivery in self.received else ""
        self.received[delivery] = Callback(delivery, event, invoice_id, ok)
        self.console.line(
            "callback",
            f"{event:<34} {_label(data):<13} {data.get('status', '?'):<25} "
            f"signature {'ok' if ok else 'BAD'}  delivery {delivery}{again}",
        )
        return web.Response(status=200 if ok else 401)


# ---------------------------------------------------------------- API client and status watch


class Api:
    """The daemon's HTTP API, with the API key."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=10),
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body) as resp:
            data = await resp.json(content_type=None)
            return resp.status, data

    async def get(self, path: str) -> Any:
        status, data = await self.call("GET", path)
        if status != 200:
            raise DemoError(f"GET {path} answered {status}: {data}")
        return data

    async def close(self) -> None:
        await self.session.close()


@dataclass(slots=True)
class Tracked:
    invoice: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)


class StatusWatch:
    """Polls the API and prints every status change of every invoice (the demo's and any
    you create), read from each invoice's event history so none is missed."""

    def __init__(self, api: Api, console: Console) -> None:
        self.api = api
        self.console = console
        self.invoices: dict[str, Tracked] = {}

    def status(self, invoice_id: str) -> str | None:
        t = self.invoices.get(invoice_id)
        return str(t.invoice["status"]) if t else None

    def event_ids(self, invoice_id: str) -> list[str]:
        t = self.invoices.get(invoice_id)
        return [str(e["id"]) for e in t.events] if t else []

    async def run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, DemoError):
                await self.poll()
            await asyncio.sleep(POLL_INTERVAL)

    async def poll(self) -> None:
        page = await self.api.get("/v1/invoices?limit=100")
        for inv in reversed(page["data"]):  # oldest first
            known = self.invoices.get(inv["id"])
            if known is not None and (known.invoice["status"], known.invoice["updatedAt"]) == (
                inv["status"], inv["updatedAt"]
            ):
                known.invoice = inv
                continue
            history = (await self.api.get(f"/v1/invoices/{inv['id']}/events"))["data"]
            tracked = known or Tracked(inv)
            new = history[len(tracked.events) :]
            previous = next((e["status"] for e in reversed(tracked.events)
                             if e["status"] is not None), None)
            for n, event in enumerate(new):
                self._show(inv, event, previous, last=n == len(new) - 1)
                if event["status"] is not None:  # not a late payment or a method choice
                    previous = event["status"]
            tracked.invoice, tracked.events = inv, history
            self.invoices[inv["id"]] = tracked

    def _show(
        self, inv: dict[str, Any], event: dict[str, Any], previous: str | None, *, last: bool
    ) -> None:
        name = event["event"]
        if name == "invoice.created":
            change = f"{event['status']} (created)"
        elif name == "invoice.late_payment":
            change = f"{inv['status']} (late payment recorded)"
        elif name == "invoice.method_selected":
            change = f"{previous or inv['status']} (a payment method was chosen)"
        else:
            change = f"{previous or '?'} -> {event['status']}"
        detail = ""
        if last and inv["asset"] is not None:
            unit = inv["asset"]
            detail = f"  paid {inv['amountPaid']} of {inv['amount']} {unit}"
            if inv.get("payments"):
                detail += (
                    f", {len(inv['payments'])} payment(s), {inv['confirmations']}"
                    f"/{inv['requiredConfirmations']} confirmations"
                )
        self.console.line("status", f"{_label(inv):<13} {change}{detail}")


# ---------------------------------------------------------------- the demo


class Demo:
    def __init__(self, *, exit_after_script: bool, timeout: float, anvil_binary: str) -> None:
        self.exit_after_script = exit_after_script
        self.timeout = timeout
        self.anvil_binary = anvil_binary
        self.console = Console()
        self.api_key = "demo_" + secrets.token_urlsafe(24)
        # the Standard Webhooks form: `whsec_` + base64 key (keys both signatures)
        self.callback_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.waiting_for = "start"
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.anvil: Anvil | None = None
        self.chain: DevChain | None = None
        self.receiver: CallbackReceiver | None = None
        self.daemon: Daemon | None = None
        self.api: Api | None = None
        self.watch: StatusWatch | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.log_handler = _ConsoleLogHandler(self.console)
        self.invoice_ids: dict[str, str] = {}  # "full" / "split" -> id
        self.chosen_amount = ""  # what the methods invoice asks once ETH is chosen
        self.choose_url: str | None = None  # an open methods invoice's checkout page

    # ------------------------------------------------------------ entry

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        logger = logging.getLogger("watcher")
        saved = logger.level, logger.propagate
        logger.addHandler(self.log_handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        try:
            return await self._run()
        finally:
            logger.setLevel(logging.CRITICAL + 1)  # shutdown noise (anvil gone, ...) is expected
            await self._cleanup()
            logger.removeHandler(self.log_handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            self.console.line("demo", "stopping (Ctrl-C again to force)")
            logging.getLogger("watcher").setLevel(logging.CRITICAL + 1)
            self.stop_requested.set()
            return
        if self.anvil is not None:
            with contextlib.suppress(Exception):
                self.anvil.stop(timeout=1)
        os._exit(EXIT_INTERRUPTED)

    async def _run(self) -> int:
        script = asyncio.create_task(self._script(), name="demo-script")
        stop = asyncio.create_task(self.stop_requested.wait(), name="demo-stop")
        try:
            await asyncio.wait({script, stop}, timeout=self.timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not script.done():
            script.cancel()
            with contextlib.suppress(BaseException):
                await script
            if self.stop_requested.is_set():
                self.console.line("demo", f"interrupted while waiting for {self.waiting_for}")
                return EXIT_INTERRUPTED
            self.console.error(
                f"the scripted part did not finish within {self.timeout:g} s "
                f"(still waiting for {self.waiting_for})"
            )
            return EXIT_FAILED
        exc = script.exception()
        if exc is not None:
            reason = exc if isinstance(exc, DemoError) else f"{type(exc).__name__}: {exc}"
            self.console.error(f"while waiting for {self.waiting_for}: {reason}")
            return EXIT_FAILED
        if self.exit_after_script:
            return EXIT_OK
        self._print_try_lines(await self._open_invoice())
        daemon_died = asyncio.create_task(self._daemon_wait(), name="demo-daemon-wait")
        stop = asyncio.create_task(self.stop_requested.wait(), name="demo-stop")
        await asyncio.wait({daemon_died, stop}, return_when=asyncio.FIRST_COMPLETED)
        daemon_died.cancel()
        stop.cancel()
        if not self.stop_requested.is_set():
            self.console.error("the daemon stopped on its own (see the lines above)")
            return EXIT_FAILED
        return EXIT_OK

    async def _daemon_wait(self) -> None:
        if self.daemon is not None:
            await self.daemon.wait()

    # ------------------------------------------------------------ the scripted part

    def _step(self, what: str) -> None:
        self.waiting_for = what

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    async def _script(self) -> None:
        out = self.console
        self._step("anvil to start")
        out.line("demo", "starting anvil (local dev chain)")
        anvil = Anvil(binary=self.anvil_binary)
        self.anvil = anvil
        await asyncio.to_thread(anvil.start)
        chain = DevChain(anvil.url)
        self.chain = chain
        out.line("chain", f"anvil on {anvil.url}, chain id {anvil.chain_id}")

        self._step("the test token to deploy")
        token = await chain.aio.deploy_token(TOKEN_SYMBOL, TOKEN_DECIMALS)
        accounts = await asyncio.to_thread(lambda: chain.accounts)
        native_payer, token_payer = accounts[1], accounts[2]
        out.line(
            "chain", f"deployed test token {TOKEN_SYMBOL} ({TOKEN_DECIMALS} decimals) at {token}"
        )
        feed = await chain.aio.deploy_aggregator(8, "ETH / USD")
        await chain.aio.set_round(feed, ETH_USD * 10**8)
        out.line("chain", f"deployed a Chainlink-style ETH/USD feed at {feed} answering {ETH_USD}")
        payout = await chain.aio.deploy_payout()
        out.line("chain", f"deployed a withdrawal contract (Payout) at {payout}: it pays by "
                          "internal calls, which leave no log")
        await chain.aio.mint(token, token_payer, 1000 * 10**TOKEN_DECIMALS)
        out.line("chain", f"minted 1000 {TOKEN_SYMBOL} to the customer account {token_payer}")
        await chain.aio.set_block_time(BLOCK_TIME)
        out.line("chain", f"interval mining on: a block every {BLOCK_TIME} s")

        self._step("the callback receiver to start")
        receiver = CallbackReceiver(self.callback_secret, out)
        self.receiver = receiver
        await receiver.start()
        out.line("receiver", f"listening on {receiver.url} (verifies X-Watcher-Signature and "
                             "the Standard Webhooks webhook-signature of every callback)")

        self._step("the daemon to start")
        self.tmp = tempfile.TemporaryDirectory(prefix="payment-watcher-demo-")
        database = Path(self.tmp.name) / "watcher.db"
        settings = Settings(
            database=database,
            api={"listen": "127.0.0.1:0", "api_keys": [self.api_key]},
            checkout={"enabled": True, "listen": "127.0.0.1:0", "redirect_delay": 5},
            addresses={"xpub": _demo_xpub(), "start_index": DERIVE_FROM},
            rates={"pairs": {
                "ETH/USD": [{"chainlink": NETWORK, "feed": feed}],
                "EUR/USD": [{"fixed": EUR_USD}],
                f"{TOKEN_SYMBOL}/USD": [{"fixed": "1"}],
            }},
            callbacks={"url": receiver.url, "secret": self.callback_secret, "timeout": 5},
            networks={
                NETWORK: {
                    "rpc": [anvil.url],
                    "confirmations": CONFIRMATIONS,
                    "block_time": BLOCK_TIME,
                    "poll_interval": POLL_INTERVAL,
                    "internal_transfers": "trace_block",
                    "tokens": [
                        {"symbol": TOKEN_SYMBOL, "address": token, "decimals": TOKEN_DECIMALS}
                    ],
                }
            },
        )
        daemon = Daemon(settings)
        self.daemon = daemon
        await daemon.start()
        base = f"http://127.0.0.1:{daemon.port}"
        out.line(
            "daemon",
            f"API on {base}, checkout on http://127.0.0.1:{daemon.checkout_port}, database "
            f"{database}, {CONFIRMATIONS} confirmations, callbacks signed with a generated secret",
        )
        api = Api(base, self.api_key)
        self.api = api

        self._step("the daemon to follow the chain")
        head = await self._until_synced(api)
        out.line("daemon", f"following {NETWORK} from block {head}")
        rates = await api.get("/v1/rates")
        out.line("rates", ", ".join(f"{r['pair']} {r['rate']} ({r['source']})"
                                    for r in rates["data"]))
        watch = StatusWatch(api, out)
        self.watch = watch
        self._spawn(watch.run(), "demo-status-watch")

        self._step("the invoices to be created")
        full_asset, full_amount = FULL
        split_asset, split_amount, parts = SPLIT
        full, full_to = await self._create(api, full_asset, full_amount, "derive",
                                           "demo-order-1", "paid in full")
        split, split_to = await self._create(api, split_asset, split_amount,
                                             DevChain.new_account(), "demo-order-2",
                                             f"paid in two parts: {' + '.join(parts)}")
        internal_asset, internal_amount = INTERNAL
        internal, internal_to = await self._create(
            api, internal_asset, internal_amount, "derive", "demo-order-3",
            "paid by an exchange's withdrawal contract, an internal transfer")
        chosen, chosen_to = await self._methods_invoice(api)
        self.invoice_ids = {"full": full, "split": split, "internal": internal,
                            "methods": chosen}

        self._step(f"the {full_asset} payment to be mined")
        await self._pay(native_payer, full_to, full_asset, full_amount, None)
        self._step(f"the first {split_asset} payment to be mined")
        await self._pay(token_payer, split_to, split_asset, parts[0], token)
        self._step("the withdrawal contract's payment to be mined")
        value = parse_amount(internal_amount, 18)
        tx = await chain.aio.call_payout(payout, native_payer, "pay", [internal_to], value)
        out.line("pay", f"the withdrawal contract sends {internal_amount} {internal_asset} to "
                        f"{internal_to} by an internal call: tx {tx}")

        self._step("the payment of the method the customer chose to be mined")
        await self._pay(native_payer, chosen_to, NATIVE_SYMBOL, self.chosen_amount, None)

        self._step(f"invoices {full[:8]}, {internal[:8]} and {chosen[:8]} COMPLETED and "
                   f"invoice {split[:8]} PARTIAL")
        await self._until(lambda: watch.status(full) == "COMPLETED"
                          and watch.status(internal) == "COMPLETED"
                          and watch.status(chosen) == "COMPLETED"
                          and watch.status(split) == "PARTIAL")

        self._step(f"the second {split_asset} payment to be mined")
        await self._pay(token_payer, split_to, split_asset, parts[1], token)
        self._step(f"invoice {split[:8]} COMPLETED")
        await self._until(lambda: watch.status(split) == "COMPLETED")

        self._step("every callback of the invoices")
        await self._until(self._all_callbacks_received)
        bad = [c for c in receiver.received.values() if not c.signature_ok]
        if bad:
            raise DemoError(f"{len(bad)} callback(s) with a bad signature")
        count = sum(len(watch.event_ids(i)) for i in self.invoice_ids.values())
        out.line(
            "demo",
            f"scripted part done: all four invoices COMPLETED, {count} callbacks received, "
            "every signature ok",
        )
        await self._show_addresses(api)

    async def _methods_invoice(self, api: Api) -> tuple[str, str]:
        """An invoice priced in euros where the customer chooses how to pay: created with
        two methods, USDT chosen (as the checkout page's button does), then switched to
        ETH; (id, address of the chosen method)."""
        out = self.console
        status, data = await api.call("POST", "/v1/invoices", {
            "methods": [{"network": NETWORK, "asset": NATIVE_SYMBOL},
                        {"network": NETWORK, "asset": TOKEN_SYMBOL}],
            "price": "20", "currency": "EUR", "title": "Order demo-order-4",
            "description": "Two mugs", "ttl": INVOICE_TTL, "externalId": "demo-order-4",
        })
        if status != 201:
            raise DemoError(f"POST /v1/invoices answered {status}: {data}")
        offers = ", ".join(f"{m['amount']} {m['asset']}" for m in data["methods"])
        out.line("api", f"POST /v1/invoices -> 201: invoice {data['id']} 20 EUR, the customer "
                        f"chooses: {offers} (no address until then)")
        out.line("checkout", f"customer's page (the method list): {data['url']}")
        path = f"/v1/invoices/{data['id']}/method"
        for asset in (TOKEN_SYMBOL, NATIVE_SYMBOL):
            status, data = await api.call("POST", path, {"network": NETWORK, "asset": asset})
            if status != 200:
                raise DemoError(f"POST {path} answered {status}: {data}")
            out.line("api", f"POST {path} {asset} -> 200: pay {data['amount']} {asset} to "
                            f"{data['to']} (rate {data['rate']} EUR/{asset})")
        self.chosen_amount = str(data["amount"])
        return str(data["id"]), str(data["to"])

    async def _show_addresses(self, api: Api) -> None:
        """What `addresses list --with-balance` shows: each derived address, its invoices,
        and what it holds (what the merchant's wallet would sweep)."""
        page = await api.get("/v1/addresses?withBalance=true")
        for a in page["data"]:
            held = ", ".join(f"{v} {k}" for k, v in a["balances"][NETWORK].items())
            states = ", ".join(i["status"] for i in a["invoices"]) or "no invoice"
            self.console.line(
                "address", f"index {a['index']} {a['address']}: {states}; holds {held}"
            )

    def _all_callbacks_received(self) -> bool:
        assert self.watch is not None and self.receiver is not None
        for invoice_id in self.invoice_ids.values():
            ids = self.watch.event_ids(invoice_id)
            if not ids or any(i not in self.receiver.received for i in ids):
                return False
        return True

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self.daemon is not None and self.daemon.failed:
                raise DemoError("the daemon stopped (see the lines above)")
            await asyncio.sleep(0.1)

    async def _until_synced(self, api: Api) -> int:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                networks = (await api.get("/v1/networks"))["data"]
                scanned = networks[0].get("scannedBlock") if networks else None
                if scanned is not None:
                    return int(scanned)
            await asyncio.sleep(0.1)

    async def _create(
        self, api: Api, asset: str, amount: str, to: str, external_id: str, plan: str
    ) -> tuple[str, str]:
        """POST /v1/invoices; (id, address). `to` "derive": the next address from the xpub."""
        body = {
            "network": NETWORK, "asset": asset, "amount": amount, "address": to,
            "ttl": INVOICE_TTL, "externalId": external_id,
        }
        status, data = await api.call("POST", "/v1/invoices", body)
        if status != 201:
            raise DemoError(f"POST /v1/invoices answered {status}: {data}")
        derived = (
            f" (derived from the xpub, index {data['derivationIndex']})"
            if data["derivationIndex"] is not None else ""
        )
        self.console.line(
            "api",
            f"POST /v1/invoices -> {status}: invoice {data['id']} {amount} {asset} "
            f"to {data['to']}{derived} (will be {plan})",
        )
        self.console.line("checkout", f"customer's page: {data['url']}")
        return str(data["id"]), str(data["to"])

    async def _pay(
        self, sender: str, to: str, asset: str, amount: str, token: str | None
    ) -> None:
        assert self.chain is not None
        if token is None:
            value = parse_amount(amount, 18)
            tx = await self.chain.aio.send_native(sender, to, value)
        else:
            value = parse_amount(amount, TOKEN_DECIMALS)
            tx = await self.chain.aio.send_token(token, sender, to, value)
        self.console.line("pay", f"customer sends {amount} {asset} to {to}: tx {tx}")
        receipt = await self.chain.aio.wait_for_receipt(tx, 15.0)
        block = int(receipt["blockNumber"], 16)
        self.console.line("chain", f"tx {tx[:10]} mined in block {block}")

    # ------------------------------------------------------------ the interactive part

    async def _open_invoice(self) -> dict[str, Any]:
        """An unpaid invoice for the browser, priced in euros."""
        assert self.api is not None
        status, data = await self.api.call("POST", "/v1/invoices", {
            "network": NETWORK, "asset": NATIVE_SYMBOL, "price": "25", "currency": "EUR",
            "address": "derive", "ttl": 600,
            "redirectUrl": "https://shop.example/thank-you",
        })
        if status != 201:
            raise DemoError(f"POST /v1/invoices answered {status}: {data}")
        status, choose = await self.api.call("POST", "/v1/invoices", {
            "methods": [{"network": NETWORK, "asset": NATIVE_SYMBOL},
                        {"network": NETWORK, "asset": TOKEN_SYMBOL}],
            "price": "25", "currency": "EUR", "title": "Your order at the demo shop",
            "ttl": 600, "redirectUrl": "https://shop.example/thank-you",
        })
        if status != 201:
            raise DemoError(f"POST /v1/invoices answered {status}: {choose}")
        self.choose_url = str(choose["url"])
        return dict(data)

    def _print_try_lines(self, inv: dict[str, Any]) -> None:
        assert self.daemon is not None and self.anvil is not None
        base = f"http://127.0.0.1:{self.daemon.port}"
        auth = shlex.quote(f"Authorization: Bearer {self.api_key}")
        split = self.invoice_ids["split"]
        payer = self.chain.accounts[3] if self.chain is not None else "0x..."
        wei = parse_amount(inv["amount"], 18)
        pay = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction",
                          "params": [{"from": payer, "to": inv["to"], "value": hex(wei)}]})
        create = json.dumps({"network": NETWORK, "asset": NATIVE_SYMBOL, "amount": "0.25",
                             "ttl": 600})
        out = self.console
        out.plain()
        out.plain(f"An invoice priced at {inv['price']} EUR waits for {inv['amount']} ETH (at "
                  f"{inv['rate']} EUR/ETH, {inv['rateSource']}). Open its checkout page:")
        out.plain(f"  {inv['url']}")
        out.plain("then pay it from another terminal and watch the page follow it live:")
        out.plain(f"  curl -s -H 'Content-Type: application/json' -d {shlex.quote(pay)} "
                  f"{self.anvil.url}")
        out.plain("Or let the customer choose how to pay (ETH or USDT, 25 EUR), switch, pay:")
        out.plain(f"  {self.choose_url}")
        out.plain()
        out.plain(f"The merchant's dashboard: {base}/dashboard (sign in with the API key "
                  f"{self.api_key})")
        out.plain()
        out.plain("The daemon keeps running (a block every second). Try, in another terminal:")
        out.plain(f"  curl -s -H {auth} {base}/v1/invoices/{split}")
        out.plain(f"  curl -s -H {auth} {base}/v1/invoices/{split}/events")
        out.plain(f"  curl -s -H {auth} '{base}/v1/invoices?status=COMPLETED'")
        out.plain(f"  curl -s -H {auth} {base}/v1/networks   # head, scanned, and its leader: "
                  "this instance (several share one PostgreSQL: docs/operations.md, section 9)")
        out.plain(f"  curl -s -H {auth} '{base}/v1/addresses?withBalance=true'")
        out.plain(f"  curl -s -H {auth} '{base}/v1/transfers?matched=true'   "
                  "# the internal transfer: \"internal\": true, its traceAddress")
        out.plain(f"  curl -s -H {auth} -H 'Content-Type: application/json' -d '{{\"from\": 1}}' "
                  f"{base}/v1/networks/{NETWORK}/rescan   # read the chain again: adds nothing")
        out.plain(f"  curl -s {base}/metrics | grep '^payment_watcher_invoice'")
        out.plain("Another invoice, at the next address derived from the xpub (its \"url\" is "
                  "its checkout page):")
        out.plain(f"  curl -s -H {auth} -H 'Content-Type: application/json' "
                  f"-d {shlex.quote(create)} {base}/v1/invoices")
        out.plain("Press Ctrl-C to stop (daemon, receiver and anvil).")
        out.plain()

    # ------------------------------------------------------------ cleanup

    async def _cleanup(self) -> None:
        stopped = []
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.api is not None:
            with contextlib.suppress(Exception):
                await self.api.close()
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.daemon.stop(), STOP_GRACE)
            stopped.append("daemon")
        if self.receiver is not None:
            with contextlib.suppress(Exception):
                await self.receiver.stop()
            stopped.append("receiver")
        if self.anvil is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.anvil.stop)
            stopped.append("anvil")
        if self.tmp is not None:
            with contextlib.suppress(Exception):
                self.tmp.cleanup()
            stopped.append("temporary database removed")
        if stopped:
            self.console.line("demo", "stopped: " + ", ".join(stopped))


def _demo_xpub() -> str:
    """The account xpub (m/44'/60'/0') of the public test mnemonic: the demo stands in for
    the merchant's wallet here; a real daemon is only ever given the xpub."""
    from bip32 import BIP32
    from eth_account.hdaccount import seed_from_mnemonic

    return str(BIP32.from_seed(seed_from_mnemonic(DEMO_MNEMONIC, "")).get_xpub_from_path(
        "m/44'/60'/0'"))


def main(*, exit_after_script: bool = False, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Run the demo; its exit code. A missing anvil prints one `error:` line and gives 2."""
    try:
        binary = find_anvil()
    except AnvilNotFound as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_NO_ANVIL

    async def go() -> int:
        demo = Demo(exit_after_script=exit_after_script, timeout=timeout, anvil_binary=binary)
        return await demo.run()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:  # before the signal handlers were in place
        return EXIT_INTERRUPTED
