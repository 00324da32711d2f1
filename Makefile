# pg_ops: `make run` (Dagster UI + the embedded local cluster), `make test`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PG_OPS_HOME ?= $(CURDIR)/.pg-ops
export DAGSTER_HOME ?= $(PG_OPS_HOME)/dagster
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: setup run test bench lint deploy status teardown clean

setup: $(STAMP)

# Pinned set (requirements.lock): dagster does not resolve unpinned in reasonable time.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Deploy the embedded cluster (recorded as a deploy_cluster run), then serve the UI.
run: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pg-ops deploy
	@echo "Dagster UI: http://$(HOST):$(PORT)  (Ctrl-C stops the UI; the cluster keeps running: make teardown)"
	exec $(VENV)/bin/dagster dev -h $(HOST) -p $(PORT) -w workspace.yaml

deploy status teardown: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pg-ops $@

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) -m pytest -q -p no:cacheprovider -s pg_ops_tests/benchmarks $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	-$(VENV)/bin/pg-ops teardown 2>/dev/null
	rm -rf $(VENV) .pg-ops bench-results
