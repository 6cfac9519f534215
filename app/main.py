"""IncomeOps HTTP service: wiring only. The routes are in `app.routes` (one router per concern), the logic in `incomeops`.

Run it with `make serve`, or `uvicorn app.main:app` from the project folder (settings from INCOMEOPS_* variables).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, nullcontext

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware
from app.observability import Metrics, ObservabilityMiddleware, configure_logging
from app.openapi import openapi_document
from app.routes import ROUTERS
from app.schemas import Feedback, PeopleTable
from app.services import Services, follow_champion, load_until_served, monitor_schedule
from incomeops import __version__
from incomeops.config import Settings, get_settings
from incomeops.schema import Person
from incomeops.training import TrainingParams

log = logging.getLogger("incomeops.api")

BODY_MODELS = (Person, PeopleTable, Feedback, TrainingParams)     # bodies the routes read themselves (see app.openapi)
DESCRIPTION = ("Predicts whether a person earns more than 50K USD a year (UCI Adult census data).\n\n"
               "Prediction, model, monitoring and metrics endpoints are open unless the service sets a prediction key; "
               "job and admin endpoints need the admin key in the `X-API-Key` header. Every error answer has the "
               "shape of `ErrorBody`; submitted values are never repeated in it.")


@asynccontextmanager
async def own_services(settings: Settings, metrics: Metrics):
    "The service's parts for the app's lifetime: built from `settings`, the champion loaded in the background, closed at the end."
    configure_logging()
    services = Services.start(settings, metrics)
    tasks = [asyncio.create_task(load_until_served(services))]          # /health answers meanwhile; /ready says why not yet
    if settings.broker_url: tasks.append(asyncio.create_task(follow_champion(services)))    # workers promote: follow the alias
    elif settings.monitor_interval_minutes > 0: tasks.append(asyncio.create_task(monitor_schedule(services)))   # (else: beat's)
    log.info("IncomeOps API %s: database %s, registry %s, jobs %s", __version__, services.store.url, settings.mlflow_tracking_uri,
             "on Celery workers (this process only enqueues)" if settings.broker_url else "in this process")
    try: yield services
    finally:
        for task in tasks: task.cancel()
        services.close()                      # every queued prediction is written before the process ends
        log.info("stopped: %d predictions written to the log", services.predictions.written)


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """The service, configured by `settings` (default: the environment); or serving ready-made `services`, whose life
    (loading a model, closing the database) is then the caller's."""
    settings = services.settings if services else settings or get_settings()
    metrics = services.metrics if services else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with nullcontext(services) if services else own_services(settings, metrics) as running:
            yield {"services": running}                   # request.state.services, for app.deps

    app = FastAPI(title="IncomeOps", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name)            # operation ids: predict, model, get_job...
    app.add_middleware(ObservabilityMiddleware, metrics=metrics,
                       route_of=lambda scope: getattr(scope.get("route"), "path", "unmatched"))
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)       # added last: runs first
    install_error_handlers(app)
    for router in ROUTERS: app.include_router(router)
    app.openapi = lambda: openapi_document(app, BODY_MODELS)
    return app


app = create_app()
