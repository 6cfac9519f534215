"""Every route of the service in process: answers and refusals through FastAPI's TestClient, with the real parts made small.

The model is a HistGradientBoosting pipeline of 10 trees fitted on 3,000 rows of adult.data, served through ONNX as in
production and wrapped in a `ServedModel` directly (no MLflow); the database is SQLite in the test's own folder; the job
runner is the real one, whose work is a small function instead of a notebook. Each test builds its own service, so no
test depends on another. (tests/test_api.py and tests/test_hostile.py run the same service under uvicorn end to end.)
"""
from __future__ import annotations

import gc
import json
import re
import weakref
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.main import create_app
from app.observability import Metrics
from app.services import Services
from incomeops.cleaning import MODEL_INPUTS, clean_split
from incomeops.config import IncomeOpsError, Settings
from incomeops.data import read_adult
from incomeops.features import model_inputs, target
from incomeops.jobs import JobRunner, leases_table
from incomeops.loader import ModelHolder, ServedModel
from incomeops.predictor import FastPredictor
from incomeops.schema import EXAMPLE_PERSON, MAX_BATCH
from incomeops.store import PredictionLog, Store
from incomeops.summary import summarise_predictions
from incomeops.training import make_model

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY, PREDICT_KEY = "routes-admin-key", "routes-predict-key"
ADMIN = {"X-API-Key": ADMIN_KEY}
JSON = {"content-type": "application/json"}
P = EXAMPLE_PERSON
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
SLICES = b"column,value,rows,roc_auc\nsex,Female,1000,0.91\nsex,Male,2000,0.89\n"
ERROR_KEYS = {"detail", "errors", "errors_omitted"}


class Tiny(NamedTuple):
    served: ServedModel
    pipeline: object


def served_model(pipeline, version: str, threshold: float = 0.4) -> ServedModel:
    "`pipeline` as the loader would serve it, with a model card, a slice table and one plot."
    return ServedModel(name="incomeops", version=version, run_id=None, threshold=threshold,
                       predictor=FastPredictor.from_pipeline(pipeline, threshold), dataset_version="0123456789ab", family="hgb",
                       test_metrics={"roc_auc": 0.9, "accuracy": 0.85}, parity={"rows": 3000, "max_abs_diff": 0.0},
                       evaluation={"model_card.md": b"# The tiny model\n", "slices.csv": SLICES, "roc.png": PNG})


def tiny_model(mirror: Path) -> Tiny:
    "A small real model: 10 trees fitted on 3,000 rows of adult.data."
    df = clean_split(read_adult(mirror / "adult.data").head(3000), "train", drop_duplicates=False)
    pipeline = make_model("hgb", {"max_iter": 10}).fit(model_inputs(df), target(df))
    return Tiny(served_model(pipeline, "7"), pipeline)


@pytest.fixture(scope="module")
def tiny(mirror) -> Tiny:
    "The tiny model (immutable, so the tests of this file share it)."
    return tiny_model(mirror)


class LocalRegistry(ModelHolder):
    "A `ModelHolder` whose registry is the list `champions` (the newest last): `reload` serves the newest, as the real one does."
    def __init__(self, settings: Settings, champions: list[ServedModel]):
        super().__init__(settings)
        self.champions = champions

    def reload(self) -> bool:
        if not self.champions: raise IncomeOpsError(f"the registry has no 'champion' for model '{self.settings.model_name}' yet: train one first")
        changed = self.current is not self.champions[-1]
        self.current = self.champions[-1]
        return changed


class QuickJobs(JobRunner):
    "The real job runner (records, one job of each kind at a time, cancelling) whose jobs do a small piece of work instead of a notebook."
    def __init__(self, store: Store, settings: Settings, hold: bool = False):
        super().__init__(store, settings)
        self.hold = hold                      # jobs wait until cancelled, so that a second one meets the first

    def submit(self, kind: str, params: dict, work) -> dict:
        def quick(control, job_id: str) -> dict:
            if self.hold: control.cancelled.wait()
            return {"kind": kind, "job": job_id}
        return super().submit(kind, params, quick)


def settings_for(folder: Path, **overrides) -> Settings:
    return Settings(root=folder, data_dir=folder / "data", reports_dir=folder / "reports", data_mirror=None,
                    **{"api_key": ADMIN_KEY, "predict_api_key": None, **overrides})


