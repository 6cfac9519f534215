"""The monitoring summary: the store's four summary calls against the old way (the log read into pandas), by log size.

Not a test: it prints figures, it asserts nothing. Run from the project folder:

    .venv/bin/python benchmarks/bench_summary.py [--sizes 10000,100000,1000000] [--repeats 20]
        [--baseline-max 100000] [--baseline-repeats 5] [--postgres-url postgresql://user:password@host/db]

For each backend (a fresh SQLite file in a temporary folder; with `--postgres-url`, also a fresh schema of that
PostgreSQL database, dropped at the end) the log grows through `--sizes`, and at each size it times:

- the summary: `prediction_totals()`, `volume_by_hour(now - 24 h)`, `newest_labelled(2000)` and
  `labels_since(now - 24 h)`, each alone and the four together, `--repeats` times after a warm-up: median and p95;
- the baseline, the old way of the monitoring endpoint: `count_predictions()`, `predictions(labelled_only=True)` and
  `predictions(since=now - 24 h)` into pandas, the newest 2,000 labelled rows and the volume per hour and label
  computed there; `--baseline-repeats` times, and only up to `--baseline-max` rows (at 1,000,000 one run takes
  minutes). Where both run, the script checks that they give the same answers.

The log is filled as the service fills it, only faster: 50,000 predictions per transaction through the store's own
`_write_predictions` and `_write_feedback` (the inserts with their summary-table upserts), 25% of them made in the
last 24 hours and the rest over the 29 days before, 30% labelled, each label arriving 0 to 6 hours after its
prediction (never after now). Rows carry the 14 model inputs, as the service logs them. PostgreSQL gets a
`VACUUM ANALYZE` after each fill, as autovacuum would give it soon after; SQLite never runs `ANALYZE` in the service,
so it does not here either. At the largest size the query plans of the two index walks are printed, and the
one-time backfill of an older database is timed on the same log (summary tables dropped, the store opened again).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import numpy as np
import sqlalchemy as sa

from incomeops.store import (
    Store,
    _hour,
    _newest_labelled_query,
    _write_feedback,
    _write_predictions,
    feedback_table,
    make_engine,
)

WINDOW = 2000                          # performance_window_rows: the labelled window of live metrics
CHUNK = 50_000                         # predictions per fill transaction
RECENT_SHARE, LABELLED_SHARE = 0.25, 0.30
WORK = ("Private", "Self-emp-not-inc", "Local-gov", "State-gov", None)
JOBS = ("Adm-clerical", "Exec-managerial", "Craft-repair", "Prof-specialty", "Sales", None)


def features(rng: random.Random) -> dict:
    "The 14 model inputs of one made-up person, as the service logs them."
    return {"age": rng.randint(17, 90), "workclass": rng.choice(WORK), "education": "Bachelors", "education_num": 13,
            "marital_status": "Never-married", "occupation": rng.choice(JOBS), "relationship": "Not-in-family",
            "race": "White", "sex": rng.choice(("Male", "Female")), "capital_gain": rng.choice((0, 0, 0, 2174)),
            "capital_loss": 0, "hours_per_week": rng.randint(10, 60), "native_country": "United-States", "fnlwgt": rng.randint(20_000, 900_000)}


def chunk_rows(n: int, now: datetime, rng: random.Random) -> tuple[list[dict], list[dict], dict]:
    "`n` predictions (25% in the last 24 h), feedback for 30% of them, and the `made` map `_write_feedback` takes."
    rows, feedback, made = [], [], {}
    for _ in range(n):
        age = rng.uniform(0, 86_400) if rng.random() < RECENT_SHARE else rng.uniform(86_400, 30 * 86_400)
        created, p = now - timedelta(seconds=age), rng.random()
        row = {"prediction_id": uuid.uuid4().hex, "created_at": created, "model_version": "7", "probability": p,
               "label": int(p >= 0.5), "features": features(rng)}
        rows.append(row)
        if rng.random() < LABELLED_SHARE:
            arrived = min(created + timedelta(seconds=rng.uniform(0, 6 * 3600)), now)
            feedback.append({"prediction_id": row["prediction_id"], "true_label": int(rng.random() < p), "feedback_at": arrived})
            made[row["prediction_id"]] = {"created_at": created, "probability": p, "label": row["label"]}
    return rows, feedback, made


def grow(store: Store, n: int, now: datetime, rng: random.Random) -> float:
    "Add `n` predictions (and their feedback) in transactions of `CHUNK`; the seconds it took."
    start = time.perf_counter()
    for i in range(0, n, CHUNK):
        rows, feedback, made = chunk_rows(min(CHUNK, n - i), now, rng)
        with store.engine.begin() as conn:
            _write_predictions(conn, rows)
            if feedback: _write_feedback(conn, feedback, made)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn: conn.exec_driver_sql("VACUUM ANALYZE")
    return time.perf_counter() - start


def summary(store: Store, now: datetime) -> tuple:
    "The four summary calls, as the monitoring endpoint makes them."
    since = now - timedelta(hours=24)
    return (store.prediction_totals(), store.volume_by_hour(since), store.newest_labelled(WINDOW), store.labels_since(since))


def baseline(store: Store, now: datetime) -> tuple:
    "The old way: the labelled predictions and the last 24 hours read into pandas, the same answers computed there."
    since = now - timedelta(hours=24)
    total, labelled, recent = store.count_predictions(), store.predictions(labelled_only=True), store.predictions(since=since)
    window = labelled.tail(WINDOW)
    volume = recent.groupby([recent["created_at"].dt.floor("h"), "label"]).size()
    arrived = int((labelled["feedback_at"] >= since).sum())
    return ({"predictions": total, "labelled": len(labelled)}, volume, (window["probability"].to_numpy(), window["true_label"].to_numpy()), arrived)


def timings(fn, repeats: int) -> np.ndarray:
    "Seconds per call of `fn()`, `repeats` times after one untimed warm-up."
    fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def agree(ours: tuple, old: tuple, now: datetime) -> bool:
    "Whether the summary and the baseline give the same answers (the volume's first hour aside: the summary counts it whole)."
    totals, volume, (p, y), arrived = ours
    old_totals, old_volume, (old_p, old_y), old_arrived = old
    first = _hour(now - timedelta(hours=24))
    ours_volume = {(v["hour"], v["label"]): v["count"] for v in volume if v["hour"] > first}
    old_volume = {(h.to_pydatetime(), int(label)): int(n) for (h, label), n in old_volume.items() if h > first}
    return (totals == old_totals and ours_volume == old_volume and arrived == old_arrived
            and np.array_equal(p, old_p) and np.array_equal(y, old_y.astype(np.int64)))


def plans(store: Store, now: datetime) -> list[str]:
    "The database's plans for the newest labelled window and for labels_since's partial hour."
    f, since = feedback_table, now - timedelta(hours=24)
    partial = sa.select(sa.func.count()).select_from(f).where(f.c.feedback_at >= since, f.c.feedback_at < _hour(since) + timedelta(hours=1))
    sqlite = store.engine.dialect.name == "sqlite"
    out = []
    with store.engine.connect() as conn:
        for q in (_newest_labelled_query(WINDOW), partial):
            sql = str(q.compile(store.engine, compile_kwargs={"literal_binds": True}))
            steps = [r[-1] if sqlite else r[0].strip() for r in conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql)]
            out.append(" | ".join(steps))
    return out


def machine() -> str:
    "CPU model, core count, load and library versions, for the record."
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    libs = ", ".join(f"{p} {version(p)}" for p in ("sqlalchemy", "psycopg", "pandas", "numpy"))
    return f"{cpu}; {os.cpu_count()} cores; load average {load}; Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; {libs}"


def ms(t: np.ndarray) -> str:
    "Median and p95 of `t` (seconds) in milliseconds."
    return f"{np.median(t) * 1e3:10.2f} {np.percentile(t, 95) * 1e3:10.2f}"


def bench_backend(name: str, store: Store, sizes: list[int], opts, results: list) -> None:
    "Grow the log of `store` through `sizes`, timing the summary and the baseline at each."
    now, rng, have = datetime.now(UTC), random.Random(42), 0
    since = now - timedelta(hours=24)
    calls = {"prediction_totals()": store.prediction_totals, "volume_by_hour(now - 24 h)": lambda: store.volume_by_hour(since),
             f"newest_labelled({WINDOW})": lambda: store.newest_labelled(WINDOW), "labels_since(now - 24 h)": lambda: store.labels_since(since)}
    for size in sizes:
        fill = grow(store, size - have, now, rng)
        have = size
        totals = store.prediction_totals()
        recent = sum(v["count"] for v in store.volume_by_hour(since))
        print(f"\n{name}, {size:,} predictions ({recent:,} in the last 24 h or its first hour, {totals['labelled']:,} labelled); "
              f"grown in {fill:.1f} s")
        print(f"  {'call':<42} {'median ms':>10} {'p95 ms':>10}")
        for label, fn in calls.items(): print(f"  {label:<42} {ms(timings(fn, opts.repeats))}")
        together = timings(lambda: summary(store, now), opts.repeats)
        print(f"  {'the four together':<42} {ms(together)}   ({opts.repeats} runs)")
        row = {"backend": name, "size": size, "summary": np.median(together), "p95": np.percentile(together, 95), "baseline": None}
        if size <= opts.baseline_max:
            old = timings(lambda: baseline(store, now), opts.baseline_repeats)
            row["baseline"] = np.median(old)
            print(f"  {'baseline: the log into pandas':<42} {ms(old)}   ({opts.baseline_repeats} runs)")
            print(f"  ratio of the medians: {row['baseline'] / row['summary']:,.0f}x; same answers: "
                  f"{'yes' if agree(summary(store, now), baseline(store, now), now) else 'NO'}")
        else: print(f"  baseline not measured above {opts.baseline_max:,} rows (--baseline-max)")
        results.append(row)
    for label, plan in zip((f"newest_labelled({WINDOW})", "labels_since, partial hour"), plans(store, now)):
        print(f"  plan of {label}: {plan}")
    seconds, same = backfill(store, now)
    print(f"  backfill of the same log as an older database (summary tables dropped, store reopened): {seconds:.1f} s; "
          f"same answers: {'yes' if same else 'NO'}")


def backfill(store: Store, now: datetime) -> tuple[float, bool]:
    "Seconds to open the log of `store` again after dropping its summary tables (the one-time fill), and whether the answers held."
    before = summary(store, now)
    with store.engine.begin() as conn:
        for table in ("incomeops_prediction_hours", "incomeops_labelled_predictions"): conn.exec_driver_sql(f"DROP TABLE {table}")
    start = time.perf_counter()
    with Store(store.engine.url.render_as_string(hide_password=False)) as again:
        seconds, after = time.perf_counter() - start, summary(again, now)
    same = before[0] == after[0] and before[1] == after[1] and before[3] == after[3] and all(np.array_equal(a, b) for a, b in zip(before[2], after[2]))
    return seconds, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="log sizes, increasing (default: 10000,100000,1000000)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs of the summary calls (default: 20)")
    ap.add_argument("--baseline-max", type=int, default=100_000, help="largest log the baseline is timed on (default: 100000)")
    ap.add_argument("--baseline-repeats", type=int, default=5, help="timed runs of the baseline (default: 5)")
    ap.add_argument("--postgres-url", help="also measure on this PostgreSQL database (in a fresh schema, dropped afterwards)")
    opts = ap.parse_args()
    sizes = sorted(int(s) for s in opts.sizes.split(","))
    print(f"machine: {machine()}")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as folder, Store(f"sqlite:///{folder}/bench.db") as store:
        bench_backend("SQLite", store, sizes, opts, results)
    if opts.postgres_url:
        schema = f"incomeops_bench_{os.getpid()}"
        admin = make_engine(opts.postgres_url)
        with admin.begin() as conn: conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            url = sa.make_url(admin.url.render_as_string(hide_password=False)).update_query_dict({"options": f"-csearch_path={schema}"})
            with Store(url.render_as_string(hide_password=False)) as store: bench_backend("PostgreSQL", store, sizes, opts, results)
        finally:
            with admin.begin() as conn: conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()
    print("\nsummary: median of the four calls together (p95), against the baseline")
    print(f"  {'backend':<11} {'predictions':>12} {'summary ms':>11} {'p95 ms':>8} {'baseline ms':>12} {'ratio':>8}")
    for r in results:
        old = f"{r['baseline'] * 1e3:12.0f} {r['baseline'] / r['summary']:7,.0f}x" if r["baseline"] else f"{'-':>12} {'-':>8}"
        print(f"  {r['backend']:<11} {r['size']:>12,} {r['summary'] * 1e3:11.2f} {r['p95'] * 1e3:8.2f} {old}")


if __name__ == "__main__":
    main()
