"""A scriptable, deterministic, in-memory EVM chain served as JSON-RPC over HTTP.

Why: anvil is a perfect node. Real nodes and the load-balanced providers in front of them
are not (facts checked against real nodes and providers):

- `blockTimestamp` in `eth_getLogs` results is recent (geth 1.16, mid-2025; Erigon and Besu
  late 2025); BSC, Polygon, Avalanche and many provider nodes omit it;
- a load balancer routes the calls of one pass to different backends: a head from one, an
  empty `eth_getLogs` for "blocks it does not have yet" from another, a `null` block for a
  number that was just announced;
- providers cap `eth_getLogs` by result size or block range, each with its own error shape
  (-32005, -32602, -32000, HTTP 413), and one busy block alone may exceed the cap;
- HTTP 429/503 with `Retry-After`; slow or stuck answers;
- reorgs happen while a follower is behind or stopped, up to the confirmation depth.

`ChainModel` is the chain (pure Python, no I/O): blocks of `NativeTx` / `TokenTx` (an
ERC-20 `Transfer` log each), hashes, `logsBloom`, receipts, reorgs, and the history of
canonical versions (every `mine` or `reorg` is one mutation that appends a `ChainVersion`),
so a "lagging backend" can answer from the chain as it was some mutations ago. Its quirk
attributes (`omit_block_timestamp`, `stale`, `null_announced`, `log_cap`/`cap_style`,
`max_range`, `http_errors`) can be changed by a test at any moment; `handle()` answers a
decoded JSON-RPC payload and counts the calls in `calls`.

`ChainServer` serves a model on 127.0.0.1 (free port) with aiohttp: single calls and
batches, HTTP errors from `model.http_errors`, and `pause()` / `resume()` to hold requests
open. Tests point the real `RpcClient` / follower at `srv.url`.

Everything is deterministic: hashes are keccak of a per-model serial number and the
contents, so the same script gives the same hashes; a block replaced in a reorg gets a new
hash even with the same contents; a transaction keeps its hash (stored on the tx object at
its first inclusion) when a reorg re-includes it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web
from eth_bloom.bloom import BloomFilter
from eth_hash.auto import keccak

__all__ = [
    "CAP_STYLES",
    "FINALIZED_DEPTH",
    "SAFE_DEPTH",
    "TRANSFER_TOPIC",
    "ZERO_BLOOM",
    "Block",
    "ChainModel",
    "ChainServer",
    "ChainVersion",
    "HttpAnswer",
    "Log",
    "NativeTx",
    "RpcErrorAnswer",
    "TokenTx",
    "Tx",
    "pad_address",
]

TRANSFER_TOPIC: Final = "0x" + keccak(b"Transfer(address,address,uint256)").hex()
#: `transfer(address,uint256)` selector (calldata of a `TokenTx`).
TRANSFER_SELECTOR: Final = "a9059cbb"
ZERO_HASH: Final = "0x" + "00" * 32
ZERO_BLOOM: Final = "0x" + "00" * 256
EMPTY_UNCLES: Final = "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"
MINER: Final = "0x" + "00" * 18 + "c0de"
SAFE_DEPTH: Final = 32
FINALIZED_DEPTH: Final = 64
GAS_LIMIT: Final = 30_000_000
BASE_FEE: Final = 1_000_000_000
NATIVE_GAS: Final = 21_000
TOKEN_GAS: Final = 51_000
CAP_STYLES: Final = ("infura", "alchemy", "geth", "http413")

_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH_RE = re.compile(r"0x[0-9a-fA-F]{64}")


def _address(value: str) -> str:
    if not isinstance(value, str) or _ADDRESS_RE.fullmatch(value) is None:
        raise ValueError(f"not an address: {value!r}")
    return value.lower()


def pad_address(address: str) -> str:
    """The 32-byte topic of an address (left-padded, lower-case)."""
    return "0x" + "00" * 12 + _address(address)[2:]


def _word(n: int) -> str:
    return n.to_bytes(32, "big").hex()


def _keccak_hex(*parts: object) -> str:
    return "0x" + keccak("|".join(map(str, parts)).encode()).hex()


# --- transactions ------------------------------------------------------------------------


@dataclass(eq=False)
class NativeTx:
    """A plain value transfer. `success=False`: reverted (receipt status 0x0, nothing moved,
    the block still shows the value). `hash` is assigned at first inclusion (or given)."""

    sender: str
    to: str
    value: int
    success: bool = True
    hash: str | None = None

    def __post_init__(self) -> None:
        self.sender = _address(self.sender)
        self.to = _address(self.to)


@dataclass(eq=False)
class TokenTx:
    """A call of `token.transfer(to, amount)` by `sender`: value 0, one ERC-20 `Transfer`
    log (none when `success=False`). `hash` is assigned at first inclusion (or given)."""

    token: str
    sender: str
    to: str
    amount: int
    success: bool = True
    hash: str | None = None

    def __post_init__(self) -> None:
        self.token = _address(self.token)
        self.sender = _address(self.sender)
        self.to = _address(self.to)
        if not 0 <= self.amount < 2**256:
            raise ValueError(f"amount out of uint256 range: {self.amount}")


Tx = NativeTx | TokenTx


# --- blocks ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Log:
    address: str
    topics: tuple[str, ...]
    data: str
    tx_hash: str
    tx_index: int
    log_index: int  # block-wide


@dataclass(frozen=True, eq=False)
class Block:
    """An immutable block; equality is identity (two blocks never share a hash)."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int
    txs: tuple[Tx, ...]
    tx_hashes: tuple[str, ...]
    nonces: tuple[int, ...]
    logs: tuple[Log, ...]
    logs_bloom: str

    @property
    def gas_used(self) -> int:
        return sum(_gas(tx) for tx in self.txs)