class Service(NamedTuple):
    http: TestClient
    parts: Services


def start_service(stack: ExitStack, folder: Path, tiny: Tiny, champions: list[ServedModel] | None = None, log_started: bool = True,
                  hold_jobs: bool = False, jobs: type[JobRunner] | None = None, **overrides) -> Service:
    """A service of its own in a new folder under `folder`, serving `tiny`'s model, and a TestClient of it; closed with `stack`.
    `champions`: the registry's models ([] for none); `log_started` False: a prediction log whose threads never run;
    `hold_jobs`: jobs wait until cancelled; `jobs`: another runner class; `overrides`: settings."""
    settings = settings_for(folder / f"service-{len(list(folder.iterdir()))}", **overrides)
    settings.data_dir.mkdir(parents=True)
    store = Store.from_settings(settings)
    stack.callback(store.close)
    leases_table.create(store.engine, checkfirst=True)      # the runner remembers created tables by id(engine), which is reused
    predictions = PredictionLog.from_settings(store, settings)
    if log_started: predictions.start()
    stack.callback(predictions.close)
    models = LocalRegistry(settings, [tiny.served] if champions is None else champions)
    if models.champions: models.reload()
    runner = jobs(store, settings) if jobs else QuickJobs(store, settings, hold=hold_jobs)
    stack.callback(cancel_active_jobs, runner)
    parts = Services(settings, store, predictions, models, runner, Metrics())
    return Service(stack.enter_context(TestClient(create_app(services=parts), raise_server_exceptions=False)), parts)


@pytest.fixture
def serve(tmp_path, tiny) -> Iterator:
    "`serve(**options)`: `start_service` for this test; everything it started is closed at its end."
    with ExitStack() as stack: yield partial(start_service, stack, tmp_path, tiny)


def cancel_active_jobs(runner: JobRunner) -> None:
    for job in runner.store.list_jobs(limit=500):
        if job["status"] in ("queued", "running"): runner.cancel(job["id"])


def error_body(response, status: int) -> dict:
    "The error answer, checked against the contract: `status`, JSON, detail, at most 20 errors, errors_omitted."
    assert response.status_code == status, (response.status_code, response.text[:1000])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_KEYS and body["detail"] and len(body["errors"]) <= 20, body
    return body


def problems(response) -> dict[str, str]:
    return {p["field"]: p["problem"] for p in error_body(response, 422)["errors"]}


def logged(service: Service) -> pd.DataFrame:
    "The predictions in the database, once the log has drained what it acknowledged (it answers once they are journaled)."
    assert service.parts.predictions.sync(timeout=30)
    return service.parts.store.predictions().set_index("prediction_id")


def logged_ids(service: Service) -> set[str]:
    return set(logged(service).index)


def probabilities(pipeline, people: list[dict]) -> list[float]:
    "What the trained pipeline itself says of `people`."
    return pipeline.predict_proba(pd.DataFrame([{c: p[c] for c in MODEL_INPUTS} for p in people]))[:, 1].tolist()


# ----------------------------------------------------------------------------------------------- service
def test_health_answers_without_a_model_and_ready_says_why_not(serve):
    none = serve(champions=[])
    assert none.http.get("/health").json()["status"] == "ok"
    body = error_body(none.http.get("/ready"), 503)
    assert "cannot predict yet" in body["detail"] and "no champion" in body["detail"]
    assert serve().http.get("/ready").json() == {"ready": True, "model_version": "7"}


def test_ready_is_503_with_retry_after_while_the_prediction_log_cannot_write(serve):
    response = serve(log_started=False).http.get("/ready")
    assert "cannot acknowledge predictions" in error_body(response, 503)["detail"] and response.headers["retry-after"] == "5"


def test_metrics_count_requests_by_route_and_predictions_by_label(serve, tiny):
    service = serve()
    answers = service.http.post("/predict", json=[P] * 3).json()
    service.http.post("/predict", json={**P, "age": "old"})
    assert service.parts.predictions.sync(timeout=30)                  # answered once journaled; written to the database behind
    text = service.http.get("/metrics").text
    assert 'incomeops_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'incomeops_http_requests_total{method="POST",route="/predict",status="422"} 1.0' in text
    label = answers[0]["label"]
    assert f'incomeops_predictions_total{{label="{label}"}} 3.0' in text
    assert "incomeops_prediction_log_written 3.0" in text



