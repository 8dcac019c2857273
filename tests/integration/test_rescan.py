"""Rescans with the real daemon on anvil, behind a proxy that can lose every `eth_getLogs`
answer (a node that lost its log index): the payment the follower missed is found by
`payment-watcher rescan` run beside the daemon and by `POST /v1/networks/{name}/rescan`,
completes with its callbacks, and is never counted twice."""

from __future__ import annotations

from tests.integration.daemonproc import NETWORK, Daemons, arun_cli, poll, wait_callbacks
from tests.integration.receiver import Receiver
from tests.reliability.rpcproxy import RpcProxy
from watcher.devchain import DevChain

USDT = 10**6


async def test_a_rescan_finds_what_a_lossy_node_hid(
    daemons: Daemons, rx: Receiver, chain: DevChain, rpc_url: str, token: str, payer: str,
    database: str,
) -> None:
    async with RpcProxy(rpc_url) as proxy:
        d = await daemons.start(database_url=database, rpc=[proxy.url], callback_url=rx.url)
        conf = str(d.config.path)
        to = chain.new_account()
        inv = await d.ok("POST", "/v1/invoices", {"network": NETWORK, "asset": "USDT",
                                                  "amount": "5", "address": to}, expect=201)
        start = chain.block_number()
        proxy.lost_logs = True
        chain.send_token(token, payer, to, 5 * USDT)
        chain.mine(3)
        await d.wait_scanned(chain.block_number())
        assert (await d.invoice(inv["id"]))["status"] == "PENDING"  # missed
        proxy.lost_logs = False

        # the CLI beside the running daemon (output is not a terminal: progress lines)
        cli = await arun_cli("rescan", "--network", NETWORK, "--from", str(start),
                             "--config", conf)
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert lines[0].startswith("rescan 1: block ") and "(0%)" in lines[0]
        assert lines[-1].endswith("done, 1 transfer(s) added"), cli.stdout
        done = await d.wait_status(inv["id"], "COMPLETED")
        (payment,) = done["payments"]
        assert payment["amount"] == "5"
        await wait_callbacks(rx, {inv["id"]: ["created", "waiting_for_confirmations",
                                              "completed"]})

        # the same range over the API: it runs in the daemon, adds nothing
        started = await d.ok("POST", f"/v1/networks/{NETWORK}/rescan", {"from": start},
                             expect=202)
        assert (started["from"], started["state"]) == (start, "running")

        async def finished() -> dict[str, object] | None:
            nets = await d.ok("GET", "/v1/networks")
            rescan = nets["data"][0]["rescan"]
            return rescan if rescan and rescan["state"] == "done" else None

        rescan = await poll(finished, 20, what="the API rescan done")
        assert rescan["added"] == 0 and rescan["id"] == started["id"]
        assert len((await d.invoice(inv["id"]))["payments"]) == 1

        # refused ranges, each naming what is wrong
        head = chain.block_number()
        status, err = await d.request("POST", f"/v1/networks/{NETWORK}/rescan",
                                      {"from": start, "to": head + 100})
        assert status == 422 and err["error"]["field"] == "to"
        assert f"block {head + 100} is above the node's head" in err["error"]["message"]
        status, err = await d.request("POST", "/v1/networks/nowhere/rescan", {"from": 1})
        assert status == 404
        status, err = await d.request("POST", f"/v1/networks/{NETWORK}/rescan", {"from": -1})
        assert (status, err["error"]["field"]) == (422, "from")
        bad = await arun_cli("rescan", "--network", NETWORK, "--from", "1", "--to",
                             str(head + 100), "--config", conf)
        assert bad.returncode == 2
        assert bad.stderr.startswith(f"error: block {head + 100} is above the node's head")
        assert len(bad.stderr.strip().splitlines()) == 1


async def test_start_block_is_where_a_new_database_starts(
    daemons: Daemons, chain: DevChain, database: str
) -> None:
    chain.mine(30)
    head = chain.block_number()
    start = head - 20
    d = await daemons.start(database_url=database,
                            extra={f"networks.{NETWORK}": {"start_block": start}})
    await d.wait_scanned(head)
    assert f"starting at the configured start_block {start}" in d.log_text()

    async def scanned_from_start() -> bool:
        _, text = await d.request("GET", "/metrics")
        for line in str(text).splitlines():
            if line.startswith(f'payment_watcher_blocks_scanned_total{{network="{NETWORK}"}}'):
                return float(line.split()[-1]) >= head - start + 1  # every block from start
        return False

    await poll(scanned_from_start, 10, what="every block from start_block scanned")
    # a rescan cannot go below what the node keeps, but may go below start_block
    status, _ = await d.request("POST", f"/v1/networks/{NETWORK}/rescan", {"from": start - 5})
    assert status == 202
