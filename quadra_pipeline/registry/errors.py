"""Errors raised by the registry. Every message is one line and never shows a password."""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host (also inside longer messages).
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*):[^@/\s'\"]*@")
# Query-string secrets some URIs carry (?password=..., &token=...).
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|token|secret|access_token|api_key)=)[^&\s'\"]*", re.I)


def mask_secrets(text: str) -> str:
    """`text` with passwords in URIs (and secret query parameters) replaced by `***`."""
    text = _CREDENTIALS.sub(lambda m: f"{m.group('head')}:***@", str(text))
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}***", text)


def one_line(text: str, limit: int = 300) -> str:
    """The first non-blank line of `text`, masked and shortened to `limit` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = mask_secrets(lines[0] if lines else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RegistryError(Exception):
    """The MLflow registry cannot do what was asked; the message is one line, secrets masked."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, limit=500))


class RegistryUnavailableError(RegistryError):
    """The tracking server (or store) cannot be reached, after bounded retries."""


class UnknownModelVersionError(RegistryError, LookupError):
    """No such version of the registered model: nothing was changed."""


__all__ = [
    "RegistryError",
    "RegistryUnavailableError",
    "UnknownModelVersionError",
    "mask_secrets",
    "one_line",
]
