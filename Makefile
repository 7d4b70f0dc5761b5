# Two commands on a fresh machine:  `make run`  (the bot) and  `make test`  (the whole test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-deps

## Run the bot: Slack when SLACK_BOT_TOKEN is set (see README), else console mode.
run: $(VENV)/.run-deps
	$(BIN)/opsbot $(ARGS)

## Run every test, integration tests included (they start their own RabbitMQ node, workers, Flower, Redis).
test: $(VENV)/.test-deps
	$(BIN)/ruff check bot tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check bot tests bench

## Benchmarks: figures, not pass/fail.
bench: $(VENV)/.test-deps
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
