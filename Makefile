# otakit: `make serve` runs the server on its embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve demo cluster screenshots test lint typecheck pytest install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/otakit server

# a server, real daemons and a rollout that pauses itself (deploy/demo.py --help for its options)
demo: $(STAMP)
	$(BIN)/python deploy/demo.py $(DEMO_ARGS)

# several servers on one MariaDB database and one files folder behind nginx (deploy/cluster/run.py --help)
cluster: $(STAMP)
	$(BIN)/python deploy/cluster/run.py $(CLUSTER_ARGS)

# the README's console pictures, from the browser test that drives `make demo`
screenshots: $(STAMP)
	OTAKIT_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/test_demo.py::test_an_operator_sees_the_demo_fleet_in_the_console

lint: $(STAMP)
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	@echo "see bench/README.md; e.g. $(BIN)/python bench/latest_version.py"

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
