# ckpt — set-up, tests, demo and benchmarks.  Run as root on Debian 12:
#   make demo    virtualenv + install + a real checkpoint of a sample process
#   make test    the whole test suite
#   make bench   benchmarks (markdown table + bench/results.json)
#   make bench-deps
#                the benchmarks' Debian packages (QEMU for a guest, CRIU 4.2's build packages)
#   make test-kernels
#                the main cases on Debian 12's and 13's kernels (6.1, 6.12) in QEMU guests and on this one
#   make stress  ckpt killed at 200 random moments of its commands; the target must never be harmed
#   make second-host / second-host-down
#                a second "host" on this machine (network + PID namespace) to migrate to

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests and the demo need; installed only when missing.
SYSPKGS := gcc make libc6-dev python3-venv redis-server nginx-light postgresql nftables iproute2 procps util-linux tmux screen

.PHONY: all sysdeps venv install proto test test-fast test-kernels demo bench bench-deps stress second-host second-host-down clean

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

# The tests that move a process between hosts share one second host, set up here and
# torn down however pytest ends (they build their own when it cannot be set up here).
HOST_STATE := /run/ckpt/second-host-test-$$$$.json
HOSTS := $(PY) tests/hosts.py --state $(HOST_STATE)
define with_second_host
	@trap '$(HOSTS) down' EXIT; \
	if $(HOSTS) --quiet up; then export CKPT_SECOND_HOST=$(HOST_STATE); fi; \
	$(1)
endef

test: install
	$(call with_second_host,$(PY) -m pytest -q tests)

test-fast: install
	$(call with_second_host,$(PY) -m pytest -q -m "not slow" tests)

# The kernels users run (README, "Supported kernels"): tests/kernels boots Debian's 6.1 and 6.12 kernels
# in QEMU TCG guests that see this machine's / read-only over 9p, one guest at a time (~0.5-0.8 GB, one
# core), and runs the same cases on this kernel; a table at the end, also in tests/kernels/results.json.
# The kernel packages are fetched once into $$CKPT_KERNEL_CACHE (~/.cache/ckpt/kernels) with a private
# apt configuration (the system's apt sources are not touched) and unpacked there, never installed.
KERNEL_SYSPKGS := qemu-system-x86 busybox-static socat
test-kernels: install
	@$(MAKE) --no-print-directory sysdeps SYSPKGS="$(KERNEL_SYSPKGS)"
	$(PY) tests/kernels/guest.py fetch
	$(PY) -m pytest -q tests/kernels

# A second host to try `ckpt migrate` on (README, "Migrate a live process"); stays up until second-host-down.
second-host: install
	@$(PY) tests/hosts.py up

second-host-down: install
	@$(PY) tests/hosts.py down

demo: install
	$(PY) -m ckpt.demo

# Its last group (bench/kernels.py) boots a 6.12 guest as make test-kernels does: the same packages and kernels.
# The criu group (bench/criu.py) builds CRIU 4.2 from ../shared/peers into a cache outside the repo
# (/var/cache/ckpt-bench) and runs it beside ckpt: its build packages and iptables (its network lock).
CRIU_SYSPKGS := pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf \
	libcap-dev libnl-3-dev libnet1-dev libaio-dev libgnutls28-dev libbsd-dev libdrm-dev uuid-dev iptables
bench-deps: install
	@$(MAKE) --no-print-directory sysdeps SYSPKGS="$(KERNEL_SYSPKGS) $(CRIU_SYSPKGS)"

bench: bench-deps
	$(PY) tests/kernels/guest.py fetch
	$(PY) bench/run.py

stress: install
	$(PY) bench/stress.py --kills 200 --mib 256 --json bench/stress.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
