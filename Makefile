# The two commands a new user needs: `make up` and `make test`.
# Each installs what is missing (Debian packages, the virtualenv, npm packages) first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
APT_PACKAGES := postgresql-15-postgis-3 redis-server chromium gdal-bin

.PHONY: up test check deps system python web lint format down status bench clean

up: deps
	$(VENV)/bin/tilesight up

# Lint, format and types first: a style or type error fails `make test` (and CI) at once.
test: deps check
	$(PY) -m pytest

deps: system python web

system:
	@./scripts/install-system.sh $(APT_PACKAGES)

python: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

web:
	@if [ -f web/package.json ] && [ ! -f web/node_modules/.package-lock.json -o web/package-lock.json -nt web/node_modules/.package-lock.json ]; then \
		cd web && npm ci --no-audit --no-fund; fi

check: python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

lint: check

format: python
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

down: python
	$(VENV)/bin/tilesight down

status: python
	$(VENV)/bin/tilesight status

clean:
	rm -rf .tilesight test-output
