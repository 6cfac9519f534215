"""Hostile requests against the running service: every one is refused with the status the spec names, the error body
keeps its contract (detail, at most 20 errors, errors_omitted), submitted values are never echoed, and the service stays
healthy after each.

Most cases run on the session's shared server (`api`, admin key set); the key cases on a module server that also sets
a prediction key (and no admin key). Job cases ask for a tiny budget with register and promote off, so that a service
that wrongly accepts one does not disturb the tests that share the server; any job such a case creates is a failure
(and is cancelled).
"""
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from api_support import (
    ADMIN_KEY,
    ApiServer,
    answer_json,
    answer_status,
    assert_error_body,
    job_ids,
    raw_exchange,
    wait_for_job,
)
from incomeops.schema import EXAMPLE_PERSON
from incomeops.store import Store

pytestmark = pytest.mark.timeout(300)

ADMIN = {"X-API-Key": ADMIN_KEY}
PREDICT_KEY = "hostile-predict-key"
JSON = {"content-type": "application/json"}
MARK = "Zq7xMARKERvalue"                                   # a value that must never come back
LONG_KEY = "unknown_" + "k" * 32 + "TAILMARKER" * 20           # a key name: at most its first 40 characters may come back
CANARY = Path(tempfile.gettempdir()) / f"incomeops-canary-{os.getpid()}-{uuid.uuid4().hex[:8]}"
MiB = 2**20
P = EXAMPLE_PERSON
ID = "0123456789abcdef" * 2
SMALL_JOB = {"candidates": "logreg", "model_family": "logreg", "n_trials": 0, "cv_folds": 2, "register": False, "promote": False}
INJECTION = f"age > 0 and age.__init__.__globals__.get('sys').modules.get('os').system('touch {CANARY}') == 0"
SPEC_INJECTION = "age > 0 and age.__init__.__globals__.get('sys').modules.get('os').system('id') == 0"


def j(obj) -> bytes: return json.dumps(obj).encode()
def person(**changes) -> dict: return {**P, **changes}
def without(*names: str, base: dict = P) -> dict: return {k: v for k, v in base.items() if k not in names}
def job(**changes) -> bytes: return j({**SMALL_JOB, **changes})
def raw_person(fragment: str, replaces: str = '"age": 39') -> bytes:
    "The example person as JSON text with `replaces` swapped for `fragment` (for what json.dumps cannot write)."
    text = json.dumps(P)
    assert replaces in text
    return text.replace(replaces, fragment).encode()
def duplicated(obj: dict, key: str, value) -> bytes: return (json.dumps(obj)[:-1] + f', {json.dumps(key)}: {json.dumps(value)}}}').encode()
def big(n: int = 9 * MiB) -> bytes: return b'{"pad": "' + b"x" * n + b'"}'
def streamed(body: bytes):
    "The body sent with chunked transfer encoding (no Content-Length): the server must count what it reads."
    return lambda: (body[i:i + MiB] for i in range(0, len(body), MiB))


class Case(NamedTuple):
    name: str
    method: str
    path: str
    headers: dict
    body: object            # bytes, or a callable giving an iterator of chunks (streamed)
    status: int
    field: object = None    # the error's field: a name, a tuple of acceptable names, a prefix ending in '*', or '*part*'
    words: str | None = None  # words in that field's problem (or, without a field, in the detail or any problem)


