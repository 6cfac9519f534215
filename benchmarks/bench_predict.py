"""In-process prediction: the scikit-learn pipeline against `FastPredictor`'s engines, and the scoring core for a batch.

Not a test: it prints figures, it asserts nothing. Run from the project folder:

    .venv/bin/python benchmarks/bench_predict.py [--family lightgbm] [--calls 2000] [--repeats 15]

It fits a model with `make_model(family)` on the training rows of the clean dataset (built or reused with the
configured settings: set INCOMEOPS_DATA_MIRROR to a folder with the Adult files if they are not cached yet), then
times, with `time.perf_counter`, everything in the same run (the machine may be shared: compare the ratios):

- preparing the predictor: compiling the trees (into an empty cache folder), loading them again from the cache,
  and the ONNX export;
- one prediction from a request's dict, `--calls` times after a warm-up, cycling through the test rows: the pipeline
  on a one-row DataFrame, `FastPredictor.predict_one` (ONNX Runtime), the same through the compiled library, and
  ONNX Runtime alone on an already encoded row; p50 and p99 in microseconds;
- scoring the whole test file (16,281 rows) from a frame with each backend (sklearn = the baseline, onnx, compiled):
  rows per second, median of `--repeats` rounds in which each backend runs once (so that a change of load falls on all);
- the scoring core on 10,000 people of the test file, step by step (median ms of each step), the way it is now
  (`incomeops.scoring`: read_json then column validation, or both in one pass with msgspec; compiled trees, answers built by column, a `LogBatch`) and the
  way it was (the standard JSON parser, pydantic for each person, ONNX Runtime, answer dicts, log row dicts), all steps
  interleaved in the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from pydantic import TypeAdapter
from pydantic_core import to_json

from incomeops.cleaning import MODEL_INPUTS, build_dataset
from incomeops.config import get_settings
from incomeops.conversion import classifier_to_onnx, compile_classifier
from incomeops.encoding import encode_records
from incomeops.features import model_inputs, target
from incomeops.loader import ServedModel
from incomeops.predictor import FastPredictor, encode_columns
from incomeops.schema import MAX_BATCH, Person
from incomeops.scoring import (
    LABELS,
    Scored,
    prediction_ids,
    read_json,
    read_people,
    score_body,
    score_people,
    standard_json,
    validated,
)
from incomeops.training import make_model

TARGETS = {"single p50 (us)": 300, "frame (rows/s)": 250_000, "core 10k (ms)": 35}
_PEOPLE = TypeAdapter(list[Person])


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


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of `fns` over `repeats` rounds, each round calling every one once (after one warm-up round),
    so that a change of the machine's load in the meantime falls on all of them alike."""
    times: dict[str, list[float]] = {label: [] for label in fns}
    for i in range(repeats + 1):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i: times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def seconds(fn) -> tuple[float, object]:
    "How long one call of `fn()` takes, and its result."
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def onnx_runner(model: bytes):
    "A function scoring one encoded row with ONNX Runtime alone, on one thread."
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name, out = session.get_inputs()[0].name, [session.get_outputs()[1].name]
    return lambda Z: session.run(out, {name: Z})


def machine() -> str:
    "CPU model, core count, load and library versions, for the record."
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    libs = ", ".join(f"{p} {version(p)}" for p in ("scikit-learn", "lightgbm", "onnxruntime", "treelite", "tl2cgen", "pydantic"))
    return f"{cpu}; {os.cpu_count()} cores; load average {load}; Python {platform.python_version()}; {libs}"


def prepare(model, cache: Path) -> dict[str, float]:
    "Seconds to compile the trees into an empty `cache`, to find them there again, and to export to ONNX."
    classifier = model[-1]
    cold, library = seconds(lambda: compile_classifier(classifier, cache))
    warm, again = seconds(lambda: compile_classifier(classifier, cache))
    assert again == library
    onnx, _ = seconds(lambda: classifier_to_onnx(classifier))
    loaded, _ = seconds(lambda: FastPredictor.from_pipeline(model, 0.5, cache_dir=cache))
    return {"compile the trees (empty cache)": cold, "find them in the cache": warm, "ONNX export": onnx,
            "FastPredictor.from_pipeline, trees cached (ONNX export included)": loaded}


