# The two entry points (see README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# Extra pip options. These machines find torch's CPU wheel on disk; elsewhere add the CPU wheel
# index, or pip takes the multi-GB CUDA build:
#   make test PIP_OPTIONS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_OPTIONS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install run dev mlflow-ui dagster-home test bench clean-venv docker-check wheels image standins deploy-secrets docker-group deploy-up deploy-down deploy-rotate-keys deploy-restore deploy-test

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==25.3"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_OPTIONS) -c constraints.txt -e '.[test,hf,deploy]'
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

# The champion online (`quadra serve`: MLflow's scoring protocol, README "Serving") from the
# embedded registry that `make run` fills, on http://127.0.0.1:$(SERVING_PORT) (no token outside
# production: loopback only). It follows the alias `champion` (a promotion, a rollback) within
# seconds; Ctrl-C stops it. Try: curl -s -H 'Content-Type: application/json' \
#   -d '{"inputs": ["the quick brown fox jumps over the lazy dog"]}' http://127.0.0.1:8080/invocations
SERVING_PORT ?= 8080
.PHONY: serve
serve: $(STAMP)
	$(BIN)/quadra serve --host 127.0.0.1 --port $(SERVING_PORT)

# Dagster UI and daemon (schedules, queued runs). With QUADRA_REPLICA set (environment or .env),
# Litestream replicates the SQLite databases (project, MLflow, Dagster's instance) beside it and
# stops with it (docs/REPLICATION.md); without it, dagster dev alone. `make run` never replicates.
dev: $(STAMP) dagster-home
	$(BIN)/quadra replication run --exec "$(BIN)/dagster dev -h 127.0.0.1 -p $(DAGSTER_PORT) -w workspace.yaml"

# MLflow UI over the local tracking store (lean: one worker, no job runner).
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow server --workers 1 \
		--host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///$(CURDIR)/.quadra/mlflow.db

# The pipeline's Prometheus metrics (quadra exporter) on http://127.0.0.1:$(EXPORTER_PORT)/metrics,
# from the same Dagster instance and data home as `make dev` (run it beside it, in another terminal).
EXPORTER_PORT ?= 9464
.PHONY: exporter
exporter: $(STAMP) dagster-home
	$(BIN)/quadra exporter --host 127.0.0.1 --port $(EXPORTER_PORT)

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

# The container deployment (deploy/compose/, README "Deployment"). One image for every role.
IMAGE ?= quadra-pipeline:local
# The stack's secrets: one file each, a folder per identity (make deploy-secrets). Absolute: the
# run launcher mounts its identity folders into each run's container by their host path.
QUADRA_SECRETS_DIR ?= $(CURDIR)/deploy/secrets
export QUADRA_SECRETS_DIR
COMPOSE = docker compose --project-directory deploy/compose -f deploy/compose/compose.yaml
# The same sources give the same project wheel: its timestamps come from the commit (only for
# the wheel build; apt's layers are not bit-for-bit reproducible).
WHEEL_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 315532800)
# BuildKit where the client has it (buildx), the classic builder otherwise.
DOCKER_BUILDKIT ?= $(shell docker buildx version >/dev/null 2>&1 && echo 1 || echo 0)
export DOCKER_BUILDKIT

docker-check:
	@docker info >/dev/null 2>&1 || { echo "Docker is not available here ('docker info' failed): install and start it (README, Deployment); nothing was run" >&2; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "the Docker Compose v2 plugin ('docker compose') is missing (README, Deployment)" >&2; exit 1; }

# The wheelhouse the image installs from: the pinned set, built on the host (pip finds torch's
# CPU wheel here; elsewhere PIP_OPTIONS adds the CPU index), so the image build needs no index.
wheels: $(STAMP)
	@$(BIN)/python -c 'import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else "make wheels: the image runs Debian bookworm'"'"'s Python 3.11; this venv is " + sys.version.split()[0] + " (make clean-venv, then PYTHON=python3.11)")'
	rm -rf build/wheels
	SOURCE_DATE_EPOCH=$(WHEEL_EPOCH) $(BIN)/python -m pip wheel --quiet --disable-pip-version-check $(PIP_OPTIONS) -c constraints.txt -w build/wheels/deps '.[deploy]'
	mkdir -p build/wheels/project && mv build/wheels/deps/quadra_pipeline-*.whl build/wheels/project/

image: docker-check standins wheels
	docker build --force-rm -t $(IMAGE) .
	@docker image inspect -f 'image $(IMAGE): {{.Size}} bytes' $(IMAGE)

# Every public base image the stack needs (debian:bookworm-slim, postgres:15-bookworm, the broker's
# QUADRA_BROKER_IMAGE and the object store's QUADRA_OBJECTS_IMAGE), made once: kept when present,
# pulled where a registry answers, and where none is reachable (these machines) built as stand-ins
# from the Debian archive (quadra_pipeline_tests/deploy/standins/standins.sh says which and why).
standins: docker-check
	@QUADRA_BROKER_IMAGE="$(QUADRA_BROKER_IMAGE)" QUADRA_OBJECTS_IMAGE="$(QUADRA_OBJECTS_IMAGE)" \
		quadra_pipeline_tests/deploy/standins/standins.sh

