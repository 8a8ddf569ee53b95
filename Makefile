# Constellation: `make run` serves the demo constellation, `make test` runs what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest install clean bench chromium bench-peers

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/constellation demo
	$(BIN)/constellation serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench migrations
	$(BIN)/ruff format --check src tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy

# Browser tests drive Debian's Chromium through Playwright (no browser download at test time).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

pytest: $(STAMP) chromium
	$(BIN)/pytest -q


test: lint typecheck pytest
	$(BIN)/constellation bench all --tiny

clean:
	rm -rf $(VENV) .constellation .mypy_cache .ruff_cache .pytest_cache

# Peers for `constellation bench encoder` (infinity-emb), in their own venv so they cannot
# change ours; torch pinned to the CPU wheel there too.
bench-peers:
	test -x .venv-peers/bin/python || $(PY) -m venv .venv-peers
	.venv-peers/bin/pip install -q "torch==2.13.0" "infinity-emb[server,torch]"
