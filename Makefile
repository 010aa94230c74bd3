# Two commands do all the set-up on a fresh machine with Python >= 3.10 and git:
#   make train   create .venv if missing, then train on the embedded digits (offline)
#   make test    create .venv if missing, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.funcbp-installed
PYTEST_ARGS ?=
# The lowest jax pyproject.toml admits; `make test-lowjax` runs the autodiff tests on it.
JAX_FLOOR ?= 0.9.0
LOWJAX := .venv-lowjax
LOWJAX_STAMP := $(LOWJAX)/.funcbp-installed
LINT := funcbp tests benchmarks experiments

.PHONY: train test test-fast test-lowjax bench bench-guard check check-harnesses docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/funcbp train

test: $(STAMP)
	$(BIN)/ruff check $(LINT)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)
	$(BIN)/mkdocs build --strict --site-dir build/site

# The inner loop: everything but the slow end-to-end runs, and the rule table in its compiled
# float32 mode only (the eager float64 half and finite differences run in `make test`).
test-fast: $(STAMP)
	$(BIN)/ruff check $(LINT)
	$(BIN)/python -m pytest -n 2 -m "not slow" -k "not eager-float64 and not finite_differences" \
		$(PYTEST_ARGS)

# The autodiff tests on the lowest supported jax, in a venv of their own: every comparison with
# jax's own vjp (the finite-difference half compares against numbers, not jax, and runs in
# `make test` on the newest jax). Under 5 minutes on 2 cores.
$(LOWJAX_STAMP): pyproject.toml
	test -x $(LOWJAX)/bin/python || $(PYTHON) -m venv $(LOWJAX)
	$(LOWJAX)/bin/python -m pip install --upgrade pip >/dev/null
	$(LOWJAX)/bin/python -m pip install -e . "jax==$(JAX_FLOOR)" "jaxlib==$(JAX_FLOOR)" \
		"pytest>=8" "pytest-xdist>=3.5"
	touch $(LOWJAX_STAMP)

test-lowjax: $(LOWJAX_STAMP)
	$(LOWJAX)/bin/python -c "import jax; assert jax.__version__ == '$(JAX_FLOOR)', jax.__version__"
	$(LOWJAX)/bin/python -m pytest -n 2 -p no:cacheprovider tests/autodiff \
		-m "not slow" -k "not eager-float64 and not finite_differences" $(PYTEST_ARGS)

# Quick guard against gross performance regressions: fails if a compiled funcbp/jax ratio > 1.5.
bench-guard: $(STAMP)
	$(BIN)/python -m benchmarks.ci_guard || $(BIN)/python -m benchmarks.ci_guard

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir build/site

check: $(STAMP)
	$(BIN)/funcbp check --quick

# Every one of jax's primitive harnesses through funcbp.vjp against jax.vjp (about 15 minutes).
check-harnesses: $(STAMP)
	$(BIN)/funcbp check --harnesses

bench: $(STAMP)
	$(BIN)/python -m pip install -e '.[bench]'
	# On an NVIDIA machine: a CUDA jaxlib, then the gpu-marked tests (trainer, gradients, bf16).
	if nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -e '.[gpu]' && \
		JAX_PLATFORMS=cuda,cpu $(BIN)/python -m pytest -m gpu tests; fi
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(LOWJAX) runs .pytest_cache
