"""The parts of a running service in one container, and the background work that keeps a model served.

`create_app` builds them from settings at start-up (`Services.start`), or is given them ready-made (tests: a tiny model in
a `ModelHolder`, a temporary database, a `JobRunner` whose work is a small function).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.observability import Metrics
from incomeops.config import IncomeOpsError, Settings
from incomeops.jobs import JobConflict, JobRunner
from incomeops.loader import ModelHolder
from incomeops.store import PredictionLog, Store

log = logging.getLogger("incomeops.api")


@dataclass
class Services:
    "What the routes work with."
    settings: Settings
    store: Store                 # the service database: feedback, jobs, alerts, aggregates
    predictions: PredictionLog   # each answered prediction is journaled before it is acknowledged, then drained into the store
    models: ModelHolder          # the champion being served (`current`), swapped by `reload`
    jobs: JobRunner              # training, monitoring and retraining in the background
    metrics: Metrics

    def __post_init__(self):
        self.metrics.watch_log(self.predictions)
        if self.jobs.on_promotion is None: self.jobs.on_promotion = self.reload_model     # a promoted model is served at once

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics | None = None) -> Services:
        "The service's parts from `settings`: the database opened (jobs a previous stop interrupted marked failed), the log started."
        store = Store.from_settings(settings)
        interrupted = store.fail_interrupted_jobs()
        if interrupted: log.warning("%d job(s) were interrupted by the last stop and are marked failed", interrupted)
        predictions = PredictionLog.from_settings(store, settings).start()      # replays what a stopped process left in its journal
        return cls(settings, store, predictions, ModelHolder(settings), JobRunner(store, settings), metrics or Metrics())

    def close(self) -> None:
        "Write every queued prediction, then close the database."
        try: self.predictions.close()
        finally: self.store.close()

    def reload_model(self) -> bool:
        "Serve the registry's champion if it changed; a failure is logged, kept for /ready, and leaves the old model serving."
        try: changed = self.models.reload()
        except Exception as e:
            if not isinstance(e, IncomeOpsError):
                log.warning("the registry cannot be read", exc_info=True)
                self.models.last_error = f"the model registry cannot be read ({type(e).__name__}); the service retries"
            else: log.warning("not serving a new model: %s", e)
            return False
        self.metrics.serving(self.models.current)
        return changed


async def load_until_served(services: Services, first_wait: float = 2, longest_wait: float = 60) -> None:
    "Load the champion at start-up, and keep trying (waits doubling up to `longest_wait` s) until one serves."
    wait = first_wait
    while services.models.current is None:
        await asyncio.to_thread(services.reload_model)
        if services.models.current is not None: return
        await asyncio.sleep(wait)
        wait = min(wait * 2, longest_wait)


async def monitor_schedule(services: Services) -> None:
    """Every `monitor_interval_minutes`: serve the registry's champion if another process promoted one (replicas behind one
    registry converge this way), then start a monitoring job (skipped while one runs). No error ends the schedule."""
    interval = services.settings.monitor_interval_minutes * 60
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(services.reload_model)
            services.jobs.monitor(services.models)
        except JobConflict: log.info("scheduled monitoring skipped: one is already running")
        except Exception: log.exception("scheduled monitoring could not start; trying again in %g minutes", interval / 60)
