"""Feedback: the true income of people predictions were made for (one object or an array)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from pydantic import TypeAdapter, ValidationError

from app.deps import JsonBodyDep, MetricsDep, PredictionLogDep, SettingsDep, StoreDep, client_key
from app.errors import BAD_BODY, CLIENT_KEY, CONFLICT, INVALID, NOT_FOUND, UNAVAILABLE, invalid_input, whole_body
from app.openapi import request_body
from app.schemas import Feedback, FeedbackAnswer, FeedbackBody, FeedbackResult
from incomeops.config import Conflict, NotFound
from incomeops.schema import MAX_BATCH
from incomeops.store import LogUnavailable, PredictionLog

router = APIRouter(tags=["predictions"], dependencies=[Depends(client_key)])
FEEDBACK = TypeAdapter(list[Feedback])


def feedback_items(data) -> tuple[list[Feedback], bool]:
    "Validated feedback items from a JSON object or array; whether it was a single item."
    if isinstance(data, dict):
        try: return [Feedback.model_validate(data)], True
        except ValidationError as e: raise invalid_input(e) from None
    if not isinstance(data, list): raise whole_body("must be a JSON object or an array of them")
    if not data: raise whole_body("the list is empty: send at least one label")
    if len(data) > MAX_BATCH: raise whole_body(f"the list is too long: at most {MAX_BATCH:,} per request")
    try: return FEEDBACK.validate_python(data), False
    except ValidationError as e: raise invalid_input(e, "label") from None


async def predictions_stored(predictions: PredictionLog, wait: float) -> None:
    "Wait until the predictions acknowledged so far are in the database (they are acknowledged once journaled, and drained behind)."
    if not await asyncio.to_thread(predictions.sync, wait):
        raise LogUnavailable(f"recent predictions are not in the database yet (the prediction log has {predictions.depth:,} waiting), "
                             "so their labels cannot be matched: try again shortly", retry_after=2)


@router.post("/feedback", summary="Report the true income for one prediction (object) or many (array)",
             responses={**BAD_BODY, **INVALID, **CLIENT_KEY,
                        404: {**NOT_FOUND[404], "description": "One label was sent, and no logged prediction has its id"},
                        409: {**CONFLICT[409], "description": "One label was sent, and its prediction already has one (the first is kept)"},
                        **UNAVAILABLE},
             openapi_extra=request_body(FeedbackBody))
async def feedback(body: JsonBodyDep, store: StoreDep, predictions: PredictionLogDep, settings: SettingsDep,
                   metrics: MetricsDep) -> FeedbackAnswer:
    items, single = await body.apply(feedback_items)
    await predictions_stored(predictions, settings.log_ack_timeout_seconds)     # a label's prediction is found if it was answered
    statuses = await asyncio.to_thread(store.record_feedback, [(f.prediction_id, int(f.label == ">50K")) for f in items])
    for s in statuses: metrics.feedback.labels(s).inc()
    if single and statuses[0] == "unknown": raise NotFound(f"no prediction has id {items[0].prediction_id}")
    if single and statuses[0] == "duplicate": raise Conflict(f"prediction {items[0].prediction_id} already has feedback; the first label is kept")
    return FeedbackAnswer(recorded=statuses.count("recorded"),
                          results=[FeedbackResult(prediction_id=f.prediction_id, status=s) for f, s in zip(items, statuses, strict=True)])
