# invoice-reconciler: `make demo` and `make test` work on a fresh machine (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DRIVERS := $(wildcard drivers/*)
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench bench-webhooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The core with its dev and postgres extras, every driver as its own distribution, and the test-only driver.
$(STAMP): $(BIN)/python pyproject.toml $(foreach d,$(DRIVERS),$(d)/pyproject.toml) tests/plugins/fake-driver/pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]' $(foreach d,$(DRIVERS),-e $(d)) -e tests/plugins/fake-driver
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy reconciler $(foreach d,$(DRIVERS),$(d)/reconciler_$(notdir $(d))) tests bench demo

# Four worker processes on two cores: most tests wait (subprocesses, latency, lock timeouts) more than they
# compute. The fuzz tests run apart, without coverage tracing, which would slow their 10,000 examples per
# driver several times over and add nothing: the parsers they drive are covered by the driver tests. Either
# run failing, or collecting no test, fails the target.
PYTEST_WORKERS ?= 4
pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not fuzz" --cov=reconciler $(foreach d,$(DRIVERS),--cov=$(d)) --cov-branch --cov-report=term:skip-covered
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m fuzz -p no:cov

test: lint typecheck pytest

# make bench BENCH_ARGS="--large" / "--pg" / "--invoices 10000 --concurrency 16" (bench/pass.py --help)
bench: $(STAMP)
	$(BIN)/python bench/pass.py $(BENCH_ARGS)

# make bench-webhooks BENCH_ARGS="--idle 500 --flood 2000 --workers 8" (bench/webhooks.py --help)
bench-webhooks: $(STAMP)
	$(BIN)/python bench/webhooks.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
