# Two entry points for a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The data sets the built-in workloads read (stsbenchmark/, tinyshakespeare/input.txt, fsdd/recordings).
export TORCHSLIM_DATA ?= $(abspath ../shared/data)
# Reinstall only when pyproject.toml or constraints.txt changes.
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib;print(hashlib.sha1(open('pyproject.toml','rb').read()+open('constraints.txt','rb').read()).hexdigest()[:12])")

.PHONY: setup demo test quick lint format bench lock

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a CPU build (2.13.0) that the rest then reuse.
	$(PY) -m pip install -q torch==2.13.0 -c constraints.txt
	# Every other dependency at the version CI tested (constraints.txt; `make lock` rewrites it).
	$(PY) -m pip install -q -e ".[all]" -c constraints.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/torchslim demo

lint: setup
	$(VENV)/bin/ruff check torchslim tests
	$(VENV)/bin/ruff format --check torchslim tests

# Everything, in random order (pytest-randomly), as CI runs it.
test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest torchslim tests

# The edit loop: leaves out the slow (training, tuning, benchmark) and fuzz tests.
quick: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest torchslim tests -m "not slow and not fuzz"

format: setup
	$(VENV)/bin/ruff check --fix torchslim tests
	$(VENV)/bin/ruff format torchslim tests

# After changing pyproject.toml's dependencies: install them without the old pins (pip keeps what still
# fits), then rewrite constraints.txt from the versions now in .venv.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	$(PY) tools/lock.py > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

bench: setup
	# llama-decode's llama.cpp peer rows (llama-cpp-python compiles llama.cpp here; not part of setup).
	$(PY) -m pip install -q -e ".[llamacpp]" -c constraints.txt
	$(VENV)/bin/torchslim bench digits --json bench-out/digits.json
