# Set-up, run and test the tracker on a Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: setup system-deps run test lint bench profile wrk clean

setup: system-deps $(VENV)/.installed

# redis-server from apt when missing; PostgreSQL server binaries when missing; chromium
# for the dashboard's browser test.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq redis-server; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		{ $(APT) update -qq && $(APT) install -y -qq postgresql; }
	@command -v chromium >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq chromium; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

run: setup
	$(PY) -m tracker dev

test: setup
	$(PY) -m pytest

wrk:
	@command -v wrk >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq wrk; }

bench: setup wrk
	$(PY) bench/run.py $(BENCH_ARGS)

# py-spy samples of the serve process under the click, full-facts and postback loads: top
# frames printed, raw stacks and flame graphs in bench/results/. py-spy needs ptrace rights
# (root, or kernel.yama.ptrace_scope=0).
profile: setup wrk
	$(PY) bench/profile.py $(PROFILE_ARGS)

lint: setup
	$(VENV)/bin/ruff check tracker tests
	$(VENV)/bin/ruff format --check tracker tests
	$(VENV)/bin/mypy

clean:
	rm -rf var $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
