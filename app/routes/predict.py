"""Predictions: one person (an object), a batch (an array, or mlflow's `dataframe_split` table), scored by the library and
acknowledged once logged."""
from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from app.deps import JsonBytesDep, ServicesDep, client_key, serving_now
from app.errors import BAD_BODY, CLIENT_KEY, UNAVAILABLE, answer
from app.openapi import JSON_TYPE, request_body
from app.schemas import PeopleBody, Prediction
from app.services import Services
from incomeops.loader import ModelHolder
from incomeops.schema import EXAMPLE_PERSON
from incomeops.scoring import Scored, read_people, score_people
from incomeops.store import LogUnavailable

router = APIRouter(tags=["predictions"], dependencies=[Depends(client_key)])

INVALID_PEOPLE = answer(422, "A person breaks a rule of `Person`, or the list is empty or too long; `errors` names each field. "
                             "Besides what the schema says: each person needs `education` or `education_num` (or both), and "
                             "if both are given, `education_num` must be the rank of `education`")
TABLE_EXAMPLE = {"dataframe_split": {"columns": list(EXAMPLE_PERSON), "data": [list(EXAMPLE_PERSON.values())] * 2}}
WHAT_IF = Query(description="false: a what-if, not a real person's prediction (not logged, so not monitored; its id accepts no feedback)")


async def acknowledged(services: Services, stored: Future) -> None:
    "Wait until the prediction log has journaled a request's predictions (`stored`): a prediction is acknowledged only once it is stored."
    wait = services.settings.log_ack_timeout_seconds
    try:
        async with asyncio.timeout(wait): await asyncio.wrap_future(stored)     # no extra task, unlike wait_for
    except TimeoutError:
        raise LogUnavailable(f"the prediction log did not commit within {wait:g} s, so the answer is withheld (nothing was "
                             "acknowledged): try again shortly", retry_after=2) from None


def scored_by_champion(body: bytes, models: ModelHolder) -> Scored:
    "The people of a request body, read and validated first (a bad request is a 400 or 422 even while no model is loaded), then scored."
    try: people = read_people(body)
    except ValueError as e: raise HTTPException(400, str(e)) from None
    return score_people(people, serving_now(models))


def answered(body: bytes, services: Services, log: bool) -> tuple[Scored, bytes, Future | None]:
    "Score a request body, hand its predictions to the log (unless `log` is false) and make the answer while the journal writes."
    scored = scored_by_champion(body, services.models)
    stored = services.predictions.submit(scored.log_batch(), trusted=True) if log else None
    return scored, scored.body(), stored


@router.post("/predict", summary="Predict for one person (object) or many (array, or mlflow's dataframe_split table)", response_model=Prediction | list[Prediction],
             responses={**BAD_BODY, **INVALID_PEOPLE, **CLIENT_KEY, **UNAVAILABLE},
             openapi_extra=request_body(PeopleBody, examples={"one": EXAMPLE_PERSON, "batch": [EXAMPLE_PERSON, EXAMPLE_PERSON], "table": TABLE_EXAMPLE}))
async def predict(body: JsonBytesDep, services: ServicesDep, log: Annotated[bool, WHAT_IF] = True) -> Response:
    scored, answer, stored = await body.apply(answered, services, log)    # in one worker thread when the body is large
    if stored is not None: await acknowledged(services, stored)
    services.metrics.predicted(len(scored.ids), scored.n_positive)
    return Response(answer, media_type=JSON_TYPE)
