# The two entry points (see README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# Extra pip options. These machines find torch's CPU wheel on disk; elsewhere add the CPU wheel
# index, or pip takes the multi-GB CUDA build:
#   make test PIP_OPTIONS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_OPTIONS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install run dev mlflow-ui dagster-home test bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==25.3"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_OPTIONS) -c constraints.txt -e '.[test,hf]'
	$(BIN)/python -m pip check
	@rm -f $(VENV)/.installed-*
	@touch $@

# The main job on the embedded defaults: training_job (synthetic corpus -> trained model ->
# evaluation -> MLflow registry), SQLite everywhere under .quadra/.
DAGSTER_HOME ?= $(CURDIR)/.quadra/dagster
export DAGSTER_HOME
MLFLOW_PORT ?= 5000
DAGSTER_PORT ?= 3000

run: $(STAMP) dagster-home
	$(BIN)/dagster job execute -m quadra_pipeline.definitions -j training_job
	@$(BIN)/quadra model list
	@echo
	@echo "Where to look:"
	@echo "  Dagster UI (assets, runs, checks):  make dev         -> http://127.0.0.1:$(DAGSTER_PORT)"
	@echo "  MLflow UI (runs, registry):         make mlflow-ui   -> http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "  Registry from the shell:            $(BIN)/quadra model list"
	@echo "  Files: checkpoints, corpus, stores: $(CURDIR)/.quadra/"

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Dagster UI and daemon (schedules, queued runs).
dev: $(STAMP) dagster-home
	$(BIN)/dagster dev -h 127.0.0.1 -p $(DAGSTER_PORT) -w workspace.yaml

# MLflow UI over the local tracking store (lean: one worker, no job runner).
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow server --workers 1 \
		--host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///$(CURDIR)/.quadra/mlflow.db

# The whole test suite (PostgreSQL tests run when the server at 127.0.0.1:5432 answers).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_logging.py
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_backup.py
	$(BIN)/python benchmarks/bench_backup_io.py

clean-venv:
	rm -rf $(VENV)
