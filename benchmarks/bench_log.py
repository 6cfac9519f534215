"""The prediction log: what acknowledging a prediction costs, journal against a direct database commit, and the drain rate.

Not a test: it prints figures, it asserts nothing. Run from the project folder:

    .venv/bin/python benchmarks/bench_log.py [--single 500] [--batches 15] [--rows 10000] [--backlog 100000]
        [--postgres] [--postgres-url postgresql://user:password@host/db]

For each backend (a fresh SQLite file in a temporary folder; with `--postgres`, also a throwaway PostgreSQL 15 cluster
started the way tests/test_outage.py starts one; with `--postgres-url`, a fresh schema of that database, dropped at the
end) it times, in the same run:

- acknowledging 1 prediction (`--single` times) and a batch of `--rows` (`--batches` times), median and p90:
  - journal: `PredictionLog.submit(LogBatch, trusted=True).result()`, what `/predict` waits for since issue 13
    (encode, append, fdatasync; the drain runs behind, and is waited for between two timed calls); and the same
    without the fdatasync (`log_journal_fsync=False`);
  - direct commit, the baseline: one transaction per acknowledgement, as issue 12's log committed before answering,
    through SQLAlchemy Core (`Store.add_predictions`, the old writer's statement) and with the raw driver
    (`executemany`, the drain's statement);
- where the journal's time goes for a batch: the encoding (`journal_record`) and the write with its fdatasync;
- the drain rate: a backlog of `--backlog` rows journaled while the database is held, then released: rows per second
  until `sync()` returns.

The people are made up but shaped as the service logs them: the 14 validated model inputs, one `created_at` and model
version per request. Timings on a shared machine are noisy: compare the ratios measured in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from incomeops.store import LogBatch, PredictionLog, Store, journal_record, make_engine

WORK = ("Private", "Self-emp-not-inc", "Local-gov", "State-gov", None)
JOBS = ("Adm-clerical", "Exec-managerial", "Craft-repair", "Prof-specialty", "Sales", None)


def person(rng: random.Random) -> dict:
    "The 14 model inputs of one made-up person, as the service logs them."
    return {"age": rng.randint(17, 90), "workclass": rng.choice(WORK), "fnlwgt": rng.randint(20_000, 900_000), "education": "Bachelors",
            "education_num": 13, "marital_status": "Never-married", "occupation": rng.choice(JOBS), "relationship": "Not-in-family",
            "race": "White", "sex": rng.choice(("Male", "Female")), "capital_gain": rng.choice((0, 0, 0, 2174)), "capital_loss": 0,
            "hours_per_week": rng.randint(10, 60), "native_country": "United-States"}


def batch(n: int, rng: random.Random) -> LogBatch:
    "One request's predictions for `n` people, fresh ids."
    probabilities = [rng.random() for _ in range(n)]
    return LogBatch([uuid.uuid4().hex for _ in range(n)], datetime.now(UTC), "7", probabilities, [int(p >= 0.5) for p in probabilities],
                    [person(rng) for _ in range(n)])


def timed(fn, make, repeats: int, between=None) -> np.ndarray:
    "Seconds each of `repeats` calls `fn(make())` took (`make` and `between` untimed), after one warm-up call."
    fn(make())
    if between: between()
    out = []
    for _ in range(repeats):
        arg = make()
        start = time.perf_counter()
        fn(arg)
        out.append(time.perf_counter() - start)
        if between: between()
    return np.array(out)


def direct_core(store: Store):
    "The baseline through SQLAlchemy Core: one transaction of `Store.add_predictions` per acknowledgement."
    return lambda b: store.add_predictions(b.rows(), checked=True)


def direct_raw(store: Store):
    "The baseline with the raw driver: one transaction of the drain's `executemany` per acknowledgement."
    return lambda b: store._insert_batches([b])


def held_backlog(store: Store, plog: PredictionLog, rows: int, per_request: int, rng: random.Random) -> float:
    "Journal `rows` predictions while the database is held, release it: rows per second the drain wrote them at."
    gate, real = threading.Event(), store._insert_batches
    store._insert_batches = lambda batches: (gate.wait(), real(batches))[1]
    try:
        for _ in range(rows // per_request): plog.submit(batch(per_request, rng), trusted=True).result(timeout=60)
        time.sleep(0.2)                                   # the drain is inside its first (held) transaction
        start = time.perf_counter()
        gate.set()
        plog.sync(timeout=600)
        return rows / (time.perf_counter() - start)
    finally: store._insert_batches = real


def ms(t: np.ndarray) -> str:
    return f"{np.median(t) * 1e3:9.2f} {np.percentile(t, 90) * 1e3:9.2f}"


def bench_backend(name: str, store: Store, opts, results: list) -> None:
    "Time the acknowledgements, the journal's parts and the drain on `store`."
    rng, bound = random.Random(42), max(10 * opts.rows, opts.backlog + opts.rows)
    with tempfile.TemporaryDirectory() as journal, tempfile.TemporaryDirectory() as cached:
        plog = PredictionLog(store, max_queued=bound, journal_dir=journal).start()
        unflushed = PredictionLog(store, max_queued=bound, journal_dir=cached, fsync=False).start()
        try:
            for rows, repeats in ((1, opts.single), (opts.rows, opts.batches)):
                make = lambda rows=rows: batch(rows, rng)
                figures = {f"journal{suffix}": timed(lambda b, log=log: log.submit(b, trusted=True).result(timeout=60), make, repeats,
                                                     lambda log=log: log.sync(timeout=600))
                           for suffix, log in (("", plog), (", no fsync", unflushed))}
                figures |= {"direct, SQLAlchemy Core": timed(direct_core(store), make, repeats), "direct, raw driver": timed(direct_raw(store), make, repeats)}
                print(f"\n{name}: acknowledging {rows:,} prediction(s), {repeats} times: median and p90 ms")
                for what, t in figures.items(): print(f"  {what:<26} {ms(t)}")
                results.append({"backend": name, "rows": rows, **{k: float(np.median(v)) for k, v in figures.items()}})
            big = batch(opts.rows, rng)
            record = journal_record([big])
            encode = timed(lambda b: journal_record([b]), lambda: big, opts.batches)
            fd = os.open(Path(journal, "scratch.jnl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try: flush = timed(lambda data: (os.write(fd, data), os.fdatasync(fd)), lambda: record, opts.batches)
            finally: os.close(fd)
            print(f"  journal's parts for {opts.rows:,}: encoding {np.median(encode) * 1e3:.2f} ms ({len(record) / 2**20:.1f} MiB), "
                  f"write + fdatasync {np.median(flush) * 1e3:.2f} ms")
            rate = held_backlog(store, plog, opts.backlog, opts.rows, rng)
            print(f"  drain: a backlog of {opts.backlog:,} rows written at {rate:,.0f} rows/s")
            results[-1]["drain"] = rate
        finally:
            plog.close()
            unflushed.close()


def postgres_cluster():
    "A throwaway PostgreSQL 15 cluster as tests/test_outage.py starts it (None if its binaries are missing)."
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from api_support import PostgresCluster
    return PostgresCluster().init() if PostgresCluster.available() else None


def bench_postgres(url: str, opts, results: list, name: str) -> None:
    "Run the benchmark in a fresh schema of the PostgreSQL database at `url`, dropped afterwards."
    schema, admin = f"incomeops_bench_{os.getpid()}", make_engine(url)
    with admin.begin() as conn: conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        u = sa.make_url(admin.url.render_as_string(hide_password=False)).update_query_dict({"options": f"-csearch_path={schema}"})
        with Store(u.render_as_string(hide_password=False)) as store: bench_backend(name, store, opts, results)
    finally:
        with admin.begin() as conn: conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def machine() -> str:
    "CPU model, core count, load and library versions, for the record."
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    libs = ", ".join(f"{p} {version(p)}" for p in ("sqlalchemy", "psycopg"))
    return f"{cpu}; {os.cpu_count()} cores; load average {load}; Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; {libs}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single", type=int, default=500, help="timed one-prediction acknowledgements (default: 500)")
    ap.add_argument("--batches", type=int, default=15, help="timed batch acknowledgements (default: 15)")
    ap.add_argument("--rows", type=int, default=10_000, help="people per batch (default: 10000)")
    ap.add_argument("--backlog", type=int, default=100_000, help="rows of the backlog the drain rate is measured on (default: 100000)")
    ap.add_argument("--postgres", action="store_true", help="also measure on a throwaway PostgreSQL 15 cluster (fsync=off, as the tests run it)")
    ap.add_argument("--postgres-url", help="also measure on this PostgreSQL database (in a fresh schema, dropped afterwards)")
    opts = ap.parse_args()
    print(f"machine: {machine()}")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as folder, Store(f"sqlite:///{folder}/bench.db") as store:
        bench_backend("SQLite", store, opts, results)
    if opts.postgres:
        cluster = postgres_cluster()
        if cluster is None: print("\nPostgreSQL: no binaries in /usr/lib/postgresql/15/bin; skipped")
        else:
            try: bench_postgres(cluster.url, opts, results, "PostgreSQL (fsync=off)")
            finally: cluster.destroy()
    if opts.postgres_url: bench_postgres(opts.postgres_url, opts, results, "PostgreSQL")
    print("\nsummary: median ms to acknowledge: journal (with and without fsync) and direct commit (SQLAlchemy Core, raw driver); drain rows/s")
    print(f"  {'backend':<24} {'rows':>7} {'journal':>9} {'no fsync':>9} {'Core':>9} {'raw':>9} {'Core/journal':>13} {'drain rows/s':>13}")
    for r in results:
        drain = f"{r['drain']:13,.0f}" if "drain" in r else f"{'':>13}"
        print(f"  {r['backend']:<24} {r['rows']:>7,} {r['journal'] * 1e3:9.2f} {r['journal, no fsync'] * 1e3:9.2f} "
              f"{r['direct, SQLAlchemy Core'] * 1e3:9.2f} {r['direct, raw driver'] * 1e3:9.2f} "
              f"{r['direct, SQLAlchemy Core'] / r['journal']:12.1f}x {drain}")


if __name__ == "__main__":
    main()
