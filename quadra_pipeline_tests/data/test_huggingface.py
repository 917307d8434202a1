"""The Hugging Face source through the real `datasets.load_dataset`, offline, on local files.

Skipped when the optional `datasets` package is not installed (`pip install
'quadra-pipeline[hf]'`), except the test of the message that asks for it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from quadra_pipeline.data import DataSourceError, HuggingFaceSource, TextSource, iter_batches, open_source
from quadra_pipeline.data.huggingface import INSTALL_HINT

HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
needs_datasets = pytest.mark.skipif(
    not HAVE_DATASETS,
    reason="optional 'datasets' package not installed (pip install 'quadra-pipeline[hf]')",
)

TEXTS = ["", " = Title = ", "", " A paragraph that is long enough . ", "tiny", " Second paragraph here . "]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, and every cache under tmp_path (set before and after `datasets` imports)."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    import datasets.config  # noqa: PLC0415 - after the environment is set

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets", raising=False)
    try:
        import huggingface_hub.constants as hub_constants  # noqa: PLC0415

        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:  # pragma: no cover
        pass
    return tmp_path


def _jsonl(path: Path, rows: list, field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: r, "n": i}) + "\n" for i, r in enumerate(rows)), encoding="utf-8")
    return path


def test_missing_datasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataSourceError) as info:
        open_source("huggingface", name="wikitext")
    message = str(info.value)
    assert message.startswith("the huggingface data source needs the optional 'datasets' package")
    assert message.endswith(f"install it with: {INSTALL_HINT}")
    assert INSTALL_HINT == "pip install 'quadra-pipeline[hf]'"


@needs_datasets
def test_json_builder_reads_local_rows_in_order(offline: Path) -> None:
    path = _jsonl(offline / "corpus.jsonl", TEXTS)
    source = open_source("huggingface", name="json", data_files=str(path), split="train")
    assert isinstance(source, HuggingFaceSource)
    assert isinstance(source, TextSource)
    assert source.name == "huggingface"
    assert list(source.rows()) == TEXTS
    for start in (1, 3, len(TEXTS), len(TEXTS) + 3):
        assert list(source.rows(start)) == TEXTS[start:], start
    batches = list(iter_batches(source, 3))
    assert [(b.index, b.texts) for b in batches] == [(1, (TEXTS[3], TEXTS[5]))]


@needs_datasets
def test_text_builder_and_custom_field(offline: Path) -> None:
    txt = offline / "corpus.txt"
    txt.write_text("first line of text\nsecond line of text\n", encoding="utf-8")
    assert list(open_source("hf", name="text", data_files=str(txt)).rows()) == [
        "first line of text",
        "second line of text",
    ]
    path = _jsonl(offline / "body.jsonl", ["body text row one"], field="body")
    source = open_source("huggingface", name="json", data_files=[str(path)], text_field="body")
    assert list(source.rows()) == ["body text row one"]


@needs_datasets
def test_non_streaming_mode(offline: Path) -> None:
    path = _jsonl(offline / "corpus.jsonl", TEXTS)
    source = open_source("huggingface", name="json", data_files=str(path), streaming=False)
    assert list(source.rows()) == TEXTS
    assert list(source.rows(2)) == TEXTS[2:]


@needs_datasets
def test_missing_field_names_the_row(offline: Path) -> None:
    path = _jsonl(offline / "corpus.jsonl", TEXTS, field="body")
    source = open_source("huggingface", name="json", data_files=str(path))
    with pytest.raises(DataSourceError) as info:
        list(source.rows())
    assert str(info.value) == (
        "huggingface source json [train], row 1: no field 'text' (fields: 'body', 'n'); "
        "set text_field to read another field"
    )


@needs_datasets
def test_unavailable_dataset_is_one_clear_error(offline: Path) -> None:
    source = open_source("huggingface", name="wikitext", split="train")
    assert source.config == "wikitext-2-raw-v1"
    with pytest.raises(DataSourceError) as info:
        next(iter(source.rows()))
    message = str(info.value)
    assert message.startswith(
        "huggingface source wikitext/wikitext-2-raw-v1 [train]: could not load the dataset ("
    )
    assert "\n" not in message


@needs_datasets
def test_missing_local_data_file(offline: Path) -> None:
    source = open_source("huggingface", name="json", data_files=str(offline / "absent.jsonl"))
    with pytest.raises(DataSourceError, match=r"^huggingface source json \[train\]: could not load"):
        list(source.rows())


@needs_datasets
def test_describe_and_fingerprint(offline: Path) -> None:
    source = open_source("huggingface", name="wikitext", config="wikitext-2-raw-v1", split="train")
    described = source.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["kind"] == "huggingface"
    assert described["options"]["name"] == "wikitext"
    assert described["options"]["config"] == "wikitext-2-raw-v1"
    fingerprint = source.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert fingerprint == open_source("hf", name="wikitext", split="train").fingerprint()
    assert fingerprint == open_source("hf", name="wikitext", streaming=False).fingerprint()
    for changed in ({"split": "test"}, {"config": "wikitext-103-raw-v1"}, {"revision": "abc123"}):
        assert open_source("hf", **{"name": "wikitext", **changed}).fingerprint() != fingerprint


@needs_datasets
def test_unknown_option() -> None:
    with pytest.raises(DataSourceError, match="unknown option 'subset' for a huggingface source"):
        open_source("huggingface", name="wikitext", subset="x")
