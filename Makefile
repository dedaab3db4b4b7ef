# The README's two commands are `make run` and `make test`; the rest are for developers
# and operators. Everything runs from .venv, which the first target that needs it creates.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
S      ?=
PYTEST_ARGS ?=

.PHONY: run test test-fast compose-e2e lint bench fuzz up down logs clean help

help:
	@echo "make run    - install into .venv and run the whole suite on this machine (postroom up --demo)"
	@echo "make test   - install into .venv and run the whole test suite (needs PostgreSQL and Redis on 127.0.0.1)"
	@echo "make compose-e2e - only the real docker compose + Swarm run (private dockerd, ~5-10 min)"
	@echo "make lint   - ruff, mypy on the library and services, import-linter contracts"
	@echo "make bench  - benchmarks against peers (prints figures; never part of make test)"
	@echo "make fuzz   - atheris on the SMTP, IMAP, POP3 and MIME parsers (FUZZ_SECONDS=60 each)"
	@echo "make up / down / logs S=<service> - docker compose wrappers"

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/bootstrap.sh

run: $(STAMP)
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/bootstrap.sh --servers
	$(BIN)/postroom up --demo

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# the shipped compose.yaml and a one-node Swarm, really run on a private dockerd
# (tests/deploy/docker_e2e; part of make test too)
compose-e2e: $(STAMP)
	$(BIN)/pytest -m compose tests/deploy/docker_e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]' && $(BIN)/python bench/run.py $(BENCH_ARGS)

# atheris over the wire parsers, FUZZ_SECONDS per target (never part of make test)
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,fuzz]' && $(BIN)/python bench/fuzz/run.py -t $(FUZZ_SECONDS)

up:
	docker compose up -d

down:
	docker compose down

logs:
	docker compose logs -f $(S)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