CASES = [
    # ---------------------------------------------------------------- /predict: bodies the JSON parser cannot take
    Case("predict-empty-body", "POST", "/predict", JSON, b"", 400, None, "empty"),
    Case("predict-truncated-json", "POST", "/predict", JSON, b'{"age": 39,', 400, None, "JSON"),
    Case("predict-not-utf8", "POST", "/predict", JSON, b'{"sex": "\xff\xfe"}', 400, None, "UTF-8"),
    Case("predict-utf16-body", "POST", "/predict", JSON, json.dumps(P).encode("utf-16"), 400, None, "UTF-8"),
    Case("predict-nested-5000-deep", "POST", "/predict", JSON, b"[" * 5000, 400, None, "nest"),
    Case("predict-nested-objects-5000-deep", "POST", "/predict", JSON, b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, None, "nest"),
    Case("predict-5000-digit-integer", "POST", "/predict", JSON, raw_person('"age": 1' + "0" * 4999), 400, None, "number"),
    Case("predict-nan-literal", "POST", "/predict", JSON, raw_person('"age": NaN'), 400, None, "NaN"),
    Case("predict-infinity-literal", "POST", "/predict", JSON, raw_person('"capital_gain": Infinity', '"capital_gain": 2174'), 400, None, "Infinity"),
    Case("predict-minus-infinity-literal", "POST", "/predict", JSON, raw_person('"hours_per_week": -Infinity', '"hours_per_week": 40'), 400, None, "Infinity"),
    Case("predict-same-key-twice", "POST", "/predict", JSON, duplicated(P, "age", 40), 400, None, "twice"),
    Case("predict-same-key-twice-in-a-batch", "POST", "/predict", JSON,
         b"[" + j(P) + b"," + duplicated(P, "sex", "Female") + b"]", 400, None, "twice"),
    # ---------------------------------------------------------------- /predict: the shape of the body
    Case("predict-null-body", "POST", "/predict", JSON, b"null", 422, "(request)"),
    Case("predict-string-body", "POST", "/predict", JSON, j(f"hello {MARK}"), 422, "(request)"),
    Case("predict-number-body", "POST", "/predict", JSON, b"42", 422, "(request)"),
    Case("predict-empty-list", "POST", "/predict", JSON, b"[]", 422, "(request)", "empty"),
    Case("predict-10001-people", "POST", "/predict", JSON, j([P] * 10_001), 422, "(request)", "10,000"),
    Case("predict-list-of-lists", "POST", "/predict", JSON, j([[P]]), 422, "[0]*"),
    Case("predict-batch-with-a-number", "POST", "/predict", JSON, j([P, 5]), 422, "[1]*"),
    # ---------------------------------------------------------------- /predict: types and ranges, field named
    Case("predict-age-boolean", "POST", "/predict", JSON, j(person(age=True)), 422, "age"),
    Case("predict-age-float-with-fraction", "POST", "/predict", JSON, j(person(age=39.5)), 422, "age"),
    Case("predict-age-string", "POST", "/predict", JSON, j(person(age="39")), 422, "age"),
    Case("predict-age-null", "POST", "/predict", JSON, j(person(age=None)), 422, "age"),
    Case("predict-age-list", "POST", "/predict", JSON, j(person(age=[39])), 422, "age"),
    Case("predict-age-marker-string", "POST", "/predict", JSON, j(person(age=MARK)), 422, "age"),
    Case("predict-age-above-90", "POST", "/predict", JSON, j(person(age=200)), 422, "age", "at most 90"),
    Case("predict-age-below-17", "POST", "/predict", JSON, j(person(age=16)), 422, "age", "at least 17"),
    Case("predict-age-huge", "POST", "/predict", JSON, j(person(age=10**30)), 422, "age"),
    Case("predict-capital-gain-above-range", "POST", "/predict", JSON, j(person(capital_gain=100_000)), 422, "capital_gain", "at most"),
    Case("predict-capital-loss-negative", "POST", "/predict", JSON, j(person(capital_loss=-1)), 422, "capital_loss", "at least"),
    Case("predict-hours-zero", "POST", "/predict", JSON, j(person(hours_per_week=0)), 422, "hours_per_week", "at least 1"),
    Case("predict-hours-boolean", "POST", "/predict", JSON, j(person(hours_per_week=False)), 422, "hours_per_week"),
    Case("predict-education-num-17", "POST", "/predict", JSON, j(without("education", base=person(education_num=17))), 422, "education_num"),
    Case("predict-fnlwgt-string", "POST", "/predict", JSON, j(person(fnlwgt=MARK)), 422, "fnlwgt"),
    Case("predict-workclass-list", "POST", "/predict", JSON, j(person(workclass=["Private"])), 422, "workclass"),
    Case("predict-workclass-object", "POST", "/predict", JSON, j(person(workclass={"name": "Private"})), 422, "workclass"),
    Case("predict-workclass-number", "POST", "/predict", JSON, j(person(workclass=3)), 422, "workclass"),
    Case("predict-occupation-boolean", "POST", "/predict", JSON, j(person(occupation=True)), 422, "occupation"),
    Case("predict-sex-marker-category", "POST", "/predict", JSON, j(person(sex=MARK)), 422, "sex", "known categories"),
    Case("predict-race-empty-string", "POST", "/predict", JSON, j(person(race="")), 422, "race"),
    Case("predict-education-marker-category", "POST", "/predict", JSON, j(without("education_num", base=person(education=MARK))), 422, "education"),
    Case("predict-country-lowercase", "POST", "/predict", JSON, j(person(native_country="united-states")), 422, "native_country"),
    # ---------------------------------------------------------------- /predict: missing, unknown and doubled fields
    Case("predict-missing-age", "POST", "/predict", JSON, j(without("age")), 422, "age", "is required"),
    Case("predict-missing-workclass", "POST", "/predict", JSON, j(without("workclass")), 422, "workclass", "is required"),
    Case("predict-missing-native-country", "POST", "/predict", JSON, j(without("native_country")), 422, "native_country", "is required"),
    Case("predict-missing-relationship", "POST", "/predict", JSON, j(without("relationship")), 422, "relationship", "is required"),
    Case("predict-missing-hours", "POST", "/predict", JSON, j(without("hours_per_week")), 422, "hours_per_week", "is required"),
    Case("predict-missing-both-educations", "POST", "/predict", JSON, j(without("education", "education_num")), 422,
         ("education", "education_num", "education, education_num")),
    Case("predict-educations-disagree", "POST", "/predict", JSON, j(person(education_num=3)), 422,
         ("education", "education_num", "education, education_num"), "disagree"),
    Case("predict-unknown-field", "POST", "/predict", JSON, j(person(salary=MARK)), 422, "salary", "is not a known field"),
    Case("predict-long-unknown-key", "POST", "/predict", JSON, j({**P, LONG_KEY: 1}), 422, LONG_KEY[:20] + "*", "is not a known field"),
    Case("predict-marital-status-given-twice", "POST", "/predict", JSON, j({**P, "marital-status": "Divorced"}), 422,
         ("marital_status", "marital-status"), "is given twice"),
    Case("predict-native-country-given-twice", "POST", "/predict", JSON, j({**P, "native-country": "Mexico"}), 422,
         ("native_country", "native-country"), "is given twice"),
    Case("predict-batch-error-named-by-index", "POST", "/predict", JSON, j([P, P, P, person(age=True)]), 422, "[3].age"),
    Case("predict-batch-missing-field-named-by-index", "POST", "/predict", JSON, j([P, without("sex")]), 422, "[1].sex", "is required"),
    Case("predict-escaped-key-repeats-a-key", "POST", "/predict", JSON, (json.dumps(P)[:-1] + ', "\\u0061ge": 40}').encode(), 400, None, "twice"),
    Case("predict-key-with-control-characters", "POST", "/predict", JSON, j({**P, "a\u0000ge\n": 1}), 422, "a*", "is not a known field"),
    Case("predict-megabyte-category-value", "POST", "/predict", JSON, j(person(sex=MARK + "A" * MiB)), 422, "sex"),
    Case("predict-10000-unknown-keys-in-one-person", "POST", "/predict", JSON, j({**P, **{f"unknown{i:05d}{'x' * 60}": MARK for i in range(10_000)}}),
         422, "unknown*", "is not a known field"),
    Case("predict-log-parameter-not-a-boolean", "POST", f"/predict?log={MARK}", JSON, j(P), 422, "*log*"),
    # ---------------------------------------------------------------- /predict: content types and sizes
    Case("predict-text-plain", "POST", "/predict", {"content-type": "text/plain"}, j(P), 415, None, "JSON"),
    Case("predict-form-urlencoded", "POST", "/predict", {"content-type": "application/x-www-form-urlencoded"}, b"age=39&sex=Male", 415),
    Case("predict-multipart", "POST", "/predict", {"content-type": "multipart/form-data; boundary=xyz"},
         b'--xyz\r\nContent-Disposition: form-data; name="age"\r\n\r\n39\r\n--xyz--\r\n', 415),
    Case("predict-xml", "POST", "/predict", {"content-type": "application/xml"}, b"<person><age>39</age></person>", 415),
    Case("predict-9-mib-body", "POST", "/predict", JSON, big(), 413, None, "larger than"),
    Case("predict-9-mib-body-streamed", "POST", "/predict", JSON, streamed(big()), 413, None, "larger than"),
    # ---------------------------------------------------------------- /feedback
    Case("feedback-uppercase-id", "POST", "/feedback", JSON, j({"prediction_id": ID.upper(), "label": ">50K"}), 422, "prediction_id"),
    Case("feedback-short-id", "POST", "/feedback", JSON, j({"prediction_id": ID[:31], "label": ">50K"}), 422, "prediction_id"),
    Case("feedback-id-number", "POST", "/feedback", JSON, j({"prediction_id": 12345, "label": ">50K"}), 422, "prediction_id"),
    Case("feedback-id-marker", "POST", "/feedback", JSON, j({"prediction_id": (MARK * 3)[:32], "label": ">50K"}), 422, "prediction_id"),
    Case("feedback-label-unknown", "POST", "/feedback", JSON, j({"prediction_id": ID, "label": MARK}), 422, "label"),
    Case("feedback-label-number", "POST", "/feedback", JSON, j({"prediction_id": ID, "label": 1}), 422, "label"),
    Case("feedback-missing-label", "POST", "/feedback", JSON, j({"prediction_id": ID}), 422, "label", "is required"),
    Case("feedback-unknown-field", "POST", "/feedback", JSON, j({"prediction_id": ID, "label": ">50K", "comment": MARK}), 422,
         "comment", "is not a known field"),
    Case("feedback-unknown-id", "POST", "/feedback", JSON, j({"prediction_id": ID, "label": ">50K"}), 404),
    Case("feedback-batch-error-named-by-index", "POST", "/feedback", JSON,
         j([{"prediction_id": ID, "label": ">50K"}, {"prediction_id": ID, "label": "rich"}]), 422, "[1].label"),
    Case("feedback-10000-bad-labels", "POST", "/feedback", JSON, j([{"prediction_id": ID, "label": MARK}] * 10_000), 422, "[0].label"),
    Case("feedback-empty-list", "POST", "/feedback", JSON, b"[]", 422, "(request)"),
    Case("feedback-10001-labels", "POST", "/feedback", JSON, j([{"prediction_id": ID, "label": ">50K"}] * 10_001), 422, "(request)"),
    Case("feedback-string-body", "POST", "/feedback", JSON, j(MARK), 422, "(request)"),
    Case("feedback-text-plain", "POST", "/feedback", {"content-type": "text/plain"}, j({"prediction_id": ID, "label": ">50K"}), 415, None, "JSON"),
    Case("feedback-form-urlencoded", "POST", "/feedback", {"content-type": "application/x-www-form-urlencoded"}, b"label=%3E50K", 415),
    Case("feedback-truncated-json", "POST", "/feedback", JSON, b'{"prediction_id": ', 400),
    Case("feedback-same-key-twice", "POST", "/feedback", JSON, duplicated({"prediction_id": ID, "label": ">50K"}, "label", "<=50K"), 400, None, "twice"),
    Case("feedback-nested-5000-deep", "POST", "/feedback", JSON, b"[" * 5000, 400, None, "nest"),
    Case("feedback-nan-literal", "POST", "/feedback", JSON, b'{"prediction_id": NaN, "label": ">50K"}', 400, None, "NaN"),
    Case("feedback-9-mib-body", "POST", "/feedback", JSON, big(), 413, None, "larger than"),
    # ---------------------------------------------------------------- /jobs/train: the old code paths are gone (regressions)
    Case("train-query-code-execution", "POST", "/jobs/train", {**JSON, **ADMIN}, job(train_query=INJECTION), 422, "train_query", "is not a known field"),
    Case("train-query-spec-payload", "POST", "/jobs/train", {**JSON, **ADMIN}, job(train_query=SPEC_INJECTION), 422, "train_query", "is not a known field"),
    Case("eval-query-code-execution", "POST", "/jobs/train", {**JSON, **ADMIN}, job(eval_query=INJECTION), 422, "eval_query", "is not a known field"),
    Case("eval-query-spec-payload", "POST", "/jobs/train", {**JSON, **ADMIN}, job(eval_query=SPEC_INJECTION), 422, "eval_query", "is not a known field"),
    Case("harmless-train-query-is-gone-too", "POST", "/jobs/train", {**JSON, **ADMIN}, job(train_query="age > 30"), 422, "train_query", "is not a known field"),
    Case("extra-train-path-url", "POST", "/jobs/train", {**JSON, **ADMIN}, job(extra_train_path="http://127.0.0.1:1/x.parquet", evidence="holdout"),
         422, "extra_train_path", "is not a known field"),
    Case("extra-train-path-etc-passwd", "POST", "/jobs/train", {**JSON, **ADMIN}, job(extra_train_path="/etc/passwd", evidence="holdout"),
         422, "extra_train_path", "is not a known field"),
    Case("params-override-max-iter-100-million", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(candidates="hgb", model_family="hgb", params_override={"max_iter": 100_000_000}), 422, "params_override.max_iter"),
    Case("params-override-unknown-hyperparameter", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(candidates="hgb", model_family="hgb", params_override={"max_iter": 50, "bogus_param": 1}), 422, "params_override.bogus_param"),
    Case("params-override-with-auto-family", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(candidates="hgb", model_family="auto", params_override={"max_iter": 50}), 422, "params_override*"),
    Case("params-override-as-a-string", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(candidates="hgb", model_family="hgb", params_override='{"max_iter": 50}'), 422, "params_override"),
    Case("params-override-value-an-object", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(candidates="hgb", model_family="hgb", params_override={"max_iter": {"__class__": MARK}}), 422, "params_override.max_iter"),
    # ---------------------------------------------------------------- /jobs/train: TrainingParams
    Case("train-data-version-path", "POST", "/jobs/train", {**JSON, **ADMIN}, job(data_version="../../etc/passwd"), 422, "data_version"),
    Case("train-candidates-unknown", "POST", "/jobs/train", {**JSON, **ADMIN}, job(candidates="forest"), 422, "candidates"),
    Case("train-candidates-shell", "POST", "/jobs/train", {**JSON, **ADMIN}, job(candidates="logreg;touch /tmp/x"), 422, "candidates"),
    Case("train-model-family-unknown", "POST", "/jobs/train", {**JSON, **ADMIN}, job(model_family="forest"), 422, "model_family"),
    Case("train-n-trials-501", "POST", "/jobs/train", {**JSON, **ADMIN}, job(n_trials=501), 422, "n_trials"),
    Case("train-n-trials-negative", "POST", "/jobs/train", {**JSON, **ADMIN}, job(n_trials=-1), 422, "n_trials"),
    Case("train-cv-folds-1", "POST", "/jobs/train", {**JSON, **ADMIN}, job(cv_folds=1), 422, "cv_folds"),
    Case("train-cv-folds-11", "POST", "/jobs/train", {**JSON, **ADMIN}, job(cv_folds=11), 422, "cv_folds"),
    Case("train-evidence-unknown", "POST", "/jobs/train", {**JSON, **ADMIN}, job(evidence="both"), 422, "evidence"),
    Case("train-production-data-version-path", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(production_data_version="../../../etc/passwd", evidence="holdout"), 422, "production_data_version"),
    Case("train-unknown-field", "POST", "/jobs/train", {**JSON, **ADMIN}, job(notebook=MARK), 422, "notebook", "is not a known field"),
    Case("train-filter-unknown-column", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "salary", "op": "==", "value": 1}]), 422, "train_filter[0]*"),
    Case("train-filter-unknown-operator", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "age", "op": "~=", "value": 30}]), 422, "train_filter[0]*"),
    Case("train-filter-ordering-a-category", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "sex", "op": "<", "value": "Male"}]), 422, "train_filter[0]*"),
    Case("train-filter-string-for-a-number", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "age", "op": ">", "value": "old"}]), 422, "train_filter[0].value"),
    Case("train-filter-number-out-of-range", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "age", "op": ">", "value": 1000}]), 422, "train_filter[0].value"),
    Case("train-filter-in-without-a-list", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "age", "op": "in", "value": 30}]), 422, "train_filter[0].value"),
    Case("train-filter-unknown-category", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "sex", "op": "==", "value": MARK}]), 422, "train_filter[0].value"),
    Case("train-filter-extra-key", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(train_filter=[{"column": "age", "op": ">", "value": 30, "code": "__import__('os')"}]), 422, "train_filter[0].code"),
    Case("train-filter-as-a-query-string", "POST", "/jobs/train", {**JSON, **ADMIN}, job(train_filter="age > 30"), 422, "train_filter*"),
    Case("eval-filter-second-condition-bad", "POST", "/jobs/train", {**JSON, **ADMIN},
         job(eval_filter=[{"column": "age", "op": ">", "value": 30}, {"column": "age", "op": "<=", "value": True}]), 422, "eval_filter[1].value"),
    Case("train-list-body", "POST", "/jobs/train", {**JSON, **ADMIN}, b"[]", 422),
    Case("train-text-plain", "POST", "/jobs/train", {"content-type": "text/plain", **ADMIN}, job(), 415, None, "JSON"),
    Case("train-form-urlencoded", "POST", "/jobs/train", {"content-type": "application/x-www-form-urlencoded", **ADMIN}, b"n_trials=0", 415),
    Case("train-truncated-json", "POST", "/jobs/train", {**JSON, **ADMIN}, b'{"n_trials": ', 400),
    Case("train-same-key-twice", "POST", "/jobs/train", {**JSON, **ADMIN}, duplicated(SMALL_JOB, "cv_folds", 2), 400, None, "twice"),
    Case("train-nan-literal", "POST", "/jobs/train", {**JSON, **ADMIN}, b'{"n_trials": NaN}', 400, None, "NaN"),
    Case("train-5000-digit-integer", "POST", "/jobs/train", {**JSON, **ADMIN}, b'{"seed": 1' + b"0" * 4999 + b"}", 400, None, "number"),
    Case("train-nested-5000-deep", "POST", "/jobs/train", {**JSON, **ADMIN}, b'{"params_override": ' + b"[" * 5000, 400, None, "nest"),
    # ---------------------------------------------------------------- /jobs: keys, and the size limit before the key
    Case("train-wrong-key", "POST", "/jobs/train", {**JSON, "X-API-Key": "wrong"}, job(), 401),
    Case("train-9-mib-with-the-key", "POST", "/jobs/train", {**JSON, **ADMIN}, big(), 413, None, "larger than"),
    Case("train-9-mib-without-a-key", "POST", "/jobs/train", JSON, big(), 413, None, "larger than"),
    Case("train-9-mib-with-a-wrong-key", "POST", "/jobs/train", {**JSON, "X-API-Key": "wrong"}, big(), 413, None, "larger than"),
    Case("train-9-mib-streamed-without-a-key", "POST", "/jobs/train", JSON, streamed(big()), 413, None, "larger than"),
    Case("cancel-unknown-job", "POST", "/jobs/000000000000/cancel", ADMIN, b"", 404),
    Case("cancel-without-a-key", "POST", "/jobs/000000000000/cancel", {}, b"", 401),
]

