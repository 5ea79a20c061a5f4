# The single front door: make install | run | test | lint | bench | clean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all install browser pgbouncer postgres15 run test test-pg15 test-unit test-chaos test-page screenshot lint format bench conformance clean

all: lint test

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

## Embedded PostgreSQL, the provider simulators and the service; prints the URL, token and curls.
run: install
	$(BIN)/python -m service demo

## Parallel test processes (pytest-xdist); most tests wait on processes and sockets, not the CPU.
## Tests sharing a costly fixture share a process (tests/conftest.py: SHARED_FIXTURE_GROUPS).
## The 15 slowest tests are listed at the end, to see which come near the 180 s test timeout.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadgroup --durations=15
## Debian's PostgreSQL 15 server programs, for test-pg15.
PG15_BIN := /usr/lib/postgresql/15/bin

## The whole suite (unit, integration, acceptance, chaos, Schemathesis, the operator page in
## Chromium) against the embedded PostgreSQL 18. tests/acceptance runs once, inside
## tests/security: at debug level, every log line read for the secrets the run issued, and any
## of its failures fails that test (named in its report).
test: install browser pgbouncer
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) --ignore=tests/acceptance

## The same suite against Debian's PostgreSQL 15 (a throwaway cluster per test process), with
## tests/acceptance run directly and without tests/security: reading the logs for secrets does
## not depend on the server's version.
test-pg15: install browser pgbouncer postgres15
	TEST_POSTGRES_BIN=$(PG15_BIN) $(BIN)/python -m pytest $(PYTEST_PARALLEL) --ignore=tests/security

postgres15:
	@test -x $(PG15_BIN)/postgres || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15)

## Debian's Chromium for tests/page (Playwright drives it; it downloads no browser of its own).
## Without apt-get (or root) this fails loudly, and so would the page tests: they never skip.
browser:
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

## Debian's PgBouncer for the pooling tests (tests/pgbouncer.py starts its own, in transaction
## mode; the package's own service is not used). Like browser: without apt-get (or root) this
## fails loudly, and so would those tests.
pgbouncer:
	@test -x /usr/sbin/pgbouncer || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer)

## Only the operator page's tests (headless Chromium); screenshots in test-artifacts/.
test-page: install browser
	$(BIN)/python -m pytest tests/page

## Refreshes docs/operator-page.png, the README's screenshot, from a stack with real jobs.
screenshot: install browser
	README_SCREENSHOT=docs/operator-page.png $(BIN)/python -m pytest tests/page -k readme_screenshot

test-unit: install
	$(BIN)/python -m pytest tests/unit

## Only the chaos suite (real processes, kill -9, PostgreSQL stopped); `make test` includes it.
test-chaos: install pgbouncer
	$(BIN)/python -m pytest -s tests/chaos

## The API against its OpenAPI document: Schemathesis, every check and phase (about 4 minutes).
conformance: install
	$(BIN)/pip install --quiet "schemathesis>=4.3"
	$(BIN)/python tests/conformance/run.py

## Benchmarks (not tests): every figure beside its baseline; writes bench-results/latest.{json,md}.
bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info test-artifacts
