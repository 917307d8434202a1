"""Following the alias while a loopback client sends requests without pause: a promotion and a
rollback are served within 10 s with no failed request; a version whose checkpoint had a byte
flipped, or that another key signed, or that is unsigned, is never served (the old one answers,
/health says `degraded` and why, the log says it, the metrics count it); a service started
before any champion waits, then serves the first; a removed alias keeps the last champion."""

from __future__ import annotations

import logging
import time

from quadra_pipeline.keys import generate
from quadra_pipeline.registry import CHAMPION, ModelRegistry
from quadra_pipeline.serving.cache import RunDir
from quadra_pipeline_tests.registry.test_signing import flip_a_byte, stored_file

from .conftest import FIELD_SIZE, FOLLOW_LIMIT_S, LoopbackLoad, keyring_of, serving

ROW = [0.25] * FIELD_SIZE


def assert_no_failed_request(load: LoopbackLoad) -> None:
    assert load.answers, "the loopback client got no answer at all"
    assert load.failures() == [], load.failures()[:5]


def assert_versions_move_once(load: LoopbackLoad, before: int, after: int) -> None:
    """Every answer came from the old version, then every one from the new: no mix, no gap."""
    versions = load.versions()
    switch = versions.index(after)
    assert set(versions[:switch]) == {before} and set(versions[switch:]) == {after}, versions


def test_a_promotion_is_served_within_10_s_with_no_failed_request(models, signing_keys, tmp_path):
    v1 = models.register()
    models.promote(v1)
    v2 = models.register()
    with serving(models, keyring_of(signing_keys), tmp_path, poll_seconds=2.0) as client:  # the default poll
        client.wait_ready(v1)
        with LoopbackLoad(client, {"inputs": [ROW]}) as load:
            time.sleep(1.0)
            moved = time.monotonic()
            models.promote(v2, reason="passed the gate")
            client.wait_for(lambda: load.first_answer_from(v2, moved) is not None, FOLLOW_LIMIT_S + 5, "an answer from v2")
            time.sleep(0.5)
        first = load.first_answer_from(v2, moved)
        assert first is not None and first < FOLLOW_LIMIT_S, first
        assert_no_failed_request(load)
        assert_versions_move_once(load, v1, v2)
        version = client.get("/version").json()
        assert version["version"] == v2
        assert version["alias_move"]["from_version"] == v1 and version["alias_move"]["to_version"] == v2
        print(f"\npromotion -> first answer of v{v2}: {first:.2f} s; {len(load.answers)} requests, none failed")


def test_a_rollback_is_followed_too(models, signing_keys, tmp_path):
    v1, v2 = models.register(), models.register()
    models.promote(v1)
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(v1)
        models.promote(v2)
        client.wait_ready(v2, timeout=FOLLOW_LIMIT_S)
        with LoopbackLoad(client, {"inputs": [ROW, ROW]}) as load:
            time.sleep(0.5)
            moved = time.monotonic()
            models.promote(v1, reason="rollback")  # quadra model promote 1 --reason rollback
            client.wait_for(lambda: load.first_answer_from(v1, moved) is not None, FOLLOW_LIMIT_S + 5, "an answer from v1")
            time.sleep(0.3)
        first = load.first_answer_from(v1, moved)
        assert first is not None and first < FOLLOW_LIMIT_S
        assert_no_failed_request(load)
        assert_versions_move_once(load, v2, v1)
        assert client.get("/version").json()["alias_move"] == {
            "from_version": v2, "to_version": v1, "seen_at": client.get("/version").json()["alias_move"]["seen_at"]}
        assert models.registry.alias_version(CHAMPION) == v1


def test_a_flipped_byte_in_the_new_champions_checkpoint_is_never_served(models, signing_keys, tmp_path, caplog):
    v1, v2 = models.register(), models.register()
    models.promote(v1)
    flip_a_byte(stored_file(models.registry, v2, "extra_files/checkpoint.pt"))
    caplog.set_level(logging.INFO, logger="quadra_pipeline.serving")
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(v1)
        with LoopbackLoad(client, {"inputs": [ROW]}) as load:
            # `quadra model promote` would refuse it: the alias is moved behind the pipeline's
            # back (the MLflow UI, its REST API), as an attacker or a slip would.
            models.registry.client.set_registered_model_alias(models.name, CHAMPION, str(v2))

            def degraded() -> bool:
                return client.get("/health").json()["status"] == "degraded"
            client.wait_for(degraded, FOLLOW_LIMIT_S, "degraded")
            time.sleep(1.5)  # a few more polls: still refused, never served
        health = client.get("/health")
        assert health.status_code == 200  # still serving: the old version answers
        document = health.json()
        assert document["version"] == v1 and document["alias_version"] == v2
        assert (f"alias 'champion' names version {v2}, which was refused: {models.name} version {v2} does not match "
                f"its signature: extra_files/checkpoint.pt was changed; serving version {v1}") in document["reason"]
        assert_no_failed_request(load)
        assert set(load.versions()) == {v1}
        metrics = client.get("/metrics").text
        assert "quadra_serving_versions_refused_total 1" in metrics and "quadra_serving_degraded 1" in metrics
        refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "REFUSED" in r.getMessage()]
        # Once as the challenger (verified ahead of a promotion), once as it became champion.
        assert refusals and all("extra_files/checkpoint.pt was changed" in m for m in refusals), refusals
        assert any("(alias champion" in m for m in refusals), refusals
        assert not any(p.name.startswith(f"v{v2}-") for p in RunDir(client.service.run_dir.path).versions.iterdir())

        v3 = models.register()  # the next good champion clears it
        models.promote(v3)
        client.wait_ready(v3, timeout=FOLLOW_LIMIT_S)
        assert client.get("/health").json() == {**client.get("/health").json(), "status": "ok", "reason": None}