def test_mlflows_dataframe_split_table_is_a_batch_answered_and_logged_as_the_array_is(serve):
    service = serve()
    people = [P, {**P, "age": 60, "capital_gain": 15_000}, {**P, "education": None, "education_num": 16}]
    columns = [c for c in P if c != "education"] + ["education"]
    table = {"dataframe_split": {"columns": columns, "data": [[p.get(c) for c in columns] for p in people], "index": [0, 1, 2]}}
    as_table, as_array = service.http.post("/predict", json=table), service.http.post("/predict", json=people)
    assert as_table.status_code == 200 and [a["probability"] for a in as_table.json()] == [a["probability"] for a in as_array.json()]
    assert service.parts.predictions.sync(timeout=30)
    logged = service.parts.store.predictions()
    assert set(a["prediction_id"] for a in as_table.json()) <= set(logged["prediction_id"])     # answered means logged
    one_row = {"dataframe_split": {"columns": columns, "data": [[P.get(c) for c in columns]]}}
    assert isinstance(service.http.post("/predict", json=one_row).json(), list)                  # a table is a batch, even of one


def test_a_table_that_is_not_one_or_has_a_bad_row_is_named_and_nothing_is_logged(serve):
    service = serve()
    columns = list(P)
    row = [P[c] for c in columns]
    cases = [({"columns": columns, "data": [row, row[:-1]]}, "[1]", "has 12 values for 13 columns"),
             ({"columns": columns, "data": [row, [*row[:-1], "Atlantis"]]}, "[1].native_country", "is not one of"),
             ({"columns": [*columns[:-1], "age"], "data": [row]}, "(request)", "distinct field names"),
             ({"columns": columns, "rows": [row]}, "(request)", 'with "columns"'),
             ({"columns": columns, "data": []}, "(request)", "the list is empty")]
    for table, field, words in cases:
        body = error_body(service.http.post("/predict", json={"dataframe_split": table}), 422)
        assert body["errors"][0]["field"] == field and words in body["errors"][0]["problem"], body
        assert "Atlantis" not in json.dumps(body)                                                # named, never echoed
    assert service.parts.predictions.sync(timeout=30) and len(service.parts.store.predictions()) == 0

def test_metrics_count_refused_predictions_by_the_field_named_and_never_by_a_clients_key(serve):
    service = serve()
    renamed = {**P, "workclass": "Private-sector"}                       # a category renamed upstream
    for body in (renamed, [P, renamed, renamed], {**P, "age": 12, "workclass": "x"}, {**P, "salary": 1}, [], [{**P, "x" * 60: 1}]):
        assert service.http.post("/predict", json=body).status_code == 422
    text = service.http.get("/metrics").text
    assert 'incomeops_predict_refusals_total{field="workclass"} 3.0' in text    # per request, not per person
    assert 'incomeops_predict_refusals_total{field="age"} 1.0' in text
    assert 'incomeops_predict_refusals_total{field="(other)"} 2.0' in text     # unknown keys are not labels of their own
    assert 'incomeops_predict_refusals_total{field="(request)"} 1.0' in text
    assert "salary" not in text and "xxx" not in text


# ----------------------------------------------------------------------------------------------- model
def test_the_model_description_is_the_served_model_s(serve, tiny):
    answer = serve().http.get("/model").json()
    expected = tiny.served.describe()
    assert answer.keys() == expected.keys()
    assert {k: v for k, v in answer.items() if k != "loaded_at"} == {k: v for k, v in expected.items() if k != "loaded_at"}
    assert datetime.fromisoformat(answer["loaded_at"]) == tiny.served.loaded_at
    assert answer["loaded_at"] == tiny.served.loaded_at.isoformat()          # "+00:00", as the service always wrote it, not "Z"
    assert "minimum" not in answer["input_schema"]["sex"]             # keys the library leaves out stay out


def test_model_card_and_plots(serve):
    http = serve().http
    card = http.get("/model/card").json()
    assert card == {"version": "7", "markdown": "# The tiny model\n", "plots": ["roc.png"],
                    "slices": [{"column": "sex", "value": "Female", "rows": 1000, "roc_auc": 0.91},
                               {"column": "sex", "value": "Male", "rows": 2000, "roc_auc": 0.89}]}
    plot = http.get("/model/plots/roc.png")
    assert plot.content == PNG and plot.headers["content-type"] == "image/png"
    missing = error_body(http.get("/model/plots/model_card.md"), 404)
    assert "has no such plot; it has roc.png" in missing["detail"]


