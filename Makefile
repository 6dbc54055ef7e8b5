# Two entry points for newcomers: `make demo` and `make test`. Both create .venv and install
# what they need; llama-cpp-python compiles from source the first time (about 6 minutes on 2 cores).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_FLAGS ?=
# llama.cpp is built for any x86-64 with AVX2 (GGML_NATIVE=OFF): a native build on a CPU with
# AMX emits tile instructions that a kernel or sandbox without AMX state support kills with
# SIGSEGV. Override for a tuned build, e.g. LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON".
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install install-unit demo test test-unit check format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	# torch first, pinned: the CPU wheel; an unpinned resolve pulls multi-GB CUDA wheels
	$(BIN)/pip install --quiet torch==2.13.0
	# no pip cache for llama-cpp-python: a cached wheel built with other flags would be reused
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(BIN)/pip install --quiet --no-cache-dir 'llama-cpp-python>=0.3.16'
	$(BIN)/pip install --quiet -e '.[device,cloud,ray,split,privacy,dev]'

# The fast loop: no model, no llama-cpp-python compile (torch's CPU wheel is a download).
install-unit: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cloud,ray,split,privacy,dev]'

test-unit: install-unit
	$(BIN)/python -m pytest tests/unit -m "not model"

# DEMO_FLAGS=--learn also runs one learning round (about 10 more minutes on 2 cores).
demo: install
	$(BIN)/python examples/demo/demo.py $(DEMO_FLAGS)

test: install
	$(BIN)/python -m pytest tests

check: install
	$(BIN)/ruff format --check edgecloud tests bench examples scripts
	$(BIN)/ruff check edgecloud tests bench examples scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	PYTHON=$(BIN)/python scripts/gen_protos.sh --check

format: install
	$(BIN)/ruff format edgecloud tests bench examples scripts
	$(BIN)/ruff check --fix edgecloud tests bench examples scripts

bench: install
	$(BIN)/python bench/local_decode.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
