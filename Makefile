# Developer entry points. `make test` is what CI runs (see .ci/run).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp
# Re-bootstrap whenever the packaging or the dev tooling changes (only real source files, so that a
# devtools/__pycache__ directory cannot trigger a rebuild).
BOOTSTRAP_DEPS := pyproject.toml constraints.txt $(filter-out devtools/mutants.py devtools/anomalib_suite%,$(wildcard devtools/*.py devtools/*.sh))

.PHONY: setup demo test lint mutants anomalib-suite

setup: $(STAMP)

$(STAMP): $(BOOTSTRAP_DEPS)
	VENV="$(VENV)" bash devtools/bootstrap.sh

demo: setup
	$(PYTHON) -m anomalib_bayes_pfl.demo

test: setup
	$(PYTHON) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

# Mutation testing of known bugs (devtools/mutations.toml); slow, not part of CI.
# Options through ARGS, e.g. make mutants ARGS="--only dice-eps-one --timeout 300".
mutants: setup
	$(PYTHON) devtools/mutants.py $(ARGS)

# anomalib's own model and CLI suites (tests/integration/{model/test_models,cli/test_cli}.py) on BayesPFL's default
# configuration, tiny and offline (devtools/anomalib_suite.py). The suites are fetched from GitHub on first use, so
# CI cannot run them: run before resolving an issue. Options through ARGS, e.g. ARGS="--source ~/anomalib".
anomalib-suite: setup
	$(PYTHON) devtools/anomalib_suite.py $(ARGS)
