"""open_source: kinds, aliases, the TextSource interface, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import quadra_pipeline.data as data
from quadra_pipeline.data import SOURCE_KINDS, DataSourceError, TextSource, open_source, source_label


def test_kinds() -> None:
    assert SOURCE_KINDS == ("file", "huggingface", "synthetic")


def test_unknown_kind() -> None:
    with pytest.raises(DataSourceError) as info:
        open_source("s3")
    assert str(info.value) == "unknown data source kind 's3'; choose one of: file, huggingface, synthetic"


def test_kind_must_be_a_string() -> None:
    with pytest.raises(DataSourceError, match="data source kind must be a string, got int"):
        open_source(3)  # type: ignore[arg-type]


def test_kind_is_case_insensitive_with_aliases(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("hello there world\n", encoding="utf-8")
    assert open_source("Synthetic").name == "synthetic"
    assert open_source("files", path=path).name == "file"
    assert open_source(" FILE ", path=path).name == "file"


@pytest.mark.parametrize("kind", ["synthetic", "file"])
def test_every_source_honours_the_interface(tmp_path: Path, kind: str) -> None:
    options = {"n_rows": 40} if kind == "synthetic" else {"path": tmp_path / "x.jsonl"}
    if kind == "file":
        (tmp_path / "x.jsonl").write_text(
            "".join(json.dumps({"text": f"row {i} " * 3}) + "\n" for i in range(40)), encoding="utf-8"
        )
    source = open_source(kind, **options)
    assert isinstance(source, TextSource)
    assert source.name == kind
    rows = list(source.rows())
    assert len(rows) == 40 and all(isinstance(r, str) for r in rows)
    assert list(source.rows(start=25)) == rows[25:]
    described = source.describe()
    assert described["kind"] == kind and "options" in described
    assert {"rows", "bytes"} <= set(described)
    json.dumps(described)
    assert len(source.fingerprint()) == 64
    assert source_label(source).startswith(kind)


def test_source_label_falls_back_to_the_name() -> None:
    class Plain:
        name = "custom"

        def rows(self, start: int = 0):
            return iter(())

        def describe(self) -> dict:
            return {"kind": "custom", "options": {}}

        def fingerprint(self) -> str:
            return "0" * 64

    assert isinstance(Plain(), TextSource)
    assert source_label(Plain()) == "custom source"


def test_public_api() -> None:
    for name in data.__all__:
        assert hasattr(data, name), name
    assert issubclass(DataSourceError, Exception)
