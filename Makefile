# Two commands do all the set-up on a fresh machine with Python >= 3.10 and git:
#   make train   create .venv if missing, then train on the embedded digits (offline)
#   make test    create .venv if missing, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.funcbp-installed
PYTEST_ARGS ?=

.PHONY: train test bench bench-guard check docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/funcbp train

test: $(STAMP)
	$(BIN)/ruff check funcbp tests benchmarks experiments
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)
	$(BIN)/mkdocs build --strict --site-dir build/site

# Quick guard against gross performance regressions: fails if a compiled funcbp/jax ratio > 1.5.
bench-guard: $(STAMP)
	$(BIN)/python -m benchmarks.ci_guard || $(BIN)/python -m benchmarks.ci_guard

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir build/site

check: $(STAMP)
	$(BIN)/funcbp check --quick

bench: $(STAMP)
	$(BIN)/python -m pip install -e '.[bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
