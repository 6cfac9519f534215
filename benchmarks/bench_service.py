"""The IncomeOps API against `mlflow models serve`, on the same registered model, in one run.

Not a test: it prints figures and asserts nothing. Run from the project folder, after `make train` (or give a project
whose registry has a champion with --root):

    .venv/bin/python benchmarks/bench_service.py [--root .] [--calls 2000] [--concurrency 16] [--requests 4000]

Both servers run with one worker on loopback, one after the other (never both busy at once), and are measured by the
same client in this process, on the same 2-core machine (the client's own cost is in every figure, equally):

- single-record latency: `--calls` sequential POSTs over one keep-alive connection, after a warm-up, cycling through
  the people of adult.test: p50, p90, p99 in ms;
- single-record throughput: `--requests` POSTs at `--concurrency` in flight: requests per second;
- batch: 10,000 people in one request, median of 5: rows per second.

Our API gets `{person}` and answers with a logged prediction (id, label, threshold, version); mlflow gets
`{"dataframe_records": [row]}` with the 12 model inputs and answers with the two class probabilities. The first rows'
probabilities are compared as a sanity check.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import uvloop

from incomeops.cleaning import MODEL_INPUTS, build_dataset
from incomeops.config import Settings
from incomeops.registry import CHAMPION, version_by_alias

BIN = Path(sys.executable).parent
TARGETS = "targets (issue 4): single-record p50 at least 5x lower and throughput at least 5x higher than mlflow models serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parent.parent


class HttpStatusError(RuntimeError):
    "A response other than 200."
    def __init__(self, status: str, head: bytes):
        self.status = status
        super().__init__(f"HTTP {status}: {head[:200]!r}")


class Server:
    "A server in a child process, ready when `ready_path` answers 200; stopped with SIGTERM."

    def __init__(self, name: str, cmd: list[str], env: dict, ready_path: str, port: int, log: Path):
        self.name, self.cmd, self.env, self.ready_path, self.port, self.log = name, cmd, env, ready_path, port, log
        self.url, self.proc = f"http://127.0.0.1:{port}", None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        start, deadline = time.monotonic(), time.monotonic() + 180
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None: raise RuntimeError(f"{self.name} exited: see {self.log}")
                try:
                    if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                        print(f"  {self.name} ready in {time.monotonic() - start:.1f} s")
                        return self
                except httpx.TransportError: pass
                time.sleep(0.25)
            raise RuntimeError(f"{self.name} not ready in 180 s: see {self.log}")
        except BaseException:                 # Ctrl-C included: never leave the server behind
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL)


def our_api(settings: Settings, log_dir: Path) -> Server:
    port = free_port()
    env = {**os.environ, **settings.as_env(), "INCOMEOPS_DATABASE_URL": f"sqlite:///{log_dir / 'bench-service.db'}"}
    return Server("IncomeOps API", [str(BIN / "uvicorn"), "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                                    "--no-access-log", "--log-level", "warning"], env, "/ready", port, log_dir / "api.log")


def mlflow_serve(settings: Settings, log_dir: Path) -> Server:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "UVICORN_ACCESS_LOG": "false",                                      # as ours: no access log
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}       # it runs `uvicorn` by name
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{settings.model_name}@{CHAMPION}", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    return Server("mlflow models serve", cmd, env, "/ping", port, log_dir / "mlflow.log")


def people(settings: Settings) -> tuple[list[dict], list[dict]]:
    "The test file's people: as our API's request bodies (every model input present, unknown as null), and as mlflow's records."
    df = pd.read_parquet(build_dataset(settings).data_file)
    test = df[df["split"] == "test"][[*MODEL_INPUTS, "education"]].astype(object)
    ours = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in test.to_dict("records")]
    theirs = [{k: r[k] for k in MODEL_INPUTS} for r in ours]
    return ours, theirs


class RawHttp:
    "A minimal HTTP/1.1 keep-alive client on asyncio streams (uvloop): cheap enough that the servers, not the client, are measured."

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)

    async def __aenter__(self) -> RawHttp:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()

    async def send(self, request: bytes) -> bytes:
        "One request (as bytes, see `post_bytes`); the response body; raises on a status other than 200."
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200": raise HttpStatusError(head[9:12].decode(), head)
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
        return await self.reader.readexactly(length)


def prediction_key(settings: Settings) -> str | None:
    "The prediction key our API will ask for (INCOMEOPS_PREDICT_API_KEY, passed on to the server), or None."
    return settings.predict_api_key.get_secret_value() if settings.predict_api_key else None


def post_bytes(path: str, body, key: str | None = None) -> bytes:
    "A complete keep-alive POST of `body` as JSON, with `key` in X-API-Key if given."
    data = json.dumps(body).encode()
    auth = f"X-API-Key: {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def latencies(url: str, requests: list[bytes], calls: int, warmup: int = 200) -> np.ndarray:
    "Milliseconds per request, one at a time over one connection, after `warmup` requests."
    async with RawHttp(url) as http:
        for i in range(warmup): await http.send(requests[i % len(requests)])
        out = np.empty(calls)
        for i in range(calls):
            start = time.perf_counter()
            await http.send(requests[i % len(requests)])
            out[i] = time.perf_counter() - start
    return out * 1000


async def throughput(url: str, requests: list[bytes], total: int, concurrency: int) -> float:
    "Requests per second with `concurrency` connections, each sending its next request when the last is answered."
    counter = iter(range(total))

    async def worker():
        async with RawHttp(url) as http:
            for i in counter: await http.send(requests[i % len(requests)])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def batch_rate(url: str, request: bytes, rows: int, repeats: int = 5) -> float:
    "Rows per second for one request of `rows` people, median of `repeats` after a warm-up."
    async with RawHttp(url) as http:
        await http.send(request)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            await http.send(request)
            times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def measure(server: Server, path: str, single: list, batch_body, args, key: str | None = None) -> dict:
    requests = [post_bytes(path, b, key) for b in single]
    ms = uvloop.run(latencies(server.url, requests, args.calls))
    rate = uvloop.run(throughput(server.url, requests, args.requests, args.concurrency))
    rows = uvloop.run(batch_rate(server.url, post_bytes(path, batch_body, key), 10_000))
    return {"p50_ms": np.percentile(ms, 50), "p90_ms": np.percentile(ms, 90), "p99_ms": np.percentile(ms, 99), "req_s": rate, "batch_rows_s": rows}


def sanity(ours: Server, theirs: Server, ours_bodies: list, their_records: list, key: str | None = None) -> float:
    "Largest |difference| of the probabilities both servers give for the first 200 people."
    answer = httpx.post(f"{ours.url}/predict", json=ours_bodies[:200], headers={"X-API-Key": key} if key else None, timeout=60)
    a = [p["probability"] for p in answer.raise_for_status().json()]
    answer = httpx.post(f"{theirs.url}/invocations", json={"dataframe_records": their_records[:200]}, timeout=60).json()["predictions"]
    b = [row[1] if isinstance(row, list) else row["1"] for row in answer]
    return float(np.max(np.abs(np.array(a) - np.array(b))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project folder whose registry has a champion")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    settings = Settings(root=args.root)
    champion = version_by_alias(CHAMPION, settings)
    if champion is None: sys.exit(f"no champion in the registry of {args.root}: run `make train` first")
    print(f"machine: {platform.processor() or platform.machine()}; {os.cpu_count()} cores; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; Python {platform.python_version()}; "
          + ", ".join(f"{p} {version(p)}" for p in ("fastapi", "uvicorn", "mlflow", "onnxruntime", "lightgbm")))
    print(f"model: {settings.model_name} version {champion.version} ({champion.tags.get('family')}), served by both; "
          "client and servers share the machine")
    ours_bodies, their_records = people(settings)
    key, results = prediction_key(settings), {}
    with tempfile.TemporaryDirectory() as d:
        logs = Path(d)
        with our_api(settings, logs) as api, mlflow_serve(settings, logs) as ml:
            print(f"  sanity: max |IncomeOps - mlflow| over 200 people = {sanity(api, ml, ours_bodies, their_records, key):.1e}")
        with our_api(settings, logs) as api:
            results["IncomeOps API"] = measure(api, "/predict", ours_bodies, ours_bodies[:10_000], args, key)
        with mlflow_serve(settings, logs) as ml:
            single = [{"dataframe_records": [r]} for r in their_records]
            results["mlflow models serve"] = measure(ml, "/invocations", single, {"dataframe_records": their_records[:10_000]}, args)
    ours, theirs = results["IncomeOps API"], results["mlflow models serve"]
    print(f"\n{'':24}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'req/s':>9}{'batch rows/s':>14}")
    for name, r in results.items():
        print(f"{name:24}{r['p50_ms']:9.2f}{r['p90_ms']:9.2f}{r['p99_ms']:9.2f}{r['req_s']:9.0f}{r['batch_rows_s']:14,.0f}")
    print(f"{'ratio (mlflow / ours)':24}{theirs['p50_ms'] / ours['p50_ms']:8.1f}x{theirs['p90_ms'] / ours['p90_ms']:8.1f}x"
          f"{theirs['p99_ms'] / ours['p99_ms']:8.1f}x{ours['req_s'] / theirs['req_s']:8.1f}x{ours['batch_rows_s'] / theirs['batch_rows_s']:13.1f}x")
    met = theirs["p50_ms"] / ours["p50_ms"] >= 5 and ours["req_s"] / theirs["req_s"] >= 5
    print(f"(single: {args.calls} sequential calls; throughput: {args.requests} requests at concurrency {args.concurrency}; "
          f"batch: 10,000 people per request, median of 5)\n{TARGETS}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
