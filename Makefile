# hypotest: two commands on a fresh machine.
#   make test   set everything up (venv, pinned packages, Debian packages) and run the test suite
#   make demo   set everything up and run the main job on the embedded default
# Both are idempotent: a second run only re-installs when pyproject.toml or constraints.txt change.

# Python >= 3.12 (ArviZ 1.x needs it): the first of these that runs (pyenv's shims answer for
# versions that are installed but not selected, so each is tried, not only looked up).
PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.13 \
            $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3; do \
            $$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Two cores: keep BLAS from oversubscribing them (XLA ignores these; see conftest.py).
export OMP_NUM_THREADS := 1
export OPENBLAS_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup system venv-version data test test-marked test-all demo real-frame lock clean

setup: venv-version $(STAMP) system data

# A .venv made by an older Python is made again.
venv-version:
	@if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then \
	  echo "$(VENV) holds $$($(BIN)/python -V 2>&1); hypotest needs Python >= 3.12: making $(VENV) again"; \
	  rm -rf $(VENV); fi

$(BIN)/python:
	@[ -n "$(PYTHON)" ] || { echo "hypotest needs Python >= 3.12 (python3.12 or python3.13 on PATH, or PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"hypotest needs Python >= 3.12, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -qq -c constraints.txt -e ".[dev,nion]"
	$(BIN)/pip check
	@touch $(STAMP)

# Debian packages the tests need: chromium for the browser tests (never `playwright install`).
system:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Test data fetched, not committed: the real HAADF frame of the README's worked example (from the
# temul-toolkit 0.1.9 wheel, downloaded without installing it; SHA-256 checked).
REAL_FRAME := tests/data/external/example_Se_implanted_MoS2.dm3
data: $(REAL_FRAME)
$(REAL_FRAME): tests/data/fetch_real_frame.py | $(STAMP)
	$(BIN)/python tests/data/fetch_real_frame.py

# The default suite: everything not marked slow, browser, ray or nion (see pyproject.toml).
test: setup
	$(BIN)/python -m pytest

# The marked tests (slow, browser, Ray cluster, Nion); exit code 5 means none are collected yet.
test-marked: setup
	$(BIN)/python -m pytest -m "slow or browser or ray or nion"; rc=$$?; \
	  if [ $$rc = 5 ]; then echo "no slow/browser/ray tests collected"; exit 0; fi; exit $$rc

test-all: test test-marked

demo: setup
	$(BIN)/hypotest demo

# The README's worked example on the real frame: site map, counts, and the atom-counting comparison.
real-frame: setup
	$(BIN)/hypotest score --library mos2_se --frames $(REAL_FRAME) --beam tests/data/beam_temul_mos2.json \
	  --detector frame --optics frame --out out/real_frame/result.json
	$(BIN)/python -m hypotest.crosscheck out/real_frame/result.json $(REAL_FRAME)

# Re-resolve the pinned versions from the ranges in pyproject.toml (commit the result).
lock:
	rm -rf /tmp/hypotest-lock && $(PYTHON) -m venv /tmp/hypotest-lock
	/tmp/hypotest-lock/bin/pip install -qq --upgrade pip
	/tmp/hypotest-lock/bin/pip install --quiet ".[dev,nion]"
	/tmp/hypotest-lock/bin/pip freeze --exclude hypotest | grep -v '^-e ' > constraints.txt
	@echo "constraints.txt: $$(wc -l < constraints.txt) pins"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
