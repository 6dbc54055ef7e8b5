# Two entry points for newcomers: `make demo` and `make test`. Both create .venv and install
# what they need; llama-cpp-python compiles from source the first time (about 6 minutes on 2 cores).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Explain what a servo motor is.

.PHONY: install install-unit demo test test-unit check format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	# torch first, pinned: the CPU wheel; an unpinned resolve pulls multi-GB CUDA wheels
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[device,cloud,split,dev]'

# The fast loop: no model, no llama-cpp-python compile (torch's CPU wheel is a download).
install-unit: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cloud,split,dev]'

test-unit: install-unit
	$(BIN)/python -m pytest tests/unit -m "not model"

demo: install
	$(BIN)/edgecloud device assemble
	$(BIN)/edgecloud device generate "$(PROMPT)" --max-tokens 64
	$(BIN)/python examples/quickstart.py

test: install
	$(BIN)/python -m pytest tests

check: install
	$(BIN)/ruff format --check edgecloud tests bench examples
	$(BIN)/ruff check edgecloud tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	PYTHON=$(BIN)/python scripts/gen_protos.sh --check

format: install
	$(BIN)/ruff format edgecloud tests bench examples
	$(BIN)/ruff check --fix edgecloud tests bench examples

bench: install
	$(BIN)/python bench/local_decode.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
