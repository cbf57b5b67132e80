# Segue: `make run` sets up and runs a demo node; `make test` sets up and runs every test.
# Both install what they need: Debian packages (as root, via apt-get), a virtualenv in .venv
# and the Python dependencies from pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:8480
DEMO   ?= demo

# command-or-file:debian-package pairs. The demo needs ffmpeg, and gcc, pkg-config and
# libsystemd-dev to build systemd-python into the virtualenv; nothing else.
RUN_COMMANDS := ffmpeg:ffmpeg ffprobe:ffmpeg gcc:gcc pkg-config:pkg-config \
	/usr/include/systemd/sd-daemon.h:libsystemd-dev
# What `make deb` builds with (packaging/debian/control's Build-Depends) and what
# tests/test_packaging.py checks and installs the package with.
DEB_COMMANDS := dpkg-buildpackage:dpkg-dev dpkg-parsechangelog:dpkg-dev dh:debhelper \
	dh_virtualenv:dh-virtualenv /usr/bin/python3.11:python3.11 \
	/usr/lib/python3.11/ensurepip/__init__.py:python3.11-venv \
	/usr/include/python3.11/Python.h:python3.11-dev lintian:lintian \
	systemd-analyze:systemd systemd-sysusers:systemd systemd-tmpfiles:systemd \
	runuser:util-linux
# The tests start the real servers (Samba, HAProxy, MariaDB, Serf, NATS), drive Chromium with
# its chromedriver for the web player, render the manual pages and build the package.
SYSTEM_COMMANDS := $(RUN_COMMANDS) curl:curl prlimit:util-linux man:man-db \
	smbd:samba smbpasswd:samba haproxy:haproxy \
	mariadbd:mariadb-server mariadb-install-db:mariadb-server serf:serf \
	nats-server:nats-server chromium:chromium chromedriver:chromium-driver \
	$(DEB_COMMANDS)
BENCH_COMMANDS  := nginx:nginx-light wrk:wrk taskset:util-linux nft:nftables

.PHONY: run test lint typecheck bench bench-setup setup system-deps run-deps bench-deps clean deb deb-deps lock fuzz

setup: system-deps $(VENV)/.installed

system-deps:
	@tools/ensure-commands $(SYSTEM_COMMANDS)

run-deps:
	@tools/ensure-commands $(RUN_COMMANDS)

bench-deps:
	@tools/ensure-commands $(BENCH_COMMANDS)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "segue needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: run-deps $(VENV)/.installed
	@tools/demo $(BIN) $(DEMO) $(LISTEN)

lint: $(VENV)/.installed
	$(BIN)/ruff check daemon plugins tests bench tools
	$(BIN)/mypy

# Two processes, each taking whole test modules (their module fixtures stay in one process):
# most tests wait on the real servers they start, so two run in about half the time even on
# two cores. PYTEST_WORKERS=0 runs them in this process, one after another.
PYTEST_WORKERS ?= 2
test: setup lint
	$(BIN)/python -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# `make fuzz` feeds every fuzz target of tests/test_fuzz.py FUZZ_EXAMPLES inputs: a long run,
# about 250 inputs a second per target here, so 11 targets x 1,000,000 is about 12 hours. It keeps
# hypothesis's database of interesting inputs in .hypothesis/ as the corpus for the next run.
# `make test` runs a short round of the same targets.
FUZZ_EXAMPLES ?= 1000000

fuzz: setup
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

# `make bench` runs every benchmark (bench/run) and writes docs/performance.md; pass bench/run
# options in BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick --only stores".
bench-setup: setup bench-deps $(VENV)/.bench-installed

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@touch $@

bench: bench-setup
	VENV=$(VENV) bench/run $(BENCH_ARGS)

# `make deb` builds the Debian package segue_VERSION_amd64.deb into DEB_DIR: the source tree
# (git's files, committed or not) is copied into DEB_DIR/build with packaging/debian as its
# debian/, and dpkg-buildpackage builds the binary package there.
DEB_DIR ?= dist
DEB_VERSION = $(shell dpkg-parsechangelog -l packaging/debian/changelog -S Version)

deb-deps:
	@tools/ensure-commands $(DEB_COMMANDS) git:git

deb: deb-deps
	rm -rf $(DEB_DIR)/build && mkdir -p $(DEB_DIR)/build/segue
	git ls-files -z --cached --others --exclude-standard | \
		xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh | \
		tar --null -T - -cf - | tar -C $(DEB_DIR)/build/segue -xf -
	cp -r packaging/debian $(DEB_DIR)/build/segue/debian
	cd $(DEB_DIR)/build/segue && dpkg-buildpackage -us -uc -b
	mv $(DEB_DIR)/build/segue_$(DEB_VERSION)_amd64.deb $(DEB_DIR)/
	rm -rf $(DEB_DIR)/build
	@echo "built $(DEB_DIR)/segue_$(DEB_VERSION)_amd64.deb"

# packaging/requirements.lock: the package's Python environment, pinned with hashes.
lock:
	tools/lock-requirements

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist
