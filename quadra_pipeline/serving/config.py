"""What one `quadra serve` runs with, from the settings (and the command line's overrides)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import Environment


class ServingError(Exception):
    """The service cannot start as configured; one line naming the setting."""


@dataclass(frozen=True)
class ServingConfig:
    model: str = "quadra-matrix"
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    poll_seconds: float = 2.0
    max_body_bytes: int = 1 << 20
    max_rows: int = 4096
    cache_dir: Path = Path(".quadra/serving")
    # Secrets as bytes, kept out of repr() (and so out of logs).
    token: bytes | None = field(default=None, repr=False)
    webhook_secret: bytes | None = field(default=None, repr=False)
    production: bool = False
    access_log: bool = False
    #: A version refused (signature, SHA-256, signature of the MLmodel, a failed load) is looked
    #: at again after this many seconds while the alias still names it (a transient failure,
    #: an unreachable registry, is retried at the next poll).
    refused_retry_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "ServingConfig":
        def secret(value: Any) -> bytes | None:
            return value.get_secret_value().encode("utf-8") if value is not None else None

        values = dict(
            model=settings.serving_model,
            alias=settings.serving_alias,
            host=settings.serving_host,
            port=settings.serving_port,
            workers=settings.serving_workers,
            poll_seconds=settings.serving_poll_seconds,
            max_body_bytes=settings.serving_max_body_bytes,
            max_rows=settings.serving_max_rows,
            cache_dir=settings.serving_cache_dir,
            token=secret(settings.serving_token),
            webhook_secret=secret(settings.serving_webhook_secret),
            production=settings.env is Environment.production,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        """Refuse what must not run: production without a token, any address but loopback
        without one (nobody's model answers the network unauthenticated)."""
        if self.token is None:
            if self.production:
                raise ServingError("QUADRA_SERVING_TOKEN (or QUADRA_SERVING_TOKEN_FILE) is not set (required when "
                                   "QUADRA_ENV=production: clients send it as Authorization: Bearer <token>)")
            if not is_loopback(self.host):
                raise ServingError(f"refusing to listen on {self.host} without a token: set QUADRA_SERVING_TOKEN_FILE "
                                   "(or QUADRA_SERVING_TOKEN), or listen on 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
