"""Predictions: one person (an object) or a batch (an array), scored by the library and acknowledged once logged."""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from app.deps import JsonBodyDep, ServicesDep, client_key, serving_now
from app.errors import BAD_BODY, CLIENT_KEY, UNAVAILABLE, answer
from app.openapi import JSON_TYPE, request_body
from app.schemas import PeopleBody, Prediction
from app.services import Services
from incomeops.loader import ModelHolder
from incomeops.schema import EXAMPLE_PERSON
from incomeops.scoring import Scored, score_people, validated
from incomeops.store import LogUnavailable

router = APIRouter(tags=["predictions"], dependencies=[Depends(client_key)])

INVALID_PEOPLE = answer(422, "A person breaks a rule of `Person`, or the list is empty or too long; `errors` names each field. "
                             "Besides what the schema says: each person needs `education` or `education_num` (or both), and "
                             "if both are given, `education_num` must be the rank of `education`")
WHAT_IF = Query(description="false: a what-if, not a real person's prediction (not logged, so not monitored; its id accepts no feedback)")


async def acknowledged(services: Services, scored: Scored) -> None:
    "Wait until the prediction log has journaled `scored`'s predictions: a prediction is acknowledged only once it is stored."
    wait = services.settings.log_ack_timeout_seconds
    stored = asyncio.wrap_future(services.predictions.submit(scored.log_batch(), trusted=True))
    try:
        async with asyncio.timeout(wait): await stored                 # no extra task, unlike wait_for
    except TimeoutError:
        raise LogUnavailable(f"the prediction log did not commit within {wait:g} s, so the answer is withheld (nothing was "
                             "acknowledged): try again shortly", retry_after=2) from None


def scored_by_champion(data, models: ModelHolder) -> Scored:
    "The people of a parsed body, validated first (a bad request is a 422 even while no model is loaded), then scored."
    people = validated(data, copy=False)            # the body was just parsed: nothing else holds it
    return score_people(people, serving_now(models))


@router.post("/predict", summary="Predict for one person (object) or many (array)", response_model=Prediction | list[Prediction],
             responses={**BAD_BODY, **INVALID_PEOPLE, **CLIENT_KEY, **UNAVAILABLE},
             openapi_extra=request_body(PeopleBody, examples={"one": EXAMPLE_PERSON, "batch": [EXAMPLE_PERSON, EXAMPLE_PERSON]}))
async def predict(body: JsonBodyDep, services: ServicesDep, log: Annotated[bool, WHAT_IF] = True) -> Response:
    scored = await body.apply(scored_by_champion, services.models)      # in a worker thread when the body is large
    if log: await acknowledged(services, scored)
    services.metrics.predicted(len(scored.ids), scored.n_positive)
    return Response(scored.body(), media_type=JSON_TYPE)
