"""Local files as a text source: ``open_source("file", path=..., text_field="text")``.

Formats, picked from each file's extension:

- ``.txt``: one row per line. The line ending (``\\n`` or ``\\r\\n``) is removed, nothing else;
  blank lines are rows too (``iter_batches`` filters them like wikitext's blank rows).
- ``.jsonl``: one JSON object per line; the row is the object's ``text_field`` (default
  ``"text"``), which must be a string. Lines holding only whitespace are skipped and are not
  rows (line numbers in messages are still the physical line numbers).
- ``.parquet``: the ``text_field`` column (default ``"text"``), which must be a string column
  without nulls. Read row group by row group, batch by batch (never the whole file at once);
  ``rows(start)`` skips whole row groups from the file's metadata.

``path`` may be one file, a directory (its ``.txt``/``.jsonl``/``.parquet`` files, not
recursive, hidden files ignored, in name order), a glob (``"shards/*.parquet"``,
``"data/**/*.jsonl"``; matching files in name order, other extensions ignored) or a list of
any of these. All files are read one after the other as one stream of rows.

Every problem raises :class:`~quadra_pipeline.data.sources.DataSourceError` with one message
that names the file (and line or row): a missing path or an unsupported extension when the
source is opened, like a parquet file without the column; bad JSON, a missing field, a
non-string text or invalid UTF-8 when the row is read.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sources import DataSourceError, check_start

__all__ = ["FORMATS", "FileSource"]

#: Extension -> format name.
FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_FORMAT_HELP = ".txt (one row per line), .jsonl (one JSON object per line) or .parquet"
_PARQUET_BATCH_ROWS = 4096
_HASH_CHUNK = 1 << 20
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class _File:
    path: Path
    format: str


class FileSource:
    """Rows from local ``.txt``, ``.jsonl`` and ``.parquet`` files (see the module doc)."""

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        text_field: str = "text",
        **unknown: Any,
    ) -> None:
        if unknown:
            from .sources import check_options

            check_options("file", unknown, ("path", "text_field"))
        if path is None:
            raise DataSourceError("file source: the 'path' option is required")
        if not isinstance(text_field, str) or not text_field:
            raise DataSourceError(
                f"file source: text_field must be a non-empty string, got {text_field!r}"
            )
        if isinstance(path, (str, os.PathLike)):
            given: list[str | os.PathLike[str]] = [path]
        else:
            given = list(path)
            if not given:
                raise DataSourceError("file source: the 'path' list is empty")
        self.paths = [os.fspath(p) for p in given]
        self.text_field = text_field
        self.files: list[_File] = []
        for p in self.paths:
            self.files.extend(_expand(p))
        shown = self.paths[0]
        if len(self.paths) > 1:
            shown += f" (+{len(self.paths) - 1} more)"
        self.label = f"file source {shown}"
        for f in self.files:
            if f.format == "parquet":
                _check_parquet_column(f.path, text_field)

    # TextSource ------------------------------------------------------------------------------

    def rows(self, start: int = 0) -> Iterator[str]:
        return self._rows(check_start(start))

    def _rows(self, start: int) -> Iterator[str]:
        remaining = start
        for f in self.files:
            if f.format == "txt":
                total = yield from _txt_rows(f.path, remaining)
            elif f.format == "jsonl":
                total = yield from _jsonl_rows(f.path, remaining, self.text_field)
            else:
                total = yield from _parquet_rows(f.path, remaining, self.text_field)
            remaining = max(0, remaining - total)

    def describe(self) -> dict:
        files = [
            {"path": str(f.path), "format": f.format, "bytes": _size(f.path)} for f in self.files
        ]
        rows = None
        if all(f.format == "parquet" for f in self.files):
            rows = sum(_parquet_num_rows(f.path) for f in self.files)
        return {
            "kind": self.name,
            "options": {
                "path": self.paths[0] if len(self.paths) == 1 else list(self.paths),
                "text_field": self.text_field,
            },
            "files": files,
            "rows": rows,
            "bytes": sum(f["bytes"] for f in files),
        }

    def fingerprint(self) -> str:
        """sha256 of the files' bytes, streamed, in order (names do not count).

        The text field is included when a ``.jsonl`` or ``.parquet`` file is present, since it
        decides which rows come out of the same bytes.
        """
        digest = hashlib.sha256(b"quadra-file-source/v1\n")
        if any(f.format != "txt" for f in self.files):
            digest.update(f"text_field={self.text_field}\n".encode())
        for f in self.files:
            digest.update(f"{f.format} {_size(f.path)}\n".encode())
            try:
                with open(f.path, "rb") as fh:
                    while chunk := fh.read(_HASH_CHUNK):
                        digest.update(chunk)
            except OSError as exc:
                raise _os_error(f.path, exc) from None
        return digest.hexdigest()

    def __repr__(self) -> str:
        path = self.paths if len(self.paths) > 1 else self.paths[0]
        return f"FileSource(path={path!r}, text_field={self.text_field!r})"


# Finding the files ---------------------------------------------------------------------------


def _format_of(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def _expand(given: str) -> list[_File]:
    path = Path(given)
    if path.is_file():
        fmt = _format_of(path)
        if fmt is None:
            suffix = f"extension {path.suffix!r}" if path.suffix else "no extension"
            raise DataSourceError(
                f"file source: {given} has {suffix}; use {_FORMAT_HELP}"
            )
        return [_File(path, fmt)]
    if path.is_dir():
        found = [
            _File(child, fmt)
            for child in sorted(path.iterdir())
            if child.is_file() and not child.name.startswith(".")
            and (fmt := _format_of(child)) is not None
        ]
        if not found:
            raise DataSourceError(f"file source: directory {given} has no {_FORMAT_HELP} files")
        return found
    if _GLOB_CHARS & set(given):
        matches = sorted(glob.glob(given, recursive=True))
        found = [
            _File(Path(m), fmt)
            for m in matches
            if Path(m).is_file() and (fmt := _format_of(Path(m))) is not None
        ]
        if not found:
            raise DataSourceError(f"file source: no {_FORMAT_HELP} files match {given}")
        return found
    if path.exists():
        raise DataSourceError(f"file source: {given} is not a regular file or directory")
    raise DataSourceError(f"file source: {given} does not exist")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise _os_error(path, exc) from None


def _os_error(path: Path, exc: OSError) -> DataSourceError:
    return DataSourceError(f"{path}: cannot read ({exc.strerror or exc})")


# Text and JSON lines -------------------------------------------------------------------------


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataSourceError(
            f"{path}, line {lineno}: not valid UTF-8 "
            f"(byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line)"
        ) from None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _txt_rows(path: Path, skip: int) -> Generator[str, None, int]:
    """Yield the rows after the first `skip`; return the file's row count."""
    count = 0
    try:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                count += 1
                if count > skip:
                    yield _decode_line(raw, path, lineno)
    except OSError as exc:
        raise _os_error(path, exc) from None
    return count


