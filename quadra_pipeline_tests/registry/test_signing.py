"""Signed model versions against a real MLflow store: every version is signed as it is
registered; a byte flipped in the artifact store fails verification and refuses promotion."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from quadra_pipeline.keys import KeyPair, generate
from quadra_pipeline.registry import CHAMPION, ModelRegistry, RegistryError, SignatureError, promote
from quadra_pipeline.registry.names import SIGNATURE_ARTIFACT, TAG_SIGNATURE_KEY, TAG_SIGNATURE_SHA256, TAG_SIGNED
from quadra_pipeline.registry.signing import file_sha256

from .test_registry import register, store_snapshot


def stored_file(registry: ModelRegistry, version: int, relative: str) -> Path:
    """The file as the (local) artifact store holds it."""
    location = registry.client.get_model_version_download_uri(registry.model_name, str(version))
    return Path(unquote(urlparse(location).path)) / relative


def flip_a_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_version_is_signed_as_it_is_registered(registry, engine, trained, signing_keys):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    tags = registry.version_tags(registered.version)
    assert tags[TAG_SIGNED] == "at registration"
    assert tags[TAG_SIGNATURE_KEY] == signing_keys.key_id
    signature = stored_file(registry, registered.version, SIGNATURE_ARTIFACT)
    assert tags[TAG_SIGNATURE_SHA256] == file_sha256(signature)  # the artifact, and its digest as a tag
    assert registry.verify_version(registered.version).version == registered.version


def test_a_flipped_checkpoint_byte_fails_verification_and_promotion(registry, engine, trained):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    before = store_snapshot(engine, registry.model_name)
    flip_a_byte(stored_file(registry, registered.version, "extra_files/checkpoint.pt"))

    with pytest.raises(SignatureError) as caught:
        registry.verify_version(registered.version)
    message = str(caught.value)
    assert message == (
        f"{registry.model_name} version {registered.version} does not match its signature: "
        "extra_files/checkpoint.pt was changed"
    )
    with pytest.raises(SignatureError, match=r"version 1 does not match its signature: extra_files/checkpoint.pt was changed"):
        promote(registry, engine, registered.version, moved_by="cli:test", reason="should be refused")
    assert registry.alias_version(CHAMPION) is None
    assert store_snapshot(engine, registry.model_name) == before  # nothing recorded either


def test_an_added_or_replaced_file_fails_too(registry, engine, trained):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    (stored_file(registry, registered.version, "data") / "extra.bin").write_bytes(b"payload")
    with pytest.raises(SignatureError, match="data/extra.bin is not one of the signed files"):
        registry.verify_version(registered.version)


def test_a_version_loaded_through_models_uri_still_verifies_and_promotes(registry, engine, trained, tmp_path):
    """MLflow writes `registered_model_meta` into a local store's version folder when the version
    is loaded through `models:/` (a notebook on the embedded store): not a change of the model."""
    import mlflow

    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    mlflow.set_tracking_uri(registry.client.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{registry.model_name}/{registered.version}")
    assert loaded is not None
    assert stored_file(registry, registered.version, "registered_model_meta").is_file()  # what MLflow wrote
    assert registry.verify_version(registered.version).version == registered.version
    promote(registry, engine, registered.version, moved_by="cli:test", reason="loaded in a notebook first")
    assert registry.alias_version(CHAMPION) == registered.version


def test_a_replaced_signature_or_another_key_is_refused(tracking, registry, engine, trained, model_name):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    other = ModelRegistry(tracking.uri, tracking.artifact_root, model_name=model_name, keys=generate("ec-p256"))
    with pytest.raises(SignatureError, match="signed with another key"):
        other.verify_version(registered.version)

    signature = stored_file(registry, registered.version, SIGNATURE_ARTIFACT)
    signature.write_bytes(signature.read_bytes().replace(b"{", b"{ ", 1))  # still JSON, other bytes
    with pytest.raises(SignatureError, match="is not the signature its tags name"):
        registry.verify_version(registered.version)


def test_an_unsigned_version_is_refused_until_signed(registry, engine, trained):
    """A version registered before signing existed: promotion refuses it; `sign_version` signs
    it (after checking its checkpoint against its tag) and says so in its tags."""
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    stored_file(registry, registered.version, SIGNATURE_ARTIFACT).unlink()
    registry.client.delete_model_version_tag(registry.model_name, str(registered.version), TAG_SIGNATURE_SHA256)
    with pytest.raises(SignatureError, match=r"version 1 is not signed .*quadra model sign 1"):
        promote(registry, engine, registered.version, moved_by="cli:test", reason="unsigned")

    signed = registry.sign_version(registered.version, signed_as="later, by quadra model sign (cli:test)")
    assert signed.tags[TAG_SIGNED] == "later, by quadra model sign (cli:test)"
    promote(registry, engine, registered.version, moved_by="cli:test", reason="signed now")
    assert registry.alias_version(CHAMPION) == registered.version
    with pytest.raises(RegistryError, match="already signed"):
        registry.sign_version(registered.version, signed_as="again")


def test_signing_refuses_a_version_whose_checkpoint_changed(registry, engine, trained):
    model, checkpoint = trained
    registered = register(registry, engine, model, checkpoint)
    stored_file(registry, registered.version, SIGNATURE_ARTIFACT).unlink()
    registry.client.delete_model_version_tag(registry.model_name, str(registered.version), TAG_SIGNATURE_SHA256)
    flip_a_byte(stored_file(registry, registered.version, "extra_files/checkpoint.pt"))
    with pytest.raises(RegistryError, match="does not match its tagged SHA-256; refusing to sign it"):
        registry.sign_version(registered.version, signed_as="later")


def test_without_a_signing_key_nothing_is_registered(tracking, engine, trained, model_name):
    model, checkpoint = trained
    unkeyed = ModelRegistry(tracking.uri, tracking.artifact_root, model_name=model_name)
    with pytest.raises(RegistryError, match="no model-signing key is configured"):
        register(unkeyed, engine, model, checkpoint)
    assert unkeyed.list_versions() == []
    public_only = ModelRegistry(
        tracking.uri, tracking.artifact_root, model_name=model_name, keys=KeyPair(generate("ec-p256").public_pem)
    )
    with pytest.raises(RegistryError, match="no model-signing key is configured"):
        register(public_only, engine, model, checkpoint)
