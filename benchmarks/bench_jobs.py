"""Prediction latency while a training job runs: jobs in the API process (the embedded default) against jobs on a Celery worker.

Not a test: it prints figures and asserts nothing. Run from the project folder, after `make train` (it needs a champion
and the data snapshot; it registers nothing), on a machine with `redis-server` (`scripts/system_deps.sh` installs it):

    .venv/bin/python benchmarks/bench_jobs.py [--seconds 15] [--modes embedded,queue]

For each mode it starts an API (`incomeops.harness`, a prediction log of its own in a temporary folder), and for the
queue mode a Redis server and one `incomeops worker` as well. With `taskset` available, the API runs on core 0, and the
worker and this client on core 1, so that what is measured is whether a training competes with the API for its core,
not the client's share of the machine. Then, one person at a time over one keep-alive connection (`?log=false`, so that
the log's disk writes do not enter): `--seconds` of requests with no job running (the baseline), then a quick training
job (HGB, no tuning, nothing registered) is started and, once its notebook computes, `--seconds` of requests again;
the job is cancelled afterwards. Figures: p50, p90 and p99 in ms, and the ratio of each to its own idle figure.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from incomeops.config import get_settings
from incomeops.harness import BIN, Server, api_server, free_port, wait_until
from incomeops.schema import EXAMPLE_PERSON

QUICK_TRAINING = {"candidates": "hgb", "model_family": "hgb", "n_trials": 0, "cv_folds": 3, "register": False, "promote": False}


def pinned(command: list, core: int) -> list:
    "`command` run on one core, if `taskset` is there (else as it is)."
    return ["taskset", "-c", str(core), *map(str, command)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else command


def latencies(url: str, seconds: float) -> np.ndarray:
    "Milliseconds of one-person predictions (not logged) sent one after the other for `seconds`."
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            answer = http.post("/predict", json=EXAMPLE_PERSON, params={"log": "false"})
            out.append((time.perf_counter() - start) * 1000)
            if answer.status_code != 200: sys.exit(f"the API answered {answer.status_code}: {answer.text[:300]}")
    return np.array(out)


def during_training(url: str, key: str, seconds: float) -> np.ndarray:
    "Latencies while a quick training job computes (started through `url`, cancelled after)."
    headers = {"X-API-Key": key}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
        started = http.post("/jobs/train", json=QUICK_TRAINING)
        if started.status_code != 202: sys.exit(f"the training job was refused ({started.status_code}): {started.text[:300]}")
        job = started.json()["id"]
        wait_until(lambda: http.get(f"/jobs/{job}").json()["status"] == "running", 180, "the training job starting")
        time.sleep(8)                                   # past the kernel's start: the notebook is computing
        try: return latencies(url, seconds)
        finally: http.post(f"/jobs/{job}/cancel")


def measure(mode: str, seconds: float, folder: Path) -> dict[str, np.ndarray]:
    "Idle and during-training latencies of an API whose jobs run `mode`-wise ('embedded' or 'queue')."
    settings, key, started = get_settings(), secrets.token_hex(16), []
    env = {"INCOMEOPS_API_KEY": key, "INCOMEOPS_DATABASE_URL": f"sqlite:///{folder / f'{mode}.db'}", "OMP_NUM_THREADS": "1"}
    try:
        if mode == "queue":
            port = free_port()
            redis = Server("redis-server", pinned(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], 1),
                           f"http://127.0.0.1:{port}", folder / "redis.log", ready_path=None).start()
            started.append(redis)
            env["INCOMEOPS_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
            worker_env = {**os.environ, **settings.as_env(), **env, "MLFLOW_DISABLE_TELEMETRY": "true"}
            worker = Server("the Celery worker", pinned([BIN / "incomeops", "worker"], 1), "http://127.0.0.1:9", folder / "worker.log",
                            env=worker_env, cwd=settings.root, ready_path=None).start()
            started.append(worker)
            wait_until(lambda: " ready." in worker.log_file.read_text(errors="replace"), 120, "the Celery worker being ready")
        api = api_server(settings, env=env, log_file=folder / f"api-{mode}.log")
        api.command = pinned(api.command, 0)
        started.append(api.start().wait_ready())
        latencies(api.url, 3)                                                      # warm-up
        return {"idle": latencies(api.url, seconds), "training": during_training(api.url, key, seconds)}
    finally:
        for server in reversed(started): server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="seconds of requests per phase (default: 15)")
    parser.add_argument("--modes", default="embedded,queue", help="embedded, queue or both (default)")
    args = parser.parse_args()
    if "queue" in args.modes and not shutil.which("redis-server"): sys.exit("redis-server is not installed: run scripts/system_deps.sh")
    if shutil.which("taskset"): os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})          # this client on core 1
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        results = {mode: measure(mode, args.seconds, Path(tmp)) for mode in args.modes.split(",")}
    print(f"one person at a time, not logged; {args.seconds:g} s a phase; API on core 0, worker and client on core 1")
    print(f"{'mode':<10} {'phase':<10} {'requests':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}   vs idle (p50 / p99)")
    for mode, phases in results.items():
        idle = {q: np.percentile(phases["idle"], q) for q in (50, 90, 99)}
        for phase, ms in phases.items():
            p = {q: np.percentile(ms, q) for q in (50, 90, 99)}
            print(f"{mode:<10} {phase:<10} {len(ms):>8,} {p[50]:>8.2f} {p[90]:>8.2f} {p[99]:>8.2f}   {p[50] / idle[50]:.2f}x / {p[99] / idle[99]:.2f}x")


if __name__ == "__main__":
    main()