def test_model_routes_are_503_until_a_model_is_served(serve):
    http = serve(champions=[]).http
    for path in ("/model", "/model/card", "/model/plots/roc.png"):
        assert "cannot predict yet" in error_body(http.get(path), 503)["detail"], path


def test_predict_without_a_model_refuses_a_bad_person_first_then_answers_503(serve):
    http = serve(champions=[]).http
    assert error_body(http.post("/predict", json={**P, "age": 5}), 422)["errors"] == [{"field": "age", "problem": "must be at least 17"}]
    assert "cannot predict yet" in error_body(http.post("/predict", json=P), 503)["detail"]


def test_reload_serves_the_registry_s_newest_champion_and_says_whether_it_changed(serve, tiny):
    service = serve()
    service.parts.models.champions.append(served_model(tiny.pipeline, "8", threshold=0.6))
    assert service.http.post("/model/reload", headers=ADMIN).json() == {"changed": True, "model_version": "8"}
    assert service.http.post("/model/reload", headers=ADMIN).json() == {"changed": False, "model_version": "8"}
    answer = service.http.post("/predict", json=P).json()
    assert (answer["model_version"], answer["threshold"]) == ("8", 0.6)
    assert "incomeops_model_version 8.0" in service.http.get("/metrics").text


class Cycle:
    "An object in a reference cycle: only the cyclic collector frees it."
    def __init__(self): self.me = self


def test_a_reload_that_changes_the_model_collects_the_old_heap_then_freezes_the_new_one(serve, tiny):
    service = serve()
    left_by_the_old_model = Cycle()
    gone = weakref.ref(left_by_the_old_model)
    gc.freeze()                                   # as the previous reload left it: the old model's objects frozen
    try:
        del left_by_the_old_model
        service.parts.models.champions.append(served_model(tiny.pipeline, "9"))
        assert service.http.post("/model/reload", headers=ADMIN).json()["changed"] is True
        assert gone() is None                     # unfrozen and collected, not kept forever in the permanent generation
        assert gc.get_freeze_count() > 0          # and what serves now is frozen: full collections skip it
    finally: gc.unfreeze()                        # the test process's own heap goes back to the collector


def test_reload_with_an_empty_registry_is_503_and_keeps_nothing_half_done(serve):
    response = serve(champions=[]).http.post("/model/reload", headers=ADMIN)
    body = error_body(response, 503)
    assert body["detail"].startswith("the service cannot do this now: the registry has no 'champion'")
    assert response.headers["retry-after"] == "5"


# ----------------------------------------------------------------------------------------------- predictions
def test_one_prediction_is_the_pipeline_s_and_is_logged(serve, tiny):
    service = serve()
    answer = service.http.post("/predict", json=P).json()
    assert answer["probability"] == pytest.approx(probabilities(tiny.pipeline, [P])[0], abs=1e-6)
    assert answer["label"] == (">50K" if answer["probability"] >= 0.4 else "<=50K")
    assert (answer["model_name"], answer["model_version"], answer["threshold"]) == ("incomeops", "7", 0.4)
    assert re.fullmatch(r"[0-9a-f]{32}", answer["prediction_id"])
    row = logged(service).loc[answer["prediction_id"]]
    assert (row["model_version"], row["age"], row["education"]) == ("7", P["age"], P["education"])


def test_a_batch_is_answered_in_order_and_logged_whole(serve, tiny):
    service = serve()
    people = [{**P, "age": age, "hours_per_week": 20 + age % 40} for age in range(17, 91)]
    answers = service.http.post("/predict", json=people).json()
    assert [a["probability"] for a in answers] == pytest.approx(probabilities(tiny.pipeline, people), abs=1e-6)
    ids = [a["prediction_id"] for a in answers]
    assert len(set(ids)) == len(people) and set(ids) == logged_ids(service)


def test_a_large_batch_is_scored_off_the_event_loop_with_the_same_answers(serve, tiny):
    people = [{**P, "age": 17 + i % 70} for i in range(2_000)]                     # about 500 KB: parsed and scored in a thread
    assert len(json.dumps(people)) > 64 * 1024
    answers = serve().http.post("/predict", json=people).json()
    assert [a["probability"] for a in answers] == pytest.approx(probabilities(tiny.pipeline, people), abs=1e-6)


