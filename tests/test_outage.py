"""A real database outage: the service database is a PostgreSQL cluster the test owns, stopped the hard way
(`pg_ctl stop -m immediate`) while the API runs, then started again.

The semantics since the prediction log has a journal: a prediction is acknowledged (200) once it is in the log's
fsync'ed journal on local disk, and it reaches the database when the database can take it. So while the database is
down, /predict keeps answering 200 until `log_queue_rows` acknowledged predictions wait for it; beyond that bound it
refuses with 503 and Retry-After (it never answers 200 for a prediction it has not journaled), /ready says the database
is the problem, /health stays 200 and the service does not pile up memory. Once the database is back, the backlog drains
by itself, /predict and /ready answer 200 again, and every prediction ever answered 200 is in the database: nothing
acknowledged is lost. MLflow stays on SQLite.
"""
import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter

import httpx
import psutil
import pytest

from api_support import ADMIN_KEY, ApiServer, PostgresCluster, assert_error_body, new_champion_project, wait_until
from conftest import REPO
from incomeops.schema import EXAMPLE_PERSON
from incomeops.store import Store

pytestmark = pytest.mark.timeout(600)

ACK_TIMEOUT = 2.0          # INCOMEOPS_LOG_ACK_TIMEOUT_SECONDS: the longest a prediction waits for the journal
QUEUE_ROWS = 2_000         # INCOMEOPS_LOG_QUEUE_ROWS: the most acknowledged predictions waiting for the database
BATCH = 200                # people per refused request: 500 of them carry 100,000 rows, far over the queue's bound
REFUSED_REQUESTS = 500


@pytest.fixture(scope="module")
def postgres():
    "A PostgreSQL 15 cluster of our own (installed as .ci/run does if the binaries are missing); removed at the end."
    if not PostgresCluster.available() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", "scripts/system_deps.sh"], cwd=REPO, capture_output=True, timeout=900)
    if not PostgresCluster.available():
        pytest.skip("PostgreSQL 15 binaries are not in /usr/lib/postgresql/15/bin and scripts/system_deps.sh could not install them (run `make system-deps` as root or with sudo)")
    cluster = PostgresCluster().init()
    yield cluster
    cluster.destroy()


def queue_depth(http: httpx.Client) -> float | None:
    "The prediction log's queue depth from /metrics (None if the gauge is missing)."
    m = re.search(r"^incomeops_prediction_log_queue_depth(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", http.get("/metrics").text, re.M)
    return float(m.group(1)) if m else None


def stored_ids(url: str) -> set[str]:
    store = Store(url)
    try: return set(store.predictions()["prediction_id"])
    finally: store.close()


def missing_after_drain(url: str, ids, timeout: float = 60) -> set[str]:
    "The `ids` still not in the database after waiting up to `timeout` s for the prediction log to drain (empty: all there)."
    deadline, ids = time.monotonic() + timeout, set(ids)
    while (missing := ids - stored_ids(url)) and time.monotonic() < deadline: time.sleep(0.25)
    return missing


