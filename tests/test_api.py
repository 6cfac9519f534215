"""The HTTP service end to end: uvicorn on loopback, a real MLflow registry, the real prediction log.

Tests that only read share the session's server (the `api` fixture, serving champion version 1, which no test here
changes); a test that changes what is served (a reload, a training job) or needs a log of its own gets its own project
and server (`own_api`). So each test passes alone and in any order.
"""
import json
import signal
import threading

import httpx
import numpy as np
import pandas as pd
import pytest

from api_support import (
    ADMIN_KEY,
    ApiServer,
    clean_frames,
    new_champion_project,
    register_model,
    wait_for_job,
    wait_until,
)
from incomeops.cleaning import MODEL_INPUTS
from incomeops.schema import EXAMPLE_PERSON
from incomeops.store import Store

ADMIN = {"X-API-Key": ADMIN_KEY}
pytestmark = pytest.mark.timeout(900)


def people(frame: pd.DataFrame) -> list[dict]:
    "Request bodies for clean rows: the person's fields, unknowns as null."
    cols = [*MODEL_INPUTS, "education"]
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame[cols].astype(object).to_dict("records")]


@pytest.fixture(scope="module")
def test_rows(champion_project):
    return clean_frames(champion_project[0])[1]


@pytest.fixture(scope="module")
def http(api):
    with httpx.Client(base_url=api.url, timeout=60) as client: yield client


@pytest.fixture
def own_api(tmp_path, mirror):
    "A project of the test's own (LightGBM champion, version 1) served by an API of its own with the admin key; (server, client)."
    settings, _ = new_champion_project(tmp_path / "own", mirror)
    with ApiServer(settings, env={"INCOMEOPS_API_KEY": ADMIN_KEY}) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield server, client


def problems(response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"detail", "errors", "errors_omitted"}
    return {p["field"]: p["problem"] for p in body["errors"]}


# --------------------------------------------------------------------------------------------- service and model
def test_health_ready_and_model_description(http):
    assert http.get("/health").json()["status"] == "ok"
    assert http.get("/ready").json() == {"ready": True, "model_version": "1"}
    model = http.get("/model").json()
    assert (model["name"], model["version"], model["alias"], model["family"]) == ("incomeops", "1", "champion", "lightgbm")
    assert model["threshold"] == pytest.approx(0.45) and model["backend"] in ("onnx", "compiled")    # never the slow pipeline
    assert model["test_metrics"] == {"roc_auc": 0.9, "accuracy": 0.85}
    assert model["parity"]["max_abs_diff"] <= 1e-6 and model["parity"]["rows"] > 16_000     # synthetic + adult.test
    schema = model["input_schema"]
    assert schema["sex"]["categories"] == ["Female", "Male"] and schema["hours_per_week"]["maximum"] == 99
    assert schema["workclass"]["nullable"] and not schema["age"]["nullable"]


# --------------------------------------------------------------------------------------------- predictions
def test_single_prediction_matches_the_registered_pipeline(http, champion_project):
    _, pipeline = champion_project
    answer = http.post("/predict", json=EXAMPLE_PERSON).json()
    expected = pipeline.predict_proba(pd.DataFrame([{c: EXAMPLE_PERSON[c] for c in MODEL_INPUTS}]))[0, 1]
    assert answer["probability"] == pytest.approx(expected, abs=1e-6)
    assert answer["label"] == (">50K" if answer["probability"] >= 0.45 else "<=50K")
    assert (answer["model_name"], answer["model_version"], answer["threshold"]) == ("incomeops", "1", pytest.approx(0.45))
    assert len(answer["prediction_id"]) == 32


def test_batch_predictions_match_the_pipeline_in_order(http, champion_project, test_rows):
    _, pipeline = champion_project
    rows = test_rows.sample(2_000, random_state=0)
    answers = http.post("/predict", json=people(rows)).json()
    expected = pipeline.predict_proba(rows[MODEL_INPUTS])[:, 1]
    assert len(answers) == 2_000 and len({a["prediction_id"] for a in answers}) == 2_000
    np.testing.assert_allclose([a["probability"] for a in answers], expected, atol=1e-6)


