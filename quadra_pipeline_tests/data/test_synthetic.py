"""The seeded wikitext-shaped corpus: determinism, shape, exact resume, speed."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections import Counter

import pytest

from quadra_pipeline.data import DataSourceError, SyntheticSource, TextSource, open_source

N = 10_000


@pytest.fixture(scope="module")
def rows() -> list[str]:
    return list(open_source("synthetic", seed=0, n_rows=N).rows())


def _paragraphs(rows: list[str]) -> list[str]:
    return [r for r in rows if r.strip() and not r.strip().startswith("=")]


def test_default_is_synthetic_seed_0_endless() -> None:
    source = open_source()
    assert isinstance(source, SyntheticSource)
    assert isinstance(source, TextSource)
    assert source.name == "synthetic"
    assert source.describe()["options"] == {"seed": 0, "n_rows": None}
    assert list(itertools.islice(source.rows(), 50)) == list(
        itertools.islice(open_source("synthetic", seed=0, n_rows=N).rows(), 50)
    )


def test_same_seed_same_rows(rows: list[str]) -> None:
    again = list(open_source("synthetic", seed=0, n_rows=N).rows())
    assert again == rows
    assert open_source("synthetic", seed=0).fingerprint() == open_source("synthetic").fingerprint()


def test_different_seed_different_rows(rows: list[str]) -> None:
    other = list(open_source("synthetic", seed=1, n_rows=N).rows())
    assert _paragraphs(other)[:50] != _paragraphs(rows)[:50]
    assert len(set(_paragraphs(other)) & set(_paragraphs(rows))) == 0
    assert (
        open_source("synthetic", seed=1).fingerprint()
        != open_source("synthetic", seed=0).fingerprint()
    )


def test_rows_do_not_depend_on_global_random_state() -> None:
    import random

    random.seed(123)
    first = list(open_source("synthetic", seed=7, n_rows=300).rows())
    random.seed(456)
    random.random()
    assert list(open_source("synthetic", seed=7, n_rows=300).rows()) == first


def test_usable_share_is_wikitext_like(rows: list[str]) -> None:
    assert len(rows) == N
    usable = sum(len(r.strip()) > 10 for r in rows) / N
    assert 0.5 <= usable <= 0.7, usable
    assert sum(r == "" for r in rows) / N > 0.25  # blank lines, as in wikitext


def test_headings_are_wikitext_like(rows: list[str]) -> None:
    titles = [r for r in rows if re.fullmatch(r" = [^=]+ = ", r)]
    sections = [r for r in rows if re.fullmatch(r" = = [^=]+ = = ", r)]
    subsections = [r for r in rows if re.fullmatch(r" = = = [^=]+ = = = ", r)]
    assert len(titles) > 50 and len(sections) > len(titles) and subsections
    assert rows[0] == "" and re.fullmatch(r" = [^=]+ = ", rows[1]) and rows[2] == ""
    # every heading sits between blank lines
    for i, row in enumerate(rows[:-1]):
        if row.strip().startswith("="):
            assert rows[i - 1] == "" and rows[i + 1] == "", (i, row)


def test_paragraphs_are_wikitext_like(rows: list[str]) -> None:
    paragraphs = _paragraphs(rows)
    lengths = [len(p.split()) for p in paragraphs]
    assert 80 <= statistics.mean(lengths) <= 140, statistics.mean(lengths)
    assert min(lengths) >= 20
    text = " ".join(paragraphs)
    for marker in (" @-@ ", " , ", " . ", " @,@ ", " @.@ ", " ( ", " ) ", ' " '):
        assert marker in text, marker
    assert re.search(r" (1[89]\d\d|20[01]\d) ", text), "no years"
    assert all(p.startswith(" ") and p.endswith(" . ") for p in paragraphs[:200])
    assert all("  " not in p for p in paragraphs[:200])  # single spaces between tokens


def test_words_repeat_within_a_paragraph(rows: list[str]) -> None:
    paragraphs = _paragraphs(rows)[:200]
    repeated = [max(Counter(p.split()).values()) for p in paragraphs]
    assert all(count > 1 for count in repeated)
    # and not only punctuation: some word occurs more than once
    assert all(
        any(n > 1 for w, n in Counter(p.split()).items() if w.isalpha()) for p in paragraphs[:50]
    )


@pytest.mark.parametrize("start", [0, 1, 2, 3, 17, 29, 30, 31, 499, 1234, 9_999, 10_000, 12_000])
def test_rows_start_equals_slicing(rows: list[str], start: int) -> None:
    source = open_source("synthetic", seed=0, n_rows=N)
    assert list(source.rows(start=start)) == rows[start:]


def test_rows_start_on_an_endless_source(rows: list[str]) -> None:
    source = open_source("synthetic", seed=0)
    assert list(itertools.islice(source.rows(start=4321), 200)) == rows[4321:4521]


def test_n_rows_truncates_and_zero_is_empty(rows: list[str]) -> None:
    assert list(open_source("synthetic", n_rows=123).rows()) == rows[:123]
    assert list(open_source("synthetic", n_rows=0).rows()) == []


def test_far_start_yields_rows() -> None:
    """Skipping 200,000 rows works (its speed is a benchmark matter, not a test's)."""
    assert len(list(open_source("synthetic", seed=99, n_rows=N).rows())) == N
    first = next(iter(open_source("synthetic", seed=3).rows(start=200_000)))
    assert isinstance(first, str)


def test_describe_and_fingerprint() -> None:
    source = open_source("synthetic", seed=5, n_rows=1000)
    described = source.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["kind"] == "synthetic"
    assert described["options"] == {"seed": 5, "n_rows": 1000}
    assert described["rows"] == 1000
    fingerprint = source.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert fingerprint == open_source("synthetic", seed=5, n_rows=1000).fingerprint()
    assert fingerprint != open_source("synthetic", seed=5, n_rows=999).fingerprint()
    assert fingerprint != open_source("synthetic", seed=5).fingerprint()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": "zero"}, "synthetic source: seed must be an integer, got str 'zero'"),
        ({"seed": 1.5}, "synthetic source: seed must be an integer, got float 1.5"),
        ({"n_rows": -1}, "synthetic source: n_rows must be a non-negative integer or None, got -1"),
        ({"rows": 5}, "unknown option 'rows' for a synthetic source; it takes: n_rows, seed"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(DataSourceError) as info:
        open_source("synthetic", **options)
    assert str(info.value) == message


def test_negative_start_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="start must be >= 0"):
        open_source("synthetic").rows(start=-1)
