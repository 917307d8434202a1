"""MLflow's own metrics, as the stack gets them: a real `mlflow server --app-name basic-auth
--expose-prometheus DIR` on loopback (MLflow 3.17). Its /metrics answers the admin alone (401
without credentials, 403 for a read-only user: MLFLOW_BASIC_AUTH_FAIL_CLOSED is on by default), so
`quadra exporter --multiprocess-dir DIR` serves the same counters, read from the folder MLflow's
workers write, with no MLflow credential; they count the requests MLflow answered."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from quadra_pipeline_tests.registry.conftest import free_port, running_mlflow_server

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)


def request_total(text: str) -> float:
    """Requests MLflow counted as answered with 200 (every method and version summed)."""
    return sum(float(m.group(1)) for m in re.finditer(r'^mlflow_http_request_total\{[^}]*status="200"[^}]*\} (\S+)$', text, re.M))


@pytest.mark.slow
def test_mlflows_metrics_need_its_admin_there_and_no_credential_from_the_folder(tmp_path):
    folder = tmp_path / "mlflow"
    folder.mkdir()
    metrics_dir = tmp_path / "mlflow-metrics"
    (folder / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with running_mlflow_server(folder, "--app-name", "basic-auth", "--expose-prometheus", str(metrics_dir), env=env) as tracking:
        admin = ("admin", ADMIN_PASSWORD)
        created = requests.post(f"{tracking.uri}/api/2.0/mlflow/users/create", auth=admin, timeout=10,
                                json={"username": "quadra-reader", "password": "reader-s3cret-pw"})
        assert created.status_code == 200, created.text
        assert requests.get(f"{tracking.uri}/metrics", timeout=10).status_code == 401
        assert requests.get(f"{tracking.uri}/metrics", auth=("quadra-reader", "reader-s3cret-pw"), timeout=10).status_code == 403
        as_admin = requests.get(f"{tracking.uri}/metrics", auth=admin, timeout=10)
        assert as_admin.status_code == 200 and "mlflow_http_request_total" in as_admin.text
        assert any(metrics_dir.glob("counter_*.db"))  # what the workers write

        port = free_port()
        sidecar = subprocess.Popen(
            [str(Path(sys.executable).with_name("quadra")), "exporter", "--multiprocess-dir", str(metrics_dir),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith(("QUADRA_", "MLFLOW_"))},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert sidecar.poll() is None and time.monotonic() < deadline, sidecar.stderr.read() if sidecar.poll() is not None else "no answer"
                time.sleep(0.2)
            before = request_total(requests.get(f"{base}/metrics", timeout=10).text)
            for _ in range(5):
                answer = requests.get(f"{tracking.uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                                      auth=admin, timeout=10)
                assert answer.status_code == 200
            after = requests.get(f"{base}/metrics", timeout=10)
            assert after.status_code == 200
            assert request_total(after.text) == before + 5
            assert 'mlflow_version="' in after.text
        finally:
            sidecar.send_signal(signal.SIGTERM)
            assert sidecar.wait(timeout=10) == 0
