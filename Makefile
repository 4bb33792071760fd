# Developer entry points. `make test` is what CI runs (see .ci/run).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp
# Re-bootstrap whenever the packaging or the dev tooling changes (only real source files, so that a
# devtools/__pycache__ directory cannot trigger a rebuild).
BOOTSTRAP_DEPS := pyproject.toml constraints.txt $(filter-out devtools/mutants.py,$(wildcard devtools/*.py devtools/*.sh))

.PHONY: setup demo test lint mutants

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
