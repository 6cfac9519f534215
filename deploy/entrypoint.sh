#!/bin/sh
# What the IncomeOps image runs, in one place: the Dockerfile's ENTRYPOINT, compose.yaml's commands and
# tests/test_delivery.py (which runs it outside Docker against a clean environment) all go through this script.
#
#   api        (default) the prediction API, uvicorn on $HOST:$PORT (0.0.0.0:8000); extra arguments go to uvicorn
#   ui         the Streamlit form on $HOST:$PORT (0.0.0.0:8501), talking to the API at $INCOMEOPS_API_URL
#   train      fetch and verify the data, then the training notebook; arguments go to `incomeops train`
#   bootstrap  `train`, but only if the registry has no champion yet (compose's one-shot trainer)
#   monitor    the monitoring check; arguments go to `incomeops monitor`
#   worker     a Celery worker that runs jobs, one at a time (needs INCOMEOPS_BROKER_URL); arguments go to Celery
#   beat       Celery beat, one per deployment: the scheduled monitoring check and the reaper of dead jobs
#   anything else runs as a command in the environment (`mlflow server ...`, `incomeops --help`, `sh`)
#
# Settings are the usual INCOMEOPS_* variables (see nbs/00_config.ipynb). The servers replace this shell
# (exec), so they receive the container's stop signal directly and drain before exiting.
set -eu
cd "$(dirname "$0")/.."
role="${1:-api}"
[ "$#" -gt 0 ] && shift

train() {
    incomeops data
    exec incomeops train "$@"
}

case "$role" in
    api)
        exec uvicorn app.main:app --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" --no-access-log --timeout-graceful-shutdown 20 "$@" ;;
    ui)
        exec streamlit run streamlit_app.py --server.address "${HOST:-0.0.0.0}" --server.port "${PORT:-8501}" \
            --server.headless true --browser.gatherUsageStats false "$@" ;;
    train)
        train "$@" ;;
    bootstrap)
        if python -c 'import sys; from incomeops.registry import version_by_alias; v = version_by_alias("champion"); print(f"champion: version {v.version}" if v else "no champion yet"); sys.exit(0 if v else 1)'; then
            echo "the registry already has a champion: nothing to train (run the 'train' command to train another)"
            exit 0
        fi
        train "$@" ;;
    monitor)
        exec incomeops monitor "$@" ;;
    worker)
        exec incomeops worker "$@" ;;
    beat)
        exec incomeops beat "$@" ;;
    *)
        exec "$role" "$@" ;;
esac
