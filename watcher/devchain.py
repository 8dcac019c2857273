"""A local dev chain for tests, the `demo` command and benchmarks: start `anvil`, deploy the
test ERC-20 (`TestToken`) and the `Reverter`, send payments, move time, make reorgs.

Not the hot path: `DevChain` is synchronous and built on web3. In async code, either call
it directly (each call is a short loopback request) or through `chain.aio.<method>(...)`,
which runs it in a worker thread.

    with Anvil() as node:
        chain = DevChain(node.url)
        usdt = chain.deploy_token("USDT", 6)
        chain.mint(usdt, chain.accounts[0], 1_000 * 10**6)
        tx = chain.send_token(usdt, chain.accounts[0], chain.new_account(), 5 * 10**6)
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from eth_account import Account
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

ANVIL_ENV: Final = "PAYMENT_WATCHER_ANVIL"
ANVIL_RELATIVE: Final = Path(".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
CONTRACTS_DIR: Final = Path(__file__).resolve().parent / "contracts"
ANVIL_CHAIN_ID: Final = 31337

#: Gas a TestToken `transfer` costs at most (a first transfer to a fresh address ~51k).
TOKEN_TRANSFER_GAS: Final = 70_000
NATIVE_TRANSFER_GAS: Final = 21_000
TRANSFER_SELECTOR: Final = "0xa9059cbb"  # transfer(address,uint256)

_LISTENING_RE = re.compile(r"Listening on ([0-9.]+):(\d+)")


class AnvilNotFound(RuntimeError):
    """No anvil binary: `make install` puts one in .tools/."""


class DevChainError(RuntimeError):
    """The dev chain refused a request."""


def find_anvil() -> str:
    """The anvil binary: env `PAYMENT_WATCHER_ANVIL`, else `.tools/.../bin/anvil` under the
    repo root or the current directory, else `anvil` on PATH."""
    env = os.environ.get(ANVIL_ENV)
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return env
        raise AnvilNotFound(
            f"{ANVIL_ENV}={env} is not an executable file; run `make install` "
            "(it installs anvil into .tools/) or point the variable at an anvil binary"
        )
    repo_root = Path(__file__).resolve().parent.parent
    for base in (repo_root, Path.cwd()):
        candidate = base / ANVIL_RELATIVE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("anvil")
    if on_path:
        return on_path
    raise AnvilNotFound(
        "anvil not found: run `make install` (installs anvil 1.7.1 into .tools/ with npm), "
        f"or set {ANVIL_ENV}=/path/to/anvil, or put anvil on PATH"
    )


class Anvil:
    """An anvil process on 127.0.0.1 with a free port. Use as a context manager, or call
    `start()` / `stop()`.

    `block_time` None means automine (a block per transaction); `extra_args` go to anvil
    as they are (e.g. `["--slots-in-an-epoch", "1"]`)."""

    def __init__(
        self,
        *,
        block_time: float | None = None,
        chain_id: int | None = None,
        accounts: int | None = None,
        balance: int | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.binary = binary or find_anvil()
        self.block_time = block_time
        self.chain_id = chain_id if chain_id is not None else ANVIL_CHAIN_ID
        self.accounts = accounts
        self.balance = balance
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[str] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("anvil is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        cmd = [self.binary, "--host", self.host, "--port", "0"]
        if self.block_time is not None:
            cmd += ["--block-time", f"{self.block_time:g}"]
        if self.chain_id != ANVIL_CHAIN_ID:
            cmd += ["--chain-id", str(self.chain_id)]
        if self.accounts is not None:
            cmd += ["--accounts", str(self.accounts)]
        if self.balance is not None:
            cmd += ["--balance", str(self.balance)]
        return cmd + self.extra_args

    def start(self) -> Anvil:
        if self.running:
            return self
        proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._proc = proc
        found = threading.Event()

        def drain() -> None:
            # anvil logs every request: keep reading so its pipe never fills
            assert proc.stdout is not None
            for line in proc.stdout:
                self._output.append(line.rstrip())
                if not found.is_set():
                    m = _LISTENING_RE.search(line)
                    if m:
                        self.host, self.port = m.group(1), int(m.group(2))
                        found.set()

        self._drain = threading.Thread(target=drain, name="anvil-stdout", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + self.startup_timeout
        while not found.wait(0.02):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self._output)[-15:])
                raise RuntimeError(f"anvil did not start ({' '.join(self.command())}):\n{tail}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._drain is not None:
            self._drain.join(timeout)
            self._drain = None
        if proc.stdout is not None:
            proc.stdout.close()
        self.port = 0

    def output(self) -> list[str]:
        """The last lines anvil printed (for error messages)."""
        return list(self._output)

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@functools.cache
def load_artifact(name: str) -> dict[str, Any]:
    """`abi` and `bytecode` of a shipped contract (`TestToken`, `Reverter`)."""
    with (CONTRACTS_DIR / f"{name}.json").open() as f:
        data: dict[str, Any] = json.load(f)
    return data


class _Async:
    """`chain.aio.method(...)`: the DevChain method run in a worker thread."""

    def __init__(self, chain: DevChain) -> None:
        self._chain = chain

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        fn = getattr(self._chain, name)
        if not callable(fn):
            raise AttributeError(name)

        async def run(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, *args, **kwargs)

        return run


class DevChain:
    """Drive an anvil node: accounts, contracts, payments, mining, time, snapshots, reorgs.

    Addresses are returned checksummed; tx hashes as `0x` hex strings; amounts in base
    units. With automine on, sending waits for the receipt by default (anvil answers
    `eth_sendTransaction` before the block exists); with automine off, `wait` is ignored
    (nothing is mined until `mine()`)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url
        self.provider = HTTPProvider(url, request_kwargs={"timeout": timeout})
        self.w3 = Web3(self.provider)
        self._accounts: list[str] | None = None
        self._automine: bool | None = None
        self.aio = _Async(self)

    # --- raw JSON-RPC ---

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One raw JSON-RPC call; its result. Raises `DevChainError` on an error answer."""
        answer = self.provider.make_request(RPCEndpoint(method), list(params))
        if answer.get("error") is not None:
            raise DevChainError(f"{method}: {answer['error']}")
        return answer.get("result")

    def rpc_batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several raw calls in one HTTP request (anvil runs them concurrently)."""
        if not calls:
            return []
        answers = self.provider.make_batch_request([(RPCEndpoint(m), list(p)) for m, p in calls])
        if isinstance(answers, dict):
            raise DevChainError(f"batch: {answers.get('error')}")
        results = []
        for (method, _), answer in zip(calls, answers, strict=True):
            if answer.get("error") is not None:
                raise DevChainError(f"{method}: {answer['error']}")
            results.append(answer.get("result"))
        return results

    # --- accounts and state ---

    @property
    def accounts(self) -> list[str]:
        """anvil's funded, unlocked accounts (10 by default, 10,000 ETH each)."""
        if self._accounts is None:
            self._accounts = [Web3.to_checksum_address(a) for a in self.rpc("eth_accounts")]
        return self._accounts

    @staticmethod
    def new_account() -> str:
        """A fresh random address (nobody will ever use its key)."""
        return str(Account.create().address)

    def chain_id(self) -> int:
        return int(self.rpc("eth_chainId"), 16)

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def get_block(self, number: int | str = "latest", full: bool = False) -> dict[str, Any]:
        tag = hex(number) if isinstance(number, int) else number
        block: dict[str, Any] = self.rpc("eth_getBlockByNumber", [tag, full])
        return block

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", [address, "latest"]), 16)

    def token_balance(self, token: str, address: str) -> int:
        return int(self.token(token).functions.balanceOf(address).call())

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.rpc("eth_getTransactionReceipt", [tx_hash])
        return result

    def wait_for_receipt(self, tx_hash: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.receipt(tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise DevChainError(f"no receipt for {tx_hash} within {timeout:g}s")
            time.sleep(0.005)

    def nonce(self, address: str, block: str = "pending") -> int:
        return int(self.rpc("eth_getTransactionCount", [address, block]), 16)

    # --- contracts ---

    def token(self, address: str) -> Any:
        """A web3 contract object for a TestToken at `address`."""
        abi = load_artifact("TestToken")["abi"]
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)

    def _deploy(self, name: str, args: Sequence[Any], sender: str | None) -> str:
        art = load_artifact(name)
        contract = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        data = contract.constructor(*args).data_in_transaction
        tx = {"from": sender or self.accounts[0], "data": data}
        tx_hash = self.rpc("eth_sendTransaction", [tx])
        receipt = self._settle(tx_hash, wait=True, what=f"deploy {name}")
        if receipt is None or receipt.get("contractAddress") is None:
            raise DevChainError(f"deploy {name}: not mined (is automine off? call mine())")
        return Web3.to_checksum_address(receipt["contractAddress"])

    def deploy_token(
        self,
        symbol: str = "USDT",
        decimals: int = 6,
        name: str | None = None,
        sender: str | None = None,
    ) -> str:
        """Deploy a TestToken; its address."""
        return self._deploy("TestToken", [name or f"Test {symbol}", symbol, decimals], sender)

    def deploy_reverter(self, sender: str | None = None) -> str:
        """Deploy a Reverter (every payment to it reverts); its address."""
        return self._deploy("Reverter", [], sender)

    def deploy_payout(self, sender: str | None = None) -> str:
        """Deploy a Payout (sends ETH onward by internal calls); its address."""
        return self._deploy("Payout", [], sender)

    def call_payout(
        self, payout: str, sender: str, fn: str, args: Sequence[Any], value: int,
        wait: bool = True,
    ) -> str:
        """Call `fn(*args)` of a Payout with `value` wei; the tx hash (a reverting call is
        mined with status 0)."""
        contract = self.w3.eth.contract(abi=load_artifact("Payout")["abi"])
        data = contract.encode_abi(fn, args=list(args))
        tx = {"from": sender, "to": payout, "data": data, "value": value, "gas": 300_000}
        return self.send_tx(tx, wait=wait)

    def deploy_aggregator(
        self, decimals: int = 8, description: str = "ETH / USD", sender: str | None = None
    ) -> str:
        """Deploy a TestAggregator (a Chainlink AggregatorV3 whose rounds tests set)."""
        return self._deploy("TestAggregator", [decimals, description], sender)

    def _aggregator(self, address: str) -> Any:
        abi = load_artifact("TestAggregator")["abi"]
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)

    def set_round(
        self,
        feed: str,
        answer: int,
        *,
        round_id: int = 1,
        updated_at: int = 0,
        answered_in_round: int | None = None,
    ) -> str:
        """Set a TestAggregator's latest round (`updated_at` 0: the block's timestamp)."""
        args = [round_id, answer, updated_at,
                round_id if answered_in_round is None else answered_in_round]
        data = self._aggregator(feed).encode_abi("setRound", args=args)
        return self.send_tx({"from": self.accounts[0], "to": feed, "data": data})

    def set_broken(self, feed: str, broken: bool = True) -> str:
        """Make a TestAggregator's latestRoundData revert (or answer again)."""
        data = self._aggregator(feed).encode_abi("setBroken", args=[broken])
        return self.send_tx({"from": self.accounts[0], "to": feed, "data": data})

    # --- sending ---

    @property
    def automine(self) -> bool:
        if self._automine is None:
            self._automine = bool(self.rpc("anvil_getAutomine"))
        return self._automine

    def _settle(self, tx_hash: str, *, wait: bool, what: str) -> dict[str, Any] | None:
        if not wait or not self.automine:
            return None
        return self.wait_for_receipt(tx_hash)

    def send_tx(self, tx: dict[str, Any], wait: bool = True) -> str:
        """`eth_sendTransaction` of an unlocked account; the tx hash."""
        tx_hash: str = self.rpc("eth_sendTransaction", [_jsonable_tx(tx)])
        self._settle(tx_hash, wait=wait, what="tx")
        return tx_hash

    def send_native(self, sender: str, to: str, value: int, wait: bool = True) -> str:
        """Send `value` wei; the tx hash. A payment to a Reverter is mined with status 0."""
        tx = {"from": sender, "to": to, "value": value, "gas": 100_000}
        return self.send_tx(tx, wait=wait)

    def mint(self, token: str, to: str, amount: int, wait: bool = True) -> str:
        """Mint `amount` base units of `token` to `to` (anyone may mint); the tx hash."""
        data = self.token(token).encode_abi("mint", args=[Web3.to_checksum_address(to), amount])
        return self.send_tx({"from": self.accounts[0], "to": token, "data": data}, wait=wait)

    def send_token(self, token: str, sender: str, to: str, amount: int, wait: bool = True) -> str:
        """ERC-20 `transfer` of `amount` base units; the tx hash."""
        data = self.token(token).encode_abi("transfer", args=[Web3.to_checksum_address(to), amount])
        return self.send_tx({"from": sender, "to": token, "data": data}, wait=wait)

    def batch_transfer(
        self,
        token: str,
        sender: str,
        recipients: Sequence[str],
        amounts: Sequence[int],
        wait: bool = True,
    ) -> str:
        """One tx emitting one Transfer per recipient; the tx hash."""
        data = self.token(token).encode_abi(
            "batchTransfer",
            args=[[Web3.to_checksum_address(r) for r in recipients], list(amounts)],
        )
        gas = 60_000 + 40_000 * len(recipients)
        return self.send_tx({"from": sender, "to": token, "data": data, "gas": gas}, wait=wait)

    @staticmethod
    def token_transfer_tx(token: str, sender: str, to: str, amount: int) -> dict[str, Any]:
        """The tx dict of an ERC-20 `transfer(to, amount)`, encoded by hand (fast), with
        fixed gas: for `send_many` and `reorg`."""
        data = TRANSFER_SELECTOR + to.lower().removeprefix("0x").rjust(64, "0") + f"{amount:064x}"
        return {"from": sender, "to": token, "data": data, "gas": TOKEN_TRANSFER_GAS}

    def send_many(self, txs: Iterable[dict[str, Any]], chunk: int = 200) -> list[str]:
        """Send many txs fast: explicit nonces per sender, fixed gas, JSON-RPC batches of
        `chunk`. Meant for automine off (then `mine()`); never waits for receipts. Txs
        without `gas` get 21,000 (plain) or `TOKEN_TRANSFER_GAS` (with data); anvil fills
        in the fees."""
        nonces: dict[str, int] = {}
        prepared: list[dict[str, Any]] = []
        for tx in txs:
            tx = dict(tx)
            sender = Web3.to_checksum_address(tx["from"])
            if sender not in nonces:
                nonces[sender] = self.nonce(sender)
            tx.setdefault("nonce", nonces[sender])
            nonces[sender] = int(tx["nonce"]) + 1
            tx.setdefault("gas", TOKEN_TRANSFER_GAS if tx.get("data") else NATIVE_TRANSFER_GAS)
            prepared.append(_jsonable_tx(tx))
        hashes: list[str] = []
        for start in range(0, len(prepared), chunk):
            part = prepared[start : start + chunk]
            hashes += self.rpc_batch([("eth_sendTransaction", [tx]) for tx in part])
        return hashes

    # --- mining, time, snapshots, reorgs ---

    def mine(self, n: int = 1, interval: int | None = None) -> int:
        """Mine `n` blocks (`interval` seconds apart if given); the new head number."""
        params = [hex(n)] if interval is None else [hex(n), hex(interval)]
        self.rpc("anvil_mine", params)
        return self.block_number()

    def set_automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", [enabled])
        self._automine = enabled

    def set_block_time(self, seconds: int) -> None:
        """Interval mining every `seconds`. 0 turns mining off altogether (automine too):
        call `set_automine(True)` after it to get automine back."""
        self.rpc("evm_setIntervalMining", [seconds])
        self._automine = None

    def set_next_timestamp(self, ts: int) -> None:
        """The next mined block gets timestamp `ts` (unix seconds)."""
        self.rpc("evm_setNextBlockTimestamp", [ts])

    def increase_time(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])

    def snapshot(self) -> str:
        """A snapshot id for `revert()` (single use)."""
        sid: str = self.rpc("evm_snapshot")
        return sid

    def revert(self, snapshot_id: str) -> bool:
        """Back to the snapshot (chain, balances, time); True if it existed. The mining
        mode is NOT restored: call `set_automine` again if the test changed it. A reorg
        below the snapshot's block deletes the snapshot (then `DevChainError`)."""
        ok = bool(self.rpc("evm_revert", [snapshot_id]))
        self._automine = None
        return ok

    def reorg(self, depth: int, txs: Sequence[tuple[dict[str, Any], int]] = ()) -> None:
        """Replace the last `depth` blocks with as many new ones (other hashes). `txs` are
        `(tx dict, block offset)` pairs to include in the new blocks (offset 0 = the first
        new block). Transactions of the dropped blocks are NOT re-included."""
        pairs = [[_jsonable_tx(tx), offset] for tx, offset in txs]
        self.rpc("anvil_reorg", [depth, pairs])

    def rollback(self, depth: int = 1) -> None:
        """Remove the last `depth` blocks (no replacements)."""
        self.rpc("anvil_rollback", [depth])


def _jsonable_tx(tx: dict[str, Any]) -> dict[str, Any]:
    """A tx dict for JSON-RPC: ints as hex quantities, addresses as given."""
    out: dict[str, Any] = {}
    for key, value in tx.items():
        if isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int):
            out[key] = hex(value)
        elif isinstance(value, bytes):
            out[key] = "0x" + value.hex()
        else:
            out[key] = value
    return out
