# pg_ops: `make run` (Dagster UI + the embedded local cluster), `make test`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BARMAN := $(VENV)/barman
export PG_OPS_HOME ?= $(CURDIR)/.pg-ops
export DAGSTER_HOME ?= $(PG_OPS_HOME)/dagster
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: setup tools run test bench lint deploy status teardown clean

setup: $(STAMP) $(BARMAN)/.installed

# Pinned set (requirements.lock): dagster does not resolve unpinned in reasonable time.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# barman-cloud (WAL archiving, base backups, point-in-time recovery) in its own venv, built from a
# python the unprivileged server user can execute: the archive command runs as that user, and the
# project venv's python may live under a 0700 home (root's pyenv). Pins: requirements-barman.lock,
# installed --no-deps (psycopg2-binary stands in for barman's psycopg2, which would need a compiler).
BARMAN_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))
$(BARMAN)/.installed: requirements-barman.lock
	test -x $(BARMAN)/bin/python || $(BARMAN_PYTHON) -m venv $(BARMAN)
	$(BARMAN)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-barman.lock
	touch $@

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

test: setup tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --ignore=pg_ops_tests/benchmarks $(PYTEST_ARGS)

# Benchmarks print JSON lines (figure + same-run baseline) and append to bench-results/.
# BENCH=failover runs one of them.
bench: setup
	$(PY) -m pg_ops_tests.benchmarks $(BENCH)

# Manifest validators (not in requirements.lock: they pin their own, conflicting deps), in their
# own venv inside .venv/ (git- and ruff-ignored); pg_ops_tests/test_render.py and test_gitops.py use them.
TOOLS := $(VENV)/tools
TOOLS_PINS := kubernetes-validate==1.37.0 checkov==3.3.30 python-hcl2==8.1.4
$(TOOLS)/.installed:
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check $(TOOLS_PINS)
	touch $@

tools: $(TOOLS)/.installed

lint: setup
	$(VENV)/bin/ruff check .

clean:
	-$(VENV)/bin/pg-ops teardown 2>/dev/null
	rm -rf $(VENV) .pg-ops bench-results
