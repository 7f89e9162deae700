# Two commands for a new user: `make quickstart` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
# Where pip finds the CPU build of torch. Empty here (this machine's pip is set up for it);
# elsewhere: make quickstart TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: install install-serve quickstart test bench lint-docker clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch and fbgemm first (CPU builds, from the pins), then the project with the rest of its
# dependencies, then torchrec last and without its `fbgemm-gpu` (CUDA) dependency: installed
# earlier, every later pip run would print a resolver ERROR about that missing package.
# The C sources too: an editable install builds the extensions once, so a changed .c or .h file reinstalls.
$(STAMP): $(VENV)/bin/python pyproject.toml $(CONSTRAINTS) $(wildcard recsys/*/*.[ch] serving/*.[ch])
	$(PIP) install $(TORCH_FROM) -c $(CONSTRAINTS) torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(PIP) install $(TORCH_FROM) -c $(CONSTRAINTS) -e '.[train,serve,dev,feast]'
	$(PIP) install --no-deps -c $(CONSTRAINTS) torchrec==1.8.0
	$(PY) scripts/check_install.py
	touch $(STAMP)

install: $(STAMP)

# The lookup service only (no Ray, no training extras): what the Docker `serve` image runs.
install-serve: $(VENV)/bin/python
	$(PIP) install $(TORCH_FROM) -c $(CONSTRAINTS) torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(PIP) install $(TORCH_FROM) -c $(CONSTRAINTS) -e '.[serve]'
	$(PIP) install --no-deps -c $(CONSTRAINTS) torchrec==1.8.0
	$(PY) scripts/check_install.py

quickstart: install
	$(VENV)/bin/recsys quickstart

# Lint and format check first (ruff, configured in pyproject.toml), then the tests.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

# One speed report (bench_out/speed/speed.{json,md}); e.g. make bench BENCH_ARGS=--serving.
# The individual scripts: $(PY) -m bench.run_all; quality at equal bytes: recsys bench quality.
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/recsys bench speed $(BENCH_ARGS)

lint-docker: install
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf $(VENV) runs mlruns mlflow.db quickstart_out bench_out