def test_a_version_signed_by_a_key_outside_the_keyring_or_unsigned_is_never_served(models, signing_keys, tmp_path):
    v1 = models.register()
    models.promote(v1)
    stranger = ModelRegistry(models.registry.tracking_uri, models.registry.artifact_root, model_name=models.name,
                             keys=generate("ec-p256"))
    v2 = models.register(registry=stranger)
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(v1)
        stranger.client.set_registered_model_alias(models.name, CHAMPION, str(v2))
        client.wait_for(lambda: client.get("/health").json()["status"] == "degraded", FOLLOW_LIMIT_S, "degraded")
        reason = client.get("/health").json()["reason"]
        assert f"version {v2} was signed with another key" in reason and "which is not in the model keyring" in reason
        assert client.invoke({"inputs": [ROW]}).headers["X-Quadra-Model-Version"] == str(v1)

        v3 = models.register()
        for key in ("signature_sha256", "signature_key", "signed"):  # as if registered before signing existed
            models.registry.client.delete_model_version_tag(models.name, str(v3), key)
        models.registry.client.set_registered_model_alias(models.name, CHAMPION, str(v3))
        client.wait_for(lambda: f"version {v3} is not signed" in (client.get("/health").json()["reason"] or ""),
                        FOLLOW_LIMIT_S, "the unsigned version refused")
        assert client.invoke({"inputs": [ROW]}).headers["X-Quadra-Model-Version"] == str(v1)


def test_a_service_started_before_any_champion_waits_then_serves_the_first(models, signing_keys, tmp_path, capsys):
    from quadra_pipeline.cli.serve import probe

    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_for(lambda: client.get("/health").json()["status"] == "waiting", 10, "waiting")
        health = client.get("/health")
        assert health.status_code == 503 and "no version holds alias 'champion'" in health.json()["reason"]
        assert client.get("/ping").status_code == 503
        unavailable = client.invoke({"inputs": [ROW]})
        assert unavailable.status_code == 503 and unavailable.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        host, port = client.url.removeprefix("http://").split(":")
        assert probe(host, int(port), or_waiting=True) == 0  # the Compose health check on a new stack
        assert probe(host, int(port), or_waiting=False) == 1
        assert "answered HTTP 503: waiting" in capsys.readouterr().err
        v1 = models.register()
        moved = time.monotonic()
        models.promote(v1)
        client.wait_ready(v1, timeout=FOLLOW_LIMIT_S)
        assert time.monotonic() - moved < FOLLOW_LIMIT_S
        assert client.get("/ping").status_code == 200 and probe(host, int(port), or_waiting=False) == 0


def test_a_removed_alias_keeps_the_last_champion_answering_degraded(models, signing_keys, tmp_path):
    v1 = models.register()
    models.promote(v1)
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(v1)
        models.registry.delete_alias(CHAMPION)
        client.wait_for(lambda: client.get("/health").json()["status"] == "degraded", FOLLOW_LIMIT_S, "degraded")
        assert "no version holds alias 'champion'" in client.get("/health").json()["reason"]
        assert client.invoke({"inputs": [ROW]}).status_code == 200
        models.promote(v1)
        client.wait_for(lambda: client.get("/health").json()["status"] == "ok", FOLLOW_LIMIT_S, "ok again")


def test_a_version_mlflows_own_loader_touched_is_still_served(models, signing_keys, tmp_path):
    """`mlflow.pyfunc.load_model("models:/...")` writes `registered_model_meta` into the version's
    folder of a local artifact store (MLflow 3.17), which no signature covers: the service drops
    it from its copy, which then matches the signature exactly."""
    import mlflow.pyfunc

    from quadra_pipeline_tests.registry.conftest import mlflow_fluent_api

    v1 = models.register()
    models.promote(v1)
    with mlflow_fluent_api(models.registry.tracking_uri):
        mlflow.pyfunc.load_model(f"models:/{models.name}@champion")
    assert stored_file(models.registry, v1, "registered_model_meta").is_file()
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(v1)
        assert client.get("/health").json()["status"] == "ok"


def test_the_challenger_is_verified_ahead_of_its_promotion(models, signing_keys, tmp_path, caplog):
    """`challenger` moves to every version the pipeline registers, before the gate: the follower
    downloads and verifies it then, so its promotion costs a local re-verification and a load."""
    caplog.set_level(logging.INFO, logger="quadra_pipeline.serving")
    v1 = models.register()
    models.promote(v1)
    with serving(models, keyring_of(signing_keys), tmp_path) as client:
        client.wait_ready(v1)
        v2 = models.register()  # challenger -> v2
        client.wait_for(lambda: "quadra_serving_versions_preverified_total 1" in client.get("/metrics").text, 10,
                        "v2 verified ahead")
        assert client.get("/version").json()["version"] == v1  # not served
        models.promote(v2)
        client.wait_ready(v2, timeout=FOLLOW_LIMIT_S)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"verified {models.name} version {v2} (alias challenger) ahead of a promotion" in m for m in messages)
    assert any(f"serving {models.name} version {v2} (alias champion; verified earlier in this process; verified again"
               in m for m in messages), messages
