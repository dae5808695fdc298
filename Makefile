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
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z0-9_-]+):.*## /\1\t/' | \
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

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file on one of them, one torch/BLAS thread each:
# the servers the tests start spend much of their time waiting, and two single-thread workers on 2 cores do not stall
# each other (or a job beside them) the way 2-thread OpenMP teams do (docs/testing.md, "Wall time").
TEST_WORKERS ?= 2
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
test: install lint browser stack-tools container-tools  ## set up, then lint, run the test suite, and its numerical tests on a second CPU path
	env $(ONE_THREAD) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25
	$(MAKE) --no-print-directory test-cpu-path

test-fast: install lint  ## the development loop: lint and every test not marked slow (about a minute; CI runs all)
	$(BIN)/pytest -m "not slow"

# Another CPU code path than the one this machine picks: the kernels an AVX2-only x86-64 (an AMD EPYC, an older
# Xeon) runs, in torch's own ops (ATen), MKL (matrix products, LAPACK), oneDNN (convolutions) and numpy/scipy's
# OpenBLAS. A tolerance tuned to one CPU's last bits fails here (README, "Testing on other CPUs").
CPU_PATH ?= ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
	OPENBLAS_CORETYPE=Haswell
.PHONY: gpu-wheels
gpu-wheels: install  ## wheels a lent GPU machine's python3 (3.12, CUDA torch) lacks, into .gpu-wheels/ (benchmarks/gpu_session.sh)
	$(VENV)/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 -d .gpu-wheels pydantic==$$($(VENV)/bin/python -c "import pydantic; print(pydantic.VERSION)") \
		pydantic_core==$$($(VENV)/bin/python -c "import pydantic_core; print(pydantic_core.__version__)") \
		annotated-types typing-inspection typing_extensions

.PHONY: test-cpu-path
test-cpu-path: install  ## the numerical tests (marker `numeric`, not slow) again on CPU_PATH's kernels (AVX2)
	env $(CPU_PATH) $(BIN)/pytest -m "numeric and not slow" -q

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

# --- the bento as a container image: serving/README.md, "The container" -------------------------------------------
# CONTAINER_ARGS: e.g. --tool podman, --base local (build the Debian base here), -e GAN_ENHANCE_SERVE_WORKERS=2, --gpus
CONTAINER_ARGS ?=
CONTAINER_PACKAGES := podman buildah mmdebstrap runc fuse-overlayfs slirp4netns uidmap containernetworking-plugins \
	golang-github-containers-common conmon
container container-run: export BENTOML_HOME ?= $(CURDIR)/bentoml_home

.PHONY: container container-run container-tools
container: bento  ## build the bento's OCI image (docker, podman or buildah), run it on 127.0.0.1, check /enhance
	$(BIN)/python -m gan_enhance.serving.container check $(CONTAINER_ARGS)

container-run: install  ## serve the image `make container` built on http://127.0.0.1:$(SERVE_PORT) (Ctrl+C stops it)
	$(BIN)/python -m gan_enhance.serving.container run --port $(SERVE_PORT) $(CONTAINER_ARGS)

container-tools:  ## podman, buildah, mmdebstrap (Debian packages) for `make container`; nothing to do when they are there
	@command -v podman >/dev/null 2>&1 && command -v buildah >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(CONTAINER_PACKAGES); }

# --- promotion deploys: the service follows `champion` (serving/README.md, "Promotion deploys") ---------------------
DEPLOY_PORT ?= 3000
DEPLOY_CONTROL_PORT ?= 3001
DEPLOY_POLL ?= 30
# DEPLOY_ARGS: e.g. --params other.yaml, --model-name NAME, --tracking-uri http://127.0.0.1:5000, --no-webhook
DEPLOY_ARGS ?=
deploy: export BENTOML_HOME ?= $(CURDIR)/bentoml_home
# `make ui` is a tracking server the deployer registers its webhook on: let it call a receiver on 127.0.0.1, see a
# new webhook within seconds (it caches the list for 60 s by default), and give it a fixed key for the webhook
# secrets it stores (generated once into a git-ignored file), or after a restart it can no longer read them
WEBHOOK_KEY_FILE := .deployer/mlflow-webhook-key
ui: export MLFLOW_WEBHOOK_ALLOWED_SCHEMES ?= http,https
ui: export MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS ?= true
ui: export MLFLOW_WEBHOOK_CACHE_TTL ?= 5
ui: export MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY ?= $(shell test -s $(WEBHOOK_KEY_FILE) || { mkdir -p $(dir \
	$(WEBHOOK_KEY_FILE)) && umask 077 && $(PYTHON) -c 'import base64, os; \
	print(base64.urlsafe_b64encode(os.urandom(32)).decode())' > $(WEBHOOK_KEY_FILE); }; cat $(WEBHOOK_KEY_FILE))

.PHONY: deploy
deploy: install  ## serve the champion on http://127.0.0.1:$(DEPLOY_PORT); rebuild and switch over whenever it moves
	$(BIN)/python -m gan_enhance.serving.deployer --port $(DEPLOY_PORT) --control-port $(DEPLOY_CONTROL_PORT) \
		--poll-interval $(DEPLOY_POLL) $(DEPLOY_ARGS)

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

# --- the team stack: PostgreSQL, an S3 store, MLflow and Prefect on 127.0.0.1 (README.md, "The team stack") -------
# STACK_ENV: the generated settings and secrets; STACK_DIR, STACK_*_PORT in the environment choose them on first up
STACK_ENV ?= .env
STACK_CMD := $(BIN)/python -m gan_enhance.stack

.PHONY: stack-up stack-down stack-status stack-tools
stack-up: install stack-tools  ## start PostgreSQL, the S3 store, MLflow and Prefect (data in .stack/, secrets in $(STACK_ENV))
	$(STACK_CMD) up --env-file $(STACK_ENV)

stack-down: install  ## stop the team stack (its data stays)
	$(STACK_CMD) down --env-file $(STACK_ENV)

stack-status: install  ## each team-stack service: running or not, pid, memory, URL
	$(STACK_CMD) status --env-file $(STACK_ENV)

stack-tools:  ## PostgreSQL's server and docker-compose (checks deploy/compose.yaml), from Debian; nothing when present
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; }
	@command -v docker-compose >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose; }

# --- training beyond one machine (Kubernetes): flows/README.md, "GPUs and several machines" ------------------------
K8S_IMAGE ?= registry.example.com/gan-enhance-train:latest
# K8S_ARGS: e.g. --nodes 4 --gpus 8 --namespace ml --dvc-remote-url s3://dvc/gan-enhance --node-selector KEY=VALUE
K8S_ARGS ?= --nodes 2 --gpus 4

.PHONY: k8s-manifests
k8s-manifests: install  ## write deploy/k8s/: the GPU work pool's base job template and a multi-node PyTorchJob
	$(BIN)/python -m gan_enhance.launch.kubernetes --image $(K8S_IMAGE) --out deploy/k8s $(K8S_ARGS)
