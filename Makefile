# The two commands a newcomer needs: `make run` and `make test`. Both install what they need.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean postgres-server browser

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## Dagster UI + daemon on http://127.0.0.1:3000, against the bundled simulator unless D23_API_URL is set.
run: $(STAMP)
	$(BIN)/python -m d23_pipeline.launch

## PostgreSQL server binaries for the tests' throwaway clusters (Debian's package, only when
## missing). The drop-in stops the package from creating and starting a system-wide cluster.
postgres-server:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  exit 0; \
	fi; \
	sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	echo "Installing the PostgreSQL server for the tests (apt-get install postgresql)"; \
	$$sudo mkdir -p /etc/postgresql-common/createcluster.d && \
	echo "create_main_cluster = false" | \
	  $$sudo tee /etc/postgresql-common/createcluster.d/d23-no-main-cluster.conf >/dev/null && \
	$$sudo apt-get update && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

## Headless Chromium for the dashboard's browser test, from Debian's package: playwright drives
## the chromium on PATH and never downloads a browser. Installed once, skipped when present.
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

## The whole test suite, end-to-end tests included; mypy checks the files pyproject.toml names.
## Three workers on two cores: about a quarter of the suite waits on processes it started (the
## daemon, the webserver, subprocess runs), so a third fills the cores (benchmarks/README.md).
test: $(STAMP) postgres-server browser
	$(BIN)/ruff check d23_pipeline d23_pipeline_tests benchmarks
	$(BIN)/mypy
	$(BIN)/dg check defs
	$(BIN)/pytest -n 3 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check d23_pipeline d23_pipeline_tests benchmarks

## Benchmarks (see benchmarks/README.md); installs dlt, a benchmark-only dependency.
bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