KEYED_CASES = [
    Case("keyed-predict-without-key", "POST", "/predict", JSON, j(P), 401),
    Case("keyed-predict-wrong-key", "POST", "/predict", {**JSON, "X-API-Key": "wrong"}, j(P), 401),
    Case("keyed-predict-admin-key-is-not-the-predict-key", "POST", "/predict", {**JSON, **ADMIN}, j(P), 401),
    Case("keyed-feedback-without-key", "POST", "/feedback", JSON, j({"prediction_id": ID, "label": ">50K"}), 401),
    Case("keyed-model-without-key", "GET", "/model", {}, None, 401),
    Case("keyed-model-card-without-key", "GET", "/model/card", {}, None, 401),
    Case("keyed-model-plot-without-key", "GET", "/model/plots/roc.png", {}, None, 401),
    Case("keyed-summary-without-key", "GET", "/monitoring/summary", {}, None, 401),
    Case("keyed-report-without-key", "GET", "/monitoring/report", {}, None, 401),
    Case("keyed-metrics-without-key", "GET", "/metrics", {}, None, 401),
    Case("keyed-jobs-train-without-admin-key-configured", "POST", "/jobs/train", {**JSON, "X-API-Key": PREDICT_KEY}, job(), 403),
    Case("keyed-jobs-list-without-admin-key-configured", "GET", "/jobs", {"X-API-Key": PREDICT_KEY}, None, 403),
    Case("keyed-reload-without-admin-key-configured", "POST", "/model/reload", {"X-API-Key": PREDICT_KEY}, None, 403),
    Case("keyed-predict-2-mib-without-key", "POST", "/predict", JSON, big(2 * MiB), 413),
    Case("keyed-predict-2-mib-streamed-without-key", "POST", "/predict", JSON, streamed(big(2 * MiB)), 413),
    Case("keyed-feedback-2-mib-wrong-key", "POST", "/feedback", {**JSON, "X-API-Key": "wrong"}, big(2 * MiB), 413),
    Case("keyed-jobs-train-2-mib-without-key", "POST", "/jobs/train", JSON, big(2 * MiB), 413),
    Case("keyed-predict-text-plain-with-key", "POST", "/predict", {"content-type": "text/plain", "X-API-Key": PREDICT_KEY}, j(P), 415),
]


