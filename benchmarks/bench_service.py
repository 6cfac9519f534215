"""The IncomeOps API against `mlflow models serve`, on the same registered model, in one run.

Not a test: it prints figures and asserts nothing. Run from the project folder, after `make train` (or give a project
whose registry has a champion with --root):

    .venv/bin/python benchmarks/bench_service.py [--root .] [--seconds 10] [--concurrency 16] [--batches 7]

Both servers are started by `incomeops.harness` (ours as `make api` runs it, mlflow's with `--env-manager local`), one
worker each, on loopback, and measured one after the other, phase by phase (never both busy at once; the first of each
phase alternates, so that a change of the machine's load falls on both), by the same clients, on the same machine (the
client's cost is in every figure, for both):

- single-record latency: wrk (the HTTP benchmarking tool; `apt-get install wrk`), one thread and one keep-alive
  connection, each request sent when the last is answered, for `--seconds` after a 2 s warm-up, cycling through the
  people of adult.test: p50 (and p90, p99) in ms, from wrk's own latency histogram;
- single-record throughput: the same with `--concurrency` connections: requests per second;
- batch: 10,000 people in one request, `--batches` times after a warm-up, by httpx from this process: rows per second at
  the p50 round trip (a client's per-request cost is nothing beside a 70 ms request; between batches the script waits
  for our log to catch up, which wrk cannot).

wrk is written in C: one request costs it a few microseconds, where a Python client such as httpx spends about 0.5 ms
of the shared 2 cores on each, which would hide most of what separates a 1 ms server from a 6 ms one.

Our API gets a person object (or an array of them) and answers each with a logged prediction (id, label, threshold,
model name and version); mlflow gets `{"dataframe_split": ...}` (its most compact JSON input) with the 12 model inputs and
answers with the two class probabilities. Our batch is timed twice: as an array of person objects (2.9 MiB), and as
the very body mlflow gets (`/predict` takes mlflow's table too, 1.2 MiB). Request bodies are encoded once, before
timing; answers are read, not parsed.

Where the time goes, for ours: the API's own histogram of request durations (`/metrics`, measured inside the service from
the first byte of the request to the last of the answer) against the round trip the client sees, and the batch again as a
what-if (`?log=false`: scored but not written to the prediction log), which isolates the cost of the log; and how long
the log takes, after the answer, to write a batch to its database (each timed batch is sent once it has caught up).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from incomeops.cleaning import MODEL_INPUTS, build_dataset
from incomeops.config import Settings
from incomeops.harness import Server, api_server, mlflow_server, wait_until
from incomeops.registry import CHAMPION, version_by_alias

BATCH_ROWS = 10_000
GOALS = {"batch_rows_s": 125_000, "batch_ratio": 3, "latency_ratio": 5, "throughput_ratio": 5}
JSON = {"content-type": "application/json"}


@dataclass
class Target:
    "A server under test and what it is sent: the path, one-person bodies, the batch body (all JSON bytes), headers."
    name: str
    server: Server
    path: str
    singles: list[bytes]
    batch: bytes
    headers: dict
    table: bytes | None = None        # ours: the same batch as mlflow's `dataframe_split` table, which /predict also takes


def our_api(settings: Settings, log_dir: Path) -> Server:
    "Our API as `make api` runs it, with a prediction log of its own (a fresh SQLite file), so runs never grow the project's."
    return api_server(settings, env={"INCOMEOPS_DATABASE_URL": f"sqlite:///{log_dir / 'bench-service.db'}"}, log_file=log_dir / "api.log")


def people(settings: Settings) -> list[dict]:
    "The test file's people as our API's request bodies: every model input present (unknown as null), and education."
    df = pd.read_parquet(build_dataset(settings).data_file)
    test = df[df["split"] == "test"][[*MODEL_INPUTS, "education"]].astype(object)
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in test.to_dict("records")]


def mlflow_body(records: list[dict]) -> bytes:
    "`records` as mlflow's `dataframe_split` input: the model's columns once, then one list of values per person."
    return json.dumps({"dataframe_split": {"columns": MODEL_INPUTS, "data": [[r[c] for c in MODEL_INPUTS] for r in records]}}).encode()


def prediction_key(settings: Settings) -> str | None:
    "The prediction key our API will ask for (INCOMEOPS_PREDICT_API_KEY, passed on to the server), or None."
    return settings.predict_api_key.get_secret_value() if settings.predict_api_key else None


def targets(settings: Settings, logs: Path, bodies: list[dict]) -> tuple[Target, Target]:
    "Ours and mlflow's, each with the same people encoded its way (not started yet)."
    key = prediction_key(settings)
    ours = Target("IncomeOps API", our_api(settings, logs), "/predict", [json.dumps(b).encode() for b in bodies],
                  json.dumps(bodies[:BATCH_ROWS]).encode(), {**JSON, **({"X-API-Key": key} if key else {})}, mlflow_body(bodies[:BATCH_ROWS]))
    theirs = Target("mlflow models serve", mlflow_server(settings, log_file=logs / "mlflow.log"), "/invocations",
                    [mlflow_body([b]) for b in bodies], mlflow_body(bodies[:BATCH_ROWS]), JSON)
    return ours, theirs


def answered(response: httpx.Response, name: str) -> httpx.Response:
    if response.status_code != 200: raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:300]}")
    return response


# wrk's script: the bodies from a file (one JSON document a line), sent in turn; at the end one line of figures.
WRK_SCRIPT = """
local bodies, i, headers = {}, 0, {}
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  for k = 2, #args, 2 do headers[args[k]] = args[k + 1] end
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", PATH, headers, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("wrk-figures %d %d %d %f %d %d %d\\n", latency:percentile(50), latency:percentile(90),
           latency:percentile(99), latency.mean, summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk(t: Target, folder: Path, connections: int, seconds: float) -> dict:
    """wrk on `t`'s one-person bodies with `connections` keep-alive connections (one thread), each sending its next request
    when the last is answered: latency percentiles (ms), mean (ms), requests per second, and requests that failed."""
    name = t.path.strip("/")                                           # predict, invocations: one pair of files per server
    bodies, script = folder / f"{name}.jsonl", folder / f"{name}.lua"
    if not bodies.exists(): bodies.write_bytes(b"\n".join(t.singles) + b"\n")
    script.write_text(WRK_SCRIPT.replace("PATH", json.dumps(t.path)))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script), t.server.url,
               "--", str(bodies), *(x for kv in t.headers.items() for x in kv)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((row for row in out.splitlines() if row.startswith("wrk-figures")), None)
    if line is None: raise RuntimeError(f"wrk printed no figures for {t.name}: {out[-500:]}")
    p50, p90, p99, mean, requests, duration_us, failed = (float(x) for x in line.split()[1:])
    return {"p50_ms": p50 / 1000, "p90_ms": p90 / 1000, "p99_ms": p99 / 1000, "mean_ms": mean / 1000,
            "req_s": requests / (duration_us / 1e6), "failed": int(failed)}


