"""MLflow registry webhooks: deliveries signed by MLflow's own code are taken, anything else is
refused; against a real `mlflow server` (SQLite backend) an alias move is served through its
webhook long before the next poll; with the server gone the service goes on answering and
says `degraded`. And what MLflow 3.17 itself refuses by default (why polling stays the rule)."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid

import pytest
import requests
from cryptography.fernet import Fernet

from quadra_pipeline.registry import ModelRegistry
from quadra_pipeline.serving.webhook import WebhookRefused, WebhookVerifier, concerns
from quadra_pipeline_tests.registry.conftest import running_mlflow_server

from .conftest import (
    FIELD_SIZE,
    FOLLOW_LIMIT_S,
    LoopbackLoad,
    Models,
    keyring_of,
    new_model_name,
    serving,
)

SECRET = "whsec-" + secrets.token_hex(16)


def mlflow_signed(payload: dict, secret: str = SECRET, *, timestamp: int | None = None) -> tuple[dict, bytes]:
    """A delivery as MLflow 3.17's `webhooks.delivery` signs it (its own function)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps(payload)
    delivery, sent = str(uuid.uuid4()), str(int(time.time()) if timestamp is None else timestamp)
    headers = {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": sent,
               "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, sent, body)}
    return headers, body.encode()


ALIAS_MOVED = {"entity": "model_version_alias", "action": "created", "timestamp": "2026-12-07T00:00:00+00:00",
               "data": {"name": "quadra-matrix", "alias": "champion", "version": "3"}}


def lowered(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


def test_mlflows_own_signature_is_taken_and_anything_else_refused():
    verifier = WebhookVerifier(SECRET.encode())
    headers, body = mlflow_signed(ALIAS_MOVED)
    payload, new = verifier.verify(lowered(headers), body)
    assert new and concerns(payload, "quadra-matrix", "champion") and not concerns(payload, "quadra-matrix", "challenger")
    assert verifier.verify(lowered(headers), body) == (payload, False)  # a replay: answered, ignored

    cases = {
        "another secret": mlflow_signed(ALIAS_MOVED, secret="not-the-secret"),
        "an old timestamp": mlflow_signed(ALIAS_MOVED, timestamp=int(time.time()) - 3600),
        "a changed body": (mlflow_signed(ALIAS_MOVED)[0], json.dumps({**ALIAS_MOVED, "data": {}}).encode()),
        "no signature": ({k: v for k, v in mlflow_signed(ALIAS_MOVED)[0].items() if k != "X-MLflow-Signature"}, body),
        "a v2 signature": ({**mlflow_signed(ALIAS_MOVED)[0], "X-MLflow-Signature": "v2,abc"}, body),
    }
    for bad_headers, bad_body in cases.values():
        with pytest.raises(WebhookRefused):
            verifier.verify(lowered(bad_headers), bad_body)


def test_mlflow_3_17_refuses_http_and_private_addresses_for_webhooks_by_default(monkeypatch):
    """Why polling is the rule in the stack: a webhook at the service (http, a private address)
    needs MLflow's SSRF protection turned off on the tracking server."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_webhook_url

    for name in ("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MlflowException, match="scheme"):
        _validate_webhook_url("http://127.0.0.1:8080/webhooks/mlflow")
    with pytest.raises(MlflowException, match="(?i)private|public|resolve"):
        _validate_webhook_url("https://127.0.0.1:8080/webhooks/mlflow")


def test_a_move_is_served_through_mlflows_webhook_and_a_lost_registry_is_degraded(
        tmp_path_factory, serving_engine, signing_keys, tmp_path):
    folder = tmp_path_factory.mktemp("mlflow-webhooks")
    env = {"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(), "MLFLOW_WEBHOOK_CACHE_TTL": "1"}
    stack = contextlib.ExitStack()
    tracking = stack.enter_context(running_mlflow_server(folder, env=env))
    try:
        registry = ModelRegistry(tracking.uri, model_name=new_model_name(), keys=signing_keys)
        models = Models(registry, serving_engine, tmp_path)
        v1 = models.register()
        models.promote(v1)
        with serving(models, keyring_of(signing_keys), tmp_path, poll_seconds=60.0,
                     webhook_secret=SECRET.encode()) as client:
            client.wait_ready(v1)  # its first look, at start
            registry.client.create_webhook(name="quadra-serving", url=f"{client.url}/webhooks/mlflow",
                                           events=["model_version_alias.created", "model_version_alias.deleted"],
                                           secret=SECRET)
            v2 = models.register()  # moves `challenger`: its delivery wakes the follower to verify v2 ahead
            forged_headers, forged_body = mlflow_signed(
                {**ALIAS_MOVED, "data": {"name": models.name, "alias": "champion", "version": str(v2)}}, secret="forged")
            forged = requests.post(f"{client.url}/webhooks/mlflow", data=forged_body,
                                   headers={**forged_headers, "Content-Type": "application/json"}, timeout=10)
            assert forged.status_code == 401
            with LoopbackLoad(client, {"inputs": [[0.1] * FIELD_SIZE]}) as load:
                time.sleep(0.5)
                moved = time.monotonic()
                models.promote(v2)  # through the server's REST API: it delivers the webhook
                client.wait_for(lambda: load.first_answer_from(v2, moved) is not None, FOLLOW_LIMIT_S, "an answer from v2")
            first = load.first_answer_from(v2, moved)
            assert first is not None and first < FOLLOW_LIMIT_S  # the poll is 60 s: the webhook did it
            assert load.failures() == []
            metrics = client.get("/metrics").text
            wakeups = next(float(ln.split()[-1]) for ln in metrics.splitlines()
                           if ln.startswith("quadra_serving_webhook_wakeups_total "))
            assert wakeups >= 1
            print(f"\nwebhook: alias move -> first answer of v{v2}: {first:.2f} s (poll every 60 s)")

            stack.close()  # the registry goes away
            client.service.run_dir.wake()  # look now rather than in 60 s
            client.wait_for(lambda: "the registry cannot be read" in (client.get("/health").json()["reason"] or ""),
                            20, "degraded: registry unreadable")
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert client.invoke({"inputs": [[0.1] * FIELD_SIZE]}).headers["X-Quadra-Model-Version"] == str(v2)
    finally:
        stack.close()


def test_without_a_webhook_secret_there_is_no_webhook_endpoint(models, signing_keys, tmp_path):
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        headers, body = mlflow_signed(ALIAS_MOVED)
        assert requests.post(f"{client.url}/webhooks/mlflow", data=body, headers=headers, timeout=10).status_code == 404