def old_core(data: list, served: ServedModel, onnx: FastPredictor) -> tuple[bytes, list[dict]]:
    "The scoring core before issue 13: pydantic for each person, ONNX Runtime on records, answer dicts, log row dicts."
    features = [p.model_dump() for p in _PEOPLE.validate_python(data)]
    probas = onnx.predict_proba_records([{c: f[c] for c in MODEL_INPUTS} for f in features]).tolist()
    ids, now, threshold = prediction_ids(len(features)), pd.Timestamp.now(tz="UTC").to_pydatetime(), served.threshold
    positive = [p >= threshold for p in probas]
    rows = [{"prediction_id": i, "created_at": now, "model_version": served.version, "probability": p, "label": int(y),
             "features": f} for i, p, y, f in zip(ids, probas, positive, features)]
    answers = [{"prediction_id": i, "label": LABELS[y], "probability": p, "threshold": threshold, "model_name": served.name,
                "model_version": served.version} for i, p, y in zip(ids, probas, positive)]
    return to_json(answers), rows


def core_steps(body: bytes, served: ServedModel, onnx: FastPredictor, repeats: int) -> tuple[dict, dict]:
    "Median ms of each step of the scoring core, now and before, for the people in `body` (all steps interleaved)."
    data = read_json(body)
    people = validated(data, copy=False)
    Z = encode_columns(people.columns)
    compiled = served.predictor
    proba = compiled.predict_proba_columns(people.columns)
    scored = score_people(people, served)
    rows = [{c: f[c] for c in MODEL_INPUTS} for f in people.features]
    now = {
        "read_json (body -> list of dicts)": lambda: read_json(body),
        "validate by column (scoring.validated, the body's own dicts)": lambda: validated(data, copy=False),
        "encode the columns (float64 matrix)": lambda: encode_columns(people.columns),
        "predict: compiled trees, both cores": lambda: compiled._batch.run(Z),        # the engine alone
        "probabilities and labels as lists": lambda: (proba.tolist(), (proba >= served.threshold).astype(np.int64).tolist()),
        "prediction ids": lambda: prediction_ids(len(people)),
        "answer body (Scored.body)": scored.body,
        "log data (Scored.log_batch)": scored.log_batch,
        "core, end to end: score + body + log_batch (no JSON)": lambda: _scored_outputs(score_people(validated(data, copy=False), served)),
        "read and validate in one pass (scoring.read_people, msgspec)": lambda: read_people(body),
        "JSON + core: score_body + body + log_batch": lambda: _scored_outputs(score_body(body, served)),
    }
    before = {
        "standard_json (stdlib, duplicate-key hook)": lambda: standard_json(body),
        "validate with pydantic, person by person": lambda: [p.model_dump() for p in _PEOPLE.validate_python(data)],
        "ONNX Runtime on records (encode included)": lambda: onnx.predict_proba_records(rows),
        "answer dicts + to_json": lambda: to_json(scored.answers()),
        "log row dicts (Scored.log_rows)": scored.log_rows,
        "core, end to end (no JSON)": lambda: old_core(data, served, onnx),
    }
    medians = interleaved({**now, **before}, repeats)
    return {k: medians[k] * 1e3 for k in now}, {k: medians[k] * 1e3 for k in before}


