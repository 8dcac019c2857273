"""Benchmarks of payment-watcher against anvil: `python -m bench --short|--full`.

Modules: `workload` (chain and database generators), `raw` (the bare aiohttp+orjson
baseline), `catchup` (the real follower in-process), `live` (a `payment-watcher run`
subprocess), `runner` (the table and bench/RESULTS.md). Never run by `make test`."""
