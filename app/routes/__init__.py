"""One router per concern; `ROUTERS` in the order the OpenAPI document lists them."""
from __future__ import annotations

from app.routes import feedback, jobs, model, monitoring, predict, service

ROUTERS = [service.router, model.router, predict.router, feedback.router, jobs.router, monitoring.router]
