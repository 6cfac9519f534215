"""The model being served: its description, model card and plots, and swapping in the registry's new champion."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from app.deps import ServedDep, ServicesDep, admin_key, client_key
from app.errors import ADMIN_KEY, CLIENT_KEY, INVALID, NOT_FOUND, UNAVAILABLE
from app.schemas import ModelCard, ModelDescription, ReloadAnswer

router = APIRouter(responses={**INVALID, **UNAVAILABLE})
OPEN = {"tags": ["model"], "dependencies": [Depends(client_key)], "responses": CLIENT_KEY, "response_model_exclude_unset": True}


@router.get("/model", summary="The model being served, its metrics and the input schema", **OPEN)
async def model(served: ServedDep) -> ModelDescription:
    return served.describe()


@router.get("/model/card", summary="The champion's model card (Markdown), slice table and plot names", **OPEN)
async def model_card(served: ServedDep) -> ModelCard:
    return served.card()


@router.get("/model/plots/{name}", tags=["model"], summary="One evaluation plot of the champion (PNG)", response_class=Response,
            dependencies=[Depends(client_key)],
            responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}, **CLIENT_KEY, **NOT_FOUND})
async def model_plot(served: ServedDep, name: str) -> Response:
    if not name.endswith(".png") or name not in served.evaluation:
        plots = ", ".join(n for n in served.evaluation if n.endswith(".png")) or "none"
        raise HTTPException(404, f"model version {served.version} has no such plot; it has {plots}")
    return Response(served.evaluation[name], media_type="image/png")


@router.post("/model/reload", tags=["admin"], summary="Serve the registry's current champion (no restart)",
             dependencies=[Depends(admin_key)], responses=ADMIN_KEY)
async def reload(services: ServicesDep) -> ReloadAnswer:
    changed = await asyncio.to_thread(services.serve_champion)     # the registry failing is an IncomeOpsError: a 503
    return ReloadAnswer(changed=changed, model_version=services.models.current.version)
