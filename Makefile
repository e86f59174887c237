# OpenDevelop: `make dev` runs the whole system locally, `make serve` the same with its data kept
# on disk behind nginx, `make test` runs every test.
# Both do all the set-up themselves on a fresh Debian 12 machine (as root).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bench dev serve serve-deps test venv host browser unit functional integration drills lint format clean

dev: venv host
	$(PY) -m infra.local.dev

# The one-machine installation: DynamoDB (dynalite) and S3 (s3rver) on disk in OPENDEVELOP_DATA_DIR
# (.opendevelop/data), the API behind nginx on 127.0.0.1:8000 (infra/local/serve.py).
serve: venv host serve-deps
	$(PY) -m infra.local.serve

# nodejs, npm and nginx from Debian, dynalite and s3rver (pinned) into .venv/node.
serve-deps: venv
	@bash infra/local/serve-setup.sh

# Every test, the fault drills of "one run, one result" (tests/drills, about 10 minutes) included.
test: venv host browser serve-deps
	$(PY) -m pytest tests clients/python/tests

unit: venv
	$(PY) -m pytest tests/unit clients/python/tests

# One worker per core (pytest-xdist): about 44 s on 2 cores, 57 s in one process (as `make test` runs it).
functional: venv
	$(PY) -m pytest -n auto tests/functional

integration: venv host browser serve-deps
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
bench: venv host serve-deps
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

# Debian's Chromium and its driver, for the playground's browser tests (tests/integration/test_playground.py);
# installed with apt (as root) only when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

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