def test_what_ifs_are_answered_but_not_logged(http):
    what_if = http.post("/predict", params={"log": "false"}, json=[EXAMPLE_PERSON] * 2).json()
    assert len(what_if) == 2
    unknown = http.post("/feedback", json={"prediction_id": what_if[0]["prediction_id"], "label": ">50K"})
    assert unknown.status_code == 404


def test_hyphenated_names_question_marks_and_education_number_alone(http):
    hyphenated = {k.replace("_", "-"): v for k, v in EXAMPLE_PERSON.items()}
    assert http.post("/predict", json=hyphenated).status_code == 200
    unknowns = {**EXAMPLE_PERSON, "workclass": "?", "occupation": None, "native_country": "?"}
    assert http.post("/predict", json=unknowns).status_code == 200
    by_rank = {k: v for k, v in EXAMPLE_PERSON.items() if k != "education"}
    assert http.post("/predict", json=by_rank).json()["probability"] == pytest.approx(http.post("/predict", json=EXAMPLE_PERSON).json()["probability"])


@pytest.mark.parametrize("body, status, field, words", [
    ({**EXAMPLE_PERSON, "age": "old"}, 422, "age", "whole number"),
    ({**EXAMPLE_PERSON, "age": 12}, 422, "age", "at least 17"),
    ({**EXAMPLE_PERSON, "hours_per_week": 100}, 422, "hours_per_week", "at most 99"),
    ({**EXAMPLE_PERSON, "native_country": "Atlantis"}, 422, "native_country", "known categories"),
    ({k: v for k, v in EXAMPLE_PERSON.items() if k != "capital_gain"}, 422, "capital_gain", "required"),
    ({**EXAMPLE_PERSON, "salary": 1}, 422, "salary", "not a known field"),
    ({**EXAMPLE_PERSON, "education_num": 3}, 422, "education, education_num", "disagree"),
    ([], 422, "(request)", "empty"),
    ([EXAMPLE_PERSON, {**EXAMPLE_PERSON, "sex": "X"}], 422, "[1].sex", "known categories"),
    (42, 422, "(request)", "JSON object"),
])
def test_invalid_people_are_refused_naming_the_field(http, body, status, field, words):
    response = http.post("/predict", json=body)
    assert response.status_code == status
    found = problems(response)
    assert field in found and words in found[field], found


