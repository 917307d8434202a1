"""Signatures of model directories with the OpenSSF `model-signing` library: key-based, offline.

A version's model directory (the MLflow model files and the checkpoint) is hashed file by file
(SHA-256) and the manifest signed with an ECDSA P-256 private key, into a Sigstore bundle
(`signature/model.sig` inside the directory; the `signature/` folder itself is left out of the
signed set, and that exclusion is part of what is signed). Verifying needs only the public key
and no network (no Sigstore service). A mismatch names the file that differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..keys import KeyPair
from .errors import RegistryError
from .names import SIGNATURE_ARTIFACT, SIGNATURE_DIR


class SignatureError(RegistryError):
    """A model directory does not match its signature (or has none); one line naming the file."""


@contextlib.contextmanager
def _key_file(pem: bytes) -> Iterator[Path]:
    """`model-signing` reads keys from files: a private temporary copy for the call."""
    with tempfile.TemporaryDirectory(prefix="quadra-key-") as tmp:
        path = Path(tmp) / "key.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        yield path


#: What MLflow itself writes into a stored version's folder when the version is loaded through
#: `models:/` from a local artifact store (`mlflow.pyfunc.load_model("models:/quadra-matrix@champion")`
#: in a notebook on the embedded store): its name and version, no code. Left out of what is
#: hashed, or a load would make the version fail verification and promotion. Verifying with it
#: left out holds for signatures made before it was (tested).
MLFLOW_ADDED = "registered_model_meta"


def _hashing():
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_DIR, MLFLOW_ADDED], ignore_git_paths=False)


def sign_directory(model_dir: Path, keys: KeyPair) -> Path:
    """Sign every file of `model_dir` (but `signature/`); returns the signature's path."""
    from model_signing import signing

    if keys.private_pem is None:
        raise SignatureError(f"cannot sign {model_dir}: only a public key is configured ({keys.origin})")
    signature = Path(model_dir) / SIGNATURE_ARTIFACT
    signature.parent.mkdir(parents=True, exist_ok=True)
    with _key_file(keys.private_pem) as key:
        signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(_hashing()).sign(model_dir, signature)
    return signature


def verify_directory(model_dir: Path, keys: KeyPair, what: str) -> None:
    """`SignatureError` (naming `what` and the file) unless `model_dir` matches its signature."""
    from model_signing import verifying

    signature = Path(model_dir) / SIGNATURE_ARTIFACT
    if not signature.is_file():
        raise SignatureError(f"{what} has no signature ({SIGNATURE_ARTIFACT} is missing)")
    with _key_file(keys.public_pem) as key:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(_hashing()).verify(
                model_dir, signature
            )
        except Exception as exc:  # noqa: BLE001 - ValueError, protobuf/JSON errors, cryptography's
            raise SignatureError(f"{what} does not match its signature: {_describe(exc, Path(model_dir), signature)}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(exc: BaseException, model_dir: Path, signature: Path) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("Signature mismatch:"):
        # The envelope verified (the library checks it first), so the signed file list is
        # authentic: say which files differ from it.
        return _file_differences(model_dir, signature) or "the files differ from the signed ones"
    if "Key mismatch" in text:
        return "it was signed with another key"
    return f"the signature does not verify ({text[:160]})"


def _file_differences(model_dir: Path, signature: Path) -> str:
    import base64
    import json

    try:
        bundle = json.loads(signature.read_text())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    present = {
        path.relative_to(model_dir).as_posix(): path
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.relative_to(model_dir).parts[0] not in (SIGNATURE_DIR, MLFLOW_ADDED)
    }
    changed = [name for name in sorted(set(signed) & set(present)) if file_sha256(present[name]) != signed[name]]
    added = sorted(set(present) - set(signed))
    missing = sorted(set(signed) - set(present))
    parts = [f"{name} was changed" for name in changed]
    parts += [f"{name} is not one of the signed files" for name in added]
    parts += [f"{name} is missing" for name in missing]
    return "; ".join(parts)
