"""The HTTP side against one served champion: answers equal the registered model's own pyfunc
output for every input format (texts too), clients of `mlflow models serve` work unchanged,
every bad request is a 4xx naming what is wrong (never a 500), the bearer token guards what it
should and nothing else, and /health, /version and /metrics say what is served."""

from __future__ import annotations

import json
import random

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import requests
import torch

from quadra_pipeline.model.features import text_features
from quadra_pipeline.model.qlearning import ACTIONS
from quadra_pipeline.registry import ModelRegistry
from quadra_pipeline_tests.registry.conftest import mlflow_fluent_api

from .conftest import FIELD_SIZE, TOKEN, Models, keyring_of, new_model_name, serving

TEXTS = ["the quick brown fox jumps over the lazy dog", "a a a b b c", "", "Ünïcode wörds and  spaces\ttabs\nlines"]


@pytest.fixture(scope="module")
def champion(serving_tracking, serving_engine, signing_keys, tmp_path_factory):
    registry = ModelRegistry(serving_tracking.uri, serving_tracking.artifact_root, model_name=new_model_name(),
                             keys=signing_keys)
    models = Models(registry, serving_engine, tmp_path_factory.mktemp("champion"))
    version = models.register(seed=7)
    models.promote(version)
    return models, version


@pytest.fixture(scope="module")
def client(champion, signing_keys, tmp_path_factory):
    models, version = champion
    with serving(models, keyring_of(signing_keys), tmp_path_factory.mktemp("served"), token=TOKEN.encode()) as client:
        client.wait_ready(version)
        yield client


@pytest.fixture(scope="module")
def pyfunc(champion):
    """The registered model's own pyfunc, loaded as a user of the registry would."""
    models, _ = champion
    with mlflow_fluent_api(models.registry.tracking_uri):
        return mlflow.pyfunc.load_model(f"models:/{models.name}@champion")


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, size=(n, FIELD_SIZE)).astype(np.float32)


def answer(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"], dtype=np.float32)


# Answers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 64])
def test_answers_equal_the_registered_models_own_pyfunc_output_in_every_format(client, pyfunc, champion, n):
    _, version = champion
    x = rows(n, seed=n)
    expected = np.asarray(pyfunc.predict(x))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FIELD_SIZE)])
    bodies = {
        "inputs": {"inputs": x.tolist()},
        "instances": {"instances": x.tolist()},
        "dataframe_split": {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))},
        "dataframe_records": {"dataframe_records": json.loads(frame.to_json(orient="records"))},
    }
    for name, body in bodies.items():
        response = client.invoke(body)
        assert np.array_equal(answer(response), expected), name  # bit for bit
        assert response.headers["X-Quadra-Model-Version"] == str(version)
        document = response.json()
        assert document["model_version"] == version and document["columns"] == list(ACTIONS)
    csv = client.post("/invocations", data=frame.to_csv(index=False),
                      headers={**client.headers(), "Content-Type": "text/csv"})
    assert np.allclose(answer(csv), expected, rtol=1e-6, atol=1e-7)  # CSV's decimal text: float32 within rounding


def test_the_answer_names_the_policys_action_and_its_losses(client, pyfunc):
    module = pyfunc.get_raw_model()
    x = rows(5, seed=3)
    document = client.invoke({"inputs": x.tolist()}).json()
    action = module.greedy_action()
    assert document["action"] == action
    predictions = np.asarray(document["predictions"], dtype=np.float32)
    assert document["action_losses"] == predictions[:, ACTIONS.index(action)].tolist()


def test_texts_are_scored_as_the_text_features_the_model_was_trained_with(client, pyfunc):
    vectors = torch.stack([text_features(t, FIELD_SIZE) for t in TEXTS]).numpy()
    expected = np.asarray(pyfunc.predict(vectors))
    for body in ({"inputs": TEXTS}, {"instances": [{"text": t} for t in TEXTS]}, {"inputs": {"text": TEXTS}},
                 {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}},
                 {"dataframe_records": [{"text": t} for t in TEXTS]}):
        assert np.array_equal(answer(client.invoke(body)), expected), body


