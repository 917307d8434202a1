"""Signing keys from settings: a PEM in an environment variable or in a file, never in a repository.

Two key pairs sign two things: model versions (`model-signing`, ECDSA P-256: the curves its
key-based signer supports) and backup manifests (Ed25519). Each comes from settings: the
private key (`QUADRA_<WHAT>_SIGNING_KEY`, PEM text, or `QUADRA_<WHAT>_SIGNING_KEY_FILE`) signs,
the public key (`QUADRA_<WHAT>_VERIFY_KEY[_FILE]`, or derived from the private key) verifies,
so a verifier that holds only the public key cannot forge. Production requires the signing keys
(`settings.py`). Outside production a data home without a configured model key gets its own
pair under `$QUADRA_HOME/keys/` (mode 600, made once), so development signs versions as
production does (promotion requires a signature); backups never contain it (`*.pem` is excluded
from every backed-up tree). Backups are unsigned outside production unless a key is configured:
a key made on one machine would make its backups unverifiable on the next one.

`quadra model keygen` and `quadra backup keygen` write new pairs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .settings import Settings

Algorithm = Literal["ec-p256", "ed25519"]


class KeyProblem(ValueError):
    """A key cannot be read or is of the wrong kind; one line naming the setting."""


@dataclass(frozen=True)
class KeyPair:
    """PEM bytes of a private key (None: verify only) and of its public key."""

    public_pem: bytes
    private_pem: bytes | None = None
    origin: str = ""  # where it came from, for messages ("QUADRA_MODEL_SIGNING_KEY_FILE=/run/secrets/...")

    @property
    def key_id(self) -> str:
        """SHA-256 of the public key's PEM: names the key in tags and manifests."""
        return hashlib.sha256(self.public_pem).hexdigest()

    @property
    def can_sign(self) -> bool:
        return self.private_pem is not None


def generate(algorithm: Algorithm) -> KeyPair:
    """A new key pair (PEM: PKCS#8 private key, SubjectPublicKeyInfo public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    private = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ec-p256" else ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(public_pem, private_pem, origin="generated")


def write_pair(pair: KeyPair, private_path: Path, public_path: Path, *, overwrite: bool = False) -> None:
    """Write both files (private key mode 600, created exclusively unless `overwrite`)."""
    if pair.private_pem is None:
        raise KeyProblem("only a public key: nothing to write as the private key")
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise KeyProblem(f"{path} already exists; refusing to overwrite a key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pair.private_pem)
    public_path.write_bytes(pair.public_pem)


def load_pair(
    algorithm: Algorithm,
    *,
    private_text: str | None,
    private_file: Path | None,
    public_text: str | None,
    public_file: Path | None,
    names: tuple[str, str],
) -> KeyPair | None:
    """The pair the settings name (None if none is set). `names`: the two variables' stems,
    e.g. ("QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY"), for messages."""
    private_pem = _pem(private_text, private_file, names[0])
    public_pem = _pem(public_text, public_file, names[1])
    if private_pem is None and public_pem is None:
        return None
    derived = _public_of(private_pem, algorithm, names[0]) if private_pem is not None else None
    if public_pem is not None:
        _check_public(public_pem, algorithm, names[1])
        if derived is not None and derived != _normal_public(public_pem):
            raise KeyProblem(f"{names[1]} is not the public key of {names[0]}")
    origin = names[0] if private_pem is not None else names[1]
    return KeyPair(derived or _normal_public(public_pem), private_pem, origin=origin)


def development_pair(home: Path, stem: str, algorithm: Algorithm) -> KeyPair:
    """The data home's own pair (`<home>/keys/<stem>.pem` and `.pub`), made on first use."""
    private_path, public_path = home / "keys" / f"{stem}.pem", home / "keys" / f"{stem}.pub"
    if not private_path.exists():
        try:
            write_pair(generate(algorithm), private_path, public_path)
        except KeyProblem:
            pass  # another process made it first
    private_pem = private_path.read_bytes()
    return KeyPair(_public_of(private_pem, algorithm, str(private_path)), private_pem, origin=str(private_path))


def model_signing_keys(settings: Settings) -> KeyPair:
    """The model-signing pair of these settings (configured, or the data home's own)."""
    pair = load_pair(
        "ec-p256",
        private_text=_secret(settings.model_signing_key),
        private_file=settings.model_signing_key_file,
        public_text=settings.model_verify_key,
        public_file=settings.model_verify_key_file,
        names=("QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY"),
    )
    return pair or development_pair(settings.home, "model-signing", "ec-p256")


def backup_signing_keys(settings: Settings) -> KeyPair | None:
    """The backup-signing pair (Ed25519) of these settings; None when none is configured (backups
    are then unsigned, which production does not allow)."""
    return load_pair(
        "ed25519",
        private_text=_secret(settings.backup_signing_key),
        private_file=settings.backup_signing_key_file,
        public_text=settings.backup_verify_key,
        public_file=settings.backup_verify_key_file,
        names=("QUADRA_BACKUP_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY"),
    )


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None and hasattr(value, "get_secret_value") else value  # type: ignore[return-value]


def _pem(text: str | None, file: Path | None, name: str) -> bytes | None:
    if text and file:
        raise KeyProblem(f"{name} and {name}_FILE are both set; set one")
    if file:
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise KeyProblem(f"{name}_FILE={file}: cannot read the key ({exc.strerror or exc})") from None
        where = f"{name}_FILE={file}"
    elif text:
        data = text.replace("\\n", "\n").encode("ascii", "replace")
        where = name
    else:
        return None
    if b"-----BEGIN" not in data:
        raise KeyProblem(f"{where} is not a PEM key (no -----BEGIN line)")
    return data


def _load_private(pem: bytes, name: str):
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyProblem(f"{name} is not an unencrypted PEM private key ({str(exc).splitlines()[0][:120]})") from None


def _public_of(private_pem: bytes, algorithm: Algorithm, name: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = _load_private(private_pem, name)
    _check_kind(key, algorithm, name)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_public(public_pem: bytes, algorithm: Algorithm, name: str) -> None:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise KeyProblem(f"{name} is not a PEM public key ({str(exc).splitlines()[0][:120]})") from None
    _check_kind(key, algorithm, name)


def _normal_public(public_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_pem)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_kind(key: object, algorithm: Algorithm, name: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if algorithm == "ed25519":
        ok = isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey))
        wanted = "an Ed25519 key"
    else:
        ok = isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.name == "secp256r1"
        wanted = "an ECDSA P-256 key"
    if not ok:
        raise KeyProblem(f"{name} is not {wanted}")
