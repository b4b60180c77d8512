# The two set-up commands of the README. Both create the environment (.venv) from requirements.txt if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(STAMP)

.PHONY: env demo test test-notebooks lint bench bench-1m bench-hybrid mutants soak
env: $(STAMP)

demo: $(STAMP)  ## run the demo runbook end to end (offline, local LlamaCloud-compatible server)
	$(BIN)/python -m runbook run runbook_params/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check lib notebooks tests benchmarks
	$(BIN)/ruff format --check lib notebooks tests benchmarks

test: lint  ## lint, then the whole test suite
	$(BIN)/python -m pytest -q --durations=20  # the slowest tests named at the end of the log

test-notebooks: $(STAMP)  ## the notebook tiers: each notebook on its own defaults, then on its branches (~8 min)
	$(BIN)/python -m pytest -q -m notebook_smoke
	$(BIN)/python -m pytest -q -m notebook_branch

bench: $(STAMP)  ## regenerate BENCHMARKS.md's tables, medians of 3 interleaved runs (hours; see BENCHMARKS.md)
	$(BIN)/python benchmarks/bench_extract.py --sizes 10000 100000 --latencies-ms 50 200 --repeat 3 --page
	$(BIN)/python benchmarks/bench_load.py --sizes 10000 100000 --arms loader raw bulk --repeat 3 --page load
	$(BIN)/python benchmarks/bench_load.py --grid --grid-steps 1 --sizes 100000 --dim 384 --shapes isotropic realistic --page grid
	$(BIN)/python benchmarks/bench_e2e.py --chunks 100000 --shape realistic --reembed --repeat 3 --page e2e-100k

bench-1m: $(STAMP)  ## the million-chunk runs (needs ~30 GB free disk; several hours)
	$(BIN)/python benchmarks/bench_load.py --sizes 1000000 --arms loader raw --repeat 3 --page load-1m
	$(BIN)/python benchmarks/bench_e2e.py --chunks 1000000 --shape realistic --reembed --embed-tpm 50000000 --page e2e-1m

bench-hybrid: $(STAMP)  ## hybrid retrieval (Chroma + BM25) vs dense only, 100k chunks (~10 min)
	$(BIN)/python benchmarks/bench_hybrid.py --chunks 100000 --queries 200

mutants: $(STAMP)  ## mutation testing of the safety-critical modules (mutmut; slow, not in CI; see BENCHMARKS.md)
	$(BIN)/python benchmarks/mutants.py $(MODULES)

soak: $(STAMP)  ## the whole suite RUNS times in a row (default 10), every STRESS_EVERY-th under load (~35 min a run)
	$(BIN)/python benchmarks/soak.py --runs $(or $(RUNS),10) --stress-every $(or $(STRESS_EVERY),10)
