# promobot: `make run` to try it, `make test` to check it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint lock chromium postgresql lambda clean

install: $(STAMP)

# Within constraints.txt: the versions of every package the suite last passed with (`make lock` renews it).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Browser tests drive Debian's Chromium; Playwright never downloads a browser of its own.
chromium:
	@command -v /usr/bin/chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The store's tests start their own PostgreSQL server (tests/support/postgres.py) from Debian's binaries.
postgresql:
	@{ ls /usr/lib/postgresql/*/bin/postgres || test -x "$$(pg_config --bindir)/postgres"; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

run: $(STAMP)
	$(PY) -m bot run-local

test: $(STAMP) chromium postgresql
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

# The store's and the webhook's benchmarks start a PostgreSQL server of their own, as the tests do.
bench: $(STAMP) postgresql
	$(PY) benchmarks/store.py
	$(PY) benchmarks/webhook.py
	$(PY) benchmarks/routing.py

# constraints.txt anew: the newest releases pyproject.toml allows, in a venv of their own; then `make test`.
lock:
	rm -rf build/lock
	$(PYTHON) -m venv build/lock
	build/lock/bin/python -m pip install --quiet --upgrade pip
	build/lock/bin/python -m pip install --quiet '.[test]'
	{ sed -n '/^#/p' constraints.txt; build/lock/bin/python -m pip freeze --exclude promobot; } > build/constraints.txt
	mv build/constraints.txt constraints.txt
	rm -rf build/lock

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The AWS Lambda package: the bot and its dependencies (not the analytics') as Lambda's Linux wheels,
# whatever this machine is, plus the campaign; build/promobot-lambda.zip is what to upload.
LAMBDA_PYTHON   ?= 3.12
# Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): wheels for glibc 2.17 or 2.28 both run there.
LAMBDA_PLATFORMS ?= manylinux2014_x86_64 manylinux_2_28_x86_64
LAMBDA_DIR      ?= build/lambda
LAMBDA_ZIP      ?= build/promobot-lambda.zip

lambda: $(STAMP)
	rm -rf $(LAMBDA_DIR) $(LAMBDA_ZIP) build/wheel
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir build/wheel .
	$(PY) -m pip install --quiet --no-compile --target $(LAMBDA_DIR) -c constraints.txt \
	  $(addprefix --platform ,$(LAMBDA_PLATFORMS)) --implementation cp --python-version $(LAMBDA_PYTHON) --only-binary=:all: \
	  "$$(ls build/wheel/promobot-*.whl)[lambda]"
	rm -rf $(LAMBDA_DIR)/bin
	mkdir -p $(LAMBDA_DIR)/data
	cp data/campaign.toml data/thanks.png $(LAMBDA_DIR)/data/
	cd $(LAMBDA_DIR) && $(abspath $(PY)) -m zipfile -c $(abspath $(LAMBDA_ZIP)) .
	@du -sh $(LAMBDA_DIR) $(LAMBDA_ZIP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
