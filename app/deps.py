"""What a route needs, as typed dependencies: the service's parts, the model being served, the API keys and the JSON body.

Every dependency is `async def`: FastAPI runs plain functions in a thread pool, a hop that costs more than these do.
"""
from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from pydantic import SecretStr

from app.limits import JSON_TYPES
from app.observability import Metrics
from app.services import Services
from incomeops.config import Settings
from incomeops.jobs import Jobs
from incomeops.loader import ModelHolder, ServedModel
from incomeops.scoring import read_json
from incomeops.store import PredictionLog, Store

IN_THREAD_BYTES = 64 * 1024       # bodies larger than this are parsed and validated off the event loop


def _services(request: Request) -> Services: return request.state.services      # the lifespan's (see app.main)

# Each part straight from the request (not through a `Services` dependency): FastAPI solves every node of the graph
# on every request, a few microseconds each.
async def get_services(request: Request) -> Services: return _services(request)
async def get_settings(request: Request) -> Settings: return _services(request).settings
async def get_store(request: Request) -> Store: return _services(request).store
async def get_prediction_log(request: Request) -> PredictionLog: return _services(request).predictions
async def get_models(request: Request) -> ModelHolder: return _services(request).models
async def get_jobs(request: Request) -> Jobs: return _services(request).jobs
async def get_metrics(request: Request) -> Metrics: return _services(request).metrics

ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
PredictionLogDep = Annotated[PredictionLog, Depends(get_prediction_log)]
ModelsDep = Annotated[ModelHolder, Depends(get_models)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def serving_now(models: ModelHolder) -> ServedModel:
    "The model being served, taken once (a reload during the request does not affect it); 503 while there is none."
    served = models.current
    if served is None:
        raise HTTPException(503, f"the service cannot predict yet: {models.last_error or 'no champion model is loaded yet'}")
    return served


async def served_model(request: Request) -> ServedModel:
    return serving_now(_services(request).models)
ServedDep = Annotated[ServedModel, Depends(served_model)]


# ----------------------------------------------------------------------------------------------- keys
def _key_matches(given: str | None, expected: SecretStr) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


async def admin_key(request: Request, x_api_key: Annotated[str | None, Header(description="The admin API key")] = None) -> None:
    "Job and admin endpoints: refused unless the service has a key and the request carries it."
    settings = _services(request).settings
    if settings.api_key is None:
        raise HTTPException(403, "admin endpoints are disabled on this service: set INCOMEOPS_API_KEY to enable them")
    if not _key_matches(x_api_key, settings.api_key): raise HTTPException(401, "missing or wrong X-API-Key header")


async def client_key(request: Request,
                     x_api_key: Annotated[str | None, Header(description="Needed only if the service sets a prediction key")] = None) -> None:
    "Prediction, model, monitoring and metrics endpoints: open unless the service sets a prediction key."
    expected = _services(request).settings.predict_api_key
    if expected is not None and not _key_matches(x_api_key, expected): raise HTTPException(401, "missing or wrong X-API-Key header")


# ----------------------------------------------------------------------------------------------- the body
async def _off_the_loop_if_large(size: int, work, *args):
    "`work(*args)`, in a worker thread when the body behind it is large (reading or validating 10,000 people takes milliseconds)."
    return await asyncio.to_thread(work, *args) if size > IN_THREAD_BYTES else work(*args)


@dataclass(frozen=True)
class JsonBody:
    "A request's parsed JSON body (`data`, None if an optional body was empty) and its size in bytes."
    data: object
    size: int

    async def apply(self, check, *args):
        "`check(data, *args)`, off the event loop when the body was large."
        return await _off_the_loop_if_large(self.size, check, self.data, *args)


@dataclass(frozen=True)
class JsonBytes:
    "A request's JSON body as it came (a JSON content type, not empty), for a route whose library function reads it itself."
    body: bytes

    async def apply(self, work, *args):
        "`work(body, *args)`, off the event loop when the body is large: one hop to read, validate and score a batch."
        return await _off_the_loop_if_large(len(self.body), work, self.body, *args)


async def _json_bytes(request: Request, optional: bool) -> bytes:
    """The request's body if it may be JSON: 400 when empty (unless `optional`), 415 for another content type. The body limit
    was enforced before (BodyLimitMiddleware); a route declares this after its key check, so a body is read only once the key is right."""
    body = await request.body()
    if not body:
        if optional: return body
        raise HTTPException(400, "the request body is empty: send JSON")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind not in JSON_TYPES: raise HTTPException(415, "the request body must be JSON, sent with Content-Type: application/json")
    return body


async def _read_json(request: Request, optional: bool) -> JsonBody:
    "The request's JSON body, parsed by the library's `read_json` (off the event loop when large): 400 when it is not JSON the parser takes."
    body = await _json_bytes(request, optional)
    if not body: return JsonBody(None, 0)
    try: data = await _off_the_loop_if_large(len(body), read_json, body)
    except ValueError as e: raise HTTPException(400, str(e)) from None
    return JsonBody(data, len(body))


async def json_body(request: Request) -> JsonBody: return await _read_json(request, optional=False)
async def optional_json_body(request: Request) -> JsonBody: return await _read_json(request, optional=True)
async def json_bytes(request: Request) -> JsonBytes: return JsonBytes(await _json_bytes(request, optional=False))

JsonBodyDep = Annotated[JsonBody, Depends(json_body)]
OptionalJsonBodyDep = Annotated[JsonBody, Depends(optional_json_body)]
JsonBytesDep = Annotated[JsonBytes, Depends(json_bytes)]
