# Two commands for a newcomer: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds this machine's pip takes from local disk.
TORCH := torch==2.14.1 torchvision==0.29.1
# Two cores: keep intra-op threads at the core count so data workers never oversubscribe.
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-gpu lint typecheck mutations clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

# The demo exports and the CLI tour serves, on the bundled digits: those extras too.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e '.[export,serve,demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy src

# The browser tests drive Debian's Chromium; playwright must never download its own browser.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && apt-get install -y -qq chromium

# pytest exits 5 when it collects nothing; that is a broken suite here, not a pass.
test: lint typecheck $(CHROMIUM)
	@$(BIN)/python -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; \
	exit $$rc

# The tests that need a CUDA device (`make test` skips them on a machine without one, saying
# why); here a machine without CUDA fails them instead of skipping.
test-gpu: $(VENV)/.installed-test
	@$(BIN)/python -m pytest tests -m gpu; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no gpu tests: the suite is broken" >&2; fi; \
	exit $$rc

# Deliberate breakages of the source, each of which the suite must catch (not part of `test`:
# every breakage reruns its tests, about 7 minutes in all here).
mutations: $(VENV)/.installed-test
	$(BIN)/python tests/mutations.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