def _scored_outputs(scored: Scored):
    return scored.body(), scored.log_batch()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="lightgbm", help="model family for make_model (default: lightgbm)")
    ap.add_argument("--calls", type=int, default=2000, help="timed single predictions per method (default: 2000)")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs of each batch measurement (default: 15)")
    opts = ap.parse_args()

    df = build_dataset(get_settings()).load()
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    X_test = model_inputs(test)
    fit_s, model = seconds(lambda: make_model(opts.family).fit(model_inputs(train), target(train)))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as cache:
        setup = prepare(model, Path(cache))
        fast = FastPredictor.from_pipeline(model, threshold=0.5, cache_dir=Path(cache))
        onnx, compiled_only = fast.without("compiled"), fast.without("onnx")
        print(f"model: {opts.family} (fitted in {fit_s:.1f} s), FastPredictor backend: {fast.backend}")
        for label, s in setup.items(): print(f"  {label:<66} {s * 1e3:9.1f} ms")
        for name, predictor in (("compiled", compiled_only), ("onnx", onnx)):
            print(f"  parity on the test file, {name:<8}: max |engine - pipeline| = {predictor.verify(test):.2g}")
        print()

        records = X_test.to_dict("records")
        frames = [pd.DataFrame([r], columns=MODEL_INPUTS) for r in records[:500]]
        single = {
            "pipeline.predict_proba, one-row DataFrame": latencies(lambda f: model.predict_proba(f), frames, opts.calls),
            "FastPredictor.predict_one(dict): ONNX Runtime": latencies(fast.predict_one, records, opts.calls),
            "the same through the compiled library": latencies(compiled_only.predict_one, records, opts.calls),
        }
        if fast.onnx_model is not None:
            run = onnx_runner(fast.onnx_model)
            single["    ONNX Runtime alone, encoded row"] = latencies(run, [encode_records([r]) for r in records[:500]], opts.calls)
        print(f"single prediction, {opts.calls:,} calls after warm-up (microseconds)")
        print(f"  {'method':<50} {'p50':>9} {'p99':>9} {'p50 speed-up':>13}")
        base = np.median(single["pipeline.predict_proba, one-row DataFrame"])
        for label, t in single.items():
            print(f"  {label:<50} {np.median(t) * 1e6:9.1f} {np.percentile(t, 99) * 1e6:9.1f} {base / np.median(t):12.0f}x")
        p50 = np.median(single["FastPredictor.predict_one(dict): ONNX Runtime"]) * 1e6
        print(f"  target p50 < {TARGETS['single p50 (us)']} us: {'met' if p50 < TARGETS['single p50 (us)'] else 'NOT met'}\n")

        n = len(X_test)
        frame = interleaved({
            "sklearn: pipeline.predict_proba(frame)": lambda: model.predict_proba(X_test),
            "onnx: FastPredictor.predict_proba_frame": lambda: onnx.predict_proba_frame(X_test),
            "compiled: FastPredictor.predict_proba_frame": lambda: fast.predict_proba_frame(X_test),
        }, opts.repeats)
        print(f"scoring the test file from a frame ({n:,} rows), median of {opts.repeats} interleaved runs")
        print(f"  {'backend':<50} {'ms':>9} {'rows/s':>12} {'vs sklearn':>11}")
        for label, s in frame.items():
            print(f"  {label:<50} {s * 1e3:9.1f} {n / s:12,.0f} {frame['sklearn: pipeline.predict_proba(frame)'] / s:10.1f}x")
        best = n / frame["compiled: FastPredictor.predict_proba_frame"]
        print(f"  compiled / onnx: {frame['onnx: FastPredictor.predict_proba_frame'] / frame['compiled: FastPredictor.predict_proba_frame']:.1f}x;"
              f" target >= {TARGETS['frame (rows/s)']:,} rows/s: {'met' if best >= TARGETS['frame (rows/s)'] else 'NOT met'}\n")

        people = test.drop(columns=["income_gt_50k", "split"]).astype(object).where(test.notna(), None).to_dict("records")[:MAX_BATCH]
        body = json.dumps(people).encode()
        served = ServedModel(name="incomeops", version="1", run_id=None, threshold=0.5, predictor=fast)
        now, before = core_steps(body, served, onnx, opts.repeats)
        print(f"the scoring core for {len(people):,} people ({len(body) / 1e6:.1f} MB of JSON), median ms of {opts.repeats} interleaved runs")
        for title, steps in (("now", now), ("before issue 13", before)):
            print(f"  {title}")
            for label, ms in steps.items(): print(f"    {label:<62} {ms:8.2f}")
        total_now = now["core, end to end: score + body + log_batch (no JSON)"]
        total_before = before["core, end to end (no JSON)"]
        json_now, json_before = now["read_json (body -> list of dicts)"], before["standard_json (stdlib, duplicate-key hook)"]
        two_steps = json_now + now["validate by column (scoring.validated, the body's own dicts)"]
        one_pass = now["read and validate in one pass (scoring.read_people, msgspec)"]
        whole = now["JSON + core: score_body + body + log_batch"]
        print(f"  core: {total_now:.1f} ms ({len(people) / total_now * 1e3:,.0f} rows/s) against {total_before:.1f} ms before: "
              f"{total_before / total_now:.1f}x; target <= {TARGETS['core 10k (ms)']} ms: {'met' if total_now <= TARGETS['core 10k (ms)'] else 'NOT met'}")
        print(f"  JSON: {json_now:.1f} ms against {json_before:.1f} ms: {json_before / json_now:.1f}x; "
              f"JSON + core: {whole:.1f} ms ({len(people) / whole * 1e3:,.0f} rows/s) against {json_before + total_before:.1f} ms: "
              f"{(json_before + total_before) / whole:.1f}x")
        print(f"  reading and validating: {one_pass:.1f} ms in one pass against {two_steps:.1f} ms in two steps (read_json, then "
              f"validated): {two_steps / one_pass:.1f}x")


if __name__ == "__main__":
    main()
