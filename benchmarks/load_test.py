"""A bounded load test of the IncomeOps API on loopback, with a check that no prediction is lost from the log.

Not a test: it prints figures and asserts nothing. Run from the project folder after `make train`:

    .venv/bin/python benchmarks/load_test.py [--root .] [--requests 20000] [--concurrency 32]

It starts the API (uvicorn, one worker, by `incomeops.harness`) with a fresh prediction-log database, sends `--requests`
single-person POSTs to /predict with httpx, `--concurrency` in flight (people of adult.test in turn, over keep-alive
connections), records every status and every prediction id answered, stops the server as an operator would (SIGTERM:
uvicorn finishes the requests in flight), then counts the ids in the database: lost = answered but not logged (an answer
waits for its log commit, so this should be 0 even after a SIGKILL: tests/test_durability.py checks that); duplicated =
logged more than once.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from bench_service import JSON, our_api, people, prediction_key  # noqa: E402

from incomeops.config import Settings  # noqa: E402
from incomeops.registry import CHAMPION, version_by_alias  # noqa: E402


async def hammer(url: str, headers: dict, bodies: list[bytes], total: int, concurrency: int) -> tuple[list[str], dict, np.ndarray, float]:
    "Answered prediction ids, counts of outcomes, latencies (ms) and wall time of `total` requests."
    counter, ids, outcomes, latencies = iter(range(total)), [], {}, []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(http: httpx.AsyncClient):
        for i in counter:
            start = time.perf_counter()
            try: response = await http.post("/predict", content=bodies[i % len(bodies)])
            except httpx.HTTPError as e: kind = type(e).__name__                # count every failure by status or kind, go on
            else: kind = "200" if response.status_code == 200 else f"HTTP {response.status_code}"
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if kind == "200":
                ids.append(json.loads(response.content)["prediction_id"])
                latencies.append((time.perf_counter() - start) * 1000)          # answered requests only

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return ids, outcomes, np.array(latencies), time.perf_counter() - start


def logged_ids(database_url: str) -> list[str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn: return [r[0] for r in conn.execute(sa.text("SELECT prediction_id FROM incomeops_predictions"))]
    finally: engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project folder whose registry has a champion")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    settings = Settings(root=args.root)
    champion = version_by_alias(CHAMPION, settings)
    if champion is None: sys.exit(f"no champion in the registry of {args.root}: run `make train` first")
    bodies = [json.dumps(b).encode() for b in people(settings)]
    key = prediction_key(settings)
    headers = {**JSON, **({"X-API-Key": key} if key else {})}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; model version {champion.version}; "
          f"{args.requests:,} requests at concurrency {args.concurrency}")
    with tempfile.TemporaryDirectory() as d:
        server = our_api(settings, Path(d))
        with server:                           # leaving it stops the server as an operator would (SIGTERM), then counts
            ids, outcomes, ms, seconds = uvloop.run(hammer(server.url, headers, bodies, args.requests, args.concurrency))
        database = server.env["INCOMEOPS_DATABASE_URL"]
        stored = logged_ids(database)
    errors = sum(n for k, n in outcomes.items() if k != "200")
    in_log = set(stored)
    print(f"answered: {outcomes.get('200', 0):,} ok, {errors:,} errors {({k: n for k, n in outcomes.items() if k != '200'} or '')}")
    print(f"throughput: {args.requests / seconds:,.0f} requests/s over {seconds:.1f} s; latency p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.1f} ms")
    print(f"prediction ids answered twice: {len(ids) - len(set(ids)):,}")
    print(f"prediction log after shutdown: {len(stored):,} rows; lost (answered, not logged) {len(set(ids) - in_log):,}; "
          f"logged but never answered {len(in_log - set(ids)):,} (prediction_id is the table's key, so no row can repeat)")


if __name__ == "__main__":
    main()
