"""A model-signing key rotated: versions signed before it still verify and can be promoted (the
rollback to a pre-rotation champion) with the keyring; without the retired key they are refused,
naming its key id, and nothing moves. Against a real MLflow store."""

from __future__ import annotations

import pytest

from quadra_pipeline.keys import Keyring, KeyPair, generate
from quadra_pipeline.registry import CHAMPION, ModelRegistry, SignatureError, promote
from quadra_pipeline.registry.names import TAG_SIGNATURE_KEY

from .test_registry import register, store_snapshot

NEW = generate("ec-p256")


def retired(*pairs: KeyPair) -> Keyring:
    return Keyring("ec-p256", [KeyPair(p.public_pem, origin="QUADRA_MODEL_VERIFY_KEYS_FILE=/k/retired.pem") for p in pairs])


@pytest.fixture
def rotated(tracking, registry, engine, trained, model_name, signing_keys):
    """Version 1 signed with the old key and champion; the rotation; version 2 signed with the
    new key and champion. Returns (registry after the rotation, v1, v2)."""
    model, checkpoint = trained
    v1 = register(registry, engine, model, checkpoint).version
    promote(registry, engine, v1, moved_by="cli:test", reason="first champion")
    after = ModelRegistry(tracking.uri, tracking.artifact_root, model_name=model_name, keys=NEW, keyring=retired(signing_keys))
    v2 = register(after, engine, model, checkpoint).version
    promote(after, engine, v2, moved_by="cli:test", reason="signed with the new key")
    return after, v1, v2


def test_versions_from_before_and_after_a_rotation_verify_with_the_keyring(rotated, signing_keys):
    registry, v1, v2 = rotated
    assert registry.version_tags(v1)[TAG_SIGNATURE_KEY] == signing_keys.key_id
    assert registry.version_tags(v2)[TAG_SIGNATURE_KEY] == NEW.key_id
    assert registry.verify_version(v1).version == v1
    assert registry.verify_version(v2).version == v2


def test_a_rollback_to_the_pre_rotation_champion_works(rotated, engine):
    registry, v1, v2 = rotated
    previous = promote(registry, engine, v1, moved_by="cli:test", reason="rollback")
    assert previous == v2 and registry.alias_version(CHAMPION) == v1


def test_without_the_retired_key_a_pre_rotation_version_is_refused_naming_its_key_id(
    rotated, tracking, engine, model_name, signing_keys
):
    _, v1, v2 = rotated
    forgetful = ModelRegistry(tracking.uri, tracking.artifact_root, model_name=model_name, keys=NEW)
    before = store_snapshot(engine, model_name)
    message = (f"{model_name} version {v1} was signed with another key ({signing_keys.key_id}), which is not in the "
               f"model keyring ({NEW.key_id[:12]}...)")
    with pytest.raises(SignatureError) as caught:
        forgetful.verify_version(v1)
    assert str(caught.value) == message
    with pytest.raises(SignatureError, match=signing_keys.key_id):
        promote(forgetful, engine, v1, moved_by="cli:test", reason="rollback without the old key")
    assert forgetful.alias_version(CHAMPION) == v2 and store_snapshot(engine, model_name) == before
    assert forgetful.verify_version(v2).version == v2  # what the new key signed still verifies


def test_a_verify_only_registry_with_the_keyring_promotes_and_cannot_register(rotated, tracking, engine, model_name,
                                                                               signing_keys, trained):
    """A process that promotes holds no private key: the keyring (public keys) is enough."""
    from quadra_pipeline.registry import RegistryError

    _, v1, _ = rotated
    verifier = ModelRegistry(tracking.uri, tracking.artifact_root, model_name=model_name, keyring=retired(NEW, signing_keys))
    promote(verifier, engine, v1, moved_by="cli:test", reason="rollback from a verify-only host")
    assert verifier.alias_version(CHAMPION) == v1
    with pytest.raises(RegistryError, match="no model-signing key is configured .*QUADRA_MODEL_SIGNING_KEY_FILE"):
        register(verifier, engine, *trained)
