# Segue: `make run` sets up and runs a demo node; `make test` sets up and runs every test.
# Both install what they need: Debian packages (as root, via apt-get), a virtualenv in .venv
# and the Python dependencies from pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:8480
DEMO   ?= demo

# command-or-file:debian-package pairs the tests and the demo need (libsystemd-dev, pkg-config
# and gcc build systemd-python).
SYSTEM_COMMANDS := ffmpeg:ffmpeg ffprobe:ffmpeg curl:curl gcc:gcc pkg-config:pkg-config prlimit:util-linux \
	/usr/include/systemd/sd-daemon.h:libsystemd-dev smbd:samba smbpasswd:samba \
	haproxy:haproxy mariadbd:mariadb-server mariadb-install-db:mariadb-server
BENCH_COMMANDS  := nginx:nginx-light wrk:wrk taskset:util-linux

.PHONY: run test lint typecheck bench bench-setup setup system-deps bench-deps clean

setup: system-deps $(VENV)/.installed

system-deps:
	@tools/ensure-commands $(SYSTEM_COMMANDS)

bench-deps:
	@tools/ensure-commands $(BENCH_COMMANDS)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "segue needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: setup
	@tools/demo $(BIN) $(DEMO) $(LISTEN)

lint: $(VENV)/.installed
	$(BIN)/ruff check daemon plugins tests bench tools
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `make bench` runs every benchmark (bench/run) and writes docs/performance.md; pass bench/run
# options in BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick --only stores".
bench-setup: setup bench-deps $(VENV)/.bench-installed

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@touch $@

bench: bench-setup
	VENV=$(VENV) bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache .hypothesis
