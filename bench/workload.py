"""Workloads for the benchmarks: a chain of N blocks x K transactions on anvil (mixed native
and ERC-20 transfers, a share of them paying watched invoices) and a database pre-filled
with W open invoices.

Transactions are sent with explicit nonces while automine is off, then each block is mined
with `evm_mine`, so every block holds exactly K transactions. Invoices go straight into
SQLite through `watcher.storage.rows` (one transaction, `executemany`): the HTTP API is only
used where its speed is the figure measured (creates/s).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher import timeutil
from watcher.devchain import Anvil, DevChain
from watcher.models import Invoice, Status
from watcher.storage.rows import invoice_row
from watcher.storage.sqlite import connect

NET = "anvil"
CHAIN_ID = 31337
TOKEN_DECIMALS = 6
NATIVE_AMOUNT = 10**15  # 0.001 ETH per native invoice
TOKEN_AMOUNT = 5 * 10**6  # 5 USDT per token invoice
#: anvil accounts sending the workload (each holds ETH and is minted tokens)
SENDERS = 8


def payment_tx(
    sender: str, to: str, native: bool, token: str, nonces: dict[str, int]
) -> dict[str, Any]:
    """One workload transfer (ETH or the token's fixed amount) with the sender's next
    explicit nonce (anvil runs a batch concurrently)."""
    if native:
        tx = {"from": sender, "to": to, "value": hex(NATIVE_AMOUNT), "gas": hex(21_000)}
    else:
        t = DevChain.token_transfer_tx(token, sender, to, TOKEN_AMOUNT)
        tx = {**t, "gas": hex(t["gas"])}
    tx["nonce"] = hex(nonces[sender])
    nonces[sender] += 1
    return tx


def invoice_address(kind: str, n: int) -> str:
    """The dedicated address of invoice `n` (`kind` "eth" or "tok"): deterministic, so the
    chain and the database agree without talking to each other."""
    prefix = "e0" if kind == "eth" else "70"
    return "0x" + prefix + f"{n:038x}"


@dataclass(slots=True)
class Chain:
    node: Anvil
    dev: DevChain
    token: str
    first: int  # first workload block
    last: int  # last workload block
    txs: int = 0
    paid: dict[str, int] = field(default_factory=dict)  # invoices paid: kind -> count

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1


def start_chain(block_time: int | None = None) -> tuple[Anvil, DevChain, str]:
    """anvil with the test token deployed and minted to the senders (and to one more
    account), then mining every `block_time` seconds if given (`--block-time` behaviour,
    set after the deploy so it can be waited for)."""
    node = Anvil(accounts=SENDERS + 2).start()
    try:
        dev = DevChain(node.url)
        token = dev.deploy_token("USDT", TOKEN_DECIMALS)
        for a in dev.accounts[: SENDERS + 1]:
            dev.mint(token, a, 10**9 * 10**TOKEN_DECIMALS)
        if block_time is not None:
            dev.set_block_time(block_time)
    except BaseException:
        node.stop()
        raise
    return node, dev, token


def build_chain(
    blocks: int,
    per_block: int,
    *,
    watched: int,
    native_share: float = 0.5,
    paid_share: float = 0.1,
    seed: int = 7,
) -> Chain:
    """Start anvil and mine `blocks` blocks of `per_block` transfers each. Half (by
    `native_share`) are native, the rest ERC-20 `transfer`s; `paid_share` of them pay a
    watched invoice (one of the first `watched` of each kind), the rest go to addresses
    nobody watches."""
    node, dev, token = start_chain()
    try:
        return _mine_workload(node, dev, token, blocks, per_block, watched=watched,
                              native_share=native_share, paid_share=paid_share, seed=seed)
    except BaseException:
        node.stop()
        raise


def _mine_workload(
    node: Anvil, dev: DevChain, token: str, blocks: int, per_block: int, *, watched: int,
    native_share: float, paid_share: float, seed: int,
) -> Chain:
    first = dev.block_number() + 1
    chain = Chain(node, dev, token, first, first + blocks - 1, paid={"eth": 0, "tok": 0})
    next_paid = {"eth": 0, "tok": 0}
    chain.paid = mine_blocks(dev, token, blocks, per_block, native_share=native_share,
                             paid_share=paid_share, next_paid=next_paid, watched=watched,
                             seed=seed)
    chain.txs = blocks * per_block
    head = dev.block_number()
    assert head == chain.last, (head, chain.last)
    return chain


def mine_blocks(
    dev: DevChain, token: str, blocks: int, per_block: int, *, native_share: float,
    paid_share: float, next_paid: dict[str, int], watched: int | None = None, seed: int = 7,
) -> dict[str, int]:
    """Mine `blocks` blocks of exactly `per_block` transfers each (automine off, explicit
    nonces, one `evm_mine` per block): `native_share` of them native, the rest USDT;
    `paid_share` of them pay the next never-paid prefilled invoice of their kind
    (`next_paid` moves on, up to `watched` of each kind), the rest go to addresses nobody
    watches. Returns how many invoices of each kind were paid."""
    rnd = random.Random(seed)
    dev.set_automine(False)
    senders = dev.accounts[:SENDERS]
    nonces = {a: dev.nonce(a) for a in senders}
    paid = {"eth": 0, "tok": 0}
    for _ in range(blocks):
        calls = []
        for _k in range(per_block):
            sender = senders[rnd.randrange(SENDERS)]
            native = rnd.random() < native_share
            kind = "eth" if native else "tok"
            if rnd.random() < paid_share and (watched is None or next_paid[kind] < watched):
                to = invoice_address(kind, next_paid[kind])
                next_paid[kind] += 1
                paid[kind] += 1
            else:
                to = "0x" + rnd.randbytes(20).hex()
            calls.append(("eth_sendTransaction", [payment_tx(sender, to, native, token, nonces)]))
        dev.rpc_batch(calls)
        dev.rpc("evm_mine")
    return paid


def prefill(
    path: Path, *, native: int, tokens: int, token: str | None, ttl: int = 7 * 86400,
    callback_url: str | None = None,
) -> float:
    """A database with `native` ETH and `tokens` USDT invoices, all PENDING on dedicated
    addresses. Returns the seconds it took."""
    started = time.perf_counter()
    db = connect(path)
    now = timeutil.now()
    rows = []
    for kind, count in (("eth", native), ("tok", tokens)):
        for n in range(count):
            inv = Invoice(
                id=str(uuid.uuid4()), seq=0, status=Status.PENDING, network=NET,
                chain_id=CHAIN_ID, asset="ETH" if kind == "eth" else "USDT",
                token_address=token if kind == "tok" else None,
                decimals=18 if kind == "eth" else TOKEN_DECIMALS,
                to_addr=invoice_address(kind, n), shared=False,
                amount=NATIVE_AMOUNT if kind == "eth" else TOKEN_AMOUNT,
                requested_amount=NATIVE_AMOUNT if kind == "eth" else TOKEN_AMOUNT,
                created_at=now, updated_at=now, expire_at=now + ttl,
                callback_url=callback_url,
            )  # fmt: skip
            rows.append(invoice_row(inv))
    if rows:
        cols = list(rows[0])
        sql = f"INSERT INTO invoices ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
        with db.conn:
            db.conn.execute("BEGIN")
            db.conn.executemany(sql, [tuple(r[c] for c in cols) for r in rows])
    db.close()
    return time.perf_counter() - started


def set_cursor(path: Path, scanned: int, head: int) -> None:
    """Start the follower after block `scanned` (instead of at the head)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO cursors (network, chain_id, scanned_block, scanned_hash, "
            "scanned_time, head_block, updated_at) VALUES (?, ?, ?, NULL, NULL, ?, ?)",
            [NET, CHAIN_ID, scanned, head, timeutil.now()],
        )
    conn.close()


def copy_db(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        s = Path(str(src) + suffix)
        d = Path(str(dst) + suffix)
        if s.exists():
            shutil.copyfile(s, d)
        elif d.exists():
            d.unlink()
    return dst


class Cursor:
    """The daemon's scanned block, read from its database (read-only, WAL: it never makes
    the daemon's writer wait) so that watching the catch-up costs the daemon nothing."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)

    def scanned(self) -> int:
        row = self.conn.execute(
            "SELECT scanned_block FROM cursors WHERE network = ?", [NET]
        ).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def max_event(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    async def wait_for(self, block: int, timeout: float, poll: float = 0.005) -> None:
        deadline = time.monotonic() + timeout
        while self.scanned() < block:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not scan up to block {block} in {timeout} s")
            await asyncio.sleep(poll)

    def close(self) -> None:
        self.conn.close()
