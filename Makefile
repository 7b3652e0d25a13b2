# agentexec: `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml sdk/pyproject.toml | sha1sum | cut -c1-12)
export PORT ?= 8000
export FLOWER_PORT ?= 5555
export FLOWER_BASIC_AUTH ?= admin:agentexec
PYTEST_ARGS ?=

.PHONY: install services db run stop test test-unit lint format bench bench-full clean

# scripts/services.sh (the `services` prerequisite) writes var/services.env when it had to start
# an embedded PostgreSQL or Redis, and removes it otherwise. Each of its lines must leave a variable
# that the environment already sets alone, e.g.
#     export DATABASE_URL="${DATABASE_URL:-postgresql+psycopg://...}"
# so that plain sourcing lets DATABASE_URL and REDIS_URL from the environment win. It is sourced
# when a recipe runs, not when make reads this file: it is written during the same invocation.
WITH_SERVICES := set -a; f="$${AGENTEXEC_VAR_DIR:-var}/services.env"; if [ -f "$$f" ]; then . "$$f"; fi; set +a;

# `make run` refuses at once, in one line and before touching anything, when the stack of this
# checkout runs already or PORT/FLOWER_PORT is taken (the system's python3: the virtualenv may not
# exist yet). scripts/run.py checks again, under its lock, before it starts anything.
ifneq ($(filter run,$(MAKECMDGOALS)),)
RUN_REFUSED := $(shell PORT='$(PORT)' FLOWER_PORT='$(FLOWER_PORT)' python3 scripts/run.py check 2>&1)
ifneq ($(RUN_REFUSED),)
$(error $(RUN_REFUSED))
endif
endif

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
	@$(WITH_SERVICES) $(PY) scripts/createdb.py && $(VENV)/bin/alembic upgrade head

# The Procfile's processes under scripts/run.py, in the foreground; its runtime files go to var/.
run: export FLOWER_URL ?= http://127.0.0.1:$(FLOWER_PORT)# the console links each Celery task id to it
run: db
	@echo "API      http://127.0.0.1:$(PORT)  (docs: /docs)"
	@echo "Console  http://127.0.0.1:$(PORT)/console  (sign in with the API key below)"
	@echo "Flower   http://127.0.0.1:$(FLOWER_PORT)  (basic auth $(FLOWER_BASIC_AUTH); set FLOWER_BASIC_AUTH=user:pass to change)"
	@echo "CLI      $(VENV)/bin/agentexec --help  (run in this checkout, it talks to http://127.0.0.1:$(PORT): var/api-url; see docs/operate.md)"
	@$(WITH_SERVICES) key=$$($(PY) scripts/devkey.py) && echo "API key  $$key  (export AGENTEXEC_API_KEY=$$key; curl -H 'Authorization: Bearer $$key')"
	@echo "Stop     Ctrl-C here, or make stop in this checkout"
	@$(WITH_SERVICES) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" exec $(PY) scripts/run.py

# Stops the stack `make run` started in this checkout (var/run.pid), within the graceful timeout.
stop:
	@python3 scripts/run.py stop

test: install services
	@$(WITH_SERVICES) $(PY) -m pytest $(PYTEST_ARGS)

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
	@$(WITH_SERVICES) $(PY) -m bench --mode short

bench-full: install services
	@$(WITH_SERVICES) $(PY) -m bench --mode full

clean:
	rm -rf $(VENV) *.egg-info
