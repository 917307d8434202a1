"""A snapshot produced by a child process and read from its stdout as a stream (pg_dump, and
the SQLite snapshot reader): killed, with its whole process group, after a timeout or when
the reader fails; its exit status and stderr turned into one-line errors."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from .errors import BackupError


@dataclass
class Child:
    stdout: IO[bytes]
    stderr: str = ""  # what it wrote on stderr, once it exited successfully


@contextlib.contextmanager
def child_stream(
    argv: list[str], *, env: dict[str, str] | None, what: str, name: str, timeout: float,
    error: type[BackupError] = BackupError, failure: Callable[[int, str], str] | None = None,
) -> Iterator[Child]:
    """Run `argv`; yield its stdout; after the caller's block, read it to the end and wait.
    Raises `error` ("<what>: " + `failure(exit status, stderr)`, by default "<name> failed
    (exit N): <stderr's last line>") when it fails."""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                       start_new_session=True)
        except OSError as exc:
            raise error(f"{what}: cannot run {name}: {exc.strerror or exc}") from None
        killed = threading.Event()

        def kill() -> None:  # the whole process group: a wrapper script's children too
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)

        timer = threading.Timer(timeout, kill)
        timer.start()
        assert process.stdout is not None
        child = Child(process.stdout)
        try:
            yield child
            process.stdout.read()  # to the end, whatever the reader did
            code = process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
            raise
        finally:
            timer.cancel()
            process.stdout.close()
        errors.seek(0)
        text = errors.read().decode("utf-8", "replace")
        if killed.is_set():
            raise error(f"{what}: {name} did not finish within {timeout:g} s (killed)")
        if code != 0:
            raise error(f"{what}: {failure(code, text) if failure else f'{name} failed (exit {code}): {last_line(text)}'}")
        child.stderr = text


def last_line(text: str) -> str:
    """The child's message: its last non-empty stderr line (one line, at most 500 characters)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:500]
