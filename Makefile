# make run: the service on an embedded PostgreSQL.  make test: the whole suite.
# make demo (beside make run): a worker that runs demo executions, for the dashboard at /.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo test system-test-packages migrate token psql clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/python -m service serve

demo: $(VENV)/.installed
	$(BIN)/python -m service demo-worker --submit-every 8 $(DEMO_ARGS)

test: $(VENV)/.installed-test system-test-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian's chromium and nginx, which the browser and proxy tests drive: silent when present,
# installed when missing and allowed, else one line saying what to install.
system-test-packages:
	@sh tests/system_packages.sh

migrate: $(VENV)/.installed
	$(BIN)/python -m service migrate

psql: $(VENV)/.installed
	$(BIN)/python -m service psql

clean:
	rm -rf $(VENV) var *.egg-info build dist

# make bench: the service with each change source (notify, wal, wal on a standby) against the
# polling design and a broadcaster baseline, in one run (about 20 minutes; writes
# bench/results/latest.{json,md,png}). make bench-quick: about 5 minutes.
.PHONY: bench bench-quick
$(VENV)/.installed-bench: $(VENV)/.installed bench/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m bench --quick $(BENCH_ARGS)
