# Two commands do everything: `make demo` and `make test`. Both create or update .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)

.PHONY: demo test test-slow install mlflow-ui airflow-standalone compose-config clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the factory into $(VENV) (first time: ~3 minutes)..."
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/factory demo

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

mlflow-ui: $(STAMP)
	$(BIN)/factory mlflow-ui

airflow-standalone: $(STAMP)
	$(BIN)/factory airflow standalone

compose-config:
	docker-compose -f docker-compose.yml --env-file infra/compose.env.example config --quiet && echo "docker-compose.yml is valid"

clean:
	rm -rf .state