def _gas(tx: Tx) -> int:
    return NATIVE_GAS if isinstance(tx, NativeTx) else TOKEN_GAS


def _bloom(logs: Iterable[Log]) -> str:
    bloom = BloomFilter()
    empty = True
    for lg in logs:
        empty = False
        bloom.add(bytes.fromhex(lg.address[2:]))
        for topic in lg.topics:
            bloom.add(bytes.fromhex(topic[2:]))
    if empty:
        return ZERO_BLOOM
    return "0x" + int(bloom).to_bytes(256, "big").hex()


@dataclass(frozen=True, eq=False)
class ChainVersion:
    """The canonical chain after one mutation: the first `length` blocks of `seq` (a list
    the model only ever appends to; a reorg starts a new list)."""

    seq: list[Block]
    length: int

    @property
    def head(self) -> Block:
        return self.seq[self.length - 1]

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(self.seq[: self.length])

    def block(self, number: int) -> Block | None:
        return self.seq[number] if 0 <= number < self.length else None

    def has(self, block: Block) -> bool:
        """Is `block` canonical in this version?"""
        return block.number < self.length and self.seq[block.number] is block

    def __len__(self) -> int:
        return self.length


# --- answers that are not results ---------------------------------------------------------


class RpcErrorAnswer(Exception):
    """A JSON-RPC error object for one call."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class HttpAnswer(Exception):
    """The whole HTTP request is answered with this status and plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


_Handler = Callable[[ChainVersion, list[Any]], Any]


# --- the model ---------------------------------------------------------------------------


