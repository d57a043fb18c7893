# Two entry points: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pgray-installed

export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test lint clean gpu-wheels gpu-rehearsal

$(STAMP): pyproject.toml clusters/local/install.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,cluster]"
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	clusters/local/install.sh
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m pgray.sweep

lint: setup
	$(BIN)/ruff check pgray tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -x --durations=15 tests

# The lent GPU machine (benchmarks/README.md, "GPU check"): the wheels it lacks, built into .whl/
# (git-ignored), and a rehearsal of its limits on this CPU (minutes; not part of `make test`).
gpu-wheels:
	$(PY) benchmarks/gpu_wheels.py

gpu-rehearsal: gpu-wheels
	bash benchmarks/gpu_rehearsal.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
