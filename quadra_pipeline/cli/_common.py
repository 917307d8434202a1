"""What every `quadra` command shares: one-line errors, exit codes, argument types."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """An expected failure: its message is the one line the user sees."""


def _known_errors() -> tuple[type[BaseException], ...]:
    from ..backup.errors import BackupError
    from ..data import DataSourceError
    from ..keys import KeyProblem
    from ..model import CheckpointError
    from ..registry import RegistryError
    from ..settings import SettingsError
    from ..store import StoreError
    from ..training import TrainingError

    return (
        CommandError, BackupError, DataSourceError, CheckpointError, KeyProblem, RegistryError, SettingsError,
        StoreError, TrainingError,
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _field_size(text: str) -> int:
    value = _integer(text)
    if not 2 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 2 and 4096, got {value}")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _model_version(text: str) -> int:
    value = text.strip()
    number = value[1:] if value[:1] in ("v", "V") else value
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"must be a version number such as 3 (or v3), got {text!r}")
    return int(number)


def write_key_pair(kind: str, out: str, *, force: bool, setting: str, verifies: str) -> int:
    """`quadra model|backup keygen`: a new pair, the private key at `out` (mode 600), the public
    key next to it as `.pub`; prints the settings that use them."""
    from ..keys import generate, write_pair

    private, public = Path(out), Path(out).with_suffix(".pub")
    write_pair(generate(kind), private, public, overwrite=force)
    print(f"private key {private} (mode 600: set {setting}_SIGNING_KEY_FILE={private.resolve()})")
    print(f"public key  {public} ({verifies}: {setting}_VERIFY_KEY_FILE={public.resolve()})")
    return EXIT_OK


def print_keyring(report, *, as_json: bool, describe, add_back: str) -> int:
    """`quadra backup|model keys`: each key of the keyring (key id, fingerprint, algorithm, where
    it came from, what it signed), then each key id that signed something the keyring cannot
    check, then what no key signed. `describe(labels)`: what a key signed, in words; `add_back`:
    the setting that brings a missing public key back."""
    import json

    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return EXIT_OK
    if not report.keys:
        print("no keys: the keyring is empty and nothing is signed")
    for use in report.keys:
        if use.origin is None:
            print(f"key {use.key_id}  NOT IN THE KEYRING")
            print(f"  signed       {describe(use.signed)} (these fail verification until its public key is in {add_back})")
            continue
        print(f"key {use.key_id}")
        print(f"  fingerprint  {use.fingerprint}")
        print(f"  algorithm    {use.algorithm}")
        print(f"  from         {use.origin}{' (signs what is written from now on)' if use.signs else ''}")
        print(f"  signed       {describe(use.signed) if use.signed else 'nothing here'}")
    for name, labels in report.other.items():
        print(f"{name}: {describe(labels)}")
    return EXIT_OK
