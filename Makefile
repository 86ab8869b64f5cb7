# ckpt — set-up, tests, demo and benchmarks.  Run as root on Debian 12:
#   make demo    virtualenv + install + a real checkpoint of a sample process
#   make test    the whole test suite
#   make bench   benchmarks (markdown table + bench/results.json)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests and the demo need; installed only when missing.
SYSPKGS := gcc make libc6-dev python3-venv redis-server iproute2 procps util-linux

.PHONY: all sysdeps venv install proto test test-fast demo bench clean

all: install

sysdeps:
	@missing=""; for p in $(SYSPKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv install: sysdeps $(STAMP)
	@# Byte-compile the package (an editable install is not): every `ckpt` command imports
	@# ~60 modules, and compiling them each time (PYTHONDONTWRITEBYTECODE=1 forbids caching
	@# at import) cost ~70 ms per command. Only changed files are recompiled.
	@$(PY) -m compileall -q ckpt

# Regenerate the protobuf modules from proto/*.proto (they are committed;
# tests/unit/test_proto_fresh.py fails when they are stale).
proto: install
	$(PY) -m ckpt.image.protogen

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(PY) -m ckpt.demo

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
