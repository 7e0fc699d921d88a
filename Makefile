# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= $(or $(LPU_HOST),127.0.0.1)
PORT ?= $(or $(LPU_PORT),8000)
ARGS ?=
PY_DIRS := server lpu_runtime tests benchmarks deploy

.PHONY: run test lint typecheck bench demo demo-down demo-clean demo-test demo-base demo-lock dashboard-check clean

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

# The demo stack (model fetch, server, traffic, Prometheus, Grafana; docs/deploy.md). Docker's compose plugin (v2)
# when there is one, else the standalone docker-compose (Debian's is 1.29): build first, then up, which both run.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

demo:
	$(COMPOSE) build
	$(COMPOSE) up

demo-down:
	$(COMPOSE) down

# Also the named volumes (model cache, Prometheus and Grafana data) and the image built here (Prometheus' and
# Grafana's images stay).
demo-clean:
	$(COMPOSE) down --volumes
	docker image rm --force lpu-serve:local 2>/dev/null || true

# The stack built and run for real, then checked and brought down (tests/demo/test_stack.py): starts a Docker
# engine if none runs (as root), builds a local base image when the default cannot be pulled. Not part of
# `make test`: about 1 minute with the images built, 4-5 minutes on a machine's first run (a base image, the
# dependencies and the model are fetched and built).
demo-test: $(VENV)/.installed-dev
	LPU_DEMO_TEST=1 LPU_DEMO_COMPOSE="$(COMPOSE)" \
	    $(BIN)/python -m pytest -p no:cacheprovider -s -ra tests/demo/test_stack.py

# A base image from the Debian mirror apt uses, for machines that cannot pull the default from Docker Hub:
# then `LPU_BASE_IMAGE=lpu-serve-base:bookworm make demo`.
demo-base:
	deploy/docker/debootstrap-base.sh lpu-serve-base:bookworm

# The image's pinned dependencies (deploy/docker/requirements.lock), from pyproject.toml with pip-tools, against
# PyPI alone (no local wheel folders or indexes). Pins that still satisfy pyproject.toml are kept: delete the lock
# first to move everything to the newest versions.
demo-lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock && $(VENV)-lock/bin/pip install --quiet pip-tools
	env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	    CUSTOM_COMPILE_COMMAND="make demo-lock" $(VENV)-lock/bin/pip-compile --quiet --extra demo \
	    --all-build-deps --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	    --output-file deploy/docker/requirements.lock pyproject.toml
	rm -rf $(VENV)-lock

# The Grafana dashboards against Grafana's own schema types (@grafana/schema, from npm; deploy/grafana/schema-check).
SCHEMA_CHECK := deploy/grafana/schema-check
$(SCHEMA_CHECK)/node_modules/.installed: $(SCHEMA_CHECK)/package-lock.json
	npm ci --prefix $(SCHEMA_CHECK) --no-audit --no-fund --loglevel=error
	touch $@

dashboard-check: $(SCHEMA_CHECK)/node_modules/.installed
	node $(SCHEMA_CHECK)/check.mjs deploy/grafana/dashboards/*.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
