"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import MetricsDep, PredictionLogDep, ServedDep, client_key
from app.errors import CLIENT_KEY, INVALID, UNAVAILABLE
from app.schemas import Health, Ready
from incomeops import __version__

router = APIRouter(tags=["service"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get("/ready", summary="Readiness: a champion model is loaded and the prediction log can write", responses=UNAVAILABLE)
async def ready(served: ServedDep, predictions: PredictionLogDep) -> Ready:
    if problem := predictions.problem:
        raise HTTPException(503, f"the service cannot acknowledge predictions: {problem}", headers={"Retry-After": "5"})
    return Ready(ready=True, model_version=served.version)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(client_key)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}, **CLIENT_KEY, **INVALID})
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