def warmed_wrk(t: Target, folder: Path, connections: int, seconds: float) -> dict:
    "`wrk` after a 2 s warm-up of the same kind."
    wrk(t, folder, connections, 2)
    return wrk(t, folder, connections, seconds)


def metrics(t: Target) -> dict[str, dict]:
    "The API's metrics now: each sample's value by name and then by its labels."
    text = answered(httpx.get(f"{t.server.url}/metrics", headers=t.headers, timeout=30), t.name).text
    found: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples: found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def server_time(t: Target) -> tuple[float, float]:
    "Seconds and requests of POST /predict so far, from the API's own histogram of request durations."
    m, labels = metrics(t), (("method", "POST"), ("route", "/predict"))
    return (m.get("incomeops_http_request_duration_seconds_sum", {}).get(labels, 0.0),
            m.get("incomeops_http_request_duration_seconds_count", {}).get(labels, 0.0))


def log_backlog(t: Target) -> float:
    "Predictions the API has answered that its log has not yet written to the database."
    return metrics(t)["incomeops_prediction_log_queue_depth"][()]


def batch_seconds(t: Target, repeats: int, params: dict | None = None, drain: bool = False, body: bytes | None = None) -> tuple[list[float], list[float]]:
    """Round-trip seconds of the batch request, `repeats` times after a warm-up; with `drain`, each is sent once the
    prediction log has written everything before it to its database, and the seconds that took after each answer."""
    def drained() -> float:
        answered_at = time.perf_counter()
        if drain: wait_until(lambda: log_backlog(t) == 0, 300, "the prediction log writing the batch to its database", 0.02)
        return time.perf_counter() - answered_at
    with httpx.Client(base_url=t.server.url, headers=t.headers, timeout=120) as http:
        answered(http.post(t.path, content=body or t.batch, params=params), t.name)
        drained()
        times, drains = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            answered(http.post(t.path, content=body or t.batch, params=params), t.name)
            times.append(time.perf_counter() - start)
            drains.append(drained())
    return times, drains


def timed_by_server(t: Target, phase):
    "`phase()`'s result, and the mean seconds the server itself spent per request during it."
    before = server_time(t)
    result = phase()
    after = server_time(t)
    return result, (after[0] - before[0]) / max(after[1] - before[1], 1)


