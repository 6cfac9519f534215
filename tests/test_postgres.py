"""The code path of the compose stack, on a real PostgreSQL server: the service database (prediction log, feedback,
jobs) and an MLflow backend store, through the same code as the SQLite defaults.

The two URLs below come from the environment (`.ci/run` and the CI workflow set them); when they are not set, tests/conftest.py
uses the local test databases that `make system-deps` (scripts/system_deps.sh) creates, if the server answers. Without
either, these tests are skipped.
"""
import os
import threading
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from api_support import ADMIN_KEY, ApiServer, project_settings, register_model
from incomeops.loader import ModelHolder
from incomeops.schema import EXAMPLE_PERSON
from incomeops.store import LogBatch, PredictionLog, Store

SERVICE_URL = os.environ.get("INCOMEOPS_TEST_POSTGRES_URL")
MLFLOW_URL = os.environ.get("INCOMEOPS_TEST_MLFLOW_POSTGRES_URL")
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not (SERVICE_URL and MLFLOW_URL) and not os.environ.get("CI"),
                                 reason="no PostgreSQL: `make system-deps` sets up a local one, or set INCOMEOPS_TEST_POSTGRES_URL and INCOMEOPS_TEST_MLFLOW_POSTGRES_URL")]


def fresh_schema(url: str) -> None:
    "Drop every table in the database, so that each run starts as a new deployment would."
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn: conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(scope="module")
def pg_project(tmp_path_factory, mirror):
    assert SERVICE_URL and MLFLOW_URL, "CI must provide PostgreSQL (see .ci/run)"
    fresh_schema(SERVICE_URL)
    fresh_schema(MLFLOW_URL)
    settings = project_settings(tmp_path_factory.mktemp("pg"), mirror).model_copy(
        update={"database_url": SERVICE_URL, "tracking_uri": MLFLOW_URL,
                "artifact_location": (tmp_path_factory.mktemp("pg-artifacts")).as_uri()})
    _, model = register_model(settings, "lightgbm", {"n_estimators": 30}, threshold=0.5)
    return settings, model


def row(i: int) -> dict:
    return {"prediction_id": uuid.uuid4().hex, "created_at": datetime.now(UTC), "model_version": "1", "probability": i / 10_000,
            "label": i % 2, "features": {"age": 20 + i % 50, "workclass": None}}


def test_store_on_postgresql(pg_project):
    store = Store(SERVICE_URL)
    try:
        rows = [row(i) for i in range(100)]
        assert store.add_predictions(rows) == 100
        statuses = store.record_feedback([(rows[0]["prediction_id"], 1), ("0" * 32, 0), (rows[0]["prediction_id"], 0)])
        assert statuses == ["recorded", "unknown", "duplicate"]
        frame = store.predictions()
        assert len(frame) >= 100 and str(frame["created_at"].dt.tz) == "UTC"
        job = store.create_job("train", {"n_trials": 1})
        assert store.running_job("train")["id"] == job["id"]
        assert store.update_job(job["id"], status="failed", error="x")["status"] == "failed"
    finally: store.close()


def test_prediction_log_loses_nothing_on_postgresql(pg_project, tmp_path):
    store = Store(SERVICE_URL)
    before, counted = store.count_predictions(), store.prediction_totals()["predictions"]
    plog = PredictionLog(store, journal_dir=tmp_path / "journal").start()
    rows, futures = [row(i) for i in range(4_000)], [[] for _ in range(4)]
    threads = [threading.Thread(target=lambda k=k: futures[k].extend(plog.submit([r]) for r in rows[k::4])) for k in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    try:
        assert {f.result(timeout=60) for share in futures for f in share} == {None}      # each acknowledged once journaled
        assert plog.sync(timeout=60)                                                      # ... and then in the database
        plog.close()
        assert store.count_predictions() - before == 4_000 and plog.failures == 0 and plog.depth == 0
        assert store.prediction_totals()["predictions"] - counted == 4_000
    finally: store.close()


def test_a_journal_left_behind_is_replayed_into_postgresql_once(pg_project, tmp_path):
    "A log whose database writes never finish is stopped with its rows journaled; the next log replays them, skipping rows stored already."
    store = Store(SERVICE_URL)
    try:
        before, counted = store.count_predictions(), store.prediction_totals()["predictions"]
        batch = LogBatch([uuid.uuid4().hex for _ in range(500)], datetime.now(UTC), "1", [i / 500 for i in range(500)],
                         [i % 2 for i in range(500)], [{"age": 20 + i % 50, "workclass": None} for i in range(500)])
        store._insert_batches([batch.part(0, 100)])                                       # a drain that committed 100 of them
        def never_written(batches): raise OperationalError("INSERT ...", {}, Exception("server closed the connection (simulated)"))
        store._insert_batches = never_written
        stuck = PredictionLog(store, journal_dir=tmp_path / "journal").start()
        stuck.retry_first = 0.01
        stuck.submit(batch, trusted=True).result(timeout=10)
        stuck.close(timeout=0.5)                                                          # gives up: the 500 stay in the journal
        del store._insert_batches
        assert stuck.depth == 500 and store.count_predictions() - before == 100
        with PredictionLog(store, journal_dir=tmp_path / "journal") as after:
            assert after.replayed == 500 and after.sync(timeout=30)
            assert after.written == 400 and after.failures == 0
        assert store.count_predictions() - before == 500
        assert store.prediction_totals()["predictions"] - counted == 500                 # the hours table counted each row once
        assert set(batch.ids) <= set(store.predictions()["prediction_id"])
    finally: store.close()


def test_registry_on_postgresql_serves_through_the_api(pg_project):
    settings, _ = pg_project
    holder = ModelHolder(settings)
    assert holder.reload() and holder.current.predictor.backend in ("compiled", "onnx")      # a fast path, not the sklearn fallback
    server = ApiServer(settings, env={"INCOMEOPS_API_KEY": ADMIN_KEY}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/predict", json=EXAMPLE_PERSON).json()
            assert answer["model_version"] == "1"
            assert http.post("/feedback", json={"prediction_id": answer["prediction_id"], "label": ">50K"}).status_code == 200
            job = http.post("/jobs/monitor", headers={"X-API-Key": ADMIN_KEY}).json()
            assert http.get(f"/jobs/{job['id']}", headers={"X-API-Key": ADMIN_KEY}).status_code == 200
    finally: server.stop()
    store = Store(SERVICE_URL)
    try: assert answer["prediction_id"] in set(store.predictions()["prediction_id"])
    finally: store.close()