def _jsonl_rows(path: Path, skip: int, field: str) -> Generator[str, None, int]:
    count = 0
    try:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                count += 1
                if count > skip:
                    yield _json_text(_decode_line(raw, path, lineno), path, lineno, field)
    except OSError as exc:
        raise _os_error(path, exc) from None
    return count


def _json_text(line: str, path: Path, lineno: int, field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataSourceError(
            f"{path}, line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    except RecursionError:
        raise DataSourceError(f"{path}, line {lineno}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise DataSourceError(
            f"{path}, line {lineno}: expected a JSON object, got {_json_type(obj)}"
        )
    if field not in obj:
        present = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
        raise DataSourceError(
            f"{path}, line {lineno}: no field {field!r} (fields: {present}); "
            f"set text_field to read another field"
        )
    text = obj[field]
    if not isinstance(text, str):
        raise DataSourceError(
            f"{path}, line {lineno}: field {field!r} is {_json_type(text)}, expected a string"
        )
    return text


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


# Parquet -------------------------------------------------------------------------------------


def _open_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        if isinstance(exc, pa.ArrowException):
            raise DataSourceError(f"{path}: not a readable parquet file ({exc})") from None
        raise _os_error(path, exc) from None
    except pa.ArrowException as exc:
        raise DataSourceError(f"{path}: not a readable parquet file ({exc})") from None


def _check_parquet_column(path: Path, field: str) -> None:
    import pyarrow as pa

    with _open_parquet(path) as pf:
        schema = pf.schema_arrow
    if field not in schema.names:
        present = ", ".join(repr(n) for n in schema.names[:10]) or "none"
        raise DataSourceError(
            f"{path}: parquet file has no column {field!r} (columns: {present}); "
            f"set text_field to read another column"
        )
    kind = schema.field(field).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    ):
        raise DataSourceError(
            f"{path}: parquet column {field!r} has type {schema.field(field).type}, "
            "expected strings"
        )


def _parquet_num_rows(path: Path) -> int:
    with _open_parquet(path) as pf:
        return pf.metadata.num_rows


def _parquet_rows(path: Path, skip: int, field: str) -> Generator[str, None, int]:
    import pyarrow as pa

    with _open_parquet(path) as pf:
        meta = pf.metadata
        total = meta.num_rows
        if skip >= total:
            return total
        groups: list[int] = []
        row = 0  # row number of the first row of the first group read
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if not groups and row + n <= skip:
                row += n
                continue
            groups.append(i)
        try:
            batches = pf.iter_batches(
                batch_size=_PARQUET_BATCH_ROWS,
                row_groups=groups,
                columns=[field],
                use_threads=False,
            )
            for batch in batches:
                column = batch.column(0)
                if row + len(column) <= skip:
                    row += len(column)
                    continue
                first = max(0, skip - row)
                for offset, value in enumerate(_pylist(column, path, row, field)[first:], first):
                    if not isinstance(value, str):
                        what = "null" if value is None else type(value).__name__
                        raise DataSourceError(
                            f"{path}, row {row + offset + 1}: column {field!r} is {what}, "
                            "expected a string"
                        )
                    yield value
                row += len(column)
        except pa.ArrowException as exc:
            raise DataSourceError(f"{path}: cannot read parquet column {field!r} ({exc})") from None
    return total


def _pylist(column, path: Path, first_row: int, field: str) -> list:
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        for i in range(len(column)):
            try:
                column[i].as_py()
            except UnicodeDecodeError:
                raise DataSourceError(
                    f"{path}, row {first_row + i + 1}: column {field!r} is not valid UTF-8"
                ) from None
        raise  # pragma: no cover - to_pylist failed but no single value does
