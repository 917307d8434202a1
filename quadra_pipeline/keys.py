"""Signing keys from settings: a PEM in an environment variable or in a file, never in a repository.

Two key pairs sign two things: model versions (`model-signing`, ECDSA P-256: the curves its
key-based signer supports) and backup manifests (Ed25519). Each comes from settings: the
private key (`QUADRA_<WHAT>_SIGNING_KEY`, PEM text, or `QUADRA_<WHAT>_SIGNING_KEY_FILE`) signs,
the public key (`QUADRA_<WHAT>_VERIFY_KEY[_FILE]`, or derived from the private key) verifies,
so a verifier that holds only the public key cannot forge. In production each signing key is
required by the operation that signs (registering a version, creating a backup), not to load the
settings: a process that never signs holds no private key. Outside production a data home
without a configured model key gets its own pair under `$QUADRA_HOME/keys/` (mode 600, made
once), so development signs versions as production does (promotion requires a signature);
backups never contain it (`*.pem` is excluded from every backed-up tree). Backups are unsigned
outside production unless a key is configured: a key made on one machine would make its backups
unverifiable on the next one.

Keys rotate, so verifying takes a `Keyring`: the public keys that may have signed, by key id
(the signing key's own, and retired ones from `QUADRA_<WHAT>_VERIFY_KEYS_FILE`: one PEM file
holding several public keys, or a folder of them). A signature names its key id (a backup's
`signature.key`, a version's `signature_key` tag), and the keyring picks that key; a key id the
keyring lacks fails, named, so retiring a key is a decision someone sees.

`quadra model keygen` and `quadra backup keygen` write new pairs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .settings import Settings

Algorithm = Literal["ec-p256", "ed25519"]
ALGORITHM_NAMES = {"ec-p256": "ECDSA P-256", "ed25519": "Ed25519"}


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


def fingerprint(public_pem: bytes) -> str:
    """`SHA256:<base64>` of the public key's DER (SubjectPublicKeyInfo), the form `ssh-keygen -l`
    shows; by hand: `openssl pkey -pubin -in KEY.pub -outform DER | openssl dgst -sha256 -binary
    | base64 | tr -d =`. (The key id is the SHA-256 of the PEM: what signatures name.)"""
    from cryptography.hazmat.primitives import serialization

    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=")


class Keyring:
    """Public keys that verify, by key id: the signing key's own first, then retired ones.

    A keyring never signs (private halves are dropped), so it can be handed to anything that
    only checks. The same key from two places (the signing key, and the keyring file that lists
    it as well) is one entry whose origin names both."""

    def __init__(self, algorithm: Algorithm, keys: Iterable[KeyPair]) -> None:
        self.algorithm = algorithm
        self._keys: dict[str, KeyPair] = {}
        for key in keys:
            known = self._keys.get(key.key_id)
            origin = f"{known.origin} and {key.origin}" if known is not None else key.origin
            self._keys[key.key_id] = KeyPair(key.public_pem, None, origin=origin)

    @classmethod
    def of(cls, algorithm: Algorithm, *pairs: KeyPair | None) -> Keyring:
        return cls(algorithm, [p for p in pairs if p is not None])

    def get(self, key_id: object) -> KeyPair | None:
        return self._keys.get(key_id) if isinstance(key_id, str) else None

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def __iter__(self) -> Iterator[KeyPair]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return self.get(key_id) is not None

    def describe(self) -> str:
        """The keys, short, for messages: "2 keys: 14cd02c52ee9... (QUADRA_..._FILE=...), ..."."""
        if not self._keys:
            return "no keys"
        keys = ", ".join(f"{k.key_id[:12]}... ({k.origin})" for k in self)
        return f"{len(self)} key{'s' if len(self) != 1 else ''}: {keys}"

    def __repr__(self) -> str:
        return f"Keyring({self.algorithm!r}, {self.describe()})"


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
MAX_KEYRING_BYTES = 1 << 20


def read_keyring(path: Path, algorithm: Algorithm, name: str) -> list[KeyPair]:
    """The public keys of a keyring: one PEM file holding one or more public keys, or a folder of
    such files (names starting with "." are skipped: a Kubernetes secret mount's `..data`).
    `KeyProblem`, one line naming the file: unreadable, empty, not PEM, a private key, a key of
    another algorithm, the same key id twice."""
    path = Path(path)
    if path.is_dir():
        try:
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        except OSError as exc:
            raise KeyProblem(f"{name}={path}: cannot read the keyring ({exc.strerror or exc})") from None
        if not names:
            raise KeyProblem(f"{name}={path} is an empty folder (a keyring holds PEM public keys)")
        files = [path / n for n in names]
    else:
        files = [path]
    keys: list[KeyPair] = []
    seen: dict[str, str] = {}
    for file in files:
        where = f"{name}={file}"
        if file.is_dir():
            raise KeyProblem(f"{where} is not a key file (a keyring folder holds only PEM files)")
        for key in _keyring_file(file, algorithm, where):
            if key.key_id in seen:
                at = "twice in this file" if seen[key.key_id] == str(file) else f"twice: in {seen[key.key_id]} and in {file}"
                raise KeyProblem(f"{name}={path}: key {key.key_id} is in the keyring {at}")
            seen[key.key_id] = str(file)
            keys.append(key)
    return keys


def _keyring_file(file: Path, algorithm: Algorithm, where: str) -> list[KeyPair]:
    from cryptography.hazmat.primitives import serialization

    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_KEYRING_BYTES + 1)
    except OSError as exc:
        raise KeyProblem(f"{where}: cannot read the keyring ({exc.strerror or exc})") from None
    if len(data) > MAX_KEYRING_BYTES:
        raise KeyProblem(f"{where} is larger than {MAX_KEYRING_BYTES} bytes: not a keyring")
    if not data.strip():
        raise KeyProblem(f"{where} is empty (a keyring holds PEM public keys)")
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise KeyProblem(f"{where} is not a PEM public key (no -----BEGIN line)")
    keys = []
    for number, block in enumerate(blocks, 1):
        label = f"{where} (key {number})"
        if b"PRIVATE" in block.group(1):
            raise KeyProblem(f"{label} is a private key: a keyring holds public keys only (keep private keys out of it)")
        pem = block.group(0).replace(b"\r\n", b"\n") + b"\n"
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise KeyProblem(f"{label} is not a PEM public key ({str(exc).splitlines()[0][:120]})") from None
        _check_kind(key, algorithm, label)
        public = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        keys.append(KeyPair(public, None, origin=where))
    return keys


@dataclass
class KeyUse:
    """A key and what it signed, for `quadra backup keys` / `quadra model keys`. `origin` None: the
    key is not in the keyring (what it signed does not verify)."""

    key_id: str
    signed: list[str] = field(default_factory=list)
    origin: str | None = None
    fingerprint: str | None = None
    algorithm: str | None = None
    signs: bool = False  # the configured signing key (new backups / versions are signed with it)

    def as_dict(self) -> dict[str, object]:
        return {"key_id": self.key_id, "fingerprint": self.fingerprint, "algorithm": self.algorithm,
                "origin": self.origin, "in_keyring": self.origin is not None, "signing": self.signs,
                "signed": list(self.signed)}


@dataclass
class KeyringReport:
    """`keys`: the keyring's keys, then the key ids not in it, each with what it signed; `other`:
    what no key id signed ("unsigned", "format 2 (HMAC ...)", ...) -> what."""

    keys: list[KeyUse]
    other: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"keys": [k.as_dict() for k in self.keys], "other": {k: list(v) for k, v in self.other.items()}}


def keyring_report(keyring: Keyring, signer: KeyPair | None, signed_by: Mapping[str, list[str]]) -> KeyringReport:
    """Each keyring key with what it signed, then each key id that signed something but is not in
    the keyring (named by its id: what it signed fails until its public key is added back), then
    what no key id signed. `signed_by`: key id (or a name for the unsigned) -> what it signed."""
    uses = [
        KeyUse(k.key_id, list(signed_by.get(k.key_id, [])), k.origin, fingerprint(k.public_pem),
               ALGORITHM_NAMES[keyring.algorithm], signer is not None and signer.can_sign and signer.key_id == k.key_id)
        for k in keyring
    ]
    uses += [KeyUse(key, list(items)) for key, items in signed_by.items() if is_key_id(key) and key not in keyring]
    other = {key: list(items) for key, items in signed_by.items() if not is_key_id(key)}
    return KeyringReport(uses, other)


def is_key_id(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


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
    origins: tuple[str | None, str | None] = (None, None),
) -> KeyPair | None:
    """The pair the settings name (None if none is set). `names`: the two variables' stems,
    e.g. ("QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY"), for messages; `origins`: where
    each text came from when the settings read it from a file ("QUADRA_..._FILE=/run/secrets/x")."""
    private_pem, private_where = _pem(private_text, private_file, names[0], origins[0])
    public_pem, public_where = _pem(public_text, public_file, names[1], origins[1])
    if private_pem is None and public_pem is None:
        return None
    derived = _public_of(private_pem, algorithm, private_where) if private_pem is not None else None
    if public_pem is not None:
        _check_public(public_pem, algorithm, public_where)
        if derived is not None and derived != _normal_public(public_pem):
            raise KeyProblem(f"{names[1]} is not the public key of {names[0]}")
    origin = private_where if private_pem is not None else public_where
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


def model_signing_keys(settings: Settings) -> KeyPair | None:
    """The model-signing pair of these settings: the configured one; outside production, the data
    home's own when none is configured; in production with none, None (registering and signing
    then refuse, naming the variable; loading the settings does not)."""
    pair = load_pair(
        "ec-p256",
        private_text=_secret(settings.model_signing_key),
        private_file=None,
        public_text=settings.model_verify_key,
        public_file=None,
        names=("QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY"),
        origins=(_origin("QUADRA_MODEL_SIGNING_KEY", settings.model_signing_key_file),
                 _origin("QUADRA_MODEL_VERIFY_KEY", settings.model_verify_key_file)),
    )
    if pair is not None or _production(settings):
        return pair
    return development_pair(settings.home, "model-signing", "ec-p256")


def backup_signing_keys(settings: Settings) -> KeyPair | None:
    """The backup-signing pair (Ed25519) of these settings; None when none is configured (backups
    are then unsigned, which production refuses when a backup is created)."""
    return load_pair(
        "ed25519",
        private_text=_secret(settings.backup_signing_key),
        private_file=None,
        public_text=settings.backup_verify_key,
        public_file=None,
        names=("QUADRA_BACKUP_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY"),
        origins=(_origin("QUADRA_BACKUP_SIGNING_KEY", settings.backup_signing_key_file),
                 _origin("QUADRA_BACKUP_VERIFY_KEY", settings.backup_verify_key_file)),
    )


def model_keyring(settings: Settings) -> Keyring:
    """Every public key that verifies model versions: the signing pair's (or the verify key) and
    those of QUADRA_MODEL_VERIFY_KEYS_FILE (retired keys, for versions signed before a rotation)."""
    return _keyring("ec-p256", model_signing_keys(settings), settings.model_verify_keys_file, "QUADRA_MODEL_VERIFY_KEYS_FILE")


def backup_keyring(settings: Settings) -> Keyring:
    """Every public key that verifies backups: the signing pair's (or the verify key) and those of
    QUADRA_BACKUP_VERIFY_KEYS_FILE (retired keys, for backups and records signed before a rotation)."""
    return _keyring("ed25519", backup_signing_keys(settings), settings.backup_verify_keys_file, "QUADRA_BACKUP_VERIFY_KEYS_FILE")


def _keyring(algorithm: Algorithm, pair: KeyPair | None, path: Path | None, name: str) -> Keyring:
    retired = read_keyring(path, algorithm, name) if path is not None else []
    return Keyring(algorithm, ([pair] if pair is not None else []) + retired)


def _production(settings: Settings) -> bool:
    return getattr(settings.env, "value", settings.env) == "production"


def _origin(name: str, file: Path | None) -> str | None:
    return f"{name}_FILE={file}" if file is not None else None


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None and hasattr(value, "get_secret_value") else value  # type: ignore[return-value]


def _pem(text: str | None, file: Path | None, name: str, origin: str | None = None) -> tuple[bytes | None, str]:
    """(PEM bytes or None, where they came from, for messages)."""
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
        where = origin or name
    else:
        return None, name
    if b"-----BEGIN" not in data:
        raise KeyProblem(f"{where} is not a PEM key (no -----BEGIN line)")
    return data, where


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
