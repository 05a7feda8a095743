# EPNAS developer entry points. `make demo` and `make test` are the README's quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test unit lint integration testbin images bench race mutate clean

install: $(STAMP)

# Re-install only when the dependency pins change; pip's cache serves repeat installs.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The search, then its best feasible model exported and its report written.
demo: install
	$(VENV)/bin/epnas search examples/digits-quick.yaml --store file://$(CURDIR)/runs
	$(VENV)/bin/epnas export runs/digits-quick --out runs/digits-quick-model
	$(VENV)/bin/epnas report runs/digits-quick --out runs/digits-quick-report

test: install testbin lint
	$(PY) -m pytest tests

# Formatting, lint and types; configuration in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

unit: install
	$(PY) -m pytest tests/unit

testbin:
	scripts/testbin

# Both images (Dockerfile.controller, Dockerfile.trainer): docker when its engine answers, else
# buildah; cached by the inputs' hash. The test suite builds them too (tests/integration/test_images.py).
images: test-deps
	scripts/images

bench: install
	$(PY) bench/run_all.py

# The public race (bench/race.py): every method, problem and seed; tables in runs/race/race.md.
race: install
	$(PY) bench/race.py --out runs/race

# A mutation run over the pure core (bench/mutate.py): share of mutants the unit tests kill.
mutate: install
	$(PY) bench/mutate.py --json runs/mutate.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks .mypy_cache .ruff_cache runs

# Kubernetes quickstart on kind (issue 7): builds and loads both images, MinIO, helm install.
.PHONY: kind-up kind-search kind-down test-deps
testbin: test-deps
test-deps:
	scripts/test-deps
kind-up:
	scripts/kind-up
kind-search:
	scripts/kind-search
kind-down:
	scripts/kind-down
