"""IncomeOps HTTP service: routes and wiring only; the logic lives in the `incomeops` library.

Run it with `make serve`, or `uvicorn app.main:app` from the project folder (settings from INCOMEOPS_* variables).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError
from pydantic_core import to_json

from app.limits import ERRORS_SHOWN, JSON_TYPES, BodyLimitMiddleware, error_body, parse_json
from app.observability import Metrics, ObservabilityMiddleware, configure_logging
from incomeops import __version__
from incomeops.cleaning import MODEL_INPUTS
from incomeops.config import IncomeOpsError, Settings, get_settings
from incomeops.jobs import JobConflict, JobNotFound, JobRunner
from incomeops.loader import ModelHolder, ServedModel
from incomeops.schema import EXAMPLE_PERSON, MAX_BATCH, Person, validation_problems
from incomeops.store import LogUnavailable, PredictionLog, Store
from incomeops.summary import summarise_predictions
from incomeops.training import TrainingParams, UnknownProductionData

log = logging.getLogger("incomeops.api")

LABELS = ("<=50K", ">50K")
IN_THREAD_BYTES = 64 * 1024       # bodies larger than this are parsed and validated off the event loop
JOB_ID = r"^[0-9a-f]{12}$"
PEOPLE = TypeAdapter(list[Person])
JSON_TYPE = "application/json"


# ----------------------------------------------------------------------------------------------- response schemas
class Prediction(BaseModel):
    "One answer of `POST /predict`."
    prediction_id: str = Field(description="Quote it in `POST /feedback` to report the true income")
    label: Literal["<=50K", ">50K"]
    probability: float = Field(ge=0, le=1, description="Estimated probability that income is above 50K")
    threshold: float = Field(ge=0, le=1, description="The model's decision threshold: label is '>50K' at or above it")
    model_name: str
    model_version: str


class Problem(BaseModel):
    field: str
    problem: str


class ErrorBody(BaseModel):
    detail: str = Field(description="One sentence naming the problem (the first problems, if several)")
    errors: list[Problem] = Field(default=[], description=f"Each problem with its field, at most {ERRORS_SHOWN}")
    errors_omitted: int = Field(default=0, description="How many more problems there were than `errors` lists")


class Feedback(BaseModel):
    "The true income of a person a prediction was made for."
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prediction_id": "0f8fad5bd9cb469fa16570867728950e", "label": ">50K"}]})
    prediction_id: str = Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")
    label: Literal["<=50K", ">50K"]


class FeedbackResult(BaseModel):
    prediction_id: str
    status: Literal["recorded", "unknown", "duplicate"]


class FeedbackAnswer(BaseModel):
    recorded: int
    results: list[FeedbackResult]


class Job(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    outcome: dict | None = None
    error: str | None = None


class ReloadAnswer(BaseModel):
    changed: bool
    model_version: str


FEEDBACK = TypeAdapter(list[Feedback])


# ----------------------------------------------------------------------------------------------- helpers
class RequestInvalid(Exception):
    "A request the service refuses: `problems` name each field, `total` counts them all (the answer lists the first few)."
    def __init__(self, problems: list[dict], status: int = 422, total: int | None = None):
        self.problems, self.status, self.total = problems, status, len(problems) if total is None else total


def problem_response(status: int, detail: str, errors: list[dict] | None = None, total: int | None = None,
                     headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(detail, errors, total), status_code=status, headers=headers)


def _key_matches(given: str | None, expected: SecretStr) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def admin_key(request: Request, x_api_key: Annotated[str | None, Header(description="The admin API key")] = None) -> None:
    "Job and admin endpoints: refused unless the service has a key and the request carries it."
    expected = request.app.state.settings.api_key
    if expected is None:
        raise HTTPException(403, "admin endpoints are disabled on this service: set INCOMEOPS_API_KEY to enable them")
    if not _key_matches(x_api_key, expected): raise HTTPException(401, "missing or wrong X-API-Key header")


def client_key(request: Request, x_api_key: Annotated[str | None, Header(description="Needed only if the service sets a prediction key")] = None) -> None:
    "Prediction, model, monitoring and metrics endpoints: open unless the service sets a prediction key."
    expected = request.app.state.settings.predict_api_key
    if expected is not None and not _key_matches(x_api_key, expected): raise HTTPException(401, "missing or wrong X-API-Key header")


def validation_error(e: ValidationError, what: str = "") -> RequestInvalid:
    "A pydantic error as `RequestInvalid`, mapping only the problems an answer shows (a batch may have a million)."
    problems = _list_problems(e.errors(include_input=False)[:ERRORS_SHOWN], what) if what else validation_problems(e.errors(include_input=False)[:ERRORS_SHOWN])
    return RequestInvalid(problems, total=e.error_count())


def _list_problems(errors: list[dict], what: str) -> list[dict]:
    "Problems of a list body, with friendlier words for its length."
    out = []
    for e in errors:
        if e["type"] == "too_short" and not e["loc"]: out.append({"field": "(request)", "problem": f"the list is empty: send at least one {what}"})
        elif e["type"] == "too_long" and not e["loc"]: out.append({"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} per request"})
        else: out.extend(validation_problems([e]))
    return out


async def read_body(request: Request, optional: bool = False):
    """The request's JSON body, parsed off the event loop when large: 415 for another content type, 400 when it is not
    JSON the parser takes (None for an empty `optional` body). The body limit was enforced before (BodyLimitMiddleware)."""
    body = await request.body()
    if not body:
        if optional: return None
        raise HTTPException(400, "the request body is empty: send JSON")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind not in JSON_TYPES: raise HTTPException(415, "the request body must be JSON, sent with Content-Type: application/json")
    try: return parse_json(body) if len(body) <= IN_THREAD_BYTES else await asyncio.to_thread(parse_json, body)
    except ValueError as e: raise HTTPException(400, str(e)) from None


async def validated(data, check, size: int):
    "`check(data)`, in a worker thread when the body was large (validating 10,000 people takes tens of milliseconds)."
    return check(data) if size <= IN_THREAD_BYTES else await asyncio.to_thread(check, data)


def invalid_request(problems: list[dict], total: int, shown: int = 10) -> str:
    "One sentence naming the first `shown` problems (the answer's `errors` list more of them)."
    named = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:shown])
    more = total - min(len(problems), shown)
    return f"invalid request: {named}" + (f"; and {more:,} more" if more > 0 else "")


def known_job_id(job_id: str) -> str:
    "`job_id` if it has the form of a job id (12 hexadecimal digits); else 404, without repeating it."
    if not re.fullmatch(JOB_ID, job_id): raise HTTPException(404, "there is no job with that id: job ids are 12 hexadecimal digits")
    return job_id


def served_model(request: Request) -> ServedModel:
    served = request.app.state.holder.current
    if served is None:
        reason = request.app.state.holder.last_error or "no champion model is loaded yet"
        raise HTTPException(503, f"the service cannot predict yet: {reason}")
    return served


def prediction_ids(n: int) -> list[str]:
    "`n` random 128-bit ids as 32 hex digits (as uuid4().hex, from one read of the OS's random source)."
    pool = os.urandom(16 * n).hex()
    return [pool[32 * i:32 * i + 32] for i in range(n)]


def parse_people(data) -> tuple[list[Person], bool]:
    "Validated people from a JSON object (one person) or array (a batch); whether it was a batch."
    if isinstance(data, dict):
        try: return [Person.model_validate(data)], False
        except ValidationError as e: raise validation_error(e) from None
    if isinstance(data, list):
        if not data: raise RequestInvalid([{"field": "(request)", "problem": "the list is empty: send at least one person"}])
        if len(data) > MAX_BATCH: raise RequestInvalid([{"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} people per request"}])
        try: return PEOPLE.validate_python(data), True
        except ValidationError as e: raise validation_error(e, "person") from None
    raise RequestInvalid([{"field": "(request)", "problem": "must be a JSON object (one person) or an array of them"}])


def parse_feedback(data) -> tuple[list[Feedback], bool]:
    "Validated feedback items from a JSON object or array; whether it was a single item."
    if isinstance(data, dict):
        try: return [Feedback.model_validate(data)], True
        except ValidationError as e: raise validation_error(e) from None
    if not isinstance(data, list): raise RequestInvalid([{"field": "(request)", "problem": "must be a JSON object or an array of them"}])
    if not data: raise RequestInvalid([{"field": "(request)", "problem": "the list is empty: send at least one label"}])
    if len(data) > MAX_BATCH: raise RequestInvalid([{"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} per request"}])
    try: return FEEDBACK.validate_python(data), False
    except ValidationError as e: raise validation_error(e, "label") from None


def parse_training_params(data) -> TrainingParams:
    "Training parameters from a JSON object (None: the defaults)."
    if data is None: return TrainingParams()
    if not isinstance(data, dict): raise RequestInvalid([{"field": "(request)", "problem": "must be a JSON object of training parameters"}])
    try: return TrainingParams.model_validate(data)
    except ValidationError as e: raise validation_error(e) from None


async def log_answers(request: Request, rows: list[dict]) -> None:
    "Wait until the prediction log has committed `rows`: a prediction is acknowledged only once it is stored."
    settings = request.app.state.settings
    committed = asyncio.wrap_future(request.app.state.plog.submit(rows, trusted=True))
    try:
        async with asyncio.timeout(settings.log_ack_timeout_seconds): await committed      # no extra task, unlike wait_for
    except TimeoutError:
        raise LogUnavailable(f"the prediction log did not commit within {settings.log_ack_timeout_seconds:g} s, so the answer "
                             "is withheld (nothing was acknowledged): try again shortly", retry_after=2) from None


# ----------------------------------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    "The service, configured by `settings` (default: the environment)."
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging()
        store = Store.from_settings(settings)
        interrupted = store.fail_interrupted_jobs()
        if interrupted: log.warning("%d job(s) were interrupted by the last stop and are marked failed", interrupted)
        plog = PredictionLog(store, max_queued=settings.log_queue_rows).start()
        holder = ModelHolder(settings)
        app.state.store, app.state.plog, app.state.holder = store, plog, holder
        app.state.jobs = JobRunner(store, settings, on_promotion=lambda: reload_model(app))
        metrics.log_queue.set_function(lambda: plog.depth)
        metrics.log_written.set_function(lambda: plog.written)
        metrics.log_failures.set_function(lambda: plog.failures)
        loader = asyncio.create_task(load_until_served(app))           # /health answers meanwhile; /ready says why not yet
        scheduler = asyncio.create_task(monitor_schedule(app)) if settings.monitor_interval_minutes > 0 else None
        log.info("IncomeOps API %s: database %s, registry %s", __version__, store.url, settings.mlflow_tracking_uri)
        try: yield
        finally:
            for task in (loader, scheduler):
                if task: task.cancel()
            try: plog.close()                   # every queued prediction is written before the process ends
            finally: store.close()
            log.info("stopped: %d predictions written to the log", plog.written)

    app = FastAPI(title="IncomeOps", version=__version__, lifespan=lifespan,
                  description="Predicts whether a person earns more than 50K USD a year (UCI Adult census data).\n\n"
                              "Prediction, model, monitoring and metrics endpoints are open unless the service sets a prediction key; "
                              "job and admin endpoints need the admin key in the `X-API-Key` header. Every error answer has the "
                              "shape of `ErrorBody`; submitted values are never repeated in it.")
    app.state.settings, app.state.metrics = settings, metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics,
                       route_of=lambda scope: getattr(scope.get("route"), "path", "unmatched"))
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)       # added last: runs first

    # ---- errors, mapped once
    @app.exception_handler(RequestInvalid)
    async def _invalid(request: Request, exc: RequestInvalid):
        return problem_response(exc.status, invalid_request(exc.problems, exc.total), exc.problems, exc.total)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        problems = validation_problems(errors[:ERRORS_SHOWN])
        return problem_response(422, invalid_request(problems, len(errors)), problems, len(errors))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(JobConflict)
    async def _conflict(request: Request, exc: JobConflict):
        return problem_response(409, str(exc))

    @app.exception_handler(JobNotFound)
    async def _no_job(request: Request, exc: JobNotFound):
        return problem_response(404, str(exc))

    @app.exception_handler(LogUnavailable)
    async def _log_unavailable(request: Request, exc: LogUnavailable):
        return problem_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(IncomeOpsError)
    async def _unavailable(request: Request, exc: IncomeOpsError):      # the database or registry cannot do it now
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, f"the service cannot do this now: {exc}", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", incident, request.method, request.url.path)
        return problem_response(500, f"internal error {incident}: the service logged the details")

    bad_body = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 422: {"model": ErrorBody}}
    secured = {401: {"model": ErrorBody}, 403: {"model": ErrorBody}}
    keyed = {401: {"model": ErrorBody}}
    unavailable = {503: {"model": ErrorBody}}

    # ---- liveness, readiness, model
    @app.get("/health", tags=["service"], summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/ready", tags=["service"], summary="Readiness: a champion model is loaded and the prediction log can write",
             responses=unavailable)
    async def ready(request: Request) -> dict:
        served = served_model(request)
        if problem := request.app.state.plog.problem:
            raise HTTPException(503, f"the service cannot acknowledge predictions: {problem}", headers={"Retry-After": "5"})
        return {"ready": True, "model_version": served.version}

    @app.get("/model", tags=["model"], summary="The model being served, its metrics and the input schema",
             dependencies=[Depends(client_key)], responses={**keyed, **unavailable})
    async def model(request: Request) -> dict:
        return served_model(request).describe()

    @app.get("/model/card", tags=["model"], summary="The champion's model card (Markdown), slice table and plot names",
             dependencies=[Depends(client_key)], responses={**keyed, **unavailable})
    async def model_card(request: Request) -> dict:
        return served_model(request).card()

    @app.get("/model/plots/{name}", tags=["model"], summary="One evaluation plot of the champion (PNG)", response_class=Response,
             dependencies=[Depends(client_key)],
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                        **keyed, 404: {"model": ErrorBody}, **unavailable})
    async def model_plot(request: Request, name: str) -> Response:
        served = served_model(request)
        if not name.endswith(".png") or name not in served.evaluation:
            raise HTTPException(404, f"model version {served.version} has no such plot; it has {', '.join(n for n in served.evaluation if n.endswith('.png')) or 'none'}")
        return Response(served.evaluation[name], media_type="image/png")

    @app.post("/model/reload", tags=["admin"], summary="Serve the registry's current champion (no restart)",
              dependencies=[Depends(admin_key)], responses={**secured, **unavailable})
    async def reload(request: Request) -> ReloadAnswer:
        changed = await asyncio.to_thread(request.app.state.holder.reload)       # an IncomeOpsError is a 503 (handler above)
        served = request.app.state.holder.current
        metrics.serving(served.name, served.version, served.predictor.backend)
        return ReloadAnswer(changed=changed, model_version=served.version)

    # ---- predictions
    person_schema = {"oneOf": [{"$ref": "#/components/schemas/Person"},
                               {"type": "array", "items": {"$ref": "#/components/schemas/Person"}, "minItems": 1, "maxItems": MAX_BATCH}]}

    @app.post("/predict", tags=["predictions"], summary="Predict for one person (object) or many (array)",
              dependencies=[Depends(client_key)],
              responses={200: {"content": {JSON_TYPE: {"schema": {"oneOf": [{"$ref": "#/components/schemas/Prediction"},
                                                                             {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}]}}}},
                         **bad_body, **keyed, **unavailable},
              openapi_extra={"requestBody": {"required": True, "content": {JSON_TYPE: {
                  "schema": person_schema, "examples": {"one": {"value": EXAMPLE_PERSON}, "batch": {"value": [EXAMPLE_PERSON, EXAMPLE_PERSON]}}}}}})
    async def predict(request: Request, log: Annotated[bool, Query(description="false: a what-if, not a real person's prediction "
                                                                   "(not logged, so not monitored; its id accepts no feedback)")] = True) -> Response:
        data = await read_body(request)
        people, batch = await validated(data, parse_people, len(await request.body()))
        served = served_model(request)             # taken once: a reload during this request does not affect it
        predictor = served.predictor
        features = [p.model_dump() for p in people]
        rows = [{c: f[c] for c in MODEL_INPUTS} for f in features]
        probas = [predictor.predict_one(rows[0])] if not batch else predictor.predict_proba_records(rows).tolist()
        ids = prediction_ids(len(people))
        now, name, version, threshold = datetime.now(UTC), served.name, served.version, served.threshold
        positive = [p >= threshold for p in probas]
        if log: await log_answers(request, [{"prediction_id": i, "created_at": now, "model_version": version, "probability": p,
                                             "label": int(y), "features": f} for i, p, y, f in zip(ids, probas, positive, features)])
        answers = [{"prediction_id": i, "label": LABELS[y], "probability": p, "threshold": threshold, "model_name": name,
                    "model_version": version} for i, p, y in zip(ids, probas, positive)]
        n_positive = sum(positive)
        if n_positive: metrics.predictions.labels(">50K").inc(n_positive)
        if len(answers) - n_positive: metrics.predictions.labels("<=50K").inc(len(answers) - n_positive)
        return Response(to_json(answers if batch else answers[0]), media_type=JSON_TYPE)

    # ---- feedback
    feedback_schema = {"oneOf": [{"$ref": "#/components/schemas/Feedback"},
                                 {"type": "array", "items": {"$ref": "#/components/schemas/Feedback"}, "minItems": 1, "maxItems": MAX_BATCH}]}

    @app.post("/feedback", tags=["predictions"], summary="Report the true income for one prediction (object) or many (array)",
              dependencies=[Depends(client_key)], status_code=200,
              responses={**bad_body, **keyed, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}, **unavailable},
              openapi_extra={"requestBody": {"required": True, "content": {JSON_TYPE: {"schema": feedback_schema}}}})
    async def feedback(request: Request) -> FeedbackAnswer:
        data = await read_body(request)
        items, single = await validated(data, parse_feedback, len(await request.body()))
        store = request.app.state.store
        statuses = await asyncio.to_thread(store.record_feedback, [(f.prediction_id, int(f.label == ">50K")) for f in items])
        for s in statuses: metrics.feedback.labels(s).inc()
        if single and statuses[0] == "unknown": raise HTTPException(404, f"no prediction has id {items[0].prediction_id}")
        if single and statuses[0] == "duplicate": raise HTTPException(409, f"prediction {items[0].prediction_id} already has feedback; the first label is kept")
        return FeedbackAnswer(recorded=statuses.count("recorded"),
                              results=[FeedbackResult(prediction_id=f.prediction_id, status=s) for f, s in zip(items, statuses, strict=True)])

    # ---- jobs
    @app.post("/jobs/train", tags=["jobs"], summary="Start the training notebook (Papermill) in the background",
              dependencies=[Depends(admin_key)], status_code=202, responses={**secured, **bad_body, 409: {"model": ErrorBody}},
              openapi_extra={"requestBody": {"required": False, "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/TrainingParams"}}}}})
    async def start_training(request: Request) -> Job:
        params = parse_training_params(await read_body(request, optional=True))      # read only once the key was checked
        try: job = request.app.state.jobs.train(params)
        except UnknownProductionData as e: raise RequestInvalid([{"field": "production_data_version", "problem": str(e)}]) from None
        metrics.jobs.labels("train").inc()
        return Job(**job)

    @app.post("/jobs/monitor", tags=["jobs"], summary="Run the monitoring check in the background",
              dependencies=[Depends(admin_key)], status_code=202, responses={**secured, 409: {"model": ErrorBody}})
    async def start_monitoring(request: Request) -> Job:
        job = request.app.state.jobs.monitor(request.app.state.holder)
        metrics.jobs.labels("monitor").inc()
        return Job(**job)

    @app.post("/jobs/retrain", tags=["jobs"], summary="Retrain the champion now on the training data plus labelled production rows",
              dependencies=[Depends(admin_key)], status_code=202, responses={**secured, 409: {"model": ErrorBody}, **unavailable})
    async def start_retraining(request: Request) -> Job:
        job = request.app.state.jobs.retrain(served_model(request), "asked for through the API")
        metrics.jobs.labels("retrain").inc()
        return Job(**job)

    @app.post("/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a queued or running job: its notebook's processes are killed",
              dependencies=[Depends(admin_key)], responses={**secured, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def cancel_job(request: Request, job_id: str) -> Job:
        return Job(**await asyncio.to_thread(request.app.state.jobs.cancel, known_job_id(job_id)))

    @app.get("/jobs", tags=["jobs"], summary="Recent jobs, newest first", dependencies=[Depends(admin_key)], responses=secured)
    async def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        kind: Literal["train", "monitor", "retrain"] | None = None) -> list[Job]:
        return [Job(**j) for j in request.app.state.store.list_jobs(limit=limit, kind=kind)]

    @app.get("/jobs/{job_id}", tags=["jobs"], summary="One job: status, timings, outcome, executed notebook",
             dependencies=[Depends(admin_key)], responses={**secured, 404: {"model": ErrorBody}})
    async def get_job(request: Request, job_id: str) -> Job:
        job = request.app.state.store.get_job(known_job_id(job_id))
        if job is None: raise HTTPException(404, f"no job has id {job_id}")
        return Job(**job)

    # ---- monitoring
    @app.get("/monitoring/summary", tags=["monitoring"], dependencies=[Depends(client_key)], responses={**keyed, **unavailable},
             summary="Prediction volume, live performance, the last check (drift, alarms), alerts and retrainings")
    async def monitoring_summary(request: Request) -> dict:
        return await asyncio.to_thread(summarise_predictions, request.app.state.store, request.app.state.holder.current, settings)

    @app.get("/monitoring/report", tags=["monitoring"], summary="The latest drift report (HTML, Evidently)", response_class=Response,
             dependencies=[Depends(client_key)],
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **keyed, 404: {"model": ErrorBody}})
    async def monitoring_report() -> Response:
        report = settings.reports_dir / "monitoring" / "drift.html"
        if not report.is_file(): raise HTTPException(404, "no drift report yet: one is written by the first monitoring check with enough predictions")
        return FileResponse(report, media_type="text/html")

    # ---- metrics
    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=Response, dependencies=[Depends(client_key)],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **keyed})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (Person, Feedback, Prediction, TrainingParams):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation" if model is not Prediction else "serialization")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            components["HTTPValidationError"] = components["ErrorBody"]     # our 422 body, not FastAPI's default one
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi
    return app


def reload_model(app: FastAPI) -> bool:
    "Load the registry's champion into `app` if it changed; any failure is logged, kept for /ready, and leaves the old model serving."
    holder, metrics = app.state.holder, app.state.metrics
    try: changed = holder.reload()
    except Exception as e:
        if not isinstance(e, IncomeOpsError):
            log.warning("the registry cannot be read", exc_info=True)
            holder.last_error = f"the model registry cannot be read ({type(e).__name__}); the service retries"
        else: log.warning("not serving a new model: %s", e)
        return False
    served = holder.current
    metrics.serving(served.name, served.version, served.predictor.backend)
    return changed


async def load_until_served(app: FastAPI, first_wait: float = 2, longest_wait: float = 60) -> None:
    "Load the champion at start-up, and keep trying (waits doubling up to `longest_wait` s) until one serves."
    wait = first_wait
    while app.state.holder.current is None:
        await asyncio.to_thread(reload_model, app)
        if app.state.holder.current is not None: return
        await asyncio.sleep(wait)
        wait = min(wait * 2, longest_wait)


async def monitor_schedule(app: FastAPI) -> None:
    """Every `monitor_interval_minutes`: serve the registry's champion if another process promoted one (replicas behind one
    registry converge this way), then start a monitoring job (skipped while one runs). No error ends the schedule."""
    interval = app.state.settings.monitor_interval_minutes * 60
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(reload_model, app)
            app.state.jobs.monitor(app.state.holder)
        except JobConflict: log.info("scheduled monitoring skipped: one is already running")
        except Exception: log.exception("scheduled monitoring could not start; trying again in %g minutes", interval / 60)


app = create_app()