def test_clients_of_mlflow_models_serve_work_unchanged(champion, pyfunc, signing_keys, tmp_path):
    """MLflow's own scoring client (no token: a development service on loopback)."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    models, version = champion
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(version)
        host, port = client.url.removeprefix("http://").split(":")
        mlflow_client = ScoringServerClient(host, int(port))
        mlflow_client.wait_server_ready(timeout=10)
        x = rows(3, seed=11)
        predictions = mlflow_client.invoke(pd.DataFrame(x)).get_predictions(predictions_format="ndarray")
        assert np.array_equal(predictions.astype(np.float32), np.asarray(pyfunc.predict(x)))
        assert json.loads(mlflow_client.get_version())["version"] == version


# Bad requests: always a 4xx with a message, never a 500 --------------------------------------------

ROW = [0.5] * FIELD_SIZE
BAD = [
    # (body bytes or JSON, content type, status, what the message must say)
    ({"inputs": [ROW[:-1]]}, None, 400, f"inputs[0]: {FIELD_SIZE - 1} numbers, but the model's signature takes {FIELD_SIZE}"),
    ({"inputs": [ROW, ROW + [1.0]]}, None, 400, f"inputs[1]: {FIELD_SIZE + 1} numbers"),
    ({"inputs": [ROW[:-1] + ["x"]]}, None, 400, f'inputs[0][{FIELD_SIZE - 1}]: expected a number, got "x" (a string)'),
    ({"inputs": [ROW[:-1] + [True]]}, None, 400, f"inputs[0][{FIELD_SIZE - 1}]: expected a number, got true (a boolean)"),
    ({"inputs": [ROW[:-1] + [None]]}, None, 400, f"inputs[0][{FIELD_SIZE - 1}]: expected a number, got null"),
    ({"inputs": [ROW[:-1] + [1e39]]}, None, 400, "is not a finite number in float32's range"),
    ({"inputs": [[ROW]]}, None, 400, "inputs[0][0]: expected a number, got a list of 16"),
    ({"inputs": ROW}, None, 400, "inputs[0]: expected a row of 16 numbers, got 0.5"),
    ({"inputs": 7}, None, 400, "inputs: expected a list of rows"),
    ({"inputs": []}, None, 400, "inputs: no rows"),
    ({"instances": ["a text", 3]}, None, 400, "instances[1]: expected a text, got 3"),
    ({"inputs": {"x": [1]}}, None, 400, "named inputs (x) are not in the model's signature"),
    ({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}, None, 400, "dataframe_split.columns: 2 columns"),
    ({"dataframe_split": {"data": [ROW[:-1] + ["1.5"]]}}, None, 400, f"dataframe_split.data[0][{FIELD_SIZE - 1}]: expected a number"),
    ({"dataframe_split": [1]}, None, 400, "dataframe_split: expected an object"),
    ({"dataframe_records": [dict(zip("abcdefghijklmnop", ROW)), {"a": 1}]}, None, 400, "dataframe_records[1].b: missing"),
    ({"dataframe_records": [dict(zip("abcdefghijklmno", ROW[:15] + ["z"]))]}, None, 400, "dataframe_records: 15 columns"),
    ({"inputs": [ROW], "instances": [ROW]}, None, 400, "Received the fields: inputs, instances"),
    ({"data": [ROW]}, None, 400, "exactly one of the input fields"),
    ({"inputs": [ROW], "params": [1]}, None, 400, "params: expected an object"),
    ([ROW], None, 400, "Received a list"),
    (b"", None, 400, "the request body is empty"),
    (b"   \n", None, 400, "the request body is empty"),
    (b'{"inputs": [[0.5, 0.5', None, 400, "invalid JSON at line 1 column"),
    (b'{"inputs": [[NaN]]}', None, 400, "invalid JSON: NaN is not a number in JSON"),
    (b"\xff\xfe{}", None, 400, "not UTF-8"),
    (b"[" * 50_000 + b"]" * 50_000, None, 400, "nested too deeply"),
    (b"a,b\n1,2\n", "text/csv", 400, "csv: 2 columns"),
    (b"", "text/csv", 400, "the request body is empty"),
    (b'{"inputs": [[1]]}', "application/xml", 415, "content type 'application/xml'"),
    (b'{"inputs": [[1]]}', "application/json; charset=latin-1", 415, "charset 'latin-1'"),
    (b'{"inputs": [[1]]}', "application/json; format=pandas-split", 415, "unknown content type parameters: format"),
]


@pytest.mark.parametrize("body, content_type, status, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_every_bad_request_is_a_4xx_naming_what_is_wrong(client, body, content_type, status, message):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**client.headers(), "Content-Type": content_type or "application/json"}
    response = client.post("/invocations", data=data, headers=headers)
    assert response.status_code == status, response.text
    document = response.json()
    assert message in document["message"], document
    assert document["error_code"] and "\n" not in document["message"]


def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    limit = client.service.config.max_body_bytes
    declared = client.post("/invocations", data=b" " * (limit + 1), headers={**client.headers(), "Content-Type": "application/json"})
    assert declared.status_code == 413 and "QUADRA_SERVING_MAX_BODY_BYTES" in declared.json()["message"]

    def chunks():  # no Content-Length: chunked, refused while streaming
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536
    chunked = client.post("/invocations", data=chunks(), headers={**client.headers(), "Content-Type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert client.invoke({"inputs": [ROW]}).status_code == 200  # and the service goes on


def test_more_rows_than_allowed_is_413(client):
    limit = client.service.config.max_rows
    response = client.invoke({"inputs": [[0] * FIELD_SIZE] * (limit + 1)})
    assert response.status_code == 413 and f"more than the {limit} a request may hold" in response.json()["message"]


def test_random_corruptions_of_good_requests_are_never_a_500(client):
    """A seeded fuzz: valid bodies cut, bytes flipped, inserted or dropped, values swapped for
    other JSON values. Every answer is a 200 or a 4xx with a message."""
    rng = random.Random(18)
    good = [json.dumps(b).encode() for b in (
        {"inputs": rows(2).tolist()}, {"dataframe_split": {"columns": list("abcdefghijklmnop"), "data": rows(2).tolist()}},
        {"instances": TEXTS}, {"dataframe_records": [dict(zip("abcdefghijklmnop", rows(1)[0].tolist()))]})]
    junk = [b"null", b"true", b"-", b"1e999", b'"x"', b"[]", b"{}", b"\x00", b"]", b"NaN", b"\xc3", b"9" * 400]
    statuses = {}
    for i in range(400):
        body = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(body))
            action = rng.randrange(4)
            if action == 0:
                body = body[:where]
            elif action == 1:
                body[where] = rng.randrange(256)
            elif action == 2:
                body[where:where] = rng.choice(junk)
            else:
                del body[where:where + rng.randint(1, 8)]
        response = client.post("/invocations", data=bytes(body), headers={**client.headers(), "Content-Type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code == 200 or 400 <= response.status_code < 500, (bytes(body)[:200], response.text)
        if response.status_code != 200:
            assert response.json()["message"]
    assert statuses.get(200, 0) + sum(n for s, n in statuses.items() if 400 <= s < 500) == 400


# The token -----------------------------------------------------------------------------------

def test_the_bearer_token_guards_invocations_version_and_metrics(client):
    body = {"inputs": [ROW]}
    for path, method in (("/invocations", "post"), ("/version", "get"), ("/metrics", "get")):
        kwargs = {"json": body} if method == "post" else {}
        missing = getattr(client.session, method)(client.url + path, timeout=10, **kwargs)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert "a bearer token is required" in missing.json()["message"]
        for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN):
            wrong = getattr(client.session, method)(client.url + path, timeout=10, headers={"Authorization": header},
                                                   **kwargs)
            assert wrong.status_code == 401, (path, header)
            assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"] or "required" in wrong.text
        good = getattr(client.session, method)(client.url + path, timeout=10, headers=client.headers(), **kwargs)
        assert good.status_code == 200, path


def test_ping_and_health_answer_without_the_token_and_never_show_it(client):
    for path in ("/ping", "/health"):
        response = client.session.get(client.url + path, timeout=10)
        assert response.status_code == 200
        assert TOKEN not in response.text and "t0ken" not in response.text
    assert TOKEN not in client.get("/version").text and TOKEN not in client.get("/metrics").text
    assert TOKEN not in repr(client.service.config)


# What is served ------------------------------------------------------------------------------

def test_health_and_version_name_the_version_what_verified_it_and_its_alias_move(client, champion, signing_keys):
    models, version = champion
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["reason"] is None
    assert health["version"] == health["alias_version"] == version
    info = client.get("/version").json()
    assert info["model"] == models.name and info["alias"] == "champion" and info["version"] == version
    assert info["alias_move"]["to_version"] == version and info["alias_move"]["seen_at"]
    tags = models.registry.version_tags(version)
    assert info["verified"]["signature_key"] == signing_keys.key_id
    assert info["verified"]["checkpoint_sha256"] == tags["checkpoint_sha256"]
    assert info["verified"]["signature_sha256"] == tags["signature_sha256"]
    assert info["field_size"] == FIELD_SIZE and info["mlflow_version"] == mlflow.__version__


def test_metrics_count_requests_rows_and_the_follower(client):
    before = client.get("/metrics").text
    for _ in range(3):
        client.invoke({"inputs": [ROW, ROW]})
    client.invoke({"inputs": []})
    text = client.get("/metrics").text

    def value(name: str, source: str) -> float:
        line = next((ln for ln in source.splitlines() if ln.startswith(name + " ")), None)
        return float(line.split()[-1]) if line else 0.0

    ok = 'quadra_serving_requests_total{endpoint="/invocations",code="200"}'
    bad = 'quadra_serving_requests_total{endpoint="/invocations",code="400"}'
    assert value(ok, text) - value(ok, before) == 3
    assert value(bad, text) - value(bad, before) == 1
    assert value("quadra_serving_rows_total", text) - value("quadra_serving_rows_total", before) == 6
    assert value("quadra_serving_degraded", text) == 0
    assert value("quadra_serving_alias_checks_total", text) >= 1
    assert "# TYPE quadra_serving_invocation_seconds histogram" in text
    assert 'quadra_serving_invocation_seconds_bucket{le="+Inf"}' in text


def test_csv_through_mlflows_parser_names_the_empty_cell(client):
    frame = pd.DataFrame(rows(2), columns=[f"c{i}" for i in range(FIELD_SIZE)])
    text = frame.to_csv(index=False).splitlines()
    text[2] = ",".join(text[2].split(",")[:-1] + [""])
    response = client.post("/invocations", data="\n".join(text).encode(),
                           headers={**client.headers(), "Content-Type": "text/csv"})
    assert response.status_code == 400 and f"csv[1][{FIELD_SIZE - 1}]: empty" in response.json()["message"]
