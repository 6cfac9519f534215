"""Prometheus metrics and one structured log line per request, as a pure ASGI middleware (no per-request thread hop)."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from incomeops.schema import Person

access_log = logging.getLogger("incomeops.access")

PERSON_FIELDS = frozenset(Person.model_fields)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    "The service's Prometheus metrics, in a registry of their own (one per app, so tests can run several apps)."

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("incomeops_http_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("incomeops_http_request_duration_seconds", "HTTP request latency by route and method",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("incomeops_predictions", "Predictions by predicted label", ["label"], registry=r)
        self.model_version = Gauge("incomeops_model_version", "Version of the registered model being served (0: none)", registry=r)
        self.model_info = Gauge("incomeops_model_info", "The model being served (value 1)", ["name", "version", "backend"], registry=r)
        self.log_queue = Gauge("incomeops_prediction_log_queue_depth", "Predictions waiting to be written to the log", registry=r)
        self.log_written = Gauge("incomeops_prediction_log_written", "Predictions written to the log since start", registry=r)
        self.log_failures = Gauge("incomeops_prediction_log_write_failures", "Failed prediction-log writes (retried)", registry=r)
        self.feedback = Counter("incomeops_feedback", "Feedback labels by outcome", ["status"], registry=r)
        self.jobs = Counter("incomeops_jobs", "Jobs started by kind", ["kind"], registry=r)
        self.refusals = Counter("incomeops_predict_refusals", "Prediction requests refused as invalid (422), by each input field their "
                                "problems name ('(request)': the body as a whole; '(other)': a field the service does not know)", ["field"], registry=r)

    def serving(self, served) -> None:
        "Record which model is served (a `ServedModel`)."
        self.model_info.clear()
        self.model_info.labels(served.name, served.version, served.predictor.backend).set(1)
        self.model_version.set(float(served.version) if served.version.isdigit() else 0)

    def predicted(self, n: int, n_positive: int) -> None:
        "Count `n` answers, `n_positive` of them '>50K'."
        if n_positive: self.predictions.labels(">50K").inc(n_positive)
        if n - n_positive: self.predictions.labels("<=50K").inc(n - n_positive)

    def refused(self, problems: list[dict]) -> None:
        """Count one refused prediction request for each field its `problems` name. A rise for one field (a category renamed
        upstream, a unit changed) shows before monitoring can: refused people are never logged. The label is one of the
        person's own fields, never a name the client sent, so a client cannot grow the metric without bound."""
        for name in {_field_name(p["field"]) for p in problems}: self.refusals.labels(name).inc()

    def watch_log(self, plog) -> None:
        "Read the prediction log's queue depth, rows written and write failures at each scrape."
        self.log_queue.set_function(lambda: plog.depth)
        self.log_written.set_function(lambda: plog.written)
        self.log_failures.set_function(lambda: plog.failures)


def _field_name(path: str) -> str:
    "The person's field a problem's path names (`[3].age` -> `age`; education and its number -> `education`), or `(request)` / `(other)`."
    if path == "(request)": return path
    names = [n.replace("-", "_") for n in re.findall(r"[A-Za-z][A-Za-z_-]*", path)]
    return next((n for n in names if n in PERSON_FIELDS), "(other)")


def configure_logging(level: str = "INFO") -> None:
    "Plain single-line logs on stderr for the library; access lines are JSON already."
    root = logging.getLogger()
    if not any(getattr(h, "_incomeops", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._incomeops = True
        root.addHandler(handler)
    root.setLevel(level)


class ObservabilityMiddleware:
    "Times each HTTP request, counts it by route template and status, and logs one JSON line."

    def __init__(self, app, metrics: Metrics, route_of: Callable[[dict], str]):
        self.app, self.metrics, self.route_of = app, metrics, route_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start": status[0] = message["status"]
            await send(message)

        try: await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - start
            route, method = self.route_of(scope), scope["method"]
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.latency.labels(route, method).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({"method": method, "path": scope["path"], "route": route, "status": status[0],
                                            "ms": round(seconds * 1000, 3), "client": (scope.get("client") or ("-",))[0]}))
