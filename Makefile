# Two commands do everything: `make demo` and `make test`. Both create or update .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)

.PHONY: demo test test-slow test-cluster faults bench install mlflow-ui airflow-standalone screenshots compose-config clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the factory into $(VENV) (first time: ~3 minutes)..."
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/factory demo

# ruff (pinned in the dev extra; configured in pyproject.toml) first: a lint error fails in seconds.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not slow and not cluster"

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# The generated tiny world on a real local cluster (`factory cluster up`: Spark standalone master +
# worker, Ray head + second node) against the embedded run (tests/test_cluster.py). .ci/run runs it.
test-cluster: $(STAMP)
	$(BIN)/pytest -q -s -m cluster tests/test_cluster.py

# Scripted fault scenarios (kill -9 mid-write, concurrent runs, backfill, gates, bad input) on a tiny
# world under .state/faults; results go into docs/reliability.md. About an hour on 2 shared cores.
# FAULTS_ARGS="--only crash,gates" runs some scenarios; "--fresh" rebuilds the world.
faults: $(STAMP)
	$(BIN)/python -m jobs.faults $(FAULTS_ARGS)

# Every performance benchmark (inference, features, semantic IDs, end to end, scaling) on generated
# data: benchmarks/results/perf.{json,md} and MLflow. About an hour on 2 idle cores; needs ~15 GB
# free RAM and ~20 GB of disk under .state/bench. BENCH_ARGS="--only sid,features" runs some sections.
bench: $(STAMP)
	$(BIN)/factory bench all $(BENCH_ARGS)

mlflow-ui: $(STAMP)
	$(BIN)/factory mlflow-ui

airflow-standalone: $(STAMP)
	$(BIN)/factory airflow standalone

# Screenshots of the MLflow and Airflow UIs over a finished `make demo` into docs/img/, each page
# checked in headless Chromium (apt-get install chromium). Backfills the demo's days through Airflow
# first (several minutes). By hand only, not in .ci/run. SCREENSHOTS_ARGS="--no-backfill" skips it.
screenshots: $(STAMP)
	$(BIN)/python infra/screenshots/take.py $(SCREENSHOTS_ARGS)

compose-config:
	docker-compose -f docker-compose.yml --env-file infra/compose.env.example config --quiet && echo "docker-compose.yml is valid"

clean:
	rm -rf .state
