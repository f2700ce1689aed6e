# Two entry points (see README): `make quickstart` and `make test`. Both build .venv themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/lvmkit: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,serve]'
	touch $(BIN)/lvmkit

venv: $(BIN)/lvmkit

quickstart: venv
	$(BIN)/lvmkit quickstart --out quickstart_out

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: venv lint
	$(BIN)/pytest -q

.PHONY: venv quickstart lint test