def test_what_ifs_are_answered_but_not_logged_and_accept_no_feedback(serve):
    service = serve()
    what_if = service.http.post("/predict", params={"log": "false"}, json=[P, P]).json()
    assert len(what_if) == 2 and logged_ids(service) == set()
    unknown = service.http.post("/feedback", json={"prediction_id": what_if[0]["prediction_id"], "label": ">50K"})
    assert "no prediction has id" in error_body(unknown, 404)["detail"]


def test_hyphenated_names_question_marks_and_the_education_rank_alone_are_accepted(serve):
    http = serve().http
    base = http.post("/predict", json=P, params={"log": "false"}).json()["probability"]
    hyphenated = {k.replace("_", "-"): v for k, v in P.items()}
    by_rank = {k: v for k, v in P.items() if k != "education"}
    for body in (hyphenated, by_rank):
        assert http.post("/predict", json=body, params={"log": "false"}).json()["probability"] == pytest.approx(base)
    assert http.post("/predict", json={**P, "workclass": "?", "occupation": None}).status_code == 200


@pytest.mark.parametrize("body, field, words", [
    ({**P, "age": "old"}, "age", "whole number"),
    ({**P, "age": 12}, "age", "at least 17"),
    ({**P, "native_country": "Atlantis"}, "native_country", "known categories"),
    ({k: v for k, v in P.items() if k != "capital_gain"}, "capital_gain", "is required"),
    ({**P, "salary": 1}, "salary", "not a known field"),
    ({**P, "education_num": 3}, "education, education_num", "disagree"),
    ({k: v for k, v in P.items() if not k.startswith("education")}, "education, education_num", "give education or education_num"),
    ([], "(request)", "the list is empty"),
    ([P] * (MAX_BATCH + 1), "(request)", "at most 10,000"),
    ([P, {**P, "sex": "X"}], "[1].sex", "known categories"),
    (42, "(request)", "JSON object"),
], ids=["type", "range", "category", "missing", "unknown-field", "educations-disagree", "no-education", "empty-list",
        "too-many", "batch-index", "not-an-object"])
def test_invalid_people_are_422_naming_the_field_and_nothing_is_logged(serve, body, field, words):
    service = serve()
    response = service.http.post("/predict", json=body)
    found = problems(response)
    assert field in found and words in found[field], found
    assert response.json()["detail"].startswith(f"invalid request: {response.json()['errors'][0]['field']}")
    assert logged_ids(service) == set()


def test_a_long_list_of_problems_is_capped_at_20_and_counted(serve):
    response = serve().http.post("/predict", json=[{**P, "extra_a": 1, "extra_b": 2}] * 5_000)
    body = error_body(response, 422)
    assert len(body["errors"]) == 20 and body["errors_omitted"] == 10_000 - 20 and "and 9,990 more" in body["detail"]


@pytest.mark.parametrize("content, headers, status, words", [
    (b"", JSON, 400, "empty"),
    (b'{"age": 39,', JSON, 400, "not valid JSON"),
    (b'{"sex": "\xff"}', JSON, 400, "not UTF-8"),
    (b'{"age": 39, "age": 40}', JSON, 400, "'age' twice"),
    (b'{"age": NaN}', JSON, 400, "NaN"),
    (b"[" * 5000, JSON, 400, "nested too deeply"),
    (json.dumps(P).encode(), {"content-type": "text/plain"}, 415, "must be JSON"),
    (b"[" + b" " * 9000 + b"]", JSON, 413, "larger than 8,192 bytes"),
], ids=["empty", "truncated", "not-utf8", "key-twice", "nan", "too-deep", "text-plain", "too-large"])
def test_bodies_the_parser_refuses(serve, content, headers, status, words):
    http = serve(max_body_bytes=8192).http
    for path in ("/predict", "/feedback"):
        assert words in error_body(http.post(path, content=content, headers=headers), status)["detail"], path


def test_json_with_a_charset_is_json_and_the_what_if_flag_is_checked(serve):
    http = serve().http
    assert http.post("/predict", content=json.dumps(P), headers={"content-type": "application/json; charset=utf-8"}).status_code == 200
    assert "query.log" in problems(http.post("/predict", json=P, params={"log": "perhaps"}))


