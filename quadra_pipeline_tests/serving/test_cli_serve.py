"""`quadra serve` as the stack runs it: its own process, production settings from the
environment and secret files (the token, the model's public key), two uvicorn workers that both
follow a promotion, /metrics summed over both, and a clean stop on SIGTERM (exit 0, in-flight
requests answered, its private folder removed). Bad configurations are one line, exit 1."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from quadra_pipeline_tests.registry.conftest import free_port

from .conftest import FIELD_SIZE, FOLLOW_LIMIT_S

QUADRA = Path(sys.executable).with_name("quadra")
START_TIMEOUT_S = 120  # two spawned workers import torch and MLflow on a shared 2-core machine


def serve_env(tmp_path: Path, tracking_uri: str, model: str, public_key: bytes | None, token: str | None,
              **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUADRA_", "DATABASE_URL"))}
    env.update(QUADRA_ENV="production", QUADRA_HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=tracking_uri,
               QUADRA_SERVING_MODEL=model, QUADRA_SERVING_POLL_SECONDS="0.5",
               QUADRA_SERVING_CACHE_DIR=str(tmp_path / "cache"), MLFLOW_DISABLE_TELEMETRY="true")
    if public_key is not None:
        (tmp_path / "model-signing.pub").write_bytes(public_key)
        env["QUADRA_MODEL_VERIFY_KEY_FILE"] = str(tmp_path / "model-signing.pub")
    if token is not None:
        (tmp_path / "serving_token").write_text(token + "\n")
        env["QUADRA_SERVING_TOKEN_FILE"] = str(tmp_path / "serving_token")
    env.update(extra)
    return env


def test_quadra_serve_with_two_workers_follows_a_promotion_and_stops_on_sigterm(models, signing_keys, serving_tracking,
                                                                               tmp_path):
    token = secrets.token_hex(24)
    v1, v2 = models.register(), models.register()
    models.promote(v1)
    port = free_port()
    env = serve_env(tmp_path, serving_tracking.uri, models.name, signing_keys.public_pem, token)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([str(QUADRA), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    body = {"inputs": [[0.3] * FIELD_SIZE]}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.25)
        session = requests.Session()
        assert session.post(f"{url}/invocations", json=body, timeout=10).status_code == 401
        # Both workers answer (each connection lands on either): until each has v1 loaded.
        answered = set()
        deadline = time.monotonic() + 60
        while True:
            response = requests.post(f"{url}/invocations", json=body, headers=auth, timeout=10)  # a new connection each
            assert response.status_code in (200, 503), response.text
            if response.status_code == 200:
                assert response.headers["X-Quadra-Model-Version"] == str(v1)
                answered.add(requests.get(f"{url}/version", headers=auth, timeout=10).json()["worker"])
            if len(answered) == 2 or time.monotonic() > deadline:
                break
        for _ in range(20):
            assert session.post(f"{url}/invocations", json=body, headers=auth, timeout=10).status_code == 200

        moved = time.monotonic()
        models.promote(v2)
        while True:  # every new connection (either worker) answers with v2
            versions = {requests.post(f"{url}/invocations", json=body, headers=auth, timeout=10)
                        .headers.get("X-Quadra-Model-Version") for _ in range(10)}
            if versions == {str(v2)}:
                break
            assert time.monotonic() - moved < FOLLOW_LIMIT_S, versions
        time.sleep(1.2)  # each worker writes its counters about once a second
        metrics = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
        ok = next(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('quadra_serving_requests_total{endpoint="/invocations",code="200"}'))
        assert ok >= 20 + 10  # the sum over both workers, whichever answered the scrape
        workers = [line for line in metrics.splitlines() if line.startswith("quadra_serving_worker_model_version{")]
        assert len(workers) == 2 and all(line.endswith(f" {v2}") for line in workers), workers
        run_dirs = list((tmp_path / "cache").iterdir())
        assert len(run_dirs) == 1 and oct(run_dirs[0].stat().st_mode & 0o777) == "0o700"

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        print(f"\nSIGTERM -> exit 0 in {time.monotonic() - started:.1f} s")
        assert list((tmp_path / "cache").iterdir()) == []  # its private folder went with it
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert token not in output
    assert f"serving {models.name} version {v2}" in output and "Received SIGTERM" in output
    assert output.rstrip().endswith("quadra.serving[%d]: stopped" % process.pid)


@pytest.mark.parametrize("case, extra, message", [
    ("production without a token", {}, "QUADRA_SERVING_TOKEN (or QUADRA_SERVING_TOKEN_FILE) is not set"),
    ("a short token", {"token": "short"}, "QUADRA_SERVING_TOKEN is shorter than 32 bytes"),
    ("no public key in production", {"token": "x" * 40, "no_key": True}, "no model verification key is configured"),
    ("any address without a token", {"env": "development", "host": "0.0.0.0"},
     "refusing to listen on 0.0.0.0 without a token"),
])
def test_a_bad_configuration_is_one_line_and_exit_1(case, extra, message, models, signing_keys, serving_tracking,
                                                    tmp_path):
    env = serve_env(tmp_path, serving_tracking.uri, models.name, None if extra.get("no_key") else signing_keys.public_pem,
                    extra.get("token"), **({"QUADRA_ENV": extra["env"]} if "env" in extra else {}))
    command = [str(QUADRA), "serve", "--port", str(free_port())] + (["--host", extra["host"]] if "host" in extra else [])
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quadra: error: ") and message in lines[0], (case, result.stderr)


def test_the_probe_says_when_nothing_answers(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUADRA_"))}
    result = subprocess.run([str(QUADRA), "serve", "--probe", "--port", str(port)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"quadra: error: no answer from http://127.0.0.1:{port}/health ([Errno 111] Connection refused)"


def test_quadra_serve_with_one_worker_stops_on_sigterm_with_exit_0(models, signing_keys, serving_tracking, tmp_path):
    """The default (`make serve`): the app in the main process; uvicorn hands SIGTERM back after
    its graceful shutdown, and the command still ends with exit 0 and its folder removed."""
    token = secrets.token_hex(24)
    v1 = models.register()
    models.promote(v1)
    port = free_port()
    env = serve_env(tmp_path, serving_tracking.uri, models.name, signing_keys.public_pem, token)
    result_log = tmp_path / "serve.log"
    with result_log.open("wb") as log:
        process = subprocess.Popen([str(QUADRA), "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, result_log.read_text()[-3000:]
                try:
                    if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.25)
            response = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [[0.1] * FIELD_SIZE]},
                                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert response.status_code == 200 and response.headers["X-Quadra-Model-Version"] == str(v1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    assert list((tmp_path / "cache").iterdir()) == []
    assert result_log.read_text().rstrip().endswith("stopped on SIGTERM")