# deploy/secrets/ (QUADRA_SECRETS_DIR): made once, completed by an upgrade, never overwritten; an
# older stack's deploy/.env is taken over. Each folder then belongs to the user its container runs as.
deploy-secrets: $(STAMP) standins
	$(BIN)/python deploy/compose/make_secrets.py --dir "$(QUADRA_SECRETS_DIR)"
	@sh deploy/compose/own-secrets.sh "$(QUADRA_SECRETS_DIR)"

# The Docker socket's own group for the daemon (never the root group, unless DOCKER_GID says so).
DOCKER_SOCKET ?= /var/run/docker.sock
DOCKER_GID ?= $(shell stat -c %g $(DOCKER_SOCKET) 2>/dev/null)
export DOCKER_GID
docker-group:
	@[ -n "$(DOCKER_GID)" ] || { echo "deploy: cannot find the group of $(DOCKER_SOCKET); set DOCKER_GID to it" >&2; exit 1; }
	@[ "$(DOCKER_GID)" != 0 ] || [ "$(origin DOCKER_GID)" = "command line" ] || [ "$(origin DOCKER_GID)" = "environment" ] || { \
		echo "deploy: $(DOCKER_SOCKET) belongs to the root group (gid 0): the daemon would get the root group. Give the" >&2; \
		echo "socket a group of its own (groupadd docker; chgrp docker $(DOCKER_SOCKET)) or set DOCKER_GID=0 knowingly" >&2; exit 1; }

deploy-up: deploy-secrets image docker-group
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) up -d --wait --wait-timeout 600
	@$(COMPOSE) ps --format 'table {{.Service}}\t{{.Status}}'
	@echo "Dagster UI: http://127.0.0.1:$${DAGSTER_PORT:-3000}   MLflow UI: http://127.0.0.1:$${MLFLOW_PORT:-5000} (user admin, its password in $(QUADRA_SECRETS_DIR)/mlflow/admin_password)"

deploy-down:
	DOCKER_GID=$${DOCKER_GID:-0} $(COMPOSE) down

# New signing keys for models and backups on a running stack; the old public keys stay in the
# keyrings, so every older backup and version still verifies (docs/DISASTER_RECOVERY.md). Runs
# launched from now on get the new keys; the workers (the model key) and the online service (the
# model keyring) are recreated.
deploy-rotate-keys: docker-group
	$(BIN)/python deploy/compose/make_secrets.py --dir "$(QUADRA_SECRETS_DIR)" --rotate
	@sh deploy/compose/own-secrets.sh "$(QUADRA_SECRETS_DIR)"
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) up -d --wait --force-recreate --no-deps worker serving
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) --profile tools run --rm -T backup verify

# Disaster recovery of PostgreSQL (all three databases) from the continuous archive: TO checked
# against what the archive keeps before anything is touched; then the server and its volume are
# replaced, the newest base backup unpacked into a new volume with the WAL it needs (the server
# cannot read the archive: another user's files), and the server replays it as far as it goes (or
# to TO=2026-12-07T10:15:30Z), closed until it is done (its health check waits up to an hour).
# Then the copied WAL goes (no base backup would take it: it is under pg_wal) and a fresh base
# backup is taken. docs/DISASTER_RECOVERY.md, "Complete loss of the database server".
deploy-restore: docker-group
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) --profile tools run --rm --no-deps -T --entrypoint quadra backup wal status --to '$(or $(TO),latest)'
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) stop
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) rm -fsv postgres
	docker volume rm -f quadra-pgdata >/dev/null
	docker volume create --label com.docker.compose.project=quadra --label com.docker.compose.volume=pgdata quadra-pgdata >/dev/null
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) --profile tools run --rm --no-deps -T --user 0 --entrypoint quadra \
		-v quadra-pgdata:/pgdata backup wal prepare-recovery --pgdata /pgdata --copy-wal $(if $(TO),--to '$(TO)',)
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) up -d --wait --wait-timeout 3600
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) exec -T postgres sh -c 'rm -rf "$$PGDATA/pg_wal/quadra-recovery-wal"'
	QUADRA_IMAGE=$(IMAGE) $(COMPOSE) exec -T webserver dagster job launch -w /opt/dagster/app/workspace.yaml -j base_backup_job

# The end-to-end test of the stack (quadra_pipeline_tests/deploy/test_stack.py): stand-ins,
# image, up, a training run in its own container, the registry through MLflow's API, a backup,
# verify, the restore drill, down and up again; then faults on the running stack
# (test_stack_faults.py); then everything it made is removed.
deploy-test: docker-check standins $(STAMP)
	QUADRA_DEPLOY_TEST=1 $(BIN)/python -m pytest -p no:cacheprovider quadra_pipeline_tests/deploy/test_standins.py quadra_pipeline_tests/deploy/test_stack.py quadra_pipeline_tests/deploy/test_stack_monitoring.py quadra_pipeline_tests/deploy/test_stack_faults.py $(PYTEST_ARGS)
