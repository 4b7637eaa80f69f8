# Refinery developer targets. `make test` and `make demo` install what they need themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: setup servers lint test unit integration demo bench bench-doc build validate clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py layers/refinery/refinery/_record_fastpath.pyx $(wildcard layers/refinery/refinery/*.pxi)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@$(BIN)/python -c 'import refinery.speedups as s; print("setup: per-record fast path:", s.IMPLEMENTATION, "-", s.UNAVAILABLE_REASON or "built")'
	@touch $(STAMP)

servers:
	bash scripts/install-test-servers.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

validate: setup
	$(BIN)/sam validate --region $(AWS_DEFAULT_REGION)
	$(BIN)/sam validate --lint --region $(AWS_DEFAULT_REGION)

unit: setup
	$(BIN)/python -m pytest tests/unit -q

integration: servers setup
	$(BIN)/python -m pytest tests/integration -q

test: servers setup lint validate build
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/refinery demo

# `make bench` prints the figures and exits 3 if a target is missed; `make bench-doc` also rewrites the
# tracked docs/performance.md (commit it with the code it measured). Both build first: the cold-start
# rows run the built functions in an emulation of Lambda (tools/refinery_tools/dev/coldstart.py).
bench: servers setup build
	$(BIN)/refinery bench

bench-doc: servers setup build
	$(BIN)/refinery bench --write-doc

# `sam build` without containers needs the functions' runtime (python3.12) on PATH: found or installed
# by the script, and put first on PATH for this command only. The refinery layer's compiled fast path
# is built for it with the venv's Cython; a plain `sam build` also fails without it (unless
# REFINERY_ALLOW_PURE_PYTHON=1), and here even that opt-out is refused (REFINERY_REQUIRE_FASTPATH=1).
build: setup
	@py312="$$(bash scripts/ensure-python312.sh)" && PATH="$$py312:$$PATH" \
		CYTHON="$(abspath $(BIN)/cython)" PY312="$$py312/python3.12" REFINERY_REQUIRE_FASTPATH=1 \
		$(BIN)/sam build

clean:
	rm -rf .aws-sam .pytest_cache .ruff_cache refinery-quarantine