def test_a_prediction_key_closes_predictions_feedback_model_monitoring_and_metrics(serve):
    http = serve(predict_api_key=PREDICT_KEY).http
    for method, path in (("POST", "/predict"), ("POST", "/feedback"), ("GET", "/model"), ("GET", "/model/card"),
                         ("GET", "/monitoring/summary"), ("GET", "/monitoring/report"), ("GET", "/metrics")):
        for headers in ({}, {"X-API-Key": "wrong"}, ADMIN):
            assert error_body(http.request(method, path, headers=headers), 401)["detail"] == "missing or wrong X-API-Key header"
    key = {"X-API-Key": PREDICT_KEY}
    assert http.post("/predict", json=P, headers=key).status_code == 200
    assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200       # probes need no key


def test_the_key_is_checked_before_the_body_is_read(serve):
    http = serve(predict_api_key=PREDICT_KEY).http
    assert http.post("/predict", content=b'{"age": ', headers=JSON).status_code == 401
    assert http.post("/jobs/train", content=b"[" * 5000, headers=JSON).status_code == 401


def test_a_prediction_the_log_cannot_take_is_503_with_retry_after_and_not_answered(serve):
    full = serve(log_started=False, log_queue_rows=1)
    response = full.http.post("/predict", json=[P, P])
    assert "waiting for the database" in error_body(response, 503)["detail"] and response.headers["retry-after"] == "1"
    stuck = serve(log_started=False, log_ack_timeout_seconds=0.05)          # queued, never written while the request waits
    response = stuck.http.post("/predict", json=P)
    body = error_body(response, 503)
    assert body["detail"].startswith("the prediction log did not commit within 0.05 s") and response.headers["retry-after"] == "2"


def test_feedback_waits_for_the_predictions_to_reach_the_database_and_says_when_they_have_not(serve):
    stuck = serve(log_started=False, log_ack_timeout_seconds=0.05)
    stuck.http.post("/predict", json=P)                                          # 503: waiting in the log, never written
    response = stuck.http.post("/feedback", json={"prediction_id": "0" * 32, "label": ">50K"})
    assert "recent predictions are not in the database yet" in error_body(response, 503)["detail"]
    assert response.headers["retry-after"] == "2"


# ----------------------------------------------------------------------------------------------- feedback
def test_feedback_is_recorded_once_and_unknown_or_repeated_labels_are_said(serve):
    service = serve()
    first, second, third = (a["prediction_id"] for a in service.http.post("/predict", json=[P] * 3).json())
    ok = service.http.post("/feedback", json={"prediction_id": first, "label": ">50K"})
    assert ok.json() == {"recorded": 1, "results": [{"prediction_id": first, "status": "recorded"}]}
    assert "first label is kept" in error_body(service.http.post("/feedback", json={"prediction_id": first, "label": "<=50K"}), 409)["detail"]
    assert error_body(service.http.post("/feedback", json={"prediction_id": "0" * 32, "label": ">50K"}), 404)["detail"] == f"no prediction has id {'0' * 32}"
    batch = service.http.post("/feedback", json=[{"prediction_id": second, "label": "<=50K"}, {"prediction_id": "f" * 32, "label": ">50K"},
                                                 {"prediction_id": first, "label": ">50K"}, {"prediction_id": third, "label": "<=50K"}])
    assert batch.status_code == 200 and batch.json()["recorded"] == 2
    assert [r["status"] for r in batch.json()["results"]] == ["recorded", "unknown", "duplicate", "recorded"]
    labels = logged(service)["true_label"]
    assert (labels[first], labels[second], labels[third]) == (1, 0, 0)
    assert 'incomeops_feedback_total{status="duplicate"} 2.0' in service.http.get("/metrics").text


@pytest.mark.parametrize("body, field", [
    ({"prediction_id": "0" * 32, "label": "rich"}, "label"),
    ({"prediction_id": "ABC" * 10 + "DE", "label": ">50K"}, "prediction_id"),
    ({"prediction_id": "0" * 32}, "label"),
    ({"prediction_id": "0" * 32, "label": ">50K", "comment": "x"}, "comment"),
    ([{"prediction_id": "0" * 32, "label": ">50K"}, {"prediction_id": "0" * 32, "label": 1}], "[1].label"),
    ([], "(request)"),
    ("yes", "(request)"),
])
def test_invalid_feedback_is_422_naming_the_field(serve, body, field):
    assert field in problems(serve().http.post("/feedback", json=body))