def test_a_database_outage_answers_503_with_retry_after_and_after_it_every_200_is_in_the_database(postgres, tmp_path_factory, mirror):
    settings = new_champion_project(tmp_path_factory.mktemp("outage"), mirror)[0].model_copy(update={"database_url": postgres.url})
    server = ApiServer(settings, env={"INCOMEOPS_API_KEY": ADMIN_KEY, "INCOMEOPS_LOG_ACK_TIMEOUT_SECONDS": str(ACK_TIMEOUT),
                                      "INCOMEOPS_LOG_QUEUE_ROWS": str(QUEUE_ROWS)}).start()
    answered: list[str] = []
    lock = threading.Lock()

    def predict(client: httpx.Client, body) -> httpx.Response:
        response = client.post("/predict", json=body)
        if response.status_code == 200:
            got = response.json()
            with lock: answered.extend(a["prediction_id"] for a in (got if isinstance(got, list) else [got]))
        return response

    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            # ---- the database is up: predictions are answered and logged
            for i in range(20): assert predict(http, {**EXAMPLE_PERSON, "age": 20 + i}).status_code == 200
            assert predict(http, [EXAMPLE_PERSON] * 50).status_code == 200
            assert http.get("/ready").status_code == 200
            assert not missing_after_drain(postgres.url, answered)

            # ---- the database crashes
            postgres.stop("immediate")
            outage = time.monotonic()
            accepted_while_down, first = 0, None
            while first is None and time.monotonic() - outage < 60:
                response = predict(http, EXAMPLE_PERSON)
                if response.status_code == 200: accepted_while_down += 1
                else: first = response
            seconds_to_refuse = time.monotonic() - outage
            assert first is not None, f"/predict answered 200 {accepted_while_down} times in 60 s with the database down, never refusing"
            assert 0 < accepted_while_down <= QUEUE_ROWS, f"{accepted_while_down} answers 200 with the database down: the journal rides an outage up to {QUEUE_ROWS}"
            assert first.status_code == 503, f"/predict answered {first.status_code} with the database down: {first.text[:500]}"
            retry_after = first.headers.get("retry-after")
            assert retry_after is not None and retry_after.strip().isdigit() and int(retry_after) >= 1, f"Retry-After: {retry_after!r}"
            assert_error_body(first)
            ready = wait_until(lambda: (r := http.get("/ready")).status_code == 503 and r, 30, 0.2, "/ready answering 503")
            assert "database" in ready.json()["detail"].lower(), ready.json()
            assert http.get("/health").status_code == 200

            # ---- 500 refused requests (100,000 rows): the log's queue stays bounded, and so does the memory
            proc = psutil.Process(server.proc.pid)
            rss_before, depths, statuses = proc.memory_info().rss, [], Counter()
            todo, stop = list(range(REFUSED_REQUESTS)), threading.Event()
            deadline = time.monotonic() + 180

            def refuse():
                with httpx.Client(base_url=server.url, timeout=ACK_TIMEOUT + 15) as c:
                    while time.monotonic() < deadline:
                        with lock:
                            if not todo: return
                            todo.pop()
                        try: response = predict(c, [EXAMPLE_PERSON] * BATCH)
                        except httpx.HTTPError as e:
                            statuses[type(e).__name__] += 1
                            continue
                        statuses[response.status_code] += 1
                        if response.status_code == 503 and not response.headers.get("retry-after"): statuses["503 without Retry-After"] += 1

            def watch():
                with httpx.Client(base_url=server.url, timeout=10) as c:
                    while not stop.wait(0.25): depths.append(queue_depth(c))

            workers = [threading.Thread(target=refuse, daemon=True) for _ in range(20)]
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            for w in workers: w.start()
            for w in workers: w.join(200)
            stop.set()
            watcher.join(15)
            rss_after = proc.memory_info().rss
            assert http.get("/health").status_code == 200
            still_ready = http.get("/ready")
            outage_figures = (f"database down: {accepted_while_down} answers 200 from the journal, then the first refusal after {seconds_to_refuse:.2f} s "
                              f"(Retry-After {retry_after}); "
                              f"{sum(statuses.values())} batches of {BATCH}: {dict(statuses)}; queue depth max "
                              f"{max((d for d in depths if d is not None), default=None)} over {len(depths)} samples; "
                              f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB; /ready {still_ready.status_code}")
            print("\n" + outage_figures)
            assert statuses == Counter({503: REFUSED_REQUESTS}), outage_figures
            assert depths and None not in depths, f"no queue-depth gauge in /metrics: {outage_figures}"
            assert max(depths) <= QUEUE_ROWS, outage_figures
            assert rss_after - rss_before < 150 * 2**20, outage_figures
            assert still_ready.status_code == 503, outage_figures

            # ---- the database is back: predictions are answered again, and nothing answered 200 was lost
            postgres.start()
            back = time.monotonic()
            wait_until(lambda: queue_depth(http) == 0, 60, 0.25, "the backlog draining after the database is back")
            seconds_to_drain = time.monotonic() - back
            wait_until(lambda: predict(http, EXAMPLE_PERSON).status_code == 200, 60, 0.25, "/predict answering 200 after the database is back")
            seconds_to_recover = time.monotonic() - back
            for _ in range(20): assert predict(http, EXAMPLE_PERSON).status_code == 200
            wait_until(lambda: http.get("/ready").status_code == 200, 30, 0.25, "/ready answering 200 after the database is back")
        lost = missing_after_drain(postgres.url, answered)
        print(f"database back: backlog of {QUEUE_ROWS} drained after {seconds_to_drain:.2f} s, /predict 200 after {seconds_to_recover:.2f} s; {len(set(answered))} predictions answered 200 in all, "
              f"{len(lost)} of them missing from the database")
        assert len(set(answered)) == len(answered), "an id was answered twice"
        assert not lost, f"{len(lost)} predictions answered 200 are not in the database, e.g. {sorted(lost)[:5]}"
    finally:
        server.stop()
        if not postgres.running(): postgres.start()


def test_a_hung_database_refuses_predictions_with_503_and_loses_no_answered_one(postgres, tmp_path_factory, mirror):
    """The database is up but the prediction table is locked (a stuck migration, a long transaction): the drain's commits
    hang, so the journal acknowledges predictions until `log_queue_rows` of them wait, then /predict answers 503 with
    Retry-After (the backlog is bounded), /health stays 200; once the lock is released the backlog drains, predictions are
    answered again and every one answered 200 is in the database."""
    import psycopg

    settings = new_champion_project(tmp_path_factory.mktemp("hung"), mirror)[0].model_copy(update={"database_url": postgres.url})
    server = ApiServer(settings, env={"INCOMEOPS_LOG_ACK_TIMEOUT_SECONDS": str(ACK_TIMEOUT), "INCOMEOPS_LOG_QUEUE_ROWS": str(QUEUE_ROWS)}).start()
    answered, statuses, lock = [], Counter(), threading.Lock()
    try:
        with httpx.Client(base_url=server.url, timeout=ACK_TIMEOUT + 20) as http:
            for _ in range(10):
                response = http.post("/predict", json=EXAMPLE_PERSON)
                assert response.status_code == 200, response.text
                answered.append(response.json()["prediction_id"])
            with psycopg.connect(postgres.url, autocommit=False) as blocker:
                blocker.execute("LOCK TABLE incomeops_predictions IN ACCESS EXCLUSIVE MODE")     # held until the rollback
                todo = list(range(60))

                def send():
                    with httpx.Client(base_url=server.url, timeout=ACK_TIMEOUT + 20) as c:
                        while True:
                            with lock:
                                if not todo: return
                                todo.pop()
                            try: r = c.post("/predict", json=[EXAMPLE_PERSON] * BATCH)
                            except httpx.HTTPError as e:
                                with lock: statuses[type(e).__name__] += 1
                                continue
                            with lock:
                                statuses[r.status_code] += 1
                                if r.status_code == 503 and not r.headers.get("retry-after"): statuses["503 without Retry-After"] += 1
                                if r.status_code == 200: answered.extend(a["prediction_id"] for a in r.json())

                workers = [threading.Thread(target=send, daemon=True) for _ in range(12)]
                for w in workers: w.start()
                for w in workers: w.join(120)
                health = http.get("/health", timeout=5).status_code
                blocker.rollback()
            print(f"\nprediction table locked: {dict(statuses)} for 60 batches of {BATCH}; /health {health}")
            assert set(statuses) == {200, 503} and statuses[200] <= QUEUE_ROWS // BATCH, dict(statuses)   # journaled up to the bound
            assert health == 200
            wait_until(lambda: http.post("/predict", json=EXAMPLE_PERSON).status_code == 200, 60, 0.25, "/predict answering 200 after the lock")
            for _ in range(10):
                response = http.post("/predict", json=EXAMPLE_PERSON)
                assert response.status_code == 200, response.text
                answered.append(response.json()["prediction_id"])
        lost = missing_after_drain(postgres.url, answered)
        assert not lost, f"{len(lost)} predictions answered 200 are not in the database"
    finally: server.stop()
