# agentexec: `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml sdk/pyproject.toml | sha1sum | cut -c1-12)
export PORT ?= 8000
export FLOWER_PORT ?= 5555
export FLOWER_BASIC_AUTH ?= admin:agentexec
PYTEST_ARGS ?=

.PHONY: install services db run test test-unit lint format bench bench-full clean

# The client library (sdk/, agentexec-client) is its own distribution; the CLI is built on it.
$(STAMP): pyproject.toml sdk/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ./sdk -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

services:
	@bash scripts/services.sh

db: install services
	@$(PY) scripts/createdb.py
	@$(VENV)/bin/alembic upgrade head

run: db
	@echo "API      http://127.0.0.1:$(PORT)  (docs: /docs)"
	@echo "Flower   http://127.0.0.1:$(FLOWER_PORT)  (basic auth $(FLOWER_BASIC_AUTH); set FLOWER_BASIC_AUTH=user:pass to change)"
	@echo "CLI      $(VENV)/bin/agentexec --help  (talks to http://127.0.0.1:$(PORT); see docs/operate.md)"
	@key=$$($(PY) scripts/devkey.py) && echo "API key  $$key  (export AGENTEXEC_API_KEY=$$key; curl -H 'Authorization: Bearer $$key')"
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f Procfile

test: install services
	$(PY) -m pytest $(PYTEST_ARGS)

# The unit tier: pure logic and in-memory fakes; needs no PostgreSQL, Redis or worker.
test-unit: install
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

LINTED := app api workers cli sdk tests bench scripts celeryconfig.py migrations
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

bench: install services
	$(PY) -m bench --mode short

bench-full: install services
	$(PY) -m bench --mode full

clean:
	rm -rf $(VENV) *.egg-info
