"""Batches of usable text pulled in order from a text source (spec section 6).

A batch is a window of ``rows_per_batch`` consecutive rows; a row is *usable* when its text,
stripped, is longer than 10 characters (:func:`is_usable`); the batch carries the usable rows
(unchanged, not stripped) and a window without any is skipped, though its rows still count.

Windows are aligned on row 0: window ``i`` covers rows ``[i * R, (i + 1) * R)`` and the batch
made from it has ``index == i`` (0-based; skipped windows leave gaps in the numbering). So a
batch is identified by its position in the data alone, and resuming is exact:
``iter_batches(source, R, start_row=b.first_row + b.rows_consumed)`` yields exactly the batches
that an uninterrupted run yields after ``b``. (A ``start_row`` inside a window yields the rest
of that window as a shorter first batch, with that window's index.) The last window of a
finite source may be short (``rows_consumed < rows_per_batch``).

Where the "no usable text at all" check lives: in :func:`iter_batches` when it starts at row 0
and the source ends without a single usable row (an empty file, only blank lines...), and in
:func:`check_usable`, which looks at the first ``limit`` rows and is meant to be called before
anything expensive starts (it also catches an endless source without usable text). Both raise
:class:`~quadra_pipeline.data.sources.DataSourceError` ("... has no rows with more than 10
characters ..."). Resuming past the end of a finite source just yields nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from .sources import DataSourceError, TextSource, source_label

__all__ = ["MIN_TEXT_CHARS", "Batch", "check_usable", "is_usable", "iter_batches"]

#: A row is used when ``len(text.strip()) > MIN_TEXT_CHARS``.
MIN_TEXT_CHARS = 10


def is_usable(text: str) -> bool:
    """True when the row's text, stripped, is longer than 10 characters."""
    return len(text.strip()) > MIN_TEXT_CHARS


@dataclass(frozen=True)
class Batch:
    """One batch of usable texts.

    index: 0-based window number (``first_row // rows_per_batch``); skipped windows leave gaps.
    first_row: row number (0-based) of the window's first row.
    rows_consumed: rows read for this batch (``rows_per_batch``, fewer at the end of the data).
    texts: the usable rows of the window, in order, as the source gave them (never empty).
    """

    index: int
    first_row: int
    rows_consumed: int
    texts: tuple[str, ...]

    @property
    def next_row(self) -> int:
        """The row to resume from after this batch (``first_row + rows_consumed``)."""
        return self.first_row + self.rows_consumed


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def iter_batches(source: TextSource, rows_per_batch: int, start_row: int = 0) -> Iterator[Batch]:
    """Yield the non-empty batches of `source` from row `start_row` on (see the module doc).

    Raises DataSourceError if `start_row` is 0 and the source has no usable row at all.
    """
    _check_int("rows_per_batch", rows_per_batch, 1)
    _check_int("start_row", start_row, 0)
    return _batches(source, rows_per_batch, start_row)


def _batches(source: TextSource, rows_per_batch: int, start_row: int) -> Iterator[Batch]:
    rows = iter(source.rows(start_row))
    row = start_row
    yielded = False
    while True:
        window = rows_per_batch - row % rows_per_batch  # a full window, unless resuming mid-way
        chunk = list(itertools.islice(rows, window))
        if not chunk:
            break
        texts = tuple(t for t in chunk if is_usable(t))
        if texts:
            yielded = True
            yield Batch(row // rows_per_batch, row, len(chunk), texts)
        row += len(chunk)
        if len(chunk) < window:
            break
    if not yielded and start_row == 0:
        raise DataSourceError(_no_usable_rows(source, row))


def check_usable(source: TextSource, limit: int = 10_000) -> int:
    """Fail fast: the row number of the first usable row among the first `limit` rows.

    Raises DataSourceError when the source is empty or none of its first `limit` rows is
    longer than 10 characters once stripped.
    """
    _check_int("limit", limit, 1)
    n = 0
    for n, text in enumerate(itertools.islice(source.rows(0), limit), 1):
        if is_usable(text):
            return n - 1
    if n < limit:
        raise DataSourceError(_no_usable_rows(source, n))
    raise DataSourceError(
        f"{source_label(source)} has no rows with more than {MIN_TEXT_CHARS} characters "
        f"in its first {limit} rows"
    )


def _no_usable_rows(source: TextSource, n_rows: int) -> str:
    if n_rows == 0:
        detail = "it is empty"
    elif n_rows == 1:
        detail = "its only row is blank or too short"
    else:
        detail = f"all {n_rows} rows are blank or too short"
    return (
        f"{source_label(source)} has no rows with more than {MIN_TEXT_CHARS} characters "
        f"({detail})"
    )
