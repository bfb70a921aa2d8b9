# vmmgr: install, run, test. GNU make; run as root on Debian 12 (no systemd needed).
#   make deps      apt packages + .venv (pip install -e '.[dev]'); cheap when up to date
#   make image     the tiny guest: images/build/{tiny-vmlinuz,tiny-initrd.img,tiny.qcow2}
#   make smoke     boot the tiny guest under qemu TCG and show its heartbeat
#   make run       libvirtd + vmmgrd on 127.0.0.1:50051 (state /var/lib/vmmgr); `make stop`
#   make test      ruff, mypy, proto-check, then pytest over every tier
#   make lint | proto | proto-check | bench | lab | clean | distclean

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV      := $(CURDIR)/.venv
PY        := $(VENV)/bin/python
TINY      := $(CURDIR)/images/build/tiny.qcow2
LISTEN    ?= 127.0.0.1:50051
STATE_DIR ?= /var/lib/vmmgr
LOG_DIR   ?= /var/log/vmmgr
PIDFILE   ?= /run/vmmgr/vmmgrd.pid
# per-test timeout (seconds) for pytest-timeout
TEST_TIMEOUT ?= 300
# extra pytest arguments, e.g. make test PYTEST_ARGS='-k migrate -x'
PYTEST_ARGS ?=
MYPY_DIRS := vmmgr drivers policies

# (not exported as VMMGR_*: vmmgrd reads VMMGR_<SETTING> from its environment)
RUN_ENV := RUN_LISTEN=$(LISTEN) RUN_STATE_DIR=$(STATE_DIR) RUN_LOG_DIR=$(LOG_DIR) RUN_PIDFILE=$(PIDFILE)

.PHONY: help deps image smoke libvirtd pg pg-down run stop status test pytest lint ruff mypy \
        proto proto-check bench lab clean distclean

help:
	@sed -n '2,8s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

deps:
	scripts/install-deps.sh

image: deps
	images/build-tiny.sh

smoke: image
	images/smoke-test.sh

libvirtd: deps
	scripts/libvirtd-up.sh

pg: deps
	scripts/pg-test-up.sh

pg-down:
	scripts/pg-test-down.sh

run: deps libvirtd image
	$(RUN_ENV) scripts/vmmgrd-up.sh

stop:
	$(RUN_ENV) scripts/vmmgrd-down.sh

status:
	@if [ -s $(PIDFILE) ] && kill -0 $$(cat $(PIDFILE)) 2>/dev/null; then \
	  echo "vmmgrd running (pid $$(cat $(PIDFILE))) on $(LISTEN)"; \
	  $(VENV)/bin/vmmgr --endpoint $(LISTEN) host list; \
	else echo "vmmgrd not running"; fi

# ---- checks ------------------------------------------------------------------------------------
# Every step runs even when an earlier one failed (one CI run shows all problems); the target
# fails at the end if any step did.
TEST_STEPS := ruff mypy proto-check pytest
test: deps libvirtd image
	@failed=""; for step in $(TEST_STEPS); do \
	  echo "== $$step"; \
	  $(MAKE) --no-print-directory $$step || failed="$$failed $$step"; \
	done; \
	if [ -n "$$failed" ]; then echo "== make test FAILED:$$failed"; exit 1; fi; \
	echo "== make test passed ($(TEST_STEPS))"

pytest:
	@url="$$(scripts/pg-test-up.sh)"; \
	echo "VMMGR_TEST_PG_URL=$$url VMMGR_TINY_IMAGE=$(TINY)"; \
	VMMGR_TEST_PG_URL="$$url" VMMGR_TINY_IMAGE="$(TINY)" VMMGR_TEST_TIMEOUT=$(TEST_TIMEOUT) \
	  scripts/run-tests.sh tests $(PYTEST_ARGS)

lint: deps
	@$(MAKE) --no-print-directory ruff mypy

ruff:
	$(VENV)/bin/ruff check .

# mypy refuses a directory without Python files; only such a directory is left out.
mypy:
	@dirs=""; for d in $(MYPY_DIRS); do \
	  if [ -n "$$(find $$d -name '*.py' -print -quit 2>/dev/null)" ]; then dirs="$$dirs $$d"; \
	  else echo "mypy: $$d has no Python files yet; left out"; fi; done; \
	if [ -z "$$dirs" ]; then echo "mypy: nothing to check"; exit 0; fi; \
	echo "$(VENV)/bin/mypy$$dirs"; $(VENV)/bin/mypy $$dirs

proto:
	scripts/gen-protos.sh

proto-check:
	scripts/gen-protos.sh --check

# ---- benchmarks and the lab --------------------------------------------------------------------
bench: deps
	@found=""; for f in bench/*/run.py bench/*.py; do \
	  [ -f "$$f" ] || continue; \
	  case "$$(basename $$f)" in _*|conftest.py) continue;; esac; \
	  found=1; echo "== $$f"; PYTHONPATH=$(CURDIR) $(PY) "$$f" || exit $$?; \
	done; [ -n "$$found" ] || echo "no benchmarks under bench/ yet"

lab: deps image
	@if [ -x $(VENV)/bin/vmmgr-lab ]; then $(VENV)/bin/vmmgr-lab up 3; \
	else echo "vmmgr-lab is not installed yet (it comes with the lab package)"; fi

# ---- cleaning ----------------------------------------------------------------------------------
# clean keeps images/build/debs (the downloaded .debs) so the image rebuilds offline.
clean:
	find images/build -mindepth 1 -maxdepth 1 ! -name debs -exec rm -rf {} + 2>/dev/null || true
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf images/build .venv
