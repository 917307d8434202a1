"""Production settings for tests: the secrets production requires, made once per test process."""

from __future__ import annotations

import functools

from quadra_pipeline.keys import generate


@functools.cache
def signing_keys() -> dict[str, str]:
    """The signing keys production requires, as environment variables (PEM text)."""
    return {
        "QUADRA_MODEL_SIGNING_KEY": generate("ec-p256").private_pem.decode(),
        "QUADRA_BACKUP_SIGNING_KEY": generate("ed25519").private_pem.decode(),
    }


def production_environ(secret_key: str) -> dict[str, str]:
    """QUADRA_ENV=production with every secret it requires."""
    return {"QUADRA_ENV": "production", "QUADRA_SECRET_KEY": secret_key, **signing_keys()}


def set_production(monkeypatch, secret_key: str) -> None:
    for name, value in production_environ(secret_key).items():
        monkeypatch.setenv(name, value)
