"""Every error answer, mapped in one place: the library's `IncomeOpsError` (it carries its HTTP status), FastAPI's own
refusals (HTTPException, request validation) and, for anything else, a 500 with an incident id (the details go to the log).

Each answer has the shape of `ErrorBody`; submitted values are never repeated in it.
"""
from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.limits import ERRORS_SHOWN, error_body
from incomeops.config import IncomeOpsError, InvalidInput
from incomeops.schema import MAX_BATCH, validation_problems
from incomeops.store import LogUnavailable

log = logging.getLogger("incomeops.api")


class Problem(BaseModel):
    "One problem of a request: the field (`(request)` for the body as a whole) and what is wrong with it."
    field: str
    problem: str


class ErrorBody(BaseModel):
    "The body of every error answer."
    detail: str = Field(description="One sentence naming the problem (the first problems, if several)")
    errors: list[Problem] = Field(default=[], description=f"Each problem with its field, at most {ERRORS_SHOWN}")
    errors_omitted: int = Field(default=0, description="How many more problems there were than `errors` lists")


def answer(status: int, words: str) -> dict:
    "An error answer of the OpenAPI document: `status`, with what it means here, as an `ErrorBody`."
    return {status: {"model": ErrorBody, "description": words}}


BAD_BODY = {**answer(400, "The body is not JSON the service reads (empty, not UTF-8, malformed, a key twice, NaN, too deep)"),
            **answer(413, "The body is larger than the service's limit (`max_body_bytes`)"),
            **answer(415, "The body is not sent as `application/json`")}
INVALID = answer(422, "The request breaks a documented rule; `errors` names each field")
CLIENT_KEY = answer(401, "The service sets a prediction key, and the `X-API-Key` header is missing or wrong")
ADMIN_KEY = {**answer(401, "The `X-API-Key` header is missing or is not the admin key"),
             **answer(403, "Admin endpoints are disabled: the service has no admin key (INCOMEOPS_API_KEY)")}
NOT_FOUND = answer(404, "There is no such thing")
CONFLICT = answer(409, "The request contradicts the current state")
UNAVAILABLE = answer(503, "The service cannot do this now (no model loaded yet, the database is failing): try again later")


def invalid_request(problems: list[dict], total: int, shown: int = 10) -> str:
    "One sentence naming the first `shown` problems (the answer's `errors` list more of them)."
    named = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:shown])
    more = total - min(len(problems), shown)
    return f"invalid request: {named}" + (f"; and {more:,} more" if more > 0 else "")


def problem_response(status: int, detail: str, errors: list[dict] | None = None, total: int | None = None,
                     headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(detail, errors, total), status_code=status, headers=headers)


def _problems(exc: InvalidInput) -> list[dict]:
    "The problems an invalid input names (one for the whole request if it names none)."
    return exc.problems or [{"field": "(request)", "problem": str(exc)}]


async def library_error(request: Request, exc: IncomeOpsError) -> JSONResponse:
    """Any `IncomeOpsError` as the status it carries: 422 with its problems, 404, 409, or 503 with Retry-After. A 503 says
    the service cannot do this now, unless the error is already written for the client (the prediction log's refusals)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    if isinstance(exc, InvalidInput):
        problems = _problems(exc)
        if request.url.path == "/predict" and (services := getattr(request.state, "services", None)): services.metrics.refused(problems)
        total = max(exc.total, len(problems))
        return problem_response(exc.status, invalid_request(problems, total), problems, total, headers)
    if exc.status == 503 and not isinstance(exc, LogUnavailable):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, f"the service cannot do this now: {exc}", headers=headers)
    return problem_response(exc.status, str(exc), headers=headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    "A query or path parameter FastAPI refused, named as our own validation names fields."
    errors = list(exc.errors())
    problems = validation_problems(errors[:ERRORS_SHOWN])
    return problem_response(422, invalid_request(problems, len(errors)), problems, len(errors))


async def server_bug(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.exception("unhandled error %s on %s %s", incident, request.method, request.url.path)
    return problem_response(500, f"internal error {incident}: the service logged the details")


def install_error_handlers(app: FastAPI) -> None:
    "Map every error to an `ErrorBody` answer, once for the whole app."
    app.add_exception_handler(IncomeOpsError, library_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(Exception, server_bug)


def invalid_input(e: ValidationError, batch_of: str | None = None) -> InvalidInput:
    "A pydantic error as `InvalidInput`, mapping only the problems an answer shows (a batch may have a million); `batch_of`: what a batch lists."
    errors = e.errors(include_input=False)[:ERRORS_SHOWN]
    return InvalidInput(problems=_batch_problems(errors, batch_of) if batch_of else validation_problems(errors), total=e.error_count())


def _batch_problems(errors: list[dict], what: str) -> list[dict]:
    "Problems of a list body, with plain words for its length."
    out = []
    for e in errors:
        if e["type"] == "too_short" and not e["loc"]: out.append({"field": "(request)", "problem": f"the list is empty: send at least one {what}"})
        elif e["type"] == "too_long" and not e["loc"]: out.append({"field": "(request)", "problem": f"the list is too long: at most {MAX_BATCH:,} per request"})
        else: out.extend(validation_problems([e]))
    return out


def whole_body(problem: str) -> InvalidInput:
    "The body as a whole is refused (it has the wrong shape)."
    return InvalidInput(problems=[{"field": "(request)", "problem": problem}])
