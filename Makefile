# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= $(or $(LPU_HOST),127.0.0.1)
PORT ?= $(or $(LPU_PORT),8000)
ARGS ?=
PY_DIRS := server lpu_runtime tests benchmarks deploy

.PHONY: run test lint typecheck bench demo clean

# Stamp files re-run the install only when the packaging or the C extension's sources change.
NATIVE_SRC := setup.py $(wildcard lpu_runtime/csrc/*.c lpu_runtime/csrc/*.h)

$(VENV)/.installed: pyproject.toml $(NATIVE_SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(NATIVE_SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/lpu serve --host $(HOST) --port $(PORT) $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_serving.py $(ARGS)

# The demo stack (server, Prometheus, Grafana, traffic): needs Docker with the compose plugin.
demo:
	docker compose up --build

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
