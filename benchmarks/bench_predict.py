"""Prediction latency and throughput: the scikit-learn pipeline against `FastPredictor` (ONNX Runtime).

Not a test: it prints figures, it asserts nothing. Run from the project folder:

    .venv/bin/python benchmarks/bench_predict.py [--family lightgbm] [--calls 2000]

It fits a model with `make_model(family)` on the training rows of the clean dataset (built or reused with the
configured settings: set INCOMEOPS_DATA_MIRROR to a folder with the Adult files if they are not cached yet), then
times, with `time.perf_counter`:

- one prediction from a request's dict, `--calls` times after a warm-up, cycling through the test rows:
  (a) the pipeline's `predict_proba` on a one-row DataFrame, (b) `FastPredictor.predict_one` (encoding included),
  and for reference ONNX Runtime alone on an already encoded row; p50 and p99 in microseconds;
- scoring the whole test file (16,281 rows) at once, `--repeats` times: rows per second (median).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from importlib.metadata import version

import numpy as np
import onnxruntime as ort
import pandas as pd

from incomeops.cleaning import MODEL_INPUTS, build_dataset
from incomeops.config import get_settings
from incomeops.conversion import classifier_to_onnx
from incomeops.encoding import encode_records
from incomeops.features import model_inputs, target
from incomeops.predictor import FastPredictor
from incomeops.training import make_model

A, B = "(a) pipeline.predict_proba, one-row DataFrame", "(b) FastPredictor.predict_one(dict)"
TARGETS = {"single p50 (us)": 300, "batch (rows/s)": 200_000}


def latencies(fn, args: list, calls: int, warmup: int = 200) -> np.ndarray:
    "Seconds per call of `fn(args[i])`, cycling through `args`, after `warmup` untimed calls."
    for i in range(warmup): fn(args[i % len(args)])
    out = np.empty(calls)
    for i in range(calls):
        a = args[i % len(args)]
        start = time.perf_counter()
        fn(a)
        out[i] = time.perf_counter() - start
    return out


def throughput(fn, rows: int, repeats: int) -> float:
    "Median rows per second of `fn()` scoring `rows` rows, over `repeats` runs after one warm-up."
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def onnx_runner(model: bytes, threads: int):
    "A function scoring encoded rows with ONNX Runtime alone, using `threads` intra-op threads (0: all cores, not spinning)."
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name, out = session.get_inputs()[0].name, [session.get_outputs()[1].name]
    return lambda Z: session.run(out, {name: Z})


def machine() -> str:
    "CPU model, core count, load and library versions, for the record."
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    libs = ", ".join(f"{p} {version(p)}" for p in ("scikit-learn", "lightgbm", "onnxruntime", "pandas", "numpy"))
    return f"{cpu}; {os.cpu_count()} cores; load average {load}; Python {platform.python_version()}; {libs}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="lightgbm", help="model family for make_model (default: lightgbm)")
    ap.add_argument("--calls", type=int, default=2000, help="timed single predictions per method (default: 2000)")
    ap.add_argument("--repeats", type=int, default=7, help="timed full-test-set scorings per method (default: 7)")
    opts = ap.parse_args()

    df = build_dataset(get_settings()).load()
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    X_test = model_inputs(test)
    start = time.perf_counter()
    model = make_model(opts.family).fit(model_inputs(train), target(train))
    fit_s = time.perf_counter() - start
    fast = FastPredictor.from_pipeline(model, threshold=0.5)
    records = X_test.to_dict("records")
    print(f"machine: {machine()}")
    print(f"model: {opts.family} (fitted in {fit_s:.1f} s), FastPredictor backend: {fast.backend}")
    print(f"parity on the test file: max |fast - pipeline| = {fast.verify(test):.2g}\n")

    frames = [pd.DataFrame([r], columns=MODEL_INPUTS) for r in records[:500]]
    single = {
        A: latencies(lambda f: model.predict_proba(f), frames, opts.calls),
        "(a') same, building the DataFrame from the dict": latencies(
            lambda r: model.predict_proba(pd.DataFrame([r], columns=MODEL_INPUTS)), records, opts.calls),
        B: latencies(fast.predict_one, records, opts.calls),
    }
    if fast.backend == "onnx":
        run = onnx_runner(classifier_to_onnx(model[-1]), threads=1)
        single["    ONNX Runtime alone, encoded row"] = latencies(run, [encode_records([r]) for r in records[:500]], opts.calls)

    print(f"single prediction, {opts.calls:,} calls after warm-up (microseconds)")
    print(f"  {'method':<50} {'p50':>9} {'p99':>9}")
    for label, t in single.items():
        print(f"  {label:<50} {np.median(t) * 1e6:9.1f} {np.percentile(t, 99) * 1e6:9.1f}")
    p50_a, p50_b = np.median(single[A]), np.median(single[B])
    print(f"  speed-up of (b) over (a) at p50: {p50_a / p50_b:.0f}x; target p50 < {TARGETS['single p50 (us)']} us: "
          f"{'met' if p50_b * 1e6 < TARGETS['single p50 (us)'] else 'NOT met'}\n")

    n = len(X_test)
    batch = {
        "pipeline.predict_proba(frame)": throughput(lambda: model.predict_proba(X_test), n, opts.repeats),
        "FastPredictor.predict_proba_frame(frame)": throughput(lambda: fast.predict_proba_frame(X_test), n, opts.repeats),
        "FastPredictor.predict_proba_records(dicts)": throughput(lambda: fast.predict_proba_records(records), n, opts.repeats),
    }
    if fast.backend == "onnx":
        Z = encode_records(records)
        for threads, label in ((1, "1 thread"), (0, "all cores")):
            run = onnx_runner(classifier_to_onnx(model[-1]), threads)
            batch[f"    ONNX Runtime alone, encoded, {label}"] = throughput(lambda r=run: r(Z), n, opts.repeats)
    print(f"batch scoring of the test file ({n:,} rows), median of {opts.repeats} runs (rows per second)")
    for label, rate in batch.items(): print(f"  {label:<50} {rate:>12,.0f}")
    best = max(batch["FastPredictor.predict_proba_frame(frame)"], batch["FastPredictor.predict_proba_records(dicts)"])
    print(f"  target > {TARGETS['batch (rows/s)']:,} rows/s: {'met' if best > TARGETS['batch (rows/s)'] else 'NOT met'}")


if __name__ == "__main__":
    main()
