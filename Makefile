# gan-enhance: `make run` sets up and runs the pipeline; `make test` sets up and runs lint + tests.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin

export PATH := $(BIN):$(PATH)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
# absolute, so DVC experiments (run in temporary copies) log to the same store
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
UI_PORT ?= 5000
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help install run test test-fast lint format clean ui browser
.DEFAULT_GOAL := help

help:  ## list the targets (this)
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## /\1\t/' | \
		awk -F'\t' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install the project (done by every target that needs it)

run: install  ## set up, then run the whole pipeline on the embedded default
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: install lint browser  ## set up, then lint and run the test suite
	$(BIN)/pytest

test-fast: install lint  ## the development loop: lint and every test not marked slow (about a minute; CI runs all)
	$(BIN)/pytest -m "not slow"

browser:  ## headless Chromium for the registry UI test (Debian package); nothing to do when it is there
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

ui: install  ## MLflow UI (runs, registered models, aliases) on http://127.0.0.1:$(UI_PORT)
	$(BIN)/gan-enhance ui --port $(UI_PORT)

lint: install  ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff --fix and ruff format (rewrites files)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove .venv and the tool caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- serving (BentoML): the champion behind HTTP -------------------------------------------------------------------
BENTO_OUT ?= dist
# BENTO_ARGS: e.g. --params other.yaml, --model-name NAME, --alias NAME
BENTO_ARGS ?=
SERVE_PORT ?= 3000
bento serve: export BENTOML_HOME ?= $(CURDIR)/bentoml_home

.PHONY: bento serve
bento: install  ## import the registry's champion into BentoML, `bentoml build`, export $(BENTO_OUT)/*.bento, check its Containerfile
	$(BIN)/python -m gan_enhance.serving.bento --out $(BENTO_OUT) $(BENTO_ARGS)

serve: install  ## serve the last built bento on http://127.0.0.1:$(SERVE_PORT) (Swagger UI at /); `make bento` first
	$(BIN)/bentoml serve gan-enhance:latest --host 127.0.0.1 --port $(SERVE_PORT)

# --- scheduled retraining (Prefect): flows/README.md ---------------------------------------------------------------
PREFECT_PORT ?= 4200
PREFECT_POOL ?= gan-enhance
RETRAIN_CRON ?= 0 3 * * *
# RETRAIN_ARGS: e.g. --force, -S train.steps=5000, --source DIR, --no-bento; EVALUATE_ARGS: e.g. --benchmark DIR
RETRAIN_ARGS ?=
EVALUATE_ARGS ?=
PREFECT_TARGETS := prefect-server flows-serve flows-deploy flows-worker retrain evaluate-champion
$(PREFECT_TARGETS): export PREFECT_HOME ?= $(CURDIR)/.prefect
$(PREFECT_TARGETS): export PREFECT_SERVER_API_PORT := $(PREFECT_PORT)
$(PREFECT_TARGETS): export BENTOML_HOME ?= $(CURDIR)/bentoml_home
flows-serve flows-deploy flows-worker: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: $(PREFECT_TARGETS)
prefect-server: install  ## Prefect server and UI on http://127.0.0.1:$(PREFECT_PORT) (Ctrl+C stops it)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

flows-serve: install  ## register retrain/nightly (cron $(RETRAIN_CRON)) and evaluate-champion/benchmark; run them here
	$(BIN)/python -m flows.deployments serve --cron "$(RETRAIN_CRON)"

flows-deploy: install  ## the same deployments on the process work pool $(PREFECT_POOL) (created if missing)
	$(BIN)/python -m flows.deployments deploy --pool $(PREFECT_POOL) --cron "$(RETRAIN_CRON)"

flows-worker: install  ## a worker that runs the flow runs of the work pool $(PREFECT_POOL)
	$(BIN)/prefect worker start --pool $(PREFECT_POOL) --type process

retrain: install  ## one retrain now (in the UI when `make prefect-server` runs); RETRAIN_ARGS=--force etc.
	$(BIN)/python -m flows.retrain $(RETRAIN_ARGS)

evaluate-champion: install  ## re-evaluate the champion on ../shared/datasets/Set14 (EVALUATE_ARGS=--benchmark DIR)
	$(BIN)/python -m flows.evaluate_champion $(EVALUATE_ARGS)