class ChainModel:
    """An in-memory chain with scriptable node quirks. Block 0 (genesis) exists.

    Quirk attributes (change at any moment):

    - `omit_block_timestamp`: logs carry no `blockTimestamp`;
    - `stale`: method -> (versions_back, every_n): every n-th call of that method is answered
      from the chain as it was `versions_back` mutations ago;
    - `null_announced` / `null_times`: a block among the newest `null_announced` of the
      answering version, asked by number (eth_getBlockByNumber, eth_getBlockReceipts) or by
      hash (eth_getLogs blockHash, eth_getBlockReceipts), answers null / "unknown block" the
      first `null_times` times per (number, hash);
    - `log_cap` + `cap_style` ("infura", "alchemy", "geth", "http413"): more matching logs
      than `log_cap` answers that provider's refusal;
    - `max_range`: an eth_getLogs over more blocks answers -32602 "... range too large";
    - `http_errors`: (status, retry_after) answered to the next HTTP requests, one each;
    - `unsupported_tags`: block tags ("safe", "finalized") the node refuses, as a pre-merge
      geth does;
    - `lost_logs`: every eth_getLogs answers `[]` (a node that lost its log index);
    - `history_from`: blocks below it are gone (history expiry): asked by number, null.
    """

    def __init__(
        self,
        chain_id: int = 31337,
        genesis_time: int = 1_700_000_000,
        block_time: int = 12,
        *,
        max_history: int = 4096,
    ) -> None:
        self.chain_id = chain_id
        self.genesis_time = genesis_time
        self.block_time = block_time
        self.max_history = max_history
        # quirks
        self.omit_block_timestamp = False
        self.stale: dict[str, tuple[int, int]] = {}
        self.null_announced = 0
        self.null_times = 1
        self.log_cap: int | None = None
        self.cap_style = "infura"
        self.max_range: int | None = None
        #: a batch longer than this is refused whole (providers cap batches; the answer
        #: is one error object, as Infura's)
        self.max_batch: int | None = None
        self.http_errors: collections.deque[tuple[int, float | None]] = collections.deque()
        self.unsupported_tags: set[str] = set()
        self.lost_logs = False
        self.history_from = 0
        self.calls: collections.Counter[str] = collections.Counter()
        #: the `topics` of every eth_getLogs, and how many logs they were answered
        self.log_filters: list[list[Any]] = []
        self.logs_served = 0
        # state
        self.history: list[ChainVersion] = []
        self.mutations = 0  # total, also counts versions dropped from `history`
        self._serial = itertools.count()
        self._seq: list[Block] = []
        self._by_hash: dict[str, Block] = {}
        self._tx_blocks: dict[str, list[Block]] = {}
        self._tx_nonce: dict[str, int] = {}
        self._next_nonce: collections.Counter[str] = collections.Counter()
        self._stale_count: collections.Counter[str] = collections.Counter()
        self._null_seen: collections.Counter[tuple[int, str]] = collections.Counter()
        self._seq.append(self._make_block(0, ZERO_HASH, genesis_time, ()))
        self._snapshot()
        self._methods: dict[str, _Handler] = {
            "eth_chainId": lambda v, p: hex(self.chain_id),
            "net_version": lambda v, p: str(self.chain_id),
            "eth_blockNumber": lambda v, p: hex(v.head.number),
            "eth_syncing": lambda v, p: False,
            "web3_clientVersion": lambda v, p: "chainmodel/1.0",
            "eth_getBlockByNumber": self._rpc_block_by_number,
            "eth_getBlockByHash": self._rpc_block_by_hash,
            "eth_getLogs": self._rpc_logs,
            "eth_getTransactionReceipt": self._rpc_receipt,
            "eth_getTransactionByHash": self._rpc_tx_by_hash,
            "eth_getBlockReceipts": self._rpc_block_receipts,
        }

    # ------------------------------------------------------------------ chain building

    @property
    def head(self) -> Block:
        return self._seq[-1]

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(self._seq)

    def block(self, number: int) -> Block:
        """The canonical block `number` (IndexError if there is none)."""
        if not 0 <= number < len(self._seq):
            raise IndexError(f"no block {number} (head {self.head.number})")
        return self._seq[number]

    def block_by_hash(self, block_hash: str) -> Block | None:
        """Any block ever made (canonical or reorged away) by hash."""
        return self._by_hash.get(block_hash.lower())

    def tx_block(self, tx: Tx | str) -> Block | None:
        """The canonical block holding a transaction (object or hash), if any."""
        tx_hash = tx if isinstance(tx, str) else tx.hash
        if tx_hash is None:
            return None
        return self._canonical_tx_block(self.version(), tx_hash.lower())

    def version(self, back: int = 0) -> ChainVersion:
        """The canonical chain as it was `back` mutations ago (clamped to the oldest kept)."""
        return self.history[max(0, len(self.history) - 1 - max(0, back))]

    def mine(self, txs: Iterable[Tx] = (), timestamp: int | None = None) -> Block:
        """Append one block (one mutation)."""
        parent = self.head
        ts = parent.timestamp + self.block_time if timestamp is None else timestamp
        block = self._make_block(parent.number + 1, parent.hash, ts, tuple(txs))
        self._seq.append(block)
        self._snapshot()
        return block

    def mine_empty(self, n: int) -> list[Block]:
        """`n` empty blocks (n mutations)."""
        return [self.mine() for _ in range(n)]

    def reorg(
        self,
        depth: int,
        blocks: Sequence[Iterable[Tx]],
        timestamps: Sequence[int | None] | None = None,
    ) -> list[Block]:
        """Drop the newest `depth` blocks and append one new block per entry of `blocks`
        (fewer or more than `depth`), all as ONE mutation. Transactions of the dropped
        blocks may be re-included: they keep their hashes."""
        if not 0 <= depth <= self.head.number:
            raise ValueError(f"reorg depth {depth} with head {self.head.number}")
        if timestamps is not None and len(timestamps) != len(blocks):
            raise ValueError("timestamps and blocks differ in length")
        seq = self._seq[: len(self._seq) - depth]  # a new list: older versions keep theirs
        self._seq = seq
        made: list[Block] = []
        for i, txs in enumerate(blocks):
            parent = seq[-1]
            ts = timestamps[i] if timestamps is not None else None
            if ts is None:
                ts = parent.timestamp + self.block_time
            block = self._make_block(parent.number + 1, parent.hash, ts, tuple(txs))
            seq.append(block)
            made.append(block)
        self._snapshot()
        return made

    def _snapshot(self) -> None:
        self.history.append(ChainVersion(self._seq, len(self._seq)))
        self.mutations += 1
        if len(self.history) > self.max_history:
            del self.history[: len(self.history) - self.max_history]

    def _assign_hash(self, tx: Tx) -> str:
        if tx.hash is None:
            if isinstance(tx, NativeTx):
                content: tuple[object, ...] = ("native", tx.sender, tx.to, tx.value, tx.success)
            else:
                content = ("token", tx.token, tx.sender, tx.to, tx.amount, tx.success)
            tx.hash = _keccak_hex("tx", self.chain_id, next(self._serial), *content)
        elif _HASH_RE.fullmatch(tx.hash) is None:
            raise ValueError(f"not a tx hash: {tx.hash!r}")
        tx.hash = tx.hash.lower()
        if tx.hash not in self._tx_nonce:
            self._tx_nonce[tx.hash] = self._next_nonce[tx.sender]
            self._next_nonce[tx.sender] += 1
        return tx.hash

    def _make_block(
        self, number: int, parent_hash: str, timestamp: int, txs: tuple[Tx, ...]
    ) -> Block:
        hashes: list[str] = []
        logs: list[Log] = []
        current = ChainVersion(self._seq, len(self._seq))
        for i, tx in enumerate(txs):
            h = self._assign_hash(tx)
            if h in hashes or self._canonical_tx_block(current, h) is not None:
                raise ValueError(f"transaction {h} is already in the canonical chain")
            hashes.append(h)
            if isinstance(tx, TokenTx) and tx.success:
                logs.append(
                    Log(
                        address=tx.token,
                        topics=(TRANSFER_TOPIC, pad_address(tx.sender), pad_address(tx.to)),
                        data="0x" + _word(tx.amount),
                        tx_hash=h,
                        tx_index=i,
                        log_index=len(logs),
                    )
                )
        block_hash = _keccak_hex(
            "block", self.chain_id, next(self._serial), number, parent_hash, timestamp, *hashes
        )
        block = Block(
            number=number,
            hash=block_hash,
            parent_hash=parent_hash,
            timestamp=timestamp,
            txs=txs,
            tx_hashes=tuple(hashes),
            nonces=tuple(self._tx_nonce[h] for h in hashes),
            logs=tuple(logs),
            logs_bloom=_bloom(logs),
        )
        self._by_hash[block_hash] = block
        for h in hashes:
            self._tx_blocks.setdefault(h, []).append(block)
        return block

    def _canonical_tx_block(self, view: ChainVersion, tx_hash: str) -> Block | None:
        for b in reversed(self._tx_blocks.get(tx_hash, ())):
            if view.has(b):
                return b
        return None

    # ------------------------------------------------------------------ JSON-RPC

    def reset_calls(self) -> None:
        self.calls.clear()
        self.log_filters.clear()
        self.logs_served = 0

    def handle(self, payload: Any) -> Any:
        """The JSON-RPC answer to a decoded payload (one call or a batch). Raises
        `HttpAnswer` when the whole HTTP request must be answered otherwise (HTTP 413)."""
        if isinstance(payload, list):
            if not payload:
                return _error_obj(None, RpcErrorAnswer(-32600, "empty batch"))
            if self.max_batch is not None and len(payload) > self.max_batch:
                return _error_obj(None, RpcErrorAnswer(-32005, "batch size too large"))
            return [self.handle_one(item) for item in payload]
        return self.handle_one(payload)

    def handle_one(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error_obj(None, RpcErrorAnswer(-32600, "invalid request"))
        req_id = request.get("id")
        method: str = request["method"]
        params = request.get("params")
        if params is None:
            params = []
        self.calls[method] += 1
        handler = self._methods.get(method)
        try:
            if handler is None:
                raise RpcErrorAnswer(
                    -32601, f"the method {method} does not exist/is not available"
                )
            if not isinstance(params, list):
                raise RpcErrorAnswer(-32602, "invalid params: expected an array")
            result = handler(self._view_for(method), params)
        except RpcErrorAnswer as err:
            return _error_obj(req_id, err)
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    def _view_for(self, method: str) -> ChainVersion:
        rule = self.stale.get(method)
        if rule is not None:
            back, every = rule
            self._stale_count[method] += 1
            if every >= 1 and self._stale_count[method] % every == 0:
                return self.version(back)
        return self.version()

    def _withheld(self, view: ChainVersion, block: Block) -> bool:
        """`null_announced`: is this (just announced) block not served this time?"""
        if self.null_announced <= 0 or block.number <= view.head.number - self.null_announced:
            return False
        key = (block.number, block.hash)
        if self._null_seen[key] >= self.null_times:
            return False
        self._null_seen[key] += 1
        return True

    # --- parameters

    @staticmethod
    def _number(view: ChainVersion, arg: Any, position: int = 0) -> int:
        head = view.head.number
        if arg in ("latest", "pending"):
            return head
        if arg == "earliest":
            return 0
        if arg == "safe":
            return max(0, head - SAFE_DEPTH)
        if arg == "finalized":
            return max(0, head - FINALIZED_DEPTH)
        if isinstance(arg, int) and not isinstance(arg, bool) and arg >= 0:
            return arg
        if isinstance(arg, str) and arg[:2] in ("0x", "0X"):
            try:
                return int(arg, 16)
            except ValueError:
                pass
        raise RpcErrorAnswer(-32602, f"invalid argument {position}: bad block number {arg!r}")

    def _by_block_arg(self, view: ChainVersion, arg: Any) -> Block | None:
        """A block by number/tag or by hash (a 32-byte hex, or EIP-1898 `{blockHash}` /
        `{blockNumber}`), canonical in `view`, subject to `null_announced`."""
        if isinstance(arg, dict):
            arg = arg.get("blockHash", arg.get("blockNumber"))
        if isinstance(arg, str) and _HASH_RE.fullmatch(arg):
            block = self._by_hash.get(arg.lower())
            if block is None or not view.has(block):
                return None
        else:
            is_tag = arg in ("latest", "pending", "earliest", "safe", "finalized")
            block = view.block(self._number(view, arg))
            if block is None or is_tag:
                return block
        return None if self._withheld(view, block) else block

    # --- JSON shapes

    def _block_json(self, block: Block, full: bool) -> dict[str, Any]:
        txs: list[Any]
        if full:
            txs = [self._tx_json(block, i) for i in range(len(block.txs))]
        else:
            txs = list(block.tx_hashes)
        return {
            "number": hex(block.number),
            "hash": block.hash,
            "parentHash": block.parent_hash,
            "nonce": "0x0000000000000000",
            "mixHash": _keccak_hex("mix", block.hash),
            "sha3Uncles": EMPTY_UNCLES,
            "logsBloom": block.logs_bloom,
            "transactionsRoot": _keccak_hex("txroot", *block.tx_hashes),
            "stateRoot": _keccak_hex("state", block.hash),
            "receiptsRoot": _keccak_hex("receipts", block.hash),
            "miner": MINER,
            "difficulty": "0x0",
            "totalDifficulty": "0x0",
            "extraData": "0x",
            "size": hex(600 + 110 * len(block.txs)),
            "gasLimit": hex(GAS_LIMIT),
            "gasUsed": hex(block.gas_used),
            "timestamp": hex(block.timestamp),
            "baseFeePerGas": hex(BASE_FEE),
            "withdrawals": [],
            "withdrawalsRoot": _keccak_hex("withdrawals"),
            "transactions": txs,
            "uncles": [],
        }

    def _tx_json(self, block: Block, index: int) -> dict[str, Any]:
        tx = block.txs[index]
        if isinstance(tx, NativeTx):
            to, value, data = tx.to, tx.value, "0x"
        else:
            to, value = tx.token, 0
            data = "0x" + TRANSFER_SELECTOR + _word(int(tx.to, 16)) + _word(tx.amount)
        return {
            "hash": block.tx_hashes[index],
            "nonce": hex(block.nonces[index]),
            "blockHash": block.hash,
            "blockNumber": hex(block.number),
            "transactionIndex": hex(index),
            "from": tx.sender,
            "to": to,
            "value": hex(value),
            "gas": hex(_gas(tx) + 10_000),
            "gasPrice": hex(BASE_FEE + 1),
            "maxFeePerGas": hex(2 * BASE_FEE),
            "maxPriorityFeePerGas": "0x1",
            "input": data,
            "type": "0x2",
            "chainId": hex(self.chain_id),
            "accessList": [],
            "v": "0x0",
            "yParity": "0x0",
            "r": _keccak_hex("r", block.tx_hashes[index]),
            "s": _keccak_hex("s", block.tx_hashes[index]),
        }

    def _log_json(self, block: Block, lg: Log) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": lg.address,
            "topics": list(lg.topics),
            "data": lg.data,
            "blockNumber": hex(block.number),
            "blockHash": block.hash,
        }
        if not self.omit_block_timestamp:
            out["blockTimestamp"] = hex(block.timestamp)
        out.update(
            {
                "transactionHash": lg.tx_hash,
                "transactionIndex": hex(lg.tx_index),
                "logIndex": hex(lg.log_index),
                "removed": False,
            }
        )
        return out

    def _receipt_json(self, block: Block, index: int) -> dict[str, Any]:
        tx = block.txs[index]
        logs = [lg for lg in block.logs if lg.tx_index == index]
        cumulative = sum(_gas(t) for t in block.txs[: index + 1])
        return {
            "transactionHash": block.tx_hashes[index],
            "transactionIndex": hex(index),
            "blockHash": block.hash,
            "blockNumber": hex(block.number),
            "from": tx.sender,
            "to": tx.to if isinstance(tx, NativeTx) else tx.token,
            "cumulativeGasUsed": hex(cumulative),
            "gasUsed": hex(_gas(tx)),
            "effectiveGasPrice": hex(BASE_FEE + 1),
            "contractAddress": None,
            "logs": [self._log_json(block, lg) for lg in logs],
            "logsBloom": _bloom(logs),
            "status": "0x1" if tx.success else "0x0",
            "type": "0x2",
        }

    # --- methods

    def _rpc_block_by_number(self, view: ChainVersion, params: list[Any]) -> Any:
        if not params:
            raise RpcErrorAnswer(-32602, "missing value for required argument 0")
        if params[0] in self.unsupported_tags:
            raise RpcErrorAnswer(-32000, f"'{params[0]}' tag not supported on pre-merge network")
        block = self._by_block_arg(view, params[0])
        if block is not None and block.number < self.history_from:
            return None
        full = bool(params[1]) if len(params) > 1 else False
        return None if block is None else self._block_json(block, full)

    def _rpc_block_by_hash(self, view: ChainVersion, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], str):
            raise RpcErrorAnswer(-32602, "missing value for required argument 0")
        block = self._by_hash.get(params[0].lower())
        if block is None or not view.has(block):
            return None
        return self._block_json(block, bool(params[1]) if len(params) > 1 else False)

    def _rpc_tx_by_hash(self, view: ChainVersion, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], str):
            raise RpcErrorAnswer(-32602, "missing value for required argument 0")
        block = self._canonical_tx_block(view, params[0].lower())
        if block is None:
            return None
        return self._tx_json(block, block.tx_hashes.index(params[0].lower()))

    def _rpc_receipt(self, view: ChainVersion, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], str):
            raise RpcErrorAnswer(-32602, "missing value for required argument 0")
        block = self._canonical_tx_block(view, params[0].lower())
        if block is None:
            return None
        return self._receipt_json(block, block.tx_hashes.index(params[0].lower()))

    def _rpc_block_receipts(self, view: ChainVersion, params: list[Any]) -> Any:
        if not params:
            raise RpcErrorAnswer(-32602, "missing value for required argument 0")
        block = self._by_block_arg(view, params[0])
        if block is None:
            return None
        return [self._receipt_json(block, i) for i in range(len(block.txs))]

    def _rpc_logs(self, view: ChainVersion, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], dict):
            raise RpcErrorAnswer(-32602, "invalid argument 0: expected a filter object")
        flt: dict[str, Any] = params[0]
        self.log_filters.append(list(flt.get("topics") or []))
        if self.lost_logs:
            return []
        addresses = _address_set(flt.get("address"))
        topics = _topic_sets(flt.get("topics"))
        blocks: list[Block]
        if flt.get("blockHash") is not None:
            if flt.get("fromBlock") is not None or flt.get("toBlock") is not None:
                raise RpcErrorAnswer(
                    -32602,
                    "invalid argument 0: cannot specify both BlockHash and FromBlock/ToBlock, "
                    "choose one or the other",
                )
            block = self._by_hash.get(str(flt["blockHash"]).lower())
            if block is None or not view.has(block) or self._withheld(view, block):
                raise RpcErrorAnswer(-32000, "unknown block")
            blocks = [block]
            lo = block.number
        else:
            lo = self._number(view, flt.get("fromBlock") or "latest")
            hi = self._number(view, flt.get("toBlock") or "latest")
            if lo > hi:
                return []
            if self.max_range is not None and hi - lo + 1 > self.max_range:
                raise RpcErrorAnswer(
                    -32602,
                    f"eth_getLogs block range too large, range: {hi - lo + 1}, "
                    f"max: {self.max_range}",
                )
            blocks = [view.seq[n] for n in range(lo, min(hi, view.head.number) + 1)]
        per_block = [
            (b, [lg for lg in b.logs if _matches(lg, addresses, topics)]) for b in blocks
        ]
        total = sum(len(found) for _, found in per_block)
        if self.log_cap is not None and total > self.log_cap:
            raise self._cap_refusal(lo, per_block, self.log_cap)
        served = [self._log_json(b, lg) for b, found in per_block for lg in found]
        self.logs_served += len(served)
        return served

    def _cap_refusal(
        self, lo: int, per_block: list[tuple[Block, list[Log]]], cap: int
    ) -> Exception:
        end, total = lo, 0
        for b, found in per_block:
            if total + len(found) > cap:
                break
            total += len(found)
            end = b.number
        style = self.cap_style
        if style == "infura":
            return RpcErrorAnswer(
                -32005,
                "query returned more than 10000 results",
                {"from": hex(lo), "to": hex(end), "limit": 10000},
            )
        if style == "alchemy":
            return RpcErrorAnswer(
                -32602,
                "Log response size exceeded. You can make eth_getLogs requests with up to a 2K "
                "block range and no limit on the response size, or you can request any block "
                "range with a cap of 10K logs in the response. Based on your parameters, this "
                f"block range should work: [{hex(lo)}, {hex(end)}]",
            )
        if style == "geth":
            return RpcErrorAnswer(-32000, "query limit exceeded")
        if style == "http413":
            return HttpAnswer(413, "413 Request Entity Too Large")
        raise ValueError(f"unknown cap_style {style!r}; one of {CAP_STYLES}")


