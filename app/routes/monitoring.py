"""Monitoring: what the monitoring page shows, and the latest drift report."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, Response

from app.deps import ModelsDep, PredictionLogDep, SettingsDep, StoreDep, client_key
from app.errors import CLIENT_KEY, INVALID, NOT_FOUND, UNAVAILABLE
from app.schemas import MonitoringSummary
from incomeops.summary import summarise_predictions

router = APIRouter(tags=["monitoring"], dependencies=[Depends(client_key)], responses={**CLIENT_KEY, **INVALID})


@router.get("/monitoring/summary", summary="Prediction volume, live performance, the last check (drift, alarms), alerts and retrainings",
            responses=UNAVAILABLE, response_model_exclude_unset=True)
async def monitoring_summary(store: StoreDep, predictions: PredictionLogDep, models: ModelsDep, settings: SettingsDep) -> MonitoringSummary:
    def summary():
        predictions.sync(settings.log_ack_timeout_seconds)         # every prediction answered so far is counted (the drain lingers)
        return summarise_predictions(store, models.current, settings)
    return await asyncio.to_thread(summary)


@router.get("/monitoring/report", summary="The latest drift report (HTML, Evidently)", response_class=Response,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **NOT_FOUND})
async def monitoring_report(settings: SettingsDep) -> Response:
    report = settings.reports_dir / "monitoring" / "drift.html"
    if not report.is_file(): raise HTTPException(404, "no drift report yet: one is written by the first monitoring check with enough predictions")
    return FileResponse(report, media_type="text/html")