def single_phase(t: Target, args, ours: bool) -> dict:
    "Single-record latency (ms) with one connection; for ours also the mean time the server itself spent."
    wrk(t, args.folder, 1, 2)                                            # the warm-up, outside the server's timing
    if ours: r, server_s = timed_by_server(t, lambda: wrk(t, args.folder, 1, args.seconds))
    else: r, server_s = wrk(t, args.folder, 1, args.seconds), None
    return {"p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "mean_ms": r["mean_ms"], "single_failed": r["failed"],
            "single_requests": r["req_s"] * args.seconds, "single_server_ms": server_s and server_s * 1000}


def throughput_phase(t: Target, args, ours: bool) -> dict:
    r = warmed_wrk(t, args.folder, args.concurrency, args.seconds)
    return {"req_s": r["req_s"], "refused": r["failed"], "c_p50_ms": r["p50_ms"], "c_p99_ms": r["p99_ms"]}


def batch_phase(t: Target, args, ours: bool) -> dict:
    "Batch rows/s at the p50 round trip; for ours also the server's own time, the batch not logged and the log's write after it."
    r = {}
    if ours:
        (times, drains), r["batch_server_s"] = timed_by_server(t, lambda: batch_seconds(t, args.batches, drain=True))
        r["batch_unlogged_s"] = statistics.median(batch_seconds(t, args.batches, {"log": "false"})[0])
        r["drain_s"] = statistics.median(drains)
        r["table_s"] = statistics.median(batch_seconds(t, args.batches, drain=True, body=t.table)[0])
        r["table_rows_s"] = BATCH_ROWS / r["table_s"]
    else: times, _ = batch_seconds(t, args.batches)
    return {**r, "batch_s": statistics.median(times), "batch_rows_s": BATCH_ROWS / statistics.median(times)}


def measure(ours: Target, theirs: Target, args) -> dict[str, dict]:
    """Every figure of both servers, phase by phase, the first of each phase alternating (ABBA...): on a shared machine a
    change of load during the run then falls on both rather than on whichever happened to run second."""
    results = {ours.name: {}, theirs.name: {}}
    for i, phase in enumerate((single_phase, throughput_phase, batch_phase)):
        for t in ((ours, theirs) if i % 2 == 0 else (theirs, ours)): results[t.name].update(phase(t, args, t is ours))
    return results


def probabilities(t: Target, bodies: list[dict], ours: bool) -> np.ndarray:
    "The probabilities of more than 50K that the server gives `bodies` (a sanity check: both must agree), not logged."
    body = json.dumps(bodies).encode() if ours else mlflow_body(bodies)
    answer = answered(httpx.post(t.server.url + t.path, content=body, headers=t.headers, params={"log": "false"} if ours else None, timeout=60), t.name).json()
    return np.array([p["probability"] for p in answer] if ours else [r[1] if isinstance(r, list) else r["1"] for r in answer["predictions"]])