def test_a_database_failure_is_503_saying_what_failed(serve):
    service = serve()
    answer = service.http.post("/predict", json=P).json()
    with service.parts.store.engine.begin() as conn: conn.execute(sa.text("DROP TABLE incomeops_feedback"))
    response = service.http.post("/feedback", json={"prediction_id": answer["prediction_id"], "label": ">50K"})
    assert error_body(response, 503)["detail"].startswith("the service cannot do this now: ") and response.headers["retry-after"] == "5"
    assert service.http.get("/health").status_code == 200


# ----------------------------------------------------------------------------------------------- jobs
def test_admin_routes_need_the_admin_key_and_are_off_without_one(serve):
    keyed, unkeyed = serve().http, serve(api_key=None).http
    routes = (("POST", "/jobs/train"), ("POST", "/jobs/monitor"), ("POST", "/jobs/retrain"), ("GET", "/jobs"),
              ("GET", "/jobs/0123456789ab"), ("POST", "/jobs/0123456789ab/cancel"), ("POST", "/model/reload"))
    for method, path in routes:
        for headers in ({}, {"X-API-Key": "wrong"}):
            assert error_body(keyed.request(method, path, headers=headers), 401)["detail"] == "missing or wrong X-API-Key header"
        assert "INCOMEOPS_API_KEY" in error_body(unkeyed.request(method, path, headers=ADMIN), 403)["detail"]
    assert keyed.get("/jobs", headers=ADMIN).json() == []


def test_a_job_runs_once_at_a_time_and_can_be_cancelled_once(serve):
    service = serve(hold_jobs=True)
    started = service.http.post("/jobs/train", json={"n_trials": 0, "cv_folds": 2}, headers=ADMIN)
    job = started.json()
    assert started.status_code == 202 and (job["kind"], job["status"]) == ("train", "queued")
    assert job["params"]["n_trials"] == 0 and job["params"]["cv_folds"] == 2
    busy = error_body(service.http.post("/jobs/train", headers=ADMIN), 409)
    assert job["id"] in busy["detail"]
    cancelled = service.http.post(f"/jobs/{job['id']}/cancel", headers=ADMIN).json()
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", "cancelled on request")
    assert "has already ended" in error_body(service.http.post(f"/jobs/{job['id']}/cancel", headers=ADMIN), 409)["detail"]
    assert service.http.get(f"/jobs/{job['id']}", headers=ADMIN).json()["status"] == "cancelled"


def test_jobs_finish_with_their_outcome_and_are_listed_newest_first(serve):
    service = serve()
    monitor = service.http.post("/jobs/monitor", headers=ADMIN).json()
    service.parts.jobs.wait(monitor["id"])
    retrain = service.http.post("/jobs/retrain", headers=ADMIN).json()
    service.parts.jobs.wait(retrain["id"])
    done = service.http.get(f"/jobs/{monitor['id']}", headers=ADMIN).json()
    assert (done["status"], done["outcome"]) == ("succeeded", {"kind": "monitor", "job": monitor["id"]}) and done["seconds"] >= 0
    assert retrain["params"] == {"reason": "asked for through the API", "champion_version": "7"}
    assert [j["id"] for j in service.http.get("/jobs", headers=ADMIN).json()] == [retrain["id"], monitor["id"]]
    assert [j["id"] for j in service.http.get("/jobs", headers=ADMIN, params={"kind": "monitor"}).json()] == [monitor["id"]]
    assert len(service.http.get("/jobs", headers=ADMIN, params={"limit": 1}).json()) == 1
    assert 'incomeops_jobs_total{kind="monitor"} 1.0' in service.http.get("/metrics").text


def test_unknown_jobs_are_404_without_repeating_the_id(serve):
    http = serve().http
    assert error_body(http.get("/jobs/0123456789ab", headers=ADMIN), 404)["detail"] == "no job has id 0123456789ab"
    for path in ("/jobs/monitor-me", "/jobs/MARKER/cancel"):
        response = http.request("POST" if path.endswith("cancel") else "GET", path, headers=ADMIN)
        assert "12 hexadecimal digits" in error_body(response, 404)["detail"] and "MARKER" not in response.text