@pytest.fixture(scope="module")
def http(api):
    with httpx.Client(base_url=api.url, timeout=120) as client: yield client


@pytest.fixture(scope="module")
def keyed(champion_project):
    "A server that needs a prediction key and has no admin key; bodies above 1 MiB refused."
    server = ApiServer(champion_project[0], env={"INCOMEOPS_PREDICT_API_KEY": PREDICT_KEY, "INCOMEOPS_MAX_BODY_BYTES": str(MiB)}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client: yield client
    finally: server.stop()


def field_matches(expected, actual: str) -> bool:
    if isinstance(expected, tuple): return any(field_matches(e, actual) for e in expected)
    if expected.startswith("*") and expected.endswith("*"): return expected[1:-1] in actual
    return actual.startswith(expected[:-1]) if expected.endswith("*") else actual == expected


def send(http: httpx.Client, case: Case) -> httpx.Response:
    body = case.body() if callable(case.body) else case.body
    return http.request(case.method, case.path, headers=case.headers, content=body)


def check_refusal(http: httpx.Client, case: Case) -> dict:
    "Send `case`; the answer is its status with a well-formed error body that names the problem and echoes nothing."
    response = send(http, case)
    text = response.text
    assert response.status_code == case.status, f"{case.name}: expected {case.status}, got {response.status_code}: {text[:1500]}"
    assert MARK not in text, f"{case.name}: the submitted value came back: {text[:1500]}"
    assert LONG_KEY[:41] not in text and "TAILMARKER" not in text, f"{case.name}: more than 40 characters of a key name came back: {text[:600]}"
    assert len(response.content) < 64 * 1024, f"{case.name}: a {len(response.content):,}-byte error body"
    try: body = response.json()
    except ValueError: raise AssertionError(f"{case.name}: the error body is not JSON: {text[:600]!r}") from None
    problems = body.get("errors") or [] if isinstance(body, dict) else []
    if case.field is not None:
        named = [p for p in problems if field_matches(case.field, p.get("field", ""))]
        assert named, f"{case.name}: no error names {case.field!r}: {body}"
        if case.words: assert any(case.words.lower() in p["problem"].lower() for p in named), f"{case.name}: {case.words!r} not in {named}"
    elif case.words:
        said = " ".join([str(body.get("detail")), *(str(p.get("problem")) for p in problems)]).lower()
        assert case.words.lower() in said, f"{case.name}: {case.words!r} not in {body}"
    body = assert_error_body(response)
    assert "\n" not in body["detail"] and len(body["detail"]) <= 2000, f"{case.name}: the detail is not one sentence: {body['detail'][:500]!r}"
    if case.status == 422:
        assert problems, f"{case.name}: a 422 without errors: {body}"
        assert problems[0]["field"] in body["detail"], f"{case.name}: the detail does not name the first problem: {body}"
    health = http.get("/health", timeout=10)
    assert health.status_code == 200, f"{case.name}: /health answered {health.status_code} afterwards"
    return body


def cancel_stray_jobs(http: httpx.Client, ids: set[str]) -> list[dict]:
    "Jobs a hostile request should never have created: cancelled (best effort) and waited for, so later tests find a quiet server."
    finished = []
    for job_id in ids:
        http.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
        try: finished.append(wait_for_job(http, job_id, ADMIN, timeout=90))
        except AssertionError as e: finished.append({"id": job_id, "status": f"still active: {e}"})
    return finished


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_refused_with_its_status_and_the_service_stays_healthy(http, case):
    touches_jobs = case.path.startswith("/jobs")
    before = job_ids(http, ADMIN) if touches_jobs else set()
    try: check_refusal(http, case)
    finally:
        if touches_jobs:
            created = job_ids(http, ADMIN) - before
            if created:
                stray = cancel_stray_jobs(http, created)
                pytest.fail(f"{case.name}: the refused request created job(s) {stray}")
    assert not CANARY.exists(), f"{case.name}: the injected command ran ({CANARY} exists)"


@pytest.mark.parametrize("case", KEYED_CASES, ids=[c.name for c in KEYED_CASES])
def test_keys_are_checked_after_the_size_limit_on_a_server_with_a_prediction_key(keyed, case):
    check_refusal(keyed, case)


def test_open_routes_and_the_right_key_work_on_a_server_with_a_prediction_key(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200
    key = {"X-API-Key": PREDICT_KEY}
    answer = keyed.post("/predict", json=P, headers=key)
    assert answer.status_code == 200, answer.text
    for path in ("/model", "/monitoring/summary", "/metrics"):
        assert keyed.get(path, headers=key).status_code == 200, path
    label = keyed.post("/feedback", json={"prediction_id": answer.json()["prediction_id"], "label": ">50K"}, headers=key)
    assert label.status_code == 200, label.text


def test_json_with_a_charset_parameter_is_still_json(http):
    response = http.post("/predict", content=j(P), headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_the_code_execution_payload_runs_nothing_and_creates_no_job(http):
    "The regression of the train_query injection, end to end: refused, no job, the command's file never appears."
    before = job_ids(http, ADMIN)
    refused = [http.post("/jobs/train", json={**SMALL_JOB, name: INJECTION}, headers=ADMIN) for name in ("train_query", "eval_query")]
    created = job_ids(http, ADMIN) - before
    stray = cancel_stray_jobs(http, created) if created else []     # a job would run the payload within seconds: wait for it
    assert [r.status_code for r in refused] == [422, 422], [r.text[:500] for r in refused]
    assert not created, f"the payload created job(s): {stray}"
    assert not CANARY.exists(), f"the injected command ran: {CANARY} exists"


@pytest.mark.parametrize("path, headers", [("/jobs/train", {}), ("/jobs/train", {"X-API-Key": "wrong"}), ("/predict", {}),
                                           ("/feedback", {})], ids=["train-no-key", "train-wrong-key", "predict", "feedback"])
def test_a_declared_length_over_the_limit_is_refused_before_any_body_byte_is_sent(api, path, headers):
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {50 * MiB}\r\n{extra}"
            "Connection: close\r\n\r\n").encode()
    answer, sent = raw_exchange(api.port, head, body_chunks=(), chunk_timeout=10, total_timeout=20)
    assert sent == 0
    assert answer_status(answer) == 413, f"no 413 for a declared 50 MB body without sending it: {answer[:600]!r}"
    assert_error_body_raw(answer)
    assert httpx.get(f"{api.url}/health", timeout=10).status_code == 200


def test_a_50_mb_body_without_a_key_is_refused_413_without_being_read_to_the_end(api):
    "Chunked upload (no Content-Length) of 50 MB to /jobs/train with no key: 413, answered long before the last byte."
    head = (b"POST /jobs/train HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n")
    piece = b"x" * (256 * 1024)
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(200))       # 50 MiB in 200 chunks
    answer, sent = raw_exchange(api.port, b"".join([head, b'4\r\n{"a"\r\n', b'3\r\n: "\r\n']), chunks, chunk_timeout=10, total_timeout=90)
    print(f"\n50 MB chunked upload to /jobs/train without a key: {sent / MiB:.1f} MiB sent before the answer {answer[:40]!r}")
    assert answer_status(answer) == 413, f"expected 413 for 50 MB without a key, got {answer[:600]!r} after {sent / MiB:.1f} MiB"
    assert sent < 40 * MiB, f"the server read {sent / MiB:.1f} MiB of a body over its 8 MiB limit before answering"
    assert httpx.get(f"{api.url}/health", timeout=10).status_code == 200


def assert_error_body_raw(answer: bytes) -> None:
    body = answer_json(answer)
    assert isinstance(body, dict) and set(body) == {"detail", "errors", "errors_omitted"}, body


def test_a_production_data_version_with_no_file_is_refused_or_fails_without_leaking_paths(http, api):
    before = job_ids(http, ADMIN)
    response = http.post("/jobs/train", json={**SMALL_JOB, "evidence": "holdout", "production_data_version": "0123456789ab"}, headers=ADMIN)
    if response.status_code == 422:
        body = assert_error_body(response)
        assert any(p["field"] == "production_data_version" for p in body["errors"]), body
        leaked = response.text
    else:
        assert response.status_code == 202, response.text
        job = wait_for_job(http, response.json()["id"], ADMIN, timeout=240)
        assert job["status"] == "failed", job
        leaked = job["error"] or ""
        assert "0123456789ab" in leaked or "production" in leaked, job["error"]
    for secret in (str(api.settings.root), str(api.settings.data_dir), "/tmp", "/work", ".parquet", "Traceback"):
        assert secret not in leaked, f"the answer reveals {secret!r}: {leaked[:800]}"
    assert job_ids(http, ADMIN) - before <= ({response.json()["id"]} if response.status_code == 202 else set())


def test_an_error_list_is_capped_and_the_service_answers_health_while_it_validates(http):
    """10,000 people with 3 unknown keys each (30,000 problems): 422 with at most 20 errors, the rest counted, a small body;
    meanwhile /health answers (each probe within 1 s), probed by a thread while the big request is in flight."""
    people = [{**P, "extra_a": MARK, "extra_b": {"v": MARK}, "extra_c": [MARK]} for _ in range(10_000)]
    body = j(people)
    probes, stop = [], threading.Event()

    def probe():
        with httpx.Client(base_url=http.base_url, timeout=1.0) as c:
            while not stop.is_set() and len(probes) < 5_000:
                t0 = time.monotonic()
                try: status = c.get("/health").status_code
                except httpx.HTTPError as e: status = type(e).__name__
                probes.append((t0, time.monotonic() - t0, status))
                time.sleep(0.02)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        wait_start = time.monotonic()
        while not probes and time.monotonic() - wait_start < 10: time.sleep(0.01)
        started = time.monotonic()
        response = http.post("/predict", content=body, headers=JSON)
        ended = time.monotonic()
    finally:
        stop.set()
        thread.join(15)
    during = [p for p in probes if started <= p[0] <= ended]
    assert response.status_code == 422, response.text[:1000]
    assert len(response.content) < 64 * 1024, f"a {len(response.content):,}-byte error body"
    answer = assert_error_body(response)
    assert MARK not in response.text
    assert 1 <= len(answer["errors"]) <= 20 and answer["errors_omitted"] > 0, answer
    assert len(answer["errors"]) + answer["errors_omitted"] == 30_000, (len(answer["errors"]), answer["errors_omitted"])
    assert answer["errors"][0]["field"].startswith("[0]."), answer["errors"][:3]
    assert during, f"no /health probe overlapped the {ended - started:.2f} s request"
    slow = [(round(d, 3), s) for _, d, s in during if s != 200 or d >= 1.0]
    print(f"\n/health while a 10,000-person invalid batch was validated: {len(during)} probes in {ended - started:.2f} s, "
          f"slowest {max(d for _, d, _ in during):.3f} s")
    assert not slow, f"/health did not answer 200 within 1 s while the batch was validated: {slow[:10]} of {len(during)} probes"


def test_a_refused_batch_logs_none_of_its_people(http, api):
    "One bad person in a batch of 500: the whole request is refused, and not one of its 499 good people reaches the log."
    store = Store(api.settings.service_database_url)
    try:
        before = store.count_predictions()
        response = http.post("/predict", json=[P] * 499 + [person(age=True)])
        assert response.status_code == 422 and assert_error_body(response)["errors"][0]["field"] == "[499].age", response.text[:500]
        assert store.count_predictions() == before
    finally: store.close()


def test_capped_feedback_errors_count_every_problem(http):
    response = http.post("/feedback", json=[{"prediction_id": ID.upper(), "label": "rich"}] * 10_000)
    body = assert_error_body(response, 422)
    assert len(body["errors"]) == 20 and len(body["errors"]) + body["errors_omitted"] == 20_000, (len(body["errors"]), body["errors_omitted"])
    assert len(response.content) < 64 * 1024


def test_a_body_just_under_the_limit_is_served(keyed):
    "The limit refuses what is over it, not what is under: a batch of about 0.9 MiB on the 1 MiB server is answered."
    batch = [P] * 3_000
    assert len(j(batch)) < MiB
    response = keyed.post("/predict", json=batch, headers={"X-API-Key": PREDICT_KEY})
    assert response.status_code == 200 and len(response.json()) == 3_000, response.text[:500]
