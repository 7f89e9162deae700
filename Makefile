# Two commands for a new user: `make quickstart` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install quickstart test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch and fbgemm first (CPU builds, from the pins), then torchrec without its
# `fbgemm-gpu` (CUDA) dependency, then the project with the rest of its dependencies.
$(STAMP): $(VENV)/bin/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(PIP) install --no-deps -c $(CONSTRAINTS) torchrec==1.8.0
	$(PIP) install -c $(CONSTRAINTS) -e '.[dev]'
	$(PY) scripts/check_install.py
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/recsys quickstart

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) runs mlruns mlflow.db quickstart_out bench_out
