# Set-up is idempotent: the venv is (re)built when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that this machine keeps on disk; on a CUDA machine use e.g. TORCH_SPEC=torch==2.13.0+cu128
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup quickstart test test-fast lint bench clean llama-cpp

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

quickstart: setup
	$(VENV)/bin/tunelab train examples/quickstart.yaml
	$(VENV)/bin/tunelab eval runs/quickstart
	$(VENV)/bin/tunelab report runs/quickstart -o runs/quickstart/report.html
	@echo "next: source $(VENV)/bin/activate, then e.g. tunelab generate runs/quickstart (the train output above shows one of its own prompts)"

test: setup lint
	scripts/ensure-test-tools.sh
	$(PY) -m pytest -q

# ruff's lint rules and formatting (pyproject.toml [tool.ruff]); part of make test
lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# llama.cpp (llama-cpp-python from source) in a venv outside the repo, for tests/unit/export/test_gguf.py; ~10 min on 2 cores
llama-cpp:
	nice -n 10 scripts/build-llama-cpp.sh

clean:
	rm -rf runs .pytest_cache