def test_malformed_empty_oversized_bodies(http):
    assert http.post("/predict", content=b'{"age": 39,', headers={"content-type": "application/json"}).status_code == 400
    assert "not UTF-8" in http.post("/predict", content=b"\xff\xfe", headers={"content-type": "application/json"}).json()["detail"]
    assert http.post("/predict", content=b"").status_code == 400
    too_many = http.post("/predict", json=[EXAMPLE_PERSON] * 10_001)
    assert too_many.status_code == 422 and "at most 10,000" in too_many.json()["detail"]
    huge = http.post("/predict", content=b"[" + b" " * (9 * 2**20) + b"]", headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "larger than" in huge.json()["detail"]
    assert http.get("/predict").status_code == 405


def test_every_prediction_reaches_the_log_and_feedback_is_checked(http, api):
    answers = http.post("/predict", json=[EXAMPLE_PERSON] * 3).json()
    first, second, third = (a["prediction_id"] for a in answers)
    ok = http.post("/feedback", json={"prediction_id": first, "label": ">50K"})
    assert ok.status_code == 200 and ok.json() == {"recorded": 1, "results": [{"prediction_id": first, "status": "recorded"}]}
    again = http.post("/feedback", json={"prediction_id": first, "label": "<=50K"})
    assert again.status_code == 409 and "first label is kept" in again.json()["detail"]
    unknown = http.post("/feedback", json={"prediction_id": "0" * 32, "label": ">50K"})
    assert unknown.status_code == 404
    batch = http.post("/feedback", json=[{"prediction_id": second, "label": "<=50K"}, {"prediction_id": "f" * 32, "label": ">50K"},
                                         {"prediction_id": first, "label": ">50K"}, {"prediction_id": third, "label": "<=50K"}])
    assert [r["status"] for r in batch.json()["results"]] == ["recorded", "unknown", "duplicate", "recorded"]
    bad = http.post("/feedback", json={"prediction_id": first, "label": "rich"})
    assert bad.status_code == 422 and "label" in problems(bad)
    store = Store(api.settings.service_database_url)
    try:
        logged = store.predictions().set_index("prediction_id")
        assert {first, second, third} <= set(logged.index)
        assert logged.loc[first, "true_label"] == 1 and logged.loc[second, "true_label"] == 0
        assert logged.loc[first, "model_version"] == "1" and logged.loc[first, "age"] == EXAMPLE_PERSON["age"]
    finally: store.close()


# --------------------------------------------------------------------------------------------- security, metrics
def test_admin_endpoints_need_the_key(http):
    for method, path in (("POST", "/jobs/train"), ("POST", "/jobs/monitor"), ("GET", "/jobs"), ("GET", "/jobs/abc"), ("POST", "/model/reload")):
        assert http.request(method, path).status_code == 401, path
        assert http.request(method, path, headers={"X-API-Key": "wrong"}).status_code == 401, path
    assert http.get("/jobs", headers=ADMIN).status_code == 200
    assert http.get("/jobs/nope", headers=ADMIN).status_code == 404             # not even the form of a job id
    assert http.get("/jobs/0123456789ab", headers=ADMIN).status_code == 404


def test_without_a_configured_key_admin_is_off_and_a_prediction_key_closes_predictions(champion_project):
    with ApiServer(champion_project[0], env={"INCOMEOPS_PREDICT_API_KEY": "client-key"}) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        refused = http.post("/jobs/train", headers=ADMIN)
        assert refused.status_code == 403 and "INCOMEOPS_API_KEY" in refused.json()["detail"]
        assert http.post("/predict", json=EXAMPLE_PERSON).status_code == 401
        assert http.post("/predict", json=EXAMPLE_PERSON, headers={"X-API-Key": "client-key"}).status_code == 200
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200    # probes need no key
        for path in ("/model", "/monitoring/summary", "/metrics"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers={"X-API-Key": "client-key"}).status_code == 200, path


def test_metrics_in_prometheus_format(http):
    assert http.post("/predict", json=EXAMPLE_PERSON).status_code == 200
    assert http.post("/predict", json={**EXAMPLE_PERSON, "age": 12}).status_code == 422
    text = http.get("/metrics").text
    assert 'incomeops_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'incomeops_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/predict"}' in text
    assert 'incomeops_http_requests_total{method="POST",route="/predict",status="422"}' in text
    assert "incomeops_predictions_total{label=" in text
    assert "incomeops_model_version 1.0" in text and "incomeops_prediction_log_queue_depth" in text


# --------------------------------------------------------------------------------------------- reload and jobs
def test_reload_swaps_the_champion_without_failing_a_request(own_api):
    api, http = own_api
    statuses, stop = [], threading.Event()

    def hammer():
        with httpx.Client(base_url=api.url, timeout=30) as c:
            while not stop.is_set(): statuses.append(c.post("/predict", json=EXAMPLE_PERSON).json().get("model_version", "error"))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_until(lambda: statuses, 30, 0.05, "a first answer to the hammering client")
        register_model(api.settings, "hgb", {"max_iter": 40}, threshold=0.5)
        answer = http.post("/model/reload", headers=ADMIN)
        again = http.post("/model/reload", headers=ADMIN)
        wait_until(lambda: "2" in statuses, 30, 0.05, "an answer of version 2 to the hammering client")
    finally:
        stop.set()
        thread.join()
    assert answer.json() == {"changed": True, "model_version": "2"} and again.json()["changed"] is False
    assert http.get("/model").json()["family"] == "hgb"
    assert "error" not in statuses and statuses[0] == "1" and set(statuses) == {"1", "2"}
    assert set(statuses[statuses.index("2"):]) == {"2"}, "once the new champion answered, the old one never did again"


def test_training_job_runs_the_notebook_one_at_a_time_and_serves_a_promoted_model(own_api):
    _, http = own_api
    quick = {"candidates": "hgb", "model_family": "hgb", "n_trials": 0, "cv_folds": 2}
    started = http.post("/jobs/train", json=quick, headers=ADMIN)
    assert started.status_code == 202 and started.json()["status"] == "queued"
    busy = http.post("/jobs/train", json=quick, headers=ADMIN)
    assert busy.status_code == 409 and started.json()["id"] in busy.json()["detail"]
    job = wait_for_job(http, started.json()["id"], ADMIN, timeout=600)
    assert job["status"] == "succeeded", job["error"]
    outcome = job["outcome"]
    assert outcome["notebook"].endswith(".ipynb") and outcome["run_id"] and job["seconds"] > 0
    served = http.get("/model").json()["version"]
    assert served == (str(outcome["model_version"]) if outcome["promoted"] else "1")
    assert http.get("/jobs", headers=ADMIN, params={"kind": "train"}).json()[0]["id"] == job["id"]


def test_a_failed_training_job_leaves_the_champion_serving(http):
    before = http.get("/model").json()["version"]
    started = http.post("/jobs/train", json={"data_version": "000000000000", "candidates": "hgb"}, headers=ADMIN)
    assert started.status_code == 202, started.text
    job = wait_for_job(http, started.json()["id"], ADMIN, timeout=600)
    assert job["status"] == "failed" and "000000000000" in job["error"]
    assert http.get("/model").json()["version"] == before
    assert http.post("/predict", json=EXAMPLE_PERSON).status_code == 200


def test_invalid_job_parameters_are_refused(http):
    response = http.post("/jobs/train", json={"candidates": "forest"}, headers=ADMIN)
    body = json.dumps(response.json())
    assert response.status_code == 422 and "candidates" in body and "1 unknown" in body and "forest" not in body   # named, not echoed


def test_monitoring_job_judges_the_served_champion_on_its_own_answers(own_api):
    _, http = own_api
    ids = [a["prediction_id"] for a in http.post("/predict", json=[EXAMPLE_PERSON] * 600).json()]
    assert http.post("/feedback", json=[{"prediction_id": i, "label": ">50K"} for i in ids[:20]]).status_code == 200
    assert http.get("/monitoring/summary").json()["predictions"] == 600      # answered means logged
    job = wait_for_job(http, http.post("/jobs/monitor", headers=ADMIN).json()["id"], ADMIN, timeout=60)
    assert job["status"] == "succeeded", job["error"]
    outcome = job["outcome"]
    assert outcome["champion"]["version"] == "1"
    assert outcome["window_rows"] == 600 and outcome["labelled_rows"] == 20
    assert outcome["performance"] is None                                        # 20 labels are too few to judge
    kinds = {a["kind"] for a in outcome["alarms"]}
    assert kinds == {"drift", "input_drift", "score_drift", "positive_share", "data_quality"}, outcome["alarms"]   # one person, 600 times:
    severe = next(a for a in outcome["alarms"] if a["kind"] == "input_drift")   # every input stuck, so every answer the same
    assert severe["inputs"], severe
    assert not outcome["retrain"] and outcome["retraining"] is None              # broken inputs are no reason to retrain
    summary = http.get("/monitoring/summary").json()
    assert {a["kind"] for a in summary["alerts"]} >= kinds
    assert {r["kind"] for r in summary["checks"][-1]["rules"]} == kinds                # the page's history names the rules that fired
    assert {d["feature"] for d in summary["drift_history"]} == set(MODEL_INPUTS)
    assert {d["feature"] for d in summary["drift_history"] if "input_drift" in d["rules"]} == set(severe["inputs"])


def test_clean_shutdown_loses_no_logged_prediction(champion_project):
    with ApiServer(champion_project[0]) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            ids = [a["prediction_id"] for a in http.post("/predict", json=[EXAMPLE_PERSON] * 500).json()]
            ids += [http.post("/predict", json=EXAMPLE_PERSON).json()["prediction_id"] for _ in range(50)]
        assert server.stop() in (0, -signal.SIGTERM)        # uvicorn re-raises the signal after a graceful shutdown
    assert "stopped: 550 predictions written to the log" in server.output()
    store = Store(champion_project[0].service_database_url)
    try: logged = store.predictions()
    finally: store.close()
    assert set(ids) <= set(logged["prediction_id"]) and not logged["prediction_id"].duplicated().any()
