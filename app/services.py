"""The parts of a running service in one container, and the background work that keeps a model served.

`create_app` builds them from settings at start-up (`Services.start`), or is given them ready-made (tests: a tiny model in
a `ModelHolder`, a temporary database, a `JobRunner` whose work is a small function). Jobs run in threads of this process
(`JobRunner`), or, when a broker is configured, on Celery workers (`incomeops.queue.QueueRunner`): then this process only
enqueues them, and follows the registry's champion by polling it, since promotions happen elsewhere.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

from app.observability import Metrics
from incomeops.config import IncomeOpsError, Settings
from incomeops.jobs import JobConflict, JobRunner, Jobs, reap_jobs
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
    jobs: Jobs                   # training, monitoring and retraining: in threads here, or on Celery workers
    metrics: Metrics

    def __post_init__(self):
        self.metrics.watch_log(self.predictions)
        if self.jobs.on_promotion is None: self.jobs.on_promotion = self.reload_model     # a promoted model is served at once

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics | None = None) -> Services:
        "The service's parts from `settings`: the database opened (jobs whose runner is gone marked failed), the log started."
        store = Store.from_settings(settings)
        reap_jobs(store, settings)         # only jobs whose lease ran out: other replicas' and workers' running jobs are theirs
        predictions = PredictionLog.from_settings(store, settings).start()      # replays what a stopped process left in its journal
        return cls(settings, store, predictions, ModelHolder(settings), job_runner(store, settings), metrics or Metrics())

    def close(self) -> None:
        "Stop the jobs running in this process (recorded as interrupted), write every queued prediction, then close the database."
        try: self.jobs.close()
        except Exception: log.exception("the jobs of this process could not be stopped cleanly")
        try: self.predictions.close()
        finally: self.store.close()

    def serve_champion(self) -> bool:
        "Serve the registry's champion if it changed (True then); an error if the registry cannot say, the old model serving."
        changed = self.models.reload()
        self.metrics.serving(self.models.current)
        if changed: settle_heap()
        return changed

    def reload_model(self) -> bool:
        "`serve_champion`, for background work: a failure is logged, kept for /ready, and leaves the old model serving."
        try: return self.serve_champion()
        except Exception as e:
            if not isinstance(e, IncomeOpsError):
                log.warning("the registry cannot be read", exc_info=True)
                self.models.last_error = f"the model registry cannot be read ({type(e).__name__}); the service retries"
            else: log.warning("not serving a new model: %s", e)
            return False


def settle_heap() -> None:
    """Collect what the last model left, then freeze every object alive (the libraries, the model just loaded): Python's
    cyclic collector then never scans them again. Without this, its full collections walk the millions of objects that
    MLflow, scikit-learn and pandas leave after import, pausing the event loop for over 100 ms every second or so under
    load: at 16 connections the p99 of one logged prediction was 166-200 ms against a p50 of 10 ms, and 17-18 ms with the
    heap frozen (benchmarks/README.md). Unfreezing first lets the previous model's cycles be collected at each reload;
    the whole step takes about 0.2 s once per model."""
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info("heap settled after loading the model: %d objects frozen (%.0f ms)", gc.get_freeze_count(), (time.perf_counter() - start) * 1000)


def job_runner(store: Store, settings: Settings) -> Jobs:
    "Where jobs run: on Celery workers when a broker is configured (this process only enqueues), else in threads of this process."
    if settings.broker_url is None: return JobRunner(store, settings)
    from incomeops.queue import QueueRunner  # Celery is imported only where a broker is used
    return QueueRunner(store, settings)


async def load_until_served(services: Services, first_wait: float = 2, longest_wait: float = 60) -> None:
    "Load the champion at start-up, and keep trying (waits doubling up to `longest_wait` s) until one serves."
    wait = first_wait
    while services.models.current is None:
        await asyncio.to_thread(services.reload_model)
        if services.models.current is not None: return
        await asyncio.sleep(wait)
        wait = min(wait * 2, longest_wait)


async def follow_champion(services: Services) -> None:
    """With a broker: every `model_poll_seconds`, serve the registry's champion if a worker promoted a new one, so every
    replica serves it within that time. Asking costs one registry read when nothing changed; errors keep the old model."""
    while True:
        await asyncio.sleep(services.settings.model_poll_seconds)
        await asyncio.to_thread(services.reload_model)


async def monitor_schedule(services: Services) -> None:
    """Every `monitor_interval_minutes`: serve the registry's champion if another process promoted one (replicas behind one
    registry converge this way), then start a monitoring job (skipped while one runs). No error ends the schedule."""
    interval = services.settings.monitor_interval_minutes * 60
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(services.reload_model)
            await asyncio.to_thread(services.predictions.sync, services.settings.log_ack_timeout_seconds)   # every answer counted
            services.jobs.monitor(services.models)
        except JobConflict: log.info("scheduled monitoring skipped: one is already running")
        except Exception: log.exception("scheduled monitoring could not start; trying again in %g minutes", interval / 60)
