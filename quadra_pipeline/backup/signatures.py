"""Signatures of backup metadata: Ed25519 (format 3: the private key signs, the public key alone
verifies, so an off-site verifier cannot forge) and HMAC-SHA256 (format 2, kept so old backups
still verify under `QUADRA_SECRET_KEY`).

A signature covers the canonical JSON of a document without its `signature` field; it is stored
as `{"algorithm": "ed25519", "key": <SHA-256 of the public key's PEM>, "value": <base64>}`.
`key` (the key id) picks the public key from the keyring, so backups signed before a key
rotation verify with the retired key and new ones with the new key; a key id the keyring lacks
is refused, named. `SignaturePolicy` says what a repository accepts: with a verification key
configured (in any environment) or signatures required (production), an unsigned or wrongly
signed document is refused; with neither, unsigned documents pass and signed ones cannot be
checked (and say so).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from ..keys import Keyring, KeyPair, is_key_id
from .errors import BackupError
from .names import canonical

ALGORITHM = "ed25519"


@dataclass(frozen=True)
class SignaturePolicy:
    keys: KeyPair | None = None  # Ed25519: the configured pair; its private key signs new documents
    hmac_key: bytes | None = None  # format 2's HMAC key (QUADRA_SECRET_KEY)
    required: bool = False  # production: every document must be signed
    keyring: Keyring | None = None  # public keys that verify: the pair's own (always) and retired ones

    def __post_init__(self) -> None:
        # The signing key's own public key is always in the keyring, first.
        object.__setattr__(self, "keyring", Keyring(ALGORITHM, [*([self.keys] if self.keys else []), *(self.keyring or [])]))

    @property
    def verifiers(self) -> Keyring:
        assert self.keyring is not None
        return self.keyring

    @property
    def can_sign(self) -> bool:
        return self.keys is not None and self.keys.can_sign

    def check_can_write(self) -> None:
        """Refuse (BackupError) to write what this policy's own verification would refuse."""
        if self.can_sign:
            return
        if len(self.verifiers):
            raise BackupError("only backup verification keys are configured (QUADRA_BACKUP_VERIFY_KEY, "
                              "QUADRA_BACKUP_VERIFY_KEYS_FILE): this host verifies backups and cannot write them "
                              "(QUADRA_BACKUP_SIGNING_KEY_FILE or QUADRA_BACKUP_SIGNING_KEY signs)")
        if self.required:
            raise BackupError("signed backups are required (QUADRA_ENV=production) but no backup signing key is "
                              "configured: set QUADRA_BACKUP_SIGNING_KEY_FILE (or QUADRA_BACKUP_SIGNING_KEY) where "
                              "backups are created or pruned; quadra backup keygen makes a pair")

    def sign(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with its signature (unchanged when no signing key is configured)."""
        self.check_can_write()
        if not self.can_sign:
            return dict(document)
        from cryptography.hazmat.primitives import serialization

        assert self.keys is not None and self.keys.private_pem is not None
        private = serialization.load_pem_private_key(self.keys.private_pem, password=None)
        payload = canonical({k: v for k, v in document.items() if k != "signature"})
        value = base64.b64encode(private.sign(payload)).decode("ascii")
        return {**document, "signature": {"algorithm": ALGORITHM, "key": self.keys.key_id, "value": value}}

    def problem(self, document: dict[str, Any], what: str) -> str | None:
        """Why `document`'s signature is not acceptable (None: it is)."""
        signature = document.get("signature")
        must = self.required or len(self.verifiers) > 0
        if signature is None:
            return f"{what} is not signed, and {'this repository requires' if self.required else 'a verification key is configured, so it requires'} signed backups" if must else None
        if not isinstance(signature, dict) or set(signature) != {"algorithm", "key", "value"}:
            return f"{what}: the signature is malformed"
        if signature["algorithm"] != ALGORITHM:
            return f"{what}: signature algorithm {signature['algorithm']!r} is not {ALGORITHM}"
        if not len(self.verifiers):
            if self.required:
                return (f"{what}: cannot check its signature: no backup verification key is configured "
                        "(QUADRA_BACKUP_VERIFY_KEY_FILE, QUADRA_BACKUP_VERIFY_KEYS_FILE or the signing key)")
            return None  # nothing to check it with (no key configured); says so in verify's report
        key = self.verifiers.get(signature["key"])
        if key is None:
            known = ", ".join(f"{k[:12]}..." for k in self.verifiers.key_ids)
            return f"{what} is signed with another key ({key_label(signature['key'])}), which is not in the backup keyring ({known})"
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization

        public = serialization.load_pem_public_key(key.public_pem)
        try:
            value = base64.b64decode(signature["value"], validate=True)
            public.verify(value, canonical({k: v for k, v in document.items() if k != "signature"}))
        except (InvalidSignature, ValueError, TypeError):
            return f"{what}: signature does not match (altered, or forged without the signing key)"
        return None

    # Format 2 ------------------------------------------------------------------------------

    def hmac_problem(self, signed_bytes: bytes, signature: str | None, what: str) -> str | None:
        if signature is None:
            if self.required or self.hmac_key is not None:
                return f"{what} is not signed, and {'this repository requires' if self.required else 'QUADRA_SECRET_KEY is set, so it requires'} signed backups"
            return None
        if self.hmac_key is None and self.required:
            return (f"{what}: cannot check its signature: QUADRA_SECRET_KEY (or QUADRA_SECRET_KEY_FILE) is not set "
                    "(format-2 backups are signed with it; required when QUADRA_ENV=production to verify them)")
        if self.hmac_key is not None and not hmac.compare_digest(hmac_hex(self.hmac_key, signed_bytes), signature):
            return f"{what}: signature does not match (manifest altered, or signed with another key)"
        return None


def key_label(value: object) -> str:
    """A key id as a document names it, safe to print (a forged document may hold anything)."""
    return value if is_key_id(value) else repr(str(value)[:80])  # type: ignore[return-value]


def signer(document: object) -> str | None:
    """The key id a format-3 document claims to be signed with (None: unsigned or malformed);
    not verified: for listings (`quadra backup keys`)."""
    signature = document.get("signature") if isinstance(document, dict) else None
    key = signature.get("key") if isinstance(signature, dict) else None
    return key if isinstance(key, str) else None


def hmac_hex(key: bytes, payload: bytes) -> str:
    if not key:
        raise BackupError("the signing key is empty")
    return hmac.new(key, payload, hashlib.sha256).hexdigest()
