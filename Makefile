# mwcharge: `make demo` runs the whole station on simulated hardware; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: install test lint typecheck demo bench clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'  # dev pulls in the sim and csms extras
	touch $(STAMP)

install: $(STAMP) system-deps

# Debian packages the tests and the demo use; installed only where missing (CI runs as root).
# mosquitto: the tests' own brokers; mbpoll: a standard Modbus master reading the simulators;
# chromium: the browser tests (tests/browser/, Playwright drives it: no browser download);
# postgresql (server binaries for the tests' private clusters) and haproxy: ocpp_server's
# several-instance tests (tests/test_csms_pg.py, tests/test_csms_cluster.py).
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	command -v mbpoll >/dev/null 2>&1 || missing="$$missing mbpoll"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/mwc demo

bench: install
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache out
