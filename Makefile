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

.PHONY: setup tools apt-packages control-plane kube run test bench lint deploy status teardown clean \
	monitoring monitoring-stop screenshot-alerts

# Debian packages, installed with apt when running as root (CI runs as root); not root, the tests
# that need one skip with a one-line reason, and this says which. ONE list for `make test` and
# `make monitoring`: add a package as `name=what skips without it`.
APT_PACKAGES := \
	"prometheus=promtool rule tests and live monitoring tests (pg_ops_tests/test_prometheus_rules.py, test_monitoring_live.py), make monitoring" \
	"prometheus-postgres-exporter=live monitoring tests (pg_ops_tests/test_monitoring_live.py), make monitoring" \
	"prometheus-alertmanager=pg_ops alerts to a real Alertmanager (pg_ops_tests/test_monitoring_live.py)" \
	"iptables=real network partitions (pg_ops_tests/test_partitions.py; also needs a writable cgroup v2), the partition benchmark" \
	"chromium=the Dagster UI test of a fresh cluster's asset graph (pg_ops_tests/test_ui_fresh.py), make screenshot-alerts" \
	"zstd=the raw baseline of the point-in-time recovery benchmark (tar --zstd; make bench BENCH=pitr)" \
	"pgbouncer=the connection pooler of clusters whose spec sets pooler (pg_ops_tests/test_pooler.py)"

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

# make run's instance config. Kept out of the repository root, where `dagster dev` warns on every
# start that a dagster.yaml in the current folder is not used.
LOCAL_INSTANCE := deploy/dagster/local/dagster.yaml
$(DAGSTER_HOME)/dagster.yaml: $(LOCAL_INSTANCE)
	mkdir -p $(DAGSTER_HOME)
	cp $(LOCAL_INSTANCE) $(DAGSTER_HOME)/dagster.yaml

# Deploy the embedded cluster (recorded as a deploy_cluster run: in this process, since the UI is
# not up yet), then serve the UI: dagster-webserver and dagster-daemon (scripts/serve-ui.py; what
# `dagster dev` starts, without its warnings). pg-ops finds this deployment through
# $(DAGSTER_HOME)/pg-ops-webserver and submits its runs to it while it runs (pg_ops/runs.py).
run: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pg-ops deploy
	echo "http://$(HOST):$(PORT)" > $(DAGSTER_HOME)/pg-ops-webserver
	@echo "Dagster UI: http://$(HOST):$(PORT)  (Ctrl-C stops the UI; the cluster keeps running: make teardown)"
	exec $(PY) scripts/serve-ui.py --host $(HOST) --port $(PORT) --workspace workspace.yaml

deploy status: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pg-ops $@

# Every local cluster pg_ops knows: the spec's (local) and those `pg-ops recover` made.
teardown: setup $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pg-ops teardown --all

apt-packages:
	@bash scripts/apt-install.sh $(APT_PACKAGES)

# The real Kubernetes control plane the tests run against (issue 21; docs/architecture/kubernetes.md,
# "The real control plane in the tests"): etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler built with Go from the wrapper module pg_ops_tests/kube/ (version in its go.mod,
# pinned by its go.sum), once per machine, into
# $${XDG_CACHE_HOME:-~/.cache}/pg-ops/kubernetes-<version>-<go.sum hash>/; nothing to do when there.
# Cold: 20 min on this shared 2-core machine (10 CPU-minutes); 282 MB of binaries, plus Go's own
# caches (2.8 GB build, 557 MB modules). No Go toolchain: a warning, and those tests skip.
control-plane:
	@bash pg_ops_tests/kube/build.sh

# A Kubernetes cluster on this machine to try pg_ops's Kubernetes platform on: the real control
# plane with three stand-in nodes, each SPEC registered; prints the exports; Ctrl-C removes it all.
#   make kube SPEC=path/to/kubernetes-spec.yaml
kube: setup control-plane
	$(PY) -m pg_ops_tests.kube_cluster $(if $(SPEC),$(foreach s,$(SPEC),--spec $(s)))

# Two workers, a test file each at a time: most tests wait on PostgreSQL, Dagster or the network,
# so two files in parallel use the two cores (three were measured no faster: 26 min against 25,
# the suite is CPU-bound at its peaks; TEST_WORKERS=0 runs them one after another). Files are
# handed out heaviest first (pg_ops_tests/conftest.py: HEAVIEST_FIRST), not by test count. The 25
# slowest tests are printed at the end: where `make test`'s time goes.
TEST_WORKERS ?= 2
test: setup tools apt-packages control-plane lint
	$(PY) -m pytest -q -p no:cacheprovider --ignore=pg_ops_tests/benchmarks -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

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

# postgres_exporter per member of the local cluster (`make run` deploys it; exporters on 9187, 9188…)
# and Prometheus with the repo's rules on 127.0.0.1:9090, children of one supervisor in the
# foreground: Ctrl-C stops them all, or `make monitoring-stop` from another terminal.
PROMETHEUS_PORT ?= 9090
EXPORTER_PORT ?= 9187
monitoring: setup apt-packages
	exec $(PY) -m pg_ops.platforms.local_monitoring run --prometheus-port $(PROMETHEUS_PORT) \
		--exporter-port $(EXPORTER_PORT)

monitoring-stop: setup
	$(PY) -m pg_ops.platforms.local_monitoring stop

# The README's picture of the Prometheus alerts page (Chromium: APT_PACKAGES).
screenshot-alerts: setup apt-packages
	$(PY) scripts/screenshot-ui.py --page prometheus-alerts

# ruff, then mypy over pg_ops/ ([tool.mypy] in pyproject.toml; pinned in requirements.lock). `make
# test` runs it first, so CI (.ci/run: make test) type-checks every change (about 20 s cold).
lint: setup
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

clean:
	-$(VENV)/bin/pg-ops teardown --all 2>/dev/null
	rm -rf $(VENV) .pg-ops bench-results
