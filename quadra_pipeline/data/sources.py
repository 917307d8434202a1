"""The `TextSource` interface, its error type and the `open_source` factory.

A text source is an ordered stream of raw rows (strings). Three kinds exist:

- ``"synthetic"`` (the default): a seeded, wikitext-shaped corpus that the project makes
  itself, so that training works with no network and no data files
  (:mod:`quadra_pipeline.data.synthetic`).
- ``"file"``: local ``.txt`` / ``.jsonl`` / ``.parquet`` files, a directory of them or a glob
  (:mod:`quadra_pipeline.data.files`).
- ``"huggingface"``: a Hugging Face dataset through ``datasets.load_dataset`` (optional extra
  ``pip install 'quadra-pipeline[hf]'``; :mod:`quadra_pipeline.data.huggingface`).

Every problem with the data (a missing file, bad JSON on line 7, a missing text column, an
unknown option...) raises :class:`DataSourceError` with one message that names the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DataSourceError",
    "TextSource",
    "SOURCE_KINDS",
    "open_source",
    "source_label",
]


class DataSourceError(Exception):
    """The data cannot be read or used; the message names the source (file, line) and why."""


@runtime_checkable
class TextSource(Protocol):
    """An ordered stream of raw text rows.

    ``rows(start=k)`` must yield exactly ``list(rows())[k:]`` (exact resume), every time.
    """

    #: Short kind name: "synthetic", "file" or "huggingface".
    name: str

    def rows(self, start: int = 0) -> Iterator[str]:
        """Raw rows in order, beginning at row number `start` (0-based)."""
        ...

    def describe(self) -> dict:
        """JSON-able description: ``kind``, ``options`` and, when known, ``rows`` and ``bytes``."""
        ...

    def fingerprint(self) -> str:
        """sha256 hex digest identifying the data this source yields."""
        ...


def _open_synthetic(**options: Any) -> TextSource:
    from .synthetic import SyntheticSource

    return SyntheticSource(**options)


def _open_file(**options: Any) -> TextSource:
    from .files import FileSource

    return FileSource(**options)


def _open_huggingface(**options: Any) -> TextSource:
    from .huggingface import HuggingFaceSource

    return HuggingFaceSource(**options)


_FACTORIES: dict[str, Callable[..., TextSource]] = {
    "synthetic": _open_synthetic,
    "file": _open_file,
    "huggingface": _open_huggingface,
}
_ALIASES = {"files": "file", "hf": "huggingface"}

#: The kinds `open_source` accepts (aliases: "files" for "file", "hf" for "huggingface").
SOURCE_KINDS: tuple[str, ...] = tuple(sorted(_FACTORIES))


def open_source(kind: str = "synthetic", **options: Any) -> TextSource:
    """Open a text source of the given kind.

    >>> open_source()                                   # seeded wikitext-shaped corpus, seed 0
    >>> open_source("synthetic", seed=3, n_rows=5000)
    >>> open_source("file", path="corpus.jsonl", text_field="body")
    >>> open_source("huggingface", name="wikitext", config="wikitext-2-raw-v1", split="train")

    Unknown kinds and unknown or invalid options raise :class:`DataSourceError`. Opening is
    cheap and checks what can be checked up front (files exist, extensions, parquet columns);
    problems inside the data (bad JSON on a line, invalid UTF-8) surface while reading rows.
    """
    if not isinstance(kind, str):
        raise DataSourceError(
            f"data source kind must be a string, got {type(kind).__name__}; "
            f"choose one of: {', '.join(SOURCE_KINDS)}"
        )
    key = kind.strip().lower()
    key = _ALIASES.get(key, key)
    factory = _FACTORIES.get(key)
    if factory is None:
        raise DataSourceError(
            f"unknown data source kind {kind!r}; choose one of: {', '.join(SOURCE_KINDS)}"
        )
    return factory(**options)


def source_label(source: TextSource) -> str:
    """A short human description of a source for messages ("file source 'a.txt'")."""
    label = getattr(source, "label", None)
    if isinstance(label, str) and label:
        return label
    return f"{getattr(source, 'name', type(source).__name__)} source"


# Helpers shared by the source implementations ------------------------------------------------


def check_options(kind: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise DataSourceError for options this kind of source does not take."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise DataSourceError(
            f"unknown option{plural} {names} for a {kind} source; "
            f"it takes: {', '.join(allowed)}"
        )


def check_start(start: object) -> int:
    """Validate a `rows(start)` argument (a programming error, hence ValueError/TypeError)."""
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(f"start must be an int, got {type(start).__name__}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    return start
