# syntax=docker/dockerfile:1
# The IncomeOps image: the prediction API by default; by command the Streamlit form, a training job, the
# monitoring check, a Celery worker or Celery beat (deploy/entrypoint.sh lists them). compose.yaml runs the whole
# stack from this one image.
#
#   docker build -t incomeops .
#   docker run --rm -p 8000:8000 incomeops                    # the API; serves the registry's @champion
#   docker run --rm -p 8501:8501 -e INCOMEOPS_API_URL=http://api:8000 incomeops ui
#   docker run --rm incomeops train --trials 20               # fetch + verify the data, then the training notebook
#   docker run --rm -e INCOMEOPS_BROKER_URL=redis://redis:6379/0 incomeops worker   # runs the jobs the API enqueues
#
# tests/test_delivery.py runs this file's install step (the `uv sync` line below) and start step (the entrypoint)
# outside Docker, and hadolint checks it in `make lint`.

# ---------------------------------------------------------------------------------------------------- builder
FROM python:3.11-slim AS builder

# the uv that the Makefile bootstraps (UV_VERSION there; the test checks that the two agree)
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app
# The locked runtime dependencies first: this layer is rebuilt only when uv.lock changes. No dev extra (no
# nbdev, JupyterLab, ydata-profiling, pytest, ...). The uv cache is a build cache mount, never part of a layer.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --no-install-project
# then the library itself, installed as a regular (non-editable) package into the same environment
COPY README.md ./
COPY incomeops/ incomeops/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ------------------------------------------------------------------------------------------------------ final
FROM python:3.11-slim

LABEL org.opencontainers.image.title="IncomeOps" \
      org.opencontainers.image.description="Will this person earn more than 50K USD a year? API, form and training jobs (UCI Adult)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/incomeops/incomeops"

# No phoning home (MLflow, ydata-profiling, Streamlit and friends), no .pyc files written at run time (the
# environment's were compiled in the builder), logs unbuffered, the locked environment first on PATH.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    YDATA_PROFILING_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH

# A C compiler, the one build tool the service runs: it compiles the champion's trees into a shared library once per
# model (incomeops.conversion.compile_classifier, cached in .cache/compiled), which scores a batch several times faster
# than ONNX Runtime. Without it the service still answers, through ONNX Runtime. Debian's own gcc of the base image's
# release: its version follows the base image, as the base image's security updates require.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# an unprivileged user with a home (Jupyter, which Papermill starts for the training notebook, writes there)
RUN groupadd --system --gid 10001 incomeops \
    && useradd --system --uid 10001 --gid incomeops --create-home --home-dir /home/incomeops incomeops

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
# Only what runs: the API, the form, the training notebook (Papermill runs it with the environment's python3
# kernel), the entrypoint and health check, and pyproject.toml (settings find the project folder by it).
COPY pyproject.toml ./
COPY app/ app/
COPY pages/ pages/
COPY streamlit_app.py ./
COPY .streamlit/ .streamlit/
COPY nbs/pipelines/ nbs/pipelines/
COPY --chmod=0755 deploy/entrypoint.sh deploy/healthcheck.py deploy/
# the folders jobs write to (data snapshots, reports, a local MLflow store, compiled models), owned by the
# unprivileged user; compose.yaml mounts volumes on some of them, which then start with this ownership
RUN mkdir -p data reports mlflow/artifacts .cache/compiled && chown -R incomeops:incomeops data reports mlflow .cache

USER 10001:10001
EXPOSE 8000 8501
# python, not curl (python:slim has no curl): asks whichever server this container runs (see the script)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/app/deploy/healthcheck.py"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["api"]