def test_invalid_job_requests_are_refused_and_start_nothing(serve):
    service = serve()
    assert "n_trials" in problems(service.http.post("/jobs/train", json={"n_trials": 501}, headers=ADMIN))
    assert "candidates" in problems(service.http.post("/jobs/train", json={"candidates": "forest"}, headers=ADMIN))
    assert "(request)" in problems(service.http.post("/jobs/train", json=[], headers=ADMIN))
    assert "query.limit" in problems(service.http.get("/jobs", headers=ADMIN, params={"limit": 0}))
    assert "query.kind" in problems(service.http.get("/jobs", headers=ADMIN, params={"kind": "bake"}))
    assert "cannot predict yet" in error_body(serve(champions=[]).http.post("/jobs/retrain", headers=ADMIN), 503)["detail"]
    assert service.parts.store.list_jobs() == []


def test_a_production_data_version_with_no_file_is_422_naming_the_field(serve):
    service = serve(jobs=JobRunner)                     # the real runner: it refuses before any notebook would start
    response = service.http.post("/jobs/train", json={"production_data_version": "0123456789ab", "evidence": "holdout"}, headers=ADMIN)
    found = problems(response)
    assert "0123456789ab" in found["production_data_version"] and str(service.parts.settings.root) not in response.text
    assert service.parts.store.list_jobs() == []


def test_training_and_retraining_exclude_each_other(serve):
    service = serve(hold_jobs=True)
    retrain = service.http.post("/jobs/retrain", headers=ADMIN).json()
    assert retrain["id"] in error_body(service.http.post("/jobs/train", headers=ADMIN), 409)["detail"]
    assert service.http.post("/jobs/monitor", headers=ADMIN).status_code == 202


# ----------------------------------------------------------------------------------------------- monitoring
def test_the_monitoring_summary_is_the_library_s_with_nothing_dropped(serve):
    service = serve()
    ids = [a["prediction_id"] for a in service.http.post("/predict", json=[P, {**P, "age": 60, "capital_gain": 15_000}]).json()]
    service.http.post("/feedback", json=[{"prediction_id": ids[0], "label": "<=50K"}, {"prediction_id": ids[1], "label": ">50K"}])
    summary = service.http.get("/monitoring/summary").json()
    expected = summarise_predictions(service.parts.store, service.parts.models.current, service.parts.settings)
    assert summary.keys() == expected.keys() and summary["metrics"].keys() == expected["metrics"].keys()
    assert (summary["predictions"], summary["labelled"], summary["model_version"]) == (2, 2, "7")
    assert summary["metrics"]["n"] == 2 and summary["metrics"]["roc_auc"] == expected["metrics"]["roc_auc"]
    assert sum(v["count"] for v in summary["volume"]) == 2 and summary["volume"][0].keys() == {"hour", "label", "count"}


def test_the_monitoring_summary_without_labels_has_no_metrics(serve):
    summary = serve(champions=[]).http.get("/monitoring/summary").json()
    assert summary == {"predictions": 0, "labelled": 0, "model_version": None, "last_check": None, "retraining": [], "alerts": [], "volume": [],
                       "checks": [], "drift_history": [], "important_inputs": []}


def test_the_drift_report_is_404_until_a_check_writes_one(serve):
    service = serve()
    assert "no drift report yet" in error_body(service.http.get("/monitoring/report"), 404)["detail"]
    report = service.parts.settings.reports_dir / "monitoring" / "drift.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>drift</html>")
    answer = service.http.get("/monitoring/report")
    assert answer.text == "<html>drift</html>" and answer.headers["content-type"].startswith("text/html")


# ----------------------------------------------------------------------------------------------- errors
class BrokenJobs(QuickJobs):
    "A runner with a bug: starting a monitoring job fails with an error no one planned for."
    def monitor(self, holder=None) -> dict: return {}["no such key"]


def test_a_bug_is_a_500_with_an_incident_id_and_no_details(serve, caplog):
    response = serve(jobs=BrokenJobs).http.post("/jobs/monitor", headers=ADMIN)
    detail = error_body(response, 500)["detail"]
    incident = re.fullmatch(r"internal error ([0-9a-f]{12}): the service logged the details", detail).group(1)
    assert "no such key" not in response.text and incident in caplog.text and "KeyError" in caplog.text


def test_unknown_paths_and_methods_answer_in_the_error_shape(serve):
    http = serve().http
    assert error_body(http.get("/nowhere"), 404)["detail"] == "Not Found"
    wrong = http.get("/predict")
    assert error_body(wrong, 405)["detail"] == "Method Not Allowed" and wrong.headers["allow"] == "POST"
