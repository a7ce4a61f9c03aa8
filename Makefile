# Two commands from a fresh clone: `make run` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# dg checks that the project's venv is the active one; this runs it as if it were.
DG := VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg
export DAGSTER_HOME ?= $(CURDIR)/var/dagster_home
JOB ?= mnist_pipeline
CONFIG ?= run_config.yaml

# Offline: `make run MIRROR=../shared/data` uses that folder's mnist/ and notmnist/ instead
# of the mirrors in run_config.yaml.
ifdef MIRROR
MIRROR_URL := file://$(abspath $(MIRROR))
MIRROR_ARGS := -c var/local_mirror.yaml
endif

.PHONY: install run stop status test test-fast lint bench dev clean k8s-manifests

CONSTRAINTS := requirements/constraints.txt
CHECKOV_VENV ?= .venv-checkov

# Every install takes its versions from requirements/constraints.txt, pip included: the
# tests run on exactly what the image ships. checkov (a test tool with a closure of its own)
# gets a separate venv from requirements/checkov.txt.
install: $(BIN)/.installed $(CHECKOV_VENV)/.installed

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[cpu,dev]"
	touch $@

$(CHECKOV_VENV)/.installed: requirements/checkov.txt $(CONSTRAINTS)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements/checkov.txt
	touch $@

# The local instance (telemetry off, one delivery run at a time), copied again when it changes.
$(DAGSTER_HOME)/dagster.yaml: deploy/local/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/local/dagster.yaml $@

run: install $(DAGSTER_HOME)/dagster.yaml
ifdef MIRROR
	mkdir -p var
	printf 'mnist:\n  mirrors: ["%s/mnist/"]\nnotmnist:\n  mirrors: ["%s/notmnist/"]\n' "$(MIRROR_URL)" "$(MIRROR_URL)" > var/local_mirror.yaml
endif
	$(DG) launch --job $(JOB) -c $(CONFIG) $(MIRROR_ARGS)

# The endpoint keeps serving after `make run`; these show or stop it (`mnist-ops --help` for more).
status: install
	$(BIN)/mnist-ops status

stop: install
	$(BIN)/mnist-ops stop

test: install
	$(BIN)/pytest

# The fast tier: every test not marked slow (markers in pyproject.toml), in under a minute.
test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/chain.py --job mnist_training $(if $(MIRROR),--mirror $(MIRROR))
	$(BIN)/python benchmarks/chain.py --job mnist_pipeline $(if $(MIRROR),--mirror $(MIRROR))
	$(BIN)/python benchmarks/serving.py

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(DG) dev --host 127.0.0.1

k8s-manifests: install
	$(BIN)/python -m mnist_delivery.k8s_endpoint > deploy/k8s/serving.yaml

clean: stop
	rm -rf var
