"""Hugging Face datasets as a text source (optional extra: ``pip install 'quadra-pipeline[hf]'``).

    open_source("huggingface", name="wikitext", config="wikitext-2-raw-v1", split="train")

is what the original program streamed, through ``datasets.load_dataset(name, config,
split=split, streaming=True)``. ``name`` may also be a packaged builder ("json", "text",
"parquet", "csv") with ``data_files=`` pointing at local files, which works offline
(``HF_DATASETS_OFFLINE=1``)::

    open_source("huggingface", name="json", data_files="corpus.jsonl", split="train")

``datasets`` is imported only when rows are read; without it, opening the source raises
:class:`~quadra_pipeline.data.sources.DataSourceError` saying how to install it.

``fingerprint()`` hashes name, config, split, revision, data_files and text_field: the data
behind a hub name can change unless ``revision`` pins a commit.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

from .sources import DataSourceError, check_start

__all__ = ["DEFAULT_WIKITEXT_CONFIG", "HuggingFaceSource", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'quadra-pipeline[hf]'"
#: The config used when ``name="wikitext"`` and no config is given (the original's run).
DEFAULT_WIKITEXT_CONFIG = "wikitext-2-raw-v1"


def _import_datasets():
    try:
        return importlib.import_module("datasets")
    except ImportError as exc:
        raise DataSourceError(
            "the huggingface data source needs the optional 'datasets' package, which is not "
            f"installed ({exc}); install it with: {INSTALL_HINT}"
        ) from None


class HuggingFaceSource:
    """Rows of one text field of a Hugging Face dataset split, in order."""

    name = "huggingface"

    def __init__(
        self,
        name: str = "wikitext",
        config: str | None = None,
        split: str = "train",
        text_field: str = "text",
        streaming: bool = True,
        revision: str | None = None,
        data_files: str | list[str] | dict[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            from .sources import check_options

            check_options(
                "huggingface",
                unknown,
                ("name", "config", "split", "text_field", "streaming", "revision", "data_files"),
            )
        for option, value in (("name", name), ("split", split), ("text_field", text_field)):
            if not isinstance(value, str) or not value:
                raise DataSourceError(
                    f"huggingface source: {option} must be a non-empty string, got {value!r}"
                )
        if config is None and name == "wikitext":
            config = DEFAULT_WIKITEXT_CONFIG  # wikitext has no default config
        if data_files is not None:
            data_files = _plain(data_files)
        self.dataset_name = name
        self.config = config
        self.split = split
        self.text_field = text_field
        self.streaming = bool(streaming)
        self.revision = revision
        self.data_files = data_files
        self.label = f"huggingface source {name}" + (f"/{config}" if config else "") + f" [{split}]"
        self._dataset = None
        self._datasets = _import_datasets()  # fail early with the install hint

    def _options(self) -> dict:
        return {
            "name": self.dataset_name,
            "config": self.config,
            "split": self.split,
            "text_field": self.text_field,
            "streaming": self.streaming,
            "revision": self.revision,
            "data_files": self.data_files,
        }

    def _load(self):
        if self._dataset is None:
            kwargs: dict[str, Any] = {"split": self.split, "streaming": self.streaming}
            if self.revision is not None:
                kwargs["revision"] = self.revision
            if self.data_files is not None:
                kwargs["data_files"] = self.data_files
            try:
                self._dataset = self._datasets.load_dataset(
                    self.dataset_name, self.config, **kwargs
                )
            except Exception as exc:  # datasets raises many kinds (hub, network, file, split)
                raise DataSourceError(
                    f"{self.label}: could not load the dataset "
                    f"({type(exc).__name__}: {_first_line(exc)})"
                ) from None
        return self._dataset

    def rows(self, start: int = 0) -> Iterator[str]:
        return self._rows(check_start(start))

    def _rows(self, start: int) -> Iterator[str]:
        dataset = self._load()
        if start:
            if hasattr(dataset, "skip"):  # IterableDataset (streaming) and Dataset
                dataset = dataset.skip(start)
            else:  # pragma: no cover - very old datasets
                dataset = itertools.islice(dataset, start, None)
        row = start
        iterator = iter(dataset)
        while True:
            try:
                example = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise DataSourceError(
                    f"{self.label}, row {row + 1}: could not read "
                    f"({type(exc).__name__}: {_first_line(exc)})"
                ) from None
            row += 1
            if self.text_field not in example:
                present = ", ".join(repr(k) for k in list(example)[:10]) or "none"
                raise DataSourceError(
                    f"{self.label}, row {row}: no field {self.text_field!r} "
                    f"(fields: {present}); set text_field to read another field"
                )
            text = example[self.text_field]
            if not isinstance(text, str):
                raise DataSourceError(
                    f"{self.label}, row {row}: field {self.text_field!r} is "
                    f"{'null' if text is None else type(text).__name__}, expected a string"
                )
            yield text

    def describe(self) -> dict:
        return {"kind": self.name, "options": self._options(), "rows": None, "bytes": None}

    def fingerprint(self) -> str:
        identity = {"kind": self.name, **self._options()}
        identity.pop("streaming")  # the same rows either way
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return (
            f"HuggingFaceSource(name={self.dataset_name!r}, config={self.config!r}, "
            f"split={self.split!r}, text_field={self.text_field!r})"
        )


def _plain(data_files: Any) -> Any:
    """data_files as JSON-able plain values (paths as strings)."""
    if isinstance(data_files, (str, os.PathLike)):
        return os.fspath(data_files)
    if isinstance(data_files, dict):
        return {str(k): _plain(v) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [_plain(v) for v in data_files]
    raise DataSourceError(
        f"huggingface source: data_files must be a path, a list of paths or a dict, "
        f"got {type(data_files).__name__}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
