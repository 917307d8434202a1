# One image for every role of the deployment (deploy/compose/): the Dagster code location (gRPC
# server), dagster-webserver, dagster-daemon, each run's own container (DockerRunLauncher), the
# MLflow tracking server and the `quadra` CLI.
#
# Hermetic: pip installs only from build/wheels/, which `make image` builds on the host from the
# pinned set (constraints.txt; torch is the CPU wheel), so the build needs no package index and
# installs exactly what the tests ran with. apt brings Debian's Python 3.11 and
# postgresql-client-15 (pg_dump / pg_restore / psql of the same major version as the server in
# the stack), and postgresql-15, the server, for the drill of a point-in-time recovery alone
# (`quadra wal drill`, the pitr_drill check: a throwaway server on a recovered copy, in a
# temporary folder, as the image's user). Build: `make image` (wheels, then `docker build -t
# quadra-pipeline:local .`).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INDEX=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# The dependencies in one layer, the project last: a code change rebuilds only the last layer.
COPY build/wheels/deps/ /wheels/deps/
RUN /opt/venv/bin/pip install --no-deps --no-compile /wheels/deps/*.whl
COPY build/wheels/project/ /wheels/project/
# Byte code compiled once here (unchecked hashes: no mtime checks), so no container start pays
# for compiling dagster, mlflow and torch, and nothing is written at run time. (A few packages
# ship files that are not valid Python 3, templates and samples: compileall reports them and
# they stay uncompiled, hence `|| true`.)
RUN /opt/venv/bin/pip install --no-deps --no-compile /wheels/project/*.whl \
 && /opt/venv/bin/pip check \
 && rm -rf /opt/venv/lib/python3.11/site-packages/pip /opt/venv/bin/pip* \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && (/opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib/python3.11/site-packages >/dev/null 2>&1 || true)

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# postgresql-15 is the drill's alone (docs/REPLICATION.md, "The drill of a point-in-time
# recovery"): no cluster is made at install (createcluster.d below), nothing starts a server (no
# init in a container; the image runs as quadra, and the drill starts its own and stops it). It
# adds ~242 MiB (measured on bookworm: libllvm14 105, the server 52, libicu72 35, libz3-4 22,
# locales 20 MiB).
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/quadra.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 postgresql-client-15 postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
# A fixed uid, so volumes keep their owner across rebuilds. The data home, MLflow's served
# artifacts and the backups are mount points owned by it (a new named volume takes that owner).
RUN groupadd --system --gid 10001 quadra \
 && useradd --system --uid 10001 --gid quadra --home-dir /home/quadra --create-home --shell /usr/sbin/nologin quadra \
 && mkdir -p /data/mlartifacts /backups /wal-archive /opt/dagster/home /opt/dagster/app \
 && chown -R quadra:quadra /data /backups /wal-archive /opt/dagster/home
COPY --from=build /opt/venv /opt/venv
COPY deploy/compose/dagster.yaml /opt/dagster/home/dagster.yaml
COPY deploy/compose/workspace.yaml /opt/dagster/app/workspace.yaml
COPY deploy/compose/mlflow-server.sh /opt/quadra/mlflow-server.sh
COPY deploy/compose/db-init/ /opt/quadra/db-init/
COPY deploy/compose/wal/ /opt/quadra/wal/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUADRA_ENV=production \
    QUADRA_HOME=/data \
    QUADRA_BACKUP_DIR=/backups \
    DAGSTER_HOME=/opt/dagster/home \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /opt/dagster/app
USER quadra
EXPOSE 3000 4000 5000
# Each service of deploy/compose/compose.yaml sets its own command and health check; alone,
# the image runs the CLI.
CMD ["quadra", "--help"]
