# roundtable — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENDOR := web/vendor/socket.io.min.js
# Tests and benches run in a network namespace that has only loopback, so no packet of
# ours can leave the machine (mDNS multicast included).
NETNS := unshare -n -- sh -c 'ip link set lo up && exec "$$@"' netns
PYTEST_ARGS ?=

.PHONY: run test bench lint system-deps install clean help

help:
	@echo "make run    - install into .venv and start roundtable on http://127.0.0.1:8080"
	@echo "make test   - install everything the tests need (Debian chromium, redis-server, coturn) and run them"
	@echo "make bench  - short load test against a server it starts itself"
	@echo "make lint   - ruff check"

# The SFU's hot path is C (sfu/fastpath/*.c, sfu/_bwe.c), compiled by pip: it needs a C
# compiler and the headers of the Python that runs it.
# Order-only on $(VENDOR): npm installs web/ (the tests' devDependencies too) before pip
# runs setup.py, which would otherwise vendor Socket.IO itself with production packages only.
$(STAMP): pyproject.toml setup.py $(wildcard sfu/fastpath/*.[ch]) sfu/_bwe.c | $(VENDOR)
	@command -v cc >/dev/null || { echo "roundtable builds a C extension: install a C compiler (Debian: apt-get install build-essential)" >&2; exit 1; }
	@$(PYTHON) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || { echo "roundtable builds a C extension: install the headers of $(PYTHON) (Debian: apt-get install python3-dev)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(STAMP) $(VENDOR)

# The Socket.IO browser client comes from the npm registry at setup, pinned in
# web/package.json; the page never loads anything from another host.
$(VENDOR): web/package.json
	cd web && npm install --no-audit --no-fund --silent
	mkdir -p web/vendor
	cp web/node_modules/socket.io-client/dist/socket.io.min.js $(VENDOR)

run: install
	$(BIN)/roundtable serve

# Debian packages the tests use: a real browser, a real Redis, a real TURN server (coturn),
# and the tools for the loopback-only namespace and the namespaces tests build inside it
# (iproute2, nftables). Installed only when missing.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v turnserver >/dev/null || missing="$$missing coturn"; \
	command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  case "$$missing" in *coturn*) \
	    echo "coturn: the tests start their own turnserver; disabling the package's system service"; \
	    $$SUDO systemctl disable --now coturn >/dev/null 2>&1 || true;; \
	  esac; \
	fi

test: system-deps install
	$(BIN)/ruff check server sfu signaling bench tests
	$(NETNS) env ROUNDTABLE_MEDIA_HOST=127.0.0.1 $(BIN)/pytest -ra $(PYTEST_ARGS)

bench: system-deps install
	$(NETNS) env ROUNDTABLE_MEDIA_HOST=127.0.0.1 $(BIN)/roundtable-bench --local --rooms 10 --participants 3 --duration 20 --json bench-out/bench.json --plot bench-out/bench.png

lint: install
	$(BIN)/ruff check server sfu signaling bench tests
	$(BIN)/ruff format --check server sfu signaling bench tests

clean:
	rm -rf $(VENV) web/node_modules web/vendor
