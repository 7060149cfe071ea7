# Every target installs what it needs into $(VENV) first; nothing is installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tandem-installed
PYTEST_ARGS ?=

.PHONY: venv serve test lint proto crds dev-cluster dev-cluster-down kube-bin

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The main job: serve the tiny default model on http://127.0.0.1:8000 (OpenAI-compatible).
serve: venv
	$(VENV)/bin/tandem serve

# The whole test suite: lint, type checks, layering contracts and every test (k8s ones included).
test: venv kube-bin
	@set +e; $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check tandem tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

proto: venv
	$(PY) hack/gen_proto.py

crds: venv
	$(PY) hack/gen_crds.py

# Builds the local control-plane binaries once per machine (cached outside the repo).
kube-bin:
	@if [ -x hack/kube-local/build.sh ]; then hack/kube-local/build.sh; fi

dev-cluster: venv kube-bin
	$(PY) hack/devcluster.py up

dev-cluster-down: venv
	$(PY) hack/devcluster.py down
