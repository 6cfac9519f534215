# IncomeOps: every task a newcomer needs, by the name they would guess.
# The first target that runs bootstraps uv (in .tools/) and the locked environment (in .venv/).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin

# Where the data comes from (the order is in nbs/01_data.ipynb): the folder INCOMEOPS_DATA_MIRROR (or DATA_MIRROR)
# names, else the URL INCOMEOPS_DATA_URL names, else UCI. A setting always wins over a found folder: only when neither
# is set does make use the team's mirror ../shared/data/adult, if it is there (the library never looks for it).
DATA_MIRROR ?= $(or $(INCOMEOPS_DATA_MIRROR),$(if $(INCOMEOPS_DATA_URL),,$(wildcard ../shared/data/adult)))
ifneq ($(strip $(DATA_MIRROR)),)
export INCOMEOPS_DATA_MIRROR := $(abspath $(DATA_MIRROR))
endif

# Libraries that phone home unless told not to (this project runs without network).
export YDATA_PROFILING_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help all install lab data profile train train-smoke serve api ui test system-deps check-sync lint nbtest pytest export readme docs detection clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

all: install data profile train serve  ## the main job: install, data, profile report, train and register a champion, serve it

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --compile-bytecode --python $(PYTHON)
	$(BIN)/python -m ipykernel install --sys-prefix --name incomeops --display-name "IncomeOps (.venv)" >/dev/null
	touch $@

install: $(VENV)/.installed  ## create .venv from uv.lock (bootstraps uv first)

lab: install  ## JupyterLab on the notebooks, with the project's kernel
	$(BIN)/jupyter lab --notebook-dir nbs $(ROOT_FLAG)

data: install  ## fetch and verify the Adult files, clean, validate, snapshot
	$(BIN)/incomeops data

profile: data  ## exploration notebook + ydata-profiling report in reports/
	$(BIN)/incomeops profile --mode $(or $(PROFILE_MODE),explorative)

train: data  ## train, evaluate, register and gate a model through the Papermill pipeline (TRAIN_ARGS="--trials 5")
	$(BIN)/incomeops train $(TRAIN_ARGS)

train-smoke: data  ## a quick run of the training notebook (no tuning), as CI runs it; executed notebook in reports/runs/
	$(BIN)/incomeops train --candidates logreg,hgb --trials 0 --folds 2

HOST ?= 127.0.0.1
PORT ?= 8000
UI_PORT ?= 8501
API = $(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --no-access-log
UI = INCOMEOPS_API_URL=http://$(HOST):$(PORT) $(BIN)/streamlit run streamlit_app.py --server.address $(HOST) \
	--server.port $(UI_PORT) --server.headless true --browser.gatherUsageStats false

serve: install  ## the API (http://HOST:8000/docs) and the form (http://HOST:8501) together; Ctrl-C stops both
	@echo "API: http://$(HOST):$(PORT)/docs   form: http://$(HOST):$(UI_PORT)   (Ctrl-C stops both)"
	@trap 'kill 0' EXIT; $(API) & $(UI)

api: install  ## only the API on http://HOST:PORT (docs at /docs); serves the registry's champion
	$(API)

ui: install  ## only the Streamlit form, talking to the API at http://HOST:PORT
	$(UI)

test: install check-sync lint nbtest pytest  ## everything CI runs

system-deps:  ## Chromium, PostgreSQL and Redis for the browser, PostgreSQL and Celery tests (Debian/Ubuntu; root or sudo)
	bash scripts/system_deps.sh

check-sync: install  ## notebooks, library and README agree (nbdev-export/nbdev-clean change nothing)
	@bash scripts/check_sync.sh

lint: install  ## ruff; hadolint on the Dockerfile; compose.yaml, workflows and dependabot.yml against their schemas
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml

nbtest: install  ## run every notebook top to bottom (nbdev-test)
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2 --skip-folder-re '^([_.]|pipelines$$)'

pytest: install  ## the pytest suite in tests/
	$(BIN)/pytest

export: install  ## notebooks -> incomeops/ and README.md
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
	$(BIN)/python scripts/readme.py

readme: install  ## README.md from nbs/index.ipynb
	$(BIN)/python scripts/readme.py

DOCS_EXECUTE ?= cache
DOCS_JOBS ?= 2
docs: data  ## the docs site in _docs/ (Sphinx): notebooks executed (DOCS_EXECUTE=cache|force|off), API reference, reports, architecture; warnings and broken links fail
	@mkdir -p _site
	OMP_NUM_THREADS=1 DOCS_EXECUTE=$(DOCS_EXECUTE) $(BIN)/sphinx-build -b html -c docs/site -W --keep-going -n -q -j $(DOCS_JOBS) \
		-d .docs-cache/doctrees $(DOCS_ARGS) _site _docs

detection: data  ## detection power, offline: false alarms and rows to the first alarm per scenario and rule -> docs/monitoring-results.md, docs/simulation/detection.png
	OMP_NUM_THREADS=1 $(BIN)/python -c "from incomeops.detection import main; main()"

clean:  ## remove generated data, reports and caches (keeps .venv and .tools)
	rm -rf data reports mlflow _proc _site _docs jupyter_execute .docs-cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './.tools/*' -prune -exec rm -rf {} +
