"""Keyrings: several public keys by key id (the current one and retired ones), from one PEM file or
a folder; every way a keyring can be wrong is one line naming the file."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from quadra_pipeline.keys import Keyring, KeyPair, KeyProblem, fingerprint, generate, read_keyring

NAME = "QUADRA_BACKUP_VERIFY_KEYS_FILE"
OLD, OLDER = generate("ed25519"), generate("ed25519")


def problem(path: Path, algorithm: str = "ed25519") -> str:
    with pytest.raises(KeyProblem) as caught:
        read_keyring(path, algorithm, NAME)
    message = str(caught.value)
    assert "\n" not in message and "PRIVATE KEY" not in message
    return message


def test_one_file_holds_several_public_keys(tmp_path):
    path = tmp_path / "keyring.pem"
    path.write_bytes(OLD.public_pem + b"\n# retired 2026-11\n" + OLDER.public_pem)
    keys = read_keyring(path, "ed25519", NAME)
    assert [k.key_id for k in keys] == [OLD.key_id, OLDER.key_id]
    assert all(not k.can_sign for k in keys)
    assert keys[0].origin == f"{NAME}={path}"


def test_a_folder_holds_one_or_more_keys_per_file_and_dot_files_are_skipped(tmp_path):
    folder = tmp_path / "keyring"
    folder.mkdir()
    (folder / "2025.pub").write_bytes(OLDER.public_pem)
    (folder / "2026.pub").write_bytes(OLD.public_pem)
    (folder / "..data").mkdir()  # what a Kubernetes secret mount holds besides the files
    (folder / ".keep").write_text("")
    keys = read_keyring(folder, "ed25519", NAME)
    assert [k.key_id for k in keys] == [OLDER.key_id, OLD.key_id]
    assert keys[1].origin == f"{NAME}={folder / '2026.pub'}"


def test_the_key_id_is_that_of_the_signers_and_the_fingerprint_is_over_der(tmp_path):
    """The key id a signature names is the SHA-256 of the public key's PEM as this program writes
    it; a PEM with other line endings or comments is the same key with the same id."""
    path = tmp_path / "k.pub"
    path.write_bytes(OLD.public_pem.replace(b"\n", b"\r\n"))
    (key,) = read_keyring(path, "ed25519", NAME)
    assert key.key_id == OLD.key_id
    from cryptography.hazmat.primitives import serialization

    der = serialization.load_pem_public_key(OLD.public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert fingerprint(OLD.public_pem) == "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def test_duplicate_key_ids_in_a_file(tmp_path):
    path = tmp_path / "keyring.pem"
    path.write_bytes(OLD.public_pem + OLDER.public_pem + OLD.public_pem)
    message = problem(path)
    assert message.startswith(f"{NAME}={path}: ") and OLD.key_id in message and "twice" in message


def test_duplicate_key_ids_across_a_folder(tmp_path):
    folder = tmp_path / "keyring"
    folder.mkdir()
    (folder / "a.pub").write_bytes(OLD.public_pem)
    (folder / "b.pub").write_bytes(OLD.public_pem)
    message = problem(folder)
    assert str(folder / "a.pub") in message and str(folder / "b.pub") in message and OLD.key_id in message


def test_a_private_key_where_a_public_one_belongs(tmp_path):
    path = tmp_path / "keyring.pem"
    path.write_bytes(OLD.public_pem + OLDER.private_pem)
    message = problem(path)
    assert message.startswith(f"{NAME}={path}") and "private key" in message and "public keys only" in message


@pytest.mark.parametrize("content", [b"", b"  \n\n"])
def test_an_empty_file(tmp_path, content):
    path = tmp_path / "keyring.pem"
    path.write_bytes(content)
    assert problem(path) == f"{NAME}={path} is empty (a keyring holds PEM public keys)"


def test_an_empty_folder(tmp_path):
    (tmp_path / "keyring").mkdir()
    assert problem(tmp_path / "keyring") == f"{NAME}={tmp_path / 'keyring'} is an empty folder (a keyring holds PEM public keys)"


def test_a_folder_holding_a_file_that_is_no_key(tmp_path):
    folder = tmp_path / "keyring"
    folder.mkdir()
    (folder / "a.pub").write_bytes(OLD.public_pem)
    (folder / "README.txt").write_text("the old keys\n")
    message = problem(folder)
    assert message == f"{NAME}={folder / 'README.txt'} is not a PEM public key (no -----BEGIN line)"


def test_a_folder_holding_a_folder(tmp_path):
    folder = tmp_path / "keyring"
    (folder / "old").mkdir(parents=True)
    assert problem(folder) == f"{NAME}={folder / 'old'} is not a key file (a keyring folder holds only PEM files)"


def test_an_unreadable_file(tmp_path):
    missing = tmp_path / "nowhere.pem"
    assert problem(missing) == f"{NAME}={missing}: cannot read the keyring (No such file or directory)"
    folder = tmp_path / "keyring"
    folder.mkdir()
    (folder / "dangling.pub").symlink_to(tmp_path / "gone.pub")
    assert problem(folder) == f"{NAME}={folder / 'dangling.pub'}: cannot read the keyring (No such file or directory)"


def test_a_key_of_the_wrong_kind_or_a_broken_block(tmp_path):
    path = tmp_path / "keyring.pem"
    path.write_bytes(generate("ec-p256").public_pem)
    assert problem(path) == f"{NAME}={path} (key 1) is not an Ed25519 key"
    path.write_bytes(OLD.public_pem + b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert problem(path).startswith(f"{NAME}={path} (key 2) is not a PEM public key (")


def test_a_keyring_looks_keys_up_by_id_and_merges_the_signing_keys_own():
    signing = generate("ed25519")
    retired = KeyPair(OLD.public_pem, origin=f"{NAME}=/k/old.pub")
    again = KeyPair(signing.public_pem, origin=f"{NAME}=/k/current.pub")
    ring = Keyring("ed25519", [KeyPair(signing.public_pem, signing.private_pem, "QUADRA_BACKUP_SIGNING_KEY"), retired, again])
    assert len(ring) == 2 and ring.key_ids == [signing.key_id, OLD.key_id]
    assert ring.get(OLD.key_id).public_pem == OLD.public_pem and ring.get("0" * 64) is None
    assert ring.get(signing.key_id).origin == f"QUADRA_BACKUP_SIGNING_KEY and {NAME}=/k/current.pub"
    assert not any(k.can_sign for k in ring)  # a keyring verifies; it never holds a private key
    assert signing.key_id[:12] in ring.describe() and OLD.key_id[:12] in ring.describe()
    assert Keyring("ed25519", []).describe() == "no keys"
