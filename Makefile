# OpenDevelop: `make dev` runs the whole system locally, `make test` runs every test.
# Both do all the set-up themselves on a fresh Debian 12 machine (as root).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bench dev test venv host unit functional integration drills lint format clean

dev: venv host
	$(PY) -m infra.local.dev

# Every test, the fault drills of "one run, one result" (tests/drills, about 10 minutes) included.
test: venv host
	$(PY) -m pytest tests clients/python/tests

unit: venv
	$(PY) -m pytest tests/unit clients/python/tests

functional: venv
	$(PY) -m pytest tests/functional

integration: venv host
	$(PY) -m pytest tests/integration

# Fault drills of "one run, one result" (issue #11) on the real local stack; prints a results table.
drills: venv host
	$(PY) -m pytest tests/drills

# One deployable CloudFormation template: Chalice's (API, functions, schedules) merged with
# infra/aws/resources.yaml (tables, bucket, key, IAM), linted.  Needs no AWS account.
PACKAGE_DIR ?= build/package
.PHONY: package
package: venv
	rm -rf $(PACKAGE_DIR)
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(VENV)/bin/chalice package --stage prod \
		--merge-template infra/aws/resources.yaml $(PACKAGE_DIR)
	$(VENV)/bin/cfn-lint $(PACKAGE_DIR)/sam.yaml
	@$(PY) -c 'import os, sys; n = os.path.getsize(sys.argv[1]); print(f"deployment.zip: {n} bytes ({n / 1e6:.1f} MB)")' \
		$(PACKAGE_DIR)/deployment.zip

# Benchmarks (not timed tests): the platform beside the raw engine, then fair share, then batches and
# webhooks (each on a stack of its own); prints their figures, writes bench/results/*.json.  Each script
# takes --quick for a smaller run.
bench: venv host
	$(PY) bench/run.py
	$(PY) bench/fair_share.py
	$(PY) bench/batches.py

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dispatcher.txt requirements-dev.txt clients/python/pyproject.toml
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
	$(PY) -m mypy clients/python/src

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
