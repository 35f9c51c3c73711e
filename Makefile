# Set-up and entry points. `make run` and `make test` work on a fresh machine: they create the
# virtual environment and install the package first. Torch is pinned by constraints.txt so pip
# takes the local CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPLIT ?= test
RUN_DIR ?= runs/default
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
# The browser test drives the system Chromium (apt-get install chromium); Playwright must
# never fetch its own browser build.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
# mkdocs-material prints a banner about its successor on every build; the docs do not need it.
export NO_MKDOCS_2_WARNING := 1

SEEDS ?= 0,1,2

.PHONY: install run test test-fast bench bench-ann bench-scale gpu-check seeds reproduce serve bench-serve notebook docs docs-serve lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: fetch or read ML-1M, print its statistics and the baselines on test, then train the
## whole funnel into $(RUN_DIR) and print its report (also written to $(RUN_DIR)/report.md)
run: $(STAMP)
	$(BIN)/recfunnel data
	$(BIN)/recfunnel evaluate --model pop,ease --split $(SPLIT)
	$(BIN)/recfunnel train --out $(RUN_DIR) --overwrite
	$(BIN)/recfunnel evaluate $(RUN_DIR) --split $(SPLIT)

## test: the whole suite (real-data checks run when ML-1M is found, are skipped otherwise)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-fast: synthetic-data tests only
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not realdata"

## bench: training and evaluation time and memory, index quality, recommend_for_user latency
## and batch throughput -> bench/results.json
bench: $(STAMP)
	$(BIN)/python bench/bench.py

## bench-ann: FAISS exact, HNSW, IVF-Flat and IVF-PQ over 1,000,000 synthetic 64-d vectors
## and 10,000 queries: build time, memory, one-thread queries/s, recall@200 against exact
## -> bench/ann_results.json and bench/ann_pareto.png (about 20 minutes on 2 cores)
bench-ann: $(STAMP)
	$(BIN)/python bench/ann.py

## gpu-check: on a machine with a CUDA GPU (and a CUDA build of torch), train a tiny funnel
## on cuda and on the CPU, compare lists and metrics, time both -> bench/gpu_check.json
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

## seeds: the default funnel once per seed in $(SEEDS) (runs/seeds/seed-<s>), each evaluated on
## test, then the mean and standard deviation of every list -> runs/seeds/summary.json
seeds: $(STAMP)
	$(BIN)/recfunnel train --seeds $(SEEDS) --out runs/seeds --overwrite
	for run in runs/seeds/seed-*; do $(BIN)/recfunnel evaluate $$run --json > /dev/null || exit 1; done
	$(BIN)/recfunnel summarize runs/seeds/seed-* --out runs/seeds/summary.json

## reproduce: train the default funnel twice with the same seed and compare the two runs
## stage by stage (every difference and interval is 0 when the lists are identical)
reproduce: $(STAMP)
	$(BIN)/recfunnel train --out runs/reproduce-a --overwrite
	$(BIN)/recfunnel train --out runs/reproduce-b --overwrite
	$(BIN)/recfunnel compare runs/reproduce-a runs/reproduce-b

## serve: the REST service and the funnel page for $(RUN_DIR) on http://$(HOST):$(PORT)/
## (API docs at /docs; live ratings in $(RUN_DIR)/serving/ratings.sqlite3); WORKERS=2 forks
## two server processes after loading (one per core serves that many requests at once)
serve: $(STAMP)
	$(BIN)/recfunnel serve $(RUN_DIR) --host $(HOST) --port $(PORT) --workers $(WORKERS)

## bench-scale: ML-20M-sized synthetic data through loading, the split and one recall epoch,
## the non-learned channels at 27k items, and a cold load of ML-32M-sized data (wall time and
## peak memory of each) -> bench/scale_results.json; the data is written once into
## ~/.cache/recfunnel/bench-scale (~6 GB on disk)
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

## bench-serve: load test over HTTP (starts and stops its own server on 127.0.0.1, one worker
## per core; 8 clients; 20,000 requests in a closed loop, then 20,000 due at 400/s; at most
## 300 s each) -> bench/serve_results.json
bench-serve: $(STAMP)
	$(BIN)/python bench/serve_load.py $(RUN_DIR)

## notebook: regenerate notebooks/movielens_full_pipeline.ipynb from its source of truth, the
## jupytext percent script notebooks/movielens_full_pipeline.py (cells only, no outputs)
notebook: $(STAMP)
	$(BIN)/jupytext --quiet --to ipynb --update notebooks/movielens_full_pipeline.py \
		-o notebooks/movielens_full_pipeline.ipynb

## docs: build the documentation site (docs/, mkdocs.yml) into site/, failing on any warning;
## docs-serve: the same site on http://127.0.0.1:8001/ while you edit
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

lint: $(STAMP)
	$(BIN)/ruff check src tests bench notebooks .ci
	$(BIN)/ruff format --check src tests bench notebooks .ci

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench notebooks .ci
	$(BIN)/ruff format src tests bench notebooks .ci

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
