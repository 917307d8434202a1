"""iter_batches: the >10-character filter, skipped windows, numbering and exact resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from quadra_pipeline.data import Batch, DataSourceError, is_usable, iter_batches, open_source

LONG = "a row that is long enough"


def txt_source(tmp_path: Path, rows: list[str]):
    path = tmp_path / "rows.txt"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return open_source("file", path=path)


@pytest.mark.parametrize(
    ("text", "usable"),
    [
        ("", False),
        ("0123456789", False),  # exactly 10: not used
        ("   0123456789   \n", False),
        ("0123456789a", True),  # 11
        ("  0123456789a  ", True),
        (" = = Plot = = ", True),  # wikitext section headings count as text
    ],
)
def test_is_usable(text: str, usable: bool) -> None:
    assert is_usable(text) is usable


def test_filter_keeps_usable_rows_unchanged_and_in_order(tmp_path: Path) -> None:
    rows = ["", "  padded but long enough  ", "short", "0123456789", "0123456789a"]
    (batch,) = iter_batches(txt_source(tmp_path, rows), rows_per_batch=5)
    assert batch == Batch(0, 0, 5, ("  padded but long enough  ", "0123456789a"))


def test_windows_index_and_partial_last_batch(tmp_path: Path) -> None:
    rows = [f"{LONG} {i}" for i in range(7)]
    batches = list(iter_batches(txt_source(tmp_path, rows), rows_per_batch=3))
    assert [(b.index, b.first_row, b.rows_consumed, len(b.texts)) for b in batches] == [
        (0, 0, 3, 3),
        (1, 3, 3, 3),
        (2, 6, 1, 1),
    ]
    assert batches[1].texts == tuple(rows[3:6])
    assert [b.next_row for b in batches] == [3, 6, 7]


def test_empty_windows_are_skipped_but_still_advance(tmp_path: Path) -> None:
    rows = [LONG, "", "", "", "tiny", "", LONG + " again", "", ""]
    batches = list(iter_batches(txt_source(tmp_path, rows), rows_per_batch=2))
    # windows: [0,2) used, [2,4) empty, [4,6) empty, [6,8) used, [8,9) empty
    assert [(b.index, b.first_row, b.rows_consumed) for b in batches] == [(0, 0, 2), (3, 6, 2)]
    assert batches[1].texts == (LONG + " again",)


def test_synthetic_batches_look_like_the_original() -> None:
    batches = list(itertools.islice(iter_batches(open_source("synthetic", seed=0), 10), 200))
    texts = [len(b.texts) for b in batches]
    assert 5 <= sum(texts) / len(texts) <= 7  # ~6 texts per 10 rows, like wikitext
    assert all(b.rows_consumed == 10 and b.first_row == 10 * b.index for b in batches)
    assert all(all(is_usable(t) for t in b.texts) and b.texts for b in batches)


@pytest.mark.parametrize("rows_per_batch", [1, 3, 10, 37])
def test_resume_equals_an_uninterrupted_run(rows_per_batch: int) -> None:
    source = open_source("synthetic", seed=11, n_rows=2000)
    full = list(iter_batches(source, rows_per_batch))
    assert full and full[-1].next_row == 2000
    for cut in (0, 1, 2, len(full) // 3, len(full) - 1):
        resume_at = full[cut].first_row
        assert list(iter_batches(source, rows_per_batch, start_row=resume_at)) == full[cut:]
        assert list(iter_batches(source, rows_per_batch, start_row=full[cut].next_row)) == full[cut + 1:]


def test_resume_after_skipped_windows(tmp_path: Path) -> None:
    rows = [LONG, "", "", "", "", "", LONG + "!"]
    source = txt_source(tmp_path, rows)
    full = list(iter_batches(source, 2))
    assert [b.index for b in full] == [0, 3]
    for start in (2, 4, 6):  # inside the skipped stretch: the next batch is still index 3
        assert list(iter_batches(source, 2, start_row=start)) == full[1:]


def test_resume_mid_window_yields_the_rest_of_that_window(tmp_path: Path) -> None:
    rows = [f"{LONG} {i}" for i in range(6)]
    batches = list(iter_batches(txt_source(tmp_path, rows), 4, start_row=2))
    assert [(b.index, b.first_row, b.rows_consumed) for b in batches] == [(0, 2, 2), (1, 4, 2)]


def test_resume_at_or_past_the_end_yields_nothing(tmp_path: Path) -> None:
    source = txt_source(tmp_path, [LONG] * 4)
    assert list(iter_batches(source, 2, start_row=4)) == []
    assert list(iter_batches(source, 2, start_row=100)) == []


def test_an_endless_source_streams_lazily() -> None:
    batches = iter_batches(open_source("synthetic"), rows_per_batch=10, start_row=1_000_000)
    first = next(batches)
    assert first.index == 100_000 and first.first_row == 1_000_000


def test_no_usable_rows_raises_at_the_end(tmp_path: Path) -> None:
    source = txt_source(tmp_path, ["", "short", " " * 30])
    with pytest.raises(DataSourceError, match=r"has no rows with more than 10 characters \(all 3 rows"):
        list(iter_batches(source, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rows_per_batch": 0}, ValueError, "rows_per_batch must be >= 1"),
        ({"rows_per_batch": 2.5}, TypeError, "rows_per_batch must be an int"),
        ({"rows_per_batch": 2, "start_row": -1}, ValueError, "start_row must be >= 0"),
    ],
)
def test_bad_arguments_fail_at_the_call(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        iter_batches(open_source("synthetic"), **kwargs)


def test_batch_is_immutable() -> None:
    batch = next(iter_batches(open_source("synthetic"), 10))
    assert isinstance(batch.texts, tuple)
    with pytest.raises(AttributeError):
        batch.index = 5  # type: ignore[misc]
