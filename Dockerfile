# syntax=docker/dockerfile:1
# Multi-stage image for the Dagster webserver / daemon / code location and the `quadra` CLI.
# Build:  docker build -t quadra-pipeline .
# Torch comes from the CPU wheel index (PyPI's Linux wheel pulls several GB of CUDA).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt pyproject.toml README.md workspace.yaml ./
COPY quadra_pipeline ./quadra_pipeline
# Editable: the code location loads its defs folder through pyproject.toml's [tool.dg].
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}" \
 && pip install -c constraints.txt -e . \
 && pip check

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    QUADRA_ENV=production \
    QUADRA_HOME=/data \
    DAGSTER_HOME=/opt/dagster/home \
    MLFLOW_DISABLE_TELEMETRY=true
RUN groupadd --system quadra && useradd --system --gid quadra --home-dir /app --shell /usr/sbin/nologin quadra \
 && mkdir -p /app /data /opt/dagster/home && chown -R quadra:quadra /app /data /opt/dagster/home
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=quadra:quadra /app /app
WORKDIR /app
COPY --chown=quadra:quadra deploy/dagster.yaml /opt/dagster/home/dagster.yaml
USER quadra
EXPOSE 3000
# The webserver answers /server_info once the code location is loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/server_info', timeout=4).status == 200 else 1)"
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
