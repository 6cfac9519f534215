"""IncomeOps HTTP service: routes and wiring only; the logic lives in the `incomeops` library.

Run it with `make serve`, or `uvicorn app.main:app` from the project folder (settings from INCOMEOPS_* variables).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
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

from app.observability import Metrics, ObservabilityMiddleware, configure_logging
from incomeops import __version__
from incomeops.config import IncomeOpsError, Settings, get_settings
from incomeops.features import MODEL_INPUTS
from incomeops.jobs import JobConflict, JobRunner, TrainingParams, summarise_predictions
from incomeops.serving import EXAMPLE_PERSON, MAX_BATCH, ModelHolder, Person, ServedModel, validation_problems
from incomeops.store import PredictionLog, Store

log = logging.getLogger("incomeops.api")

LABELS = ("<=50K", ">50K")
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
    detail: str
    errors: list[Problem] = []


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


# ----------------------------------------------------------------------------------------------- helpers
def problem_response(status: int, detail: str, errors: list[dict] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": errors or []}, status_code=status)


def _key_matches(given: str | None, expected: SecretStr) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def admin_key(request: Request, x_api_key: Annotated[str | None, Header(description="The admin API key")] = None) -> None:
    "Job and admin endpoints: refused unless the service has a key and the request carries it."
    expected = request.app.state.settings.api_key
    if expected is None:
        raise HTTPException(403, "admin endpoints are disabled on this service: set INCOMEOPS_API_KEY to enable them")
    if not _key_matches(x_api_key, expected): raise HTTPException(401, "missing or wrong X-API-Key header")


def client_key(request: Request, x_api_key: Annotated[str | None, Header(description="Needed only if the service sets a prediction key")] = None) -> None:
    "Prediction endpoints: open unless the service sets a prediction key."
    expected = request.app.state.settings.predict_api_key
    if expected is not None and not _key_matches(x_api_key, expected): raise HTTPException(401, "missing or wrong X-API-Key header")


async def read_json(request: Request, limit: int):
    "The request body parsed as JSON; 413 above `limit` bytes, 400 if it is not JSON."
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the request body is larger than {limit:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit: raise HTTPException(413, f"the request body is larger than {limit:,} bytes")
    if not body: raise HTTPException(400, "the request body is empty: send JSON")
    try: return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e: raise HTTPException(400, f"the request body is not valid JSON ({e})") from None


def invalid_request(problems: list[dict], shown: int = 10) -> str:
    "One sentence naming the first `shown` problems (all of them are in the answer's `errors`)."
    named = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:shown])
    return f"invalid request: {named}" + (f"; and {len(problems) - shown:,} more (see errors)" if len(problems) > shown else "")


def _list_problems(errors: list[dict], what: str) -> list[dict]:
    "Problems of a list body, with friendlier words for its length."
    out = []
    for e in errors:
        if e["type"] == "too_short" and not e["loc"]: out.append({"field": "(request)", "problem": f"the list is empty: send at least one {what}"})
        elif e["type"] == "too_long" and not e["loc"]: out.append({"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} per request"})
        else: out.extend(validation_problems([e]))
    return out


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
        except ValidationError as e: raise RequestInvalid(validation_problems(e.errors(include_input=False))) from None
    if isinstance(data, list):
        if not data: raise RequestInvalid([{"field": "(request)", "problem": "the list is empty: send at least one person"}])
        if len(data) > MAX_BATCH: raise RequestInvalid([{"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} people per request"}])
        try: return PEOPLE.validate_python(data), True
        except ValidationError as e: raise RequestInvalid(_list_problems(e.errors(include_input=False), "person")) from None
    raise RequestInvalid([{"field": "(request)", "problem": "must be a JSON object (one person) or an array of them"}])


class RequestInvalid(Exception):
    def __init__(self, problems: list[dict], status: int = 422):
        self.problems, self.status = problems, status


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
        plog = PredictionLog(store, settings.log_flush_seconds).start()
        holder = ModelHolder(settings)
        app.state.store, app.state.plog, app.state.holder = store, plog, holder
        app.state.jobs = JobRunner(store, settings, on_promotion=lambda: reload_model(app))
        metrics.log_queue.set_function(lambda: plog.depth)
        metrics.log_written.set_function(lambda: plog.written)
        metrics.log_failures.set_function(lambda: plog.failures)
        loader = asyncio.get_running_loop().run_in_executor(None, reload_model, app)   # /health answers meanwhile
        scheduler = asyncio.create_task(monitor_schedule(app)) if settings.monitor_interval_minutes > 0 else None
        log.info("IncomeOps API %s: database %s, registry %s", __version__, store.url, settings.mlflow_tracking_uri)
        try: yield
        finally:
            if scheduler: scheduler.cancel()
            await loader                            # a load in progress finishes before the log closes
            plog.close()
            store.close()
            log.info("stopped: %d predictions written to the log", plog.written)

    app = FastAPI(title="IncomeOps", version=__version__, lifespan=lifespan,
                  description="Predicts whether a person earns more than 50K USD a year (UCI Adult census data).\n\n"
                              "Prediction endpoints are open unless the service sets a prediction key; job and admin endpoints "
                              "need the admin key in the `X-API-Key` header.")
    app.state.settings, app.state.metrics = settings, metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics,
                       route_of=lambda scope: getattr(scope.get("route"), "path", "unmatched"))

    @app.exception_handler(RequestInvalid)
    async def _invalid(request: Request, exc: RequestInvalid):
        return problem_response(exc.status, invalid_request(exc.problems), exc.problems)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = validation_problems(list(exc.errors()))
        return problem_response(422, invalid_request(problems), problems)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return problem_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", incident, request.method, request.url.path)
        return problem_response(500, f"internal error {incident}: the service logged the details")

    errors = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}}
    secured = {401: {"model": ErrorBody}, 403: {"model": ErrorBody}}

    # ---- liveness, readiness, model
    @app.get("/health", tags=["service"], summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/ready", tags=["service"], summary="Readiness: a champion model is loaded",
             responses={503: {"model": ErrorBody}})
    async def ready(request: Request) -> dict:
        served = served_model(request)
        return {"ready": True, "model_version": served.version}

    @app.get("/model", tags=["model"], summary="The model being served, its metrics and the input schema",
             responses={503: {"model": ErrorBody}})
    async def model(request: Request) -> dict:
        return served_model(request).describe()

    @app.get("/model/card", tags=["model"], summary="The champion's model card (Markdown), slice table and plot names",
             responses={503: {"model": ErrorBody}})
    async def model_card(request: Request) -> dict:
        return served_model(request).card()

    @app.get("/model/plots/{name}", tags=["model"], summary="One evaluation plot of the champion (PNG)", response_class=Response,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                        404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    async def model_plot(request: Request, name: str) -> Response:
        served = served_model(request)
        if not name.endswith(".png") or name not in served.evaluation: raise HTTPException(404, f"model version {served.version} has no plot named {name!r}")
        return Response(served.evaluation[name], media_type="image/png")

    @app.post("/model/reload", tags=["admin"], summary="Serve the registry's current champion (no restart)",
              dependencies=[Depends(admin_key)], responses={**secured, 503: {"model": ErrorBody}})
    async def reload(request: Request) -> ReloadAnswer:
        try: changed = await asyncio.get_running_loop().run_in_executor(None, request.app.state.holder.reload)
        except IncomeOpsError as e: raise HTTPException(503, str(e)) from None
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
                         **errors, 401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
              openapi_extra={"requestBody": {"required": True, "content": {JSON_TYPE: {
                  "schema": person_schema, "examples": {"one": {"value": EXAMPLE_PERSON}, "batch": {"value": [EXAMPLE_PERSON, EXAMPLE_PERSON]}}}}}})
    async def predict(request: Request, log: Annotated[bool, Query(description="false: a what-if, not a real person's prediction "
                                                                   "(not logged, so not monitored; its id accepts no feedback)")] = True) -> Response:
        people, batch = parse_people(await read_json(request, settings.max_body_bytes))
        served = served_model(request)             # taken once: a reload during this request does not affect it
        predictor = served.predictor
        features = [p.model_dump() for p in people]
        rows = [{c: f[c] for c in MODEL_INPUTS} for f in features]
        probas = [predictor.predict_one(rows[0])] if not batch else predictor.predict_proba_records(rows).tolist()
        ids = prediction_ids(len(people))
        now, name, version, threshold = datetime.now(UTC), served.name, served.version, served.threshold
        positive = [p >= threshold for p in probas]
        answers = [{"prediction_id": i, "label": LABELS[y], "probability": p, "threshold": threshold, "model_name": name,
                    "model_version": version} for i, p, y in zip(ids, probas, positive)]
        if log: request.app.state.plog.submit([{"prediction_id": i, "created_at": now, "model_version": version, "probability": p,
                                        "label": int(y), "features": f} for i, p, y, f in zip(ids, probas, positive, features)], trusted=True)
        n_positive = sum(positive)
        if n_positive: metrics.predictions.labels(">50K").inc(n_positive)
        if len(answers) - n_positive: metrics.predictions.labels("<=50K").inc(len(answers) - n_positive)
        return Response(to_json(answers if batch else answers[0]), media_type=JSON_TYPE)

    # ---- feedback
    feedback_schema = {"oneOf": [{"$ref": "#/components/schemas/Feedback"},
                                 {"type": "array", "items": {"$ref": "#/components/schemas/Feedback"}, "minItems": 1, "maxItems": MAX_BATCH}]}

    @app.post("/feedback", tags=["predictions"], summary="Report the true income for one prediction (object) or many (array)",
              dependencies=[Depends(client_key)], status_code=200,
              responses={**errors, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
              openapi_extra={"requestBody": {"required": True, "content": {JSON_TYPE: {"schema": feedback_schema}}}})
    async def feedback(request: Request) -> FeedbackAnswer:
        data = await read_json(request, settings.max_body_bytes)
        single = isinstance(data, dict)
        if not isinstance(data, dict | list): raise RequestInvalid([{"field": "(request)", "problem": "must be a JSON object or an array of them"}])
        if isinstance(data, list) and len(data) > MAX_BATCH:
            raise RequestInvalid([{"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} per request"}])
        try: items = [Feedback.model_validate(data)] if single else TypeAdapter(list[Feedback]).validate_python(data)
        except ValidationError as e: raise RequestInvalid(_list_problems(e.errors(include_input=False), "label")) from None
        if not items: raise RequestInvalid([{"field": "(request)", "problem": "the list is empty: send at least one label"}])
        store, plog = request.app.state.store, request.app.state.plog
        def record():
            plog.flush()                            # predictions answered a moment ago must be findable
            return store.record_feedback([(f.prediction_id, int(f.label == ">50K")) for f in items])
        statuses = await asyncio.get_running_loop().run_in_executor(None, record)
        for s in statuses: metrics.feedback.labels(s).inc()
        if single and statuses[0] == "unknown": raise HTTPException(404, f"no prediction has id {items[0].prediction_id}")
        if single and statuses[0] == "duplicate": raise HTTPException(409, f"prediction {items[0].prediction_id} already has feedback; the first label is kept")
        return FeedbackAnswer(recorded=statuses.count("recorded"),
                              results=[FeedbackResult(prediction_id=f.prediction_id, status=s) for f, s in zip(items, statuses, strict=True)])

    # ---- jobs
    @app.post("/jobs/train", tags=["jobs"], summary="Start the training notebook (Papermill) in the background",
              dependencies=[Depends(admin_key)], status_code=202, responses={**secured, **errors, 409: {"model": ErrorBody}})
    async def start_training(request: Request, params: TrainingParams | None = None) -> Job:
        try: job = request.app.state.jobs.train(params or TrainingParams())
        except JobConflict as e: raise HTTPException(409, str(e)) from None
        metrics.jobs.labels("train").inc()
        return Job(**job)

    @app.post("/jobs/monitor", tags=["jobs"], summary="Run the monitoring check in the background",
              dependencies=[Depends(admin_key)], status_code=202, responses={**secured, 409: {"model": ErrorBody}})
    async def start_monitoring(request: Request) -> Job:
        try: job = request.app.state.jobs.monitor(request.app.state.holder)
        except JobConflict as e: raise HTTPException(409, str(e)) from None
        metrics.jobs.labels("monitor").inc()
        return Job(**job)

    @app.post("/jobs/retrain", tags=["jobs"], summary="Retrain the champion now on the training data plus labelled production rows",
              dependencies=[Depends(admin_key)], status_code=202, responses={**secured, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    async def start_retraining(request: Request) -> Job:
        served = served_model(request)
        try: job = request.app.state.jobs.retrain(served, "asked for through the API")
        except JobConflict as e: raise HTTPException(409, str(e)) from None
        metrics.jobs.labels("retrain").inc()
        return Job(**job)

    @app.get("/jobs", tags=["jobs"], summary="Recent jobs, newest first", dependencies=[Depends(admin_key)], responses=secured)
    async def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        kind: Literal["train", "monitor", "retrain"] | None = None) -> list[Job]:
        return [Job(**j) for j in request.app.state.store.list_jobs(limit=limit, kind=kind)]

    @app.get("/jobs/{job_id}", tags=["jobs"], summary="One job: status, timings, outcome, executed notebook",
             dependencies=[Depends(admin_key)], responses={**secured, 404: {"model": ErrorBody}})
    async def get_job(request: Request, job_id: str) -> Job:
        job = request.app.state.store.get_job(job_id)
        if job is None: raise HTTPException(404, f"no job has id {job_id}")
        return Job(**job)

    # ---- monitoring
    @app.get("/monitoring/summary", tags=["monitoring"],
             summary="Prediction volume, live performance, the last check (drift, alarms), alerts and retrainings")
    async def monitoring_summary(request: Request) -> dict:
        run = lambda: summarise_predictions(request.app.state.store, request.app.state.holder.current)
        return await asyncio.get_running_loop().run_in_executor(None, run)

    @app.get("/monitoring/report", tags=["monitoring"], summary="The latest drift report (HTML, Evidently)", response_class=Response,
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, 404: {"model": ErrorBody}})
    async def monitoring_report() -> Response:
        report = settings.reports_dir / "monitoring" / "drift.html"
        if not report.is_file(): raise HTTPException(404, "no drift report yet: one is written by the first monitoring check with enough predictions")
        return FileResponse(report, media_type="text/html")

    # ---- metrics
    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (Person, Feedback, Prediction):
                components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation" if model is not Prediction else "serialization")
            components["HTTPValidationError"] = components["ErrorBody"]     # our 422 body, not FastAPI's default one
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi
    return app


def reload_model(app: FastAPI) -> bool:
    "Load the registry's champion into `app` if it changed; failures are logged and leave the old model serving."
    holder, metrics = app.state.holder, app.state.metrics
    try: changed = holder.reload()
    except IncomeOpsError as e:
        log.warning("not serving a new model: %s", e)
        return False
    served = holder.current
    metrics.serving(served.name, served.version, served.predictor.backend)
    return changed


async def monitor_schedule(app: FastAPI) -> None:
    """Every `monitor_interval_minutes`: serve the registry's champion if another process promoted one (replicas behind one
    registry converge this way), then start a monitoring job (skipped while one runs)."""
    interval = app.state.settings.monitor_interval_minutes * 60
    while True:
        await asyncio.sleep(interval)
        await asyncio.get_running_loop().run_in_executor(None, reload_model, app)
        try: app.state.jobs.monitor(app.state.holder)
        except JobConflict: log.info("scheduled monitoring skipped: one is already running")
        except Exception: log.exception("scheduled monitoring could not start")


app = create_app()
