# OpenDevelop: `make dev` runs the whole system locally, `make test` runs every test.
# Both do all the set-up themselves on a fresh Debian 12 machine (as root).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test venv host unit functional integration lint format clean

dev: venv host
	$(PY) -m infra.local.dev

test: venv host
	$(PY) -m pytest tests

unit: venv
	$(PY) -m pytest tests/unit

functional: venv
	$(PY) -m pytest tests/functional

integration: venv host
	$(PY) -m pytest tests/integration

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || $(MAKE) -s apt-venv
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

.PHONY: apt-venv
apt-venv:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv

# The Docker engine (started if none answers), gVisor and the `base` image (built once, then cached).
host:
	@bash infra/local/host-setup.sh

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy chalicelib dispatcher

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