def report(ours: dict, theirs: dict, args) -> None:
    "The table: each figure for both, the ratio ours/mlflow, and the goal."
    lower = lambda k: f"{ours[k] / theirs[k]:.2f} ({theirs[k] / ours[k]:.1f}x lower)"
    higher = lambda k: f"{ours[k] / theirs[k]:.1f}x"
    rows = [("single-record p50 latency, ms", "p50_ms", "{:,.2f}", lower, f">= {GOALS['latency_ratio']}x lower"),
            ("  p90 / p99, ms", None, None, None, ""),
            (f"single-record throughput at {args.concurrency}, req/s", "req_s", "{:,.0f}", higher, f">= {GOALS['throughput_ratio']}x"),
            (f"batch of {BATCH_ROWS:,}, rows/s (p50 of {args.batches})", "batch_rows_s", "{:,.0f}", higher,
             f">= {GOALS['batch_rows_s']:,} and >= {GOALS['batch_ratio']}x"),
            ("  the same batch, both sent mlflow's table", "table_rows_s", "{:,.0f}", None, "the same")]
    print(f"\n{'':44}{'IncomeOps':>12}{'mlflow':>12}   {'ours / mlflow':<24}goal")
    for label, key, fmt, ratio, goal in rows:
        if key is None:
            print(f"{label:44}{ours['p90_ms']:>6.2f} /{ours['p99_ms']:>5.1f}{theirs['p90_ms']:>6.1f} /{theirs['p99_ms']:>5.1f}")
            continue
        if key == "table_rows_s":                 # ours given mlflow's own body, against mlflow given it (its batch figure)
            print(f"{label:44}{fmt.format(ours[key]):>12}{fmt.format(theirs['batch_rows_s']):>12}   "
                  f"{ours[key] / theirs['batch_rows_s']:.1f}x{'':<20}{goal}")
            continue
        print(f"{label:44}{fmt.format(ours[key]):>12}{fmt.format(theirs[key]):>12}   {ratio(key):<24}{goal}")
    met = {"single latency": theirs["p50_ms"] / ours["p50_ms"] >= GOALS["latency_ratio"],
           "single throughput": ours["req_s"] / theirs["req_s"] >= GOALS["throughput_ratio"],
           "batch rows/s (array)": ours["batch_rows_s"] >= GOALS["batch_rows_s"] and ours["batch_rows_s"] / theirs["batch_rows_s"] >= GOALS["batch_ratio"],
           "batch rows/s (the same table)": ours["table_rows_s"] >= GOALS["batch_rows_s"] and ours["table_rows_s"] / theirs["batch_rows_s"] >= GOALS["batch_ratio"]}
    print("goals: " + "; ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
    print("\nwhere the time goes (ours; server = the API's own request histogram, round trip = what the client saw):")
    print(f"  one person: mean round trip {ours['mean_ms']:.2f} ms, of which in the server {ours['single_server_ms']:.2f} ms (mean); "
          f"client, HTTP parsing and loopback {ours['mean_ms'] - ours['single_server_ms']:.2f} ms")
    print(f"  batch of {BATCH_ROWS:,}: p50 round trip {ours['batch_s'] * 1000:.0f} ms, in the server {ours['batch_server_s'] * 1000:.0f} ms (mean), "
          f"transfer and client {(ours['batch_s'] - ours['batch_server_s']) * 1000:.0f} ms; the same batch not logged (?log=false) "
          f"{ours['batch_unlogged_s'] * 1000:.0f} ms round trip ({BATCH_ROWS / ours['batch_unlogged_s']:,.0f} rows/s), so the prediction log "
          f"costs {(ours['batch_s'] - ours['batch_unlogged_s']) * 1000:.0f} ms")
    print(f"  after answering a batch, the prediction log needed {ours['drain_s'] * 1000:.0f} ms (p50) more to write it to its database "
          f"({BATCH_ROWS / ours['drain_s']:,.0f} rows/s: the rate batches can be sustained at if that is below the answer rate; "
          "each batch above was sent once the log had caught up)")
    print(f"  request bodies: ours {len(ours['batch_body']) / 2**20:.1f} MiB, mlflow's {len(theirs['batch_body']) / 2**20:.1f} MiB for the same {BATCH_ROWS:,} people")
    for name, r in (("IncomeOps API", ours), ("mlflow models serve", theirs)):
        if r["refused"] or r["single_failed"]:
            print(f"  {name}: {r['single_failed']:,} requests of the latency run and {r['refused']:,} of the throughput run failed (not 2xx, or no answer)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project folder whose registry has a champion")
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk run (latency, throughput)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batches", type=int, default=7)
    args = parser.parse_args()
    settings = Settings(root=args.root)
    if shutil.which("wrk") is None: sys.exit("bench_service needs wrk, the HTTP benchmarking tool: apt-get install wrk")
    champion = version_by_alias(CHAMPION, settings)
    if champion is None: sys.exit(f"no champion in the registry of {args.root}: run `make train` first")
    print(f"machine: {platform.processor() or platform.machine()}; {os.cpu_count()} cores; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; Python {platform.python_version()}; "
          + ", ".join(f"{p} {version(p)}" for p in ("fastapi", "uvicorn", "httpx", "mlflow", "onnxruntime", "lightgbm"))
          + f"; {subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.split(' [')[0]}")
    print(f"model: {settings.model_name} version {champion.version} ({champion.tags.get('family')}), served by both; "
          "client and servers share the machine")
    bodies = people(settings)
    with tempfile.TemporaryDirectory() as d:
        ours, theirs = targets(settings, Path(d), bodies)
        args.folder = Path(d)
        with ours.server, theirs.server:                 # both up, one busy at a time (the other idles)
            gap = np.max(np.abs(probabilities(ours, bodies[:200], True) - probabilities(theirs, bodies[:200], False)))
            print(f"sanity: max |IncomeOps - mlflow| over 200 people = {gap:.1e}")
            results = measure(ours, theirs, args)
    ours_r, theirs_r = {**results[ours.name], "batch_body": ours.batch}, {**results[theirs.name], "batch_body": theirs.batch}
    report(ours_r, theirs_r, args)
    print(f"(single: wrk, one connection, {args.seconds:g} s, {ours_r['single_requests']:,.0f} and {theirs_r['single_requests']:,.0f} requests; "
          f"throughput: wrk, {args.concurrency} connections, {args.seconds:g} s (p50 / p99 there: ours {ours_r['c_p50_ms']:.1f} / {ours_r['c_p99_ms']:.1f} ms, "
          f"mlflow's {theirs_r['c_p50_ms']:.1f} / {theirs_r['c_p99_ms']:.1f} ms); batch: {BATCH_ROWS:,} people per request, httpx, p50 of {args.batches})")


if __name__ == "__main__":
    main()