def _error_obj(req_id: Any, err: RpcErrorAnswer) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": err.to_json()}


def _address_set(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
        raise RpcErrorAnswer(-32602, "invalid argument 0: bad address filter")
    return frozenset(a.lower() for a in items) if items else None


def _topic_sets(value: Any) -> list[frozenset[str] | None]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RpcErrorAnswer(-32602, "invalid argument 0: bad topics filter")
    out: list[frozenset[str] | None] = []
    for pos in value:
        if pos is None or (isinstance(pos, list) and (not pos or None in pos)):
            out.append(None)
        elif isinstance(pos, str):
            out.append(frozenset([pos.lower()]))
        elif isinstance(pos, list) and all(isinstance(t, str) for t in pos):
            out.append(frozenset(t.lower() for t in pos))
        else:
            raise RpcErrorAnswer(-32602, "invalid argument 0: bad topics filter")
    return out


def _matches(
    lg: Log, addresses: frozenset[str] | None, topics: list[frozenset[str] | None]
) -> bool:
    if addresses is not None and lg.address not in addresses:
        return False
    for i, wanted in enumerate(topics):
        if wanted is None:
            continue
        if i >= len(lg.topics) or lg.topics[i] not in wanted:
            return False
    return True


# --- the server --------------------------------------------------------------------------


class ChainServer:
    """Serves a `ChainModel` as JSON-RPC over HTTP on 127.0.0.1 (a free port): `url`.
    `pause()` holds every new request open until `resume()`; `requests` counts HTTP
    requests."""

    def __init__(self, model: ChainModel, host: str = "127.0.0.1", port: int = 0) -> None:
        self.model = model
        self.host = host
        self.port = port
        self.url = ""
        self.requests = 0
        self.waiting = 0  # requests held by pause() right now
        self._open = asyncio.Event()
        self._open.set()
        self._runner: web.AppRunner | None = None

    async def start(self) -> ChainServer:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        self.resume()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> ChainServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if not self._open.is_set():
            self.waiting += 1
            try:
                await self._open.wait()
            finally:
                self.waiting -= 1
        raw = await request.read()
        if self.model.http_errors:
            status, retry_after = self.model.http_errors.popleft()
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            reason = "Too Many Requests" if status == 429 else "Service Unavailable"
            return web.Response(status=status, text=f"{status} {reason}", headers=headers)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer: Any = _error_obj(None, RpcErrorAnswer(-32700, "parse error"))
        else:
            try:
                answer = self.model.handle(payload)
            except HttpAnswer as http:
                return web.Response(status=http.status, text=http.text)
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
