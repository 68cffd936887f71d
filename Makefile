# Everything runs from the repo-local virtualenv; `make install` creates it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run example test chaos bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,browser]'
	touch $(STAMP)

run: install
	$(BIN)/pipeline demo --dir demo

example: install
	$(BIN)/python examples/rl_policy/train.py --dir example

test: install
	$(BIN)/python -m pytest -q

# Every fault-injection scenario of tests/chaos (`make test` runs only its fast subset);
# the figures of the run go to tests/chaos/last_run.json.
chaos: install
	PIPELINE_CHAOS_SUMMARY=tests/chaos/last_run.json $(BIN)/python -m pytest -q -p no:cacheprovider -m chaos tests/chaos

bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	QUICK=$(QUICK) $(BIN)/python -m bench
	$(BIN)/python -m bench.readme

lint: install
	$(BIN)/ruff check pipeline_v2 tests bench examples

clean:
	rm -rf $(VENV) demo example .pytest_cache
