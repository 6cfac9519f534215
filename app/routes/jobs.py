"""Background jobs (training notebook, monitoring check, retraining): started, listed, followed and cancelled; admin key only.
The same routes whether jobs run in this process or on Celery workers (`app.services.job_runner`)."""
from __future__ import annotations

import asyncio
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import ValidationError

from app.deps import (
    JobsDep,
    MetricsDep,
    ModelsDep,
    OptionalJsonBodyDep,
    PredictionLogDep,
    ServedDep,
    SettingsDep,
    admin_key,
)
from app.errors import ADMIN_KEY, BAD_BODY, CONFLICT, INVALID, NOT_FOUND, UNAVAILABLE, invalid_input, whole_body
from app.openapi import request_body
from app.schemas import Job
from incomeops.jobs import JobNotFound
from incomeops.training import TrainingParams

router = APIRouter(tags=["jobs"], dependencies=[Depends(admin_key)], responses={**ADMIN_KEY, **INVALID, **UNAVAILABLE})
JOB_ID = re.compile(r"[0-9a-f]{12}")
STARTED = {"status_code": 202, "response_model_exclude_unset": True}


def training_params(data) -> TrainingParams:
    "Training parameters from a JSON object (None: the defaults)."
    if data is None: return TrainingParams()
    if not isinstance(data, dict): raise whole_body("must be a JSON object of training parameters")
    try: return TrainingParams.model_validate(data)
    except ValidationError as e: raise invalid_input(e) from None


def known_job_id(job_id: str) -> str:
    "`job_id` if it has the form of a job id (12 hexadecimal digits); else 404, without repeating it."
    if not JOB_ID.fullmatch(job_id): raise JobNotFound("there is no job with that id: job ids are 12 hexadecimal digits")
    return job_id


@router.post("/jobs/train", summary="Start the training notebook (Papermill) in the background", **STARTED,
             responses={**BAD_BODY, **CONFLICT}, openapi_extra=request_body(TrainingParams, required=False))
async def start_training(body: OptionalJsonBodyDep, jobs: JobsDep, metrics: MetricsDep) -> Job:
    params = training_params(body.data)
    job = await asyncio.to_thread(jobs.train, params)
    metrics.jobs.labels("train").inc()
    return job


@router.post("/jobs/monitor", summary="Run the monitoring check in the background", **STARTED, responses=CONFLICT)
async def start_monitoring(jobs: JobsDep, models: ModelsDep, predictions: PredictionLogDep, settings: SettingsDep, metrics: MetricsDep) -> Job:
    await asyncio.to_thread(predictions.sync, settings.log_ack_timeout_seconds)   # the check sees every prediction this replica answered
    job = await asyncio.to_thread(jobs.monitor, models)
    metrics.jobs.labels("monitor").inc()
    return job


@router.post("/jobs/retrain", summary="Retrain the champion now on the training data plus labelled production rows", **STARTED,
             responses=CONFLICT)
async def start_retraining(jobs: JobsDep, served: ServedDep, metrics: MetricsDep) -> Job:
    job = await asyncio.to_thread(jobs.retrain, served, "asked for through the API")
    metrics.jobs.labels("retrain").inc()
    return job


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job: its notebook's processes are killed",
             responses={**NOT_FOUND, **CONFLICT})
async def cancel_job(jobs: JobsDep, job_id: str) -> Job:
    return await asyncio.to_thread(jobs.cancel, known_job_id(job_id))


@router.get("/jobs", summary="Recent jobs, newest first")
async def list_jobs(jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    kind: Literal["train", "monitor", "retrain"] | None = None) -> list[Job]:
    return await asyncio.to_thread(jobs.list_jobs, limit=limit, kind=kind)


@router.get("/jobs/{job_id}", summary="One job: status, timings, outcome, executed notebook", responses=NOT_FOUND)
async def get_job(jobs: JobsDep, job_id: str) -> Job:
    job = await asyncio.to_thread(jobs.get_job, known_job_id(job_id))
    if job is None: raise JobNotFound(f"no job has id {job_id}")
    return job
