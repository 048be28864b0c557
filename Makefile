# podrun: the two README commands.
#   make demo   set everything up, build the digits data set, train ResNet-50 (tiny) on 2 CPU ranks
#   make test   set everything up, check lint and the import layers, run the test suite (what CI runs)
#   make test-fast  lint, the import layers and the tests marked fast (no cluster, server or training job)
#   make lint   ruff and the import contract (orchestrator above jobs, backends independent)
#   make horovod  build (once, then cached) and install Horovod 0.28.1 with the C++17 fix
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data
TORCH  ?= torch==2.13.0
# Two xdist workers; the tests on the shared Slurm cluster stay on one worker and those on
# the shared Ray cluster on one (tests/conftest.py groups them). Serial: PYTEST_ARGS=-p no:xdist
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: demo test test-fast lint setup bench clean ui horovod

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
# torch first: the CPU wheel (on disk here). pyproject's range keeps it; alone it would pull a CUDA build.
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DATA)/digits/train: | $(STAMP)
	$(BIN)/podrun data digits $(DATA)/digits

demo: $(STAMP) $(DATA)/digits/train
	$(BIN)/podrun launch recipes/jobs/resnet50-tiny.yaml

horovod: $(STAMP)
	bash scripts/build-horovod.sh $(BIN)/python

lint: $(STAMP)
	$(BIN)/ruff check jobs orchestrator tests bench
	$(BIN)/lint-imports

test: $(STAMP)
	bash scripts/install-test-deps.sh
	bash scripts/build-horovod.sh $(BIN)/python
	$(MAKE) lint
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

# Parsing, rendering, golden files, config, predict: under 3 minutes once `make setup` has run.
test-fast: $(STAMP)
	$(MAKE) lint
	$(BIN)/python -m pytest -q -m fast $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/input_pipeline.py
	$(BIN)/python bench/transformer_step.py --preset tiny
	$(BIN)/python bench/launch_overhead.py

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.podrun/mlflow.db --port 5000

clean:
	rm -rf .podrun build *.egg-info
