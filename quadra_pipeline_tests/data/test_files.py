"""Local files as a text source: .txt, .jsonl, .parquet, directories and globs; every error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quadra_pipeline.data import (
    DataSourceError,
    FileSource,
    TextSource,
    check_usable,
    iter_batches,
    open_source,
)

TEXTS = [
    "",
    " = Some Title = ",
    "",
    " The first paragraph has enough characters . ",
    "short",
    " Another paragraph , with @-@ tokens . ",
    "   ",
    " Last one , long enough to be used . ",
]


def write_txt(path: Path, rows: list[str], newline: str = "\n") -> Path:
    path.write_bytes(newline.join(rows).encode("utf-8") + newline.encode())
    return path


def write_jsonl(path: Path, rows: list[str], field: str = "text") -> Path:
    lines = [json.dumps({"id": i, field: text}) for i, text in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[str], field: str = "text", row_group_size: int = 3) -> Path:
    table = pa.table({"id": list(range(len(rows))), field: rows})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def error_of(fn) -> str:
    with pytest.raises(DataSourceError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


# Reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_txt, write_jsonl, write_parquet])
def test_each_format_reads_the_rows_in_order(tmp_path: Path, writer) -> None:
    suffix = {write_txt: ".txt", write_jsonl: ".jsonl", write_parquet: ".parquet"}[writer]
    path = writer(tmp_path / f"corpus{suffix}", TEXTS)
    source = open_source("file", path=path)
    assert isinstance(source, FileSource)
    assert isinstance(source, TextSource)
    assert source.name == "file"
    assert list(source.rows()) == TEXTS
    for start in range(len(TEXTS) + 2):
        assert list(source.rows(start)) == TEXTS[start:], start


def test_txt_handles_crlf_bom_and_a_missing_last_newline(tmp_path: Path) -> None:
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line here\r\n\r\nthird line\r\nno newline at end")
    assert list(open_source("file", path=path).rows()) == [
        "first line here",
        "",
        "third line",
        "no newline at end",
    ]


def test_txt_keeps_non_ascii_text(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "u.txt", [" Senjō no Valkyria 3 : 戦場のヴァルキュリア3 "])
    assert list(open_source("file", path=path).rows()) == [" Senjō no Valkyria 3 : 戦場のヴァルキュリア3 "]


def test_jsonl_custom_field_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"body": "row zero is here"}\n\n   \n{"body": "row one", "other": 1}\n',
        encoding="utf-8",
    )
    source = open_source("file", path=path, text_field="body")
    assert list(source.rows()) == ["row zero is here", "row one"]
    assert list(source.rows(1)) == ["row one"]


def test_parquet_custom_column_and_row_group_skipping(tmp_path: Path) -> None:
    rows = [f"row number {i:04d} of the parquet file" for i in range(1000)]
    path = write_parquet(tmp_path / "big.parquet", rows, field="content", row_group_size=128)
    source = open_source("file", path=path, text_field="content")
    assert list(source.rows()) == rows
    for start in (0, 1, 127, 128, 129, 500, 999, 1000, 1500):
        assert list(source.rows(start)) == rows[start:], start
    assert source.describe()["rows"] == 1000


def test_parquet_large_string_and_dictionary_columns(tmp_path: Path) -> None:
    rows = ["a long enough text row", "another long enough row"]
    large = tmp_path / "large.parquet"
    pq.write_table(pa.table({"text": pa.array(rows, pa.large_string())}), large)
    dictionary = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"text": pa.array(rows).dictionary_encode()}), dictionary)
    assert list(open_source("file", path=large).rows()) == rows
    assert list(open_source("file", path=dictionary).rows()) == rows


def test_a_directory_reads_its_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    write_txt(folder / "b.txt", ["b0 long enough text", "b1 long enough text"])
    write_jsonl(folder / "a.jsonl", ["a0 long enough text"])
    write_parquet(folder / "c.parquet", ["c0 long enough text", "c1 long enough text"])
    (folder / "README.md").write_text("not data", encoding="utf-8")
    (folder / ".hidden.txt").write_text("hidden", encoding="utf-8")
    source = open_source("file", path=folder)
    expected = ["a0 long enough text", "b0 long enough text", "b1 long enough text",
                "c0 long enough text", "c1 long enough text"]
    assert list(source.rows()) == expected
    for start in range(len(expected) + 1):
        assert list(source.rows(start)) == expected[start:], start
    assert [Path(f["path"]).name for f in source.describe()["files"]] == ["a.jsonl", "b.txt", "c.parquet"]


def test_a_glob_and_a_list_of_paths(tmp_path: Path) -> None:
    write_txt(tmp_path / "p1.txt", ["one one one one one"])
    write_txt(tmp_path / "p2.txt", ["two two two two two"])
    write_txt(tmp_path / "q.txt", ["not matched by the glob"])
    assert list(open_source("file", path=str(tmp_path / "p*.txt")).rows()) == [
        "one one one one one",
        "two two two two two",
    ]
    both = open_source("file", path=[tmp_path / "q.txt", tmp_path / "p1.txt"])
    assert list(both.rows()) == ["not matched by the glob", "one one one one one"]


def test_describe(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    described = open_source("file", path=str(path)).describe()
    assert json.loads(json.dumps(described)) == described
    assert described["kind"] == "file"
    assert described["options"] == {"path": str(path), "text_field": "text"}
    assert described["bytes"] == path.stat().st_size
    assert described["files"] == [{"path": str(path), "format": "jsonl", "bytes": path.stat().st_size}]
    assert described["rows"] is None  # unknown without reading a text file through


# Fingerprint --------------------------------------------------------------------------------


def test_fingerprint_follows_the_bytes(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "f.txt", TEXTS)
    first = open_source("file", path=path).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert open_source("file", path=path).fingerprint() == first  # stable

    copy = tmp_path / "renamed.txt"
    copy.write_bytes(path.read_bytes())
    assert open_source("file", path=copy).fingerprint() == first  # the name does not count

    path.write_bytes(path.read_bytes().replace(b"first", b"First"))
    changed = open_source("file", path=path).fingerprint()
    assert changed != first

    path.write_bytes(path.read_bytes() + b"one more row\n")
    assert open_source("file", path=path).fingerprint() not in (first, changed)


def test_fingerprint_of_parquet_and_text_field(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "f.parquet", TEXTS)
    pq.write_table(pa.table({"text": TEXTS, "alt": TEXTS}), tmp_path / "g.parquet")
    a = open_source("file", path=tmp_path / "g.parquet").fingerprint()
    b = open_source("file", path=tmp_path / "g.parquet", text_field="alt").fingerprint()
    assert a != b
    before = open_source("file", path=path).fingerprint()
    write_parquet(path, TEXTS[:-1])
    assert open_source("file", path=path).fingerprint() != before


def test_fingerprint_of_a_directory_sees_every_file(tmp_path: Path) -> None:
    write_txt(tmp_path / "a.txt", ["aaaaaaaaaaaaaaa"])
    write_txt(tmp_path / "b.txt", ["bbbbbbbbbbbbbbb"])
    before = open_source("file", path=tmp_path).fingerprint()
    write_txt(tmp_path / "b.txt", ["bbbbbbbbbbbbbbB"])
    assert open_source("file", path=tmp_path).fingerprint() != before


# Errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    assert error_of(lambda: open_source("file", path=path)) == f"file source: {path} does not exist"


def test_path_is_required() -> None:
    assert error_of(lambda: open_source("file")) == "file source: the 'path' option is required"


@pytest.mark.parametrize("name", ["data.csv", "data.json", "README"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("x,y\n", encoding="utf-8")
    message = error_of(lambda: open_source("file", path=path))
    assert message.startswith(f"file source: {path} has ")
    assert ("no extension" if "." not in name else repr(Path(name).suffix)) in message
    assert ".txt" in message and ".jsonl" in message and ".parquet" in message


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello", encoding="utf-8")
    message = error_of(lambda: open_source("file", path=tmp_path))
    assert message.startswith(f"file source: directory {tmp_path} has no .txt")


def test_glob_without_matches(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.jsonl")
    message = error_of(lambda: open_source("file", path=pattern))
    assert message.startswith("file source: no .txt")
    assert message.endswith(f"files match {pattern}")


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine row number one"}\n{"text": "broken\n', encoding="utf-8")
    source = open_source("file", path=path)  # opening does not read the lines
    message = error_of(lambda: list(source.rows()))
    assert message.startswith(f"{path}, line 2: not valid JSON (")
    assert "column" in message


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "fine row number one"}\n["text"]\n', encoding="utf-8")
    message = error_of(lambda: list(open_source("file", path=path).rows()))
    assert message == f"{path}, line 2: expected a JSON object, got an array"


def test_missing_text_field(tmp_path: Path) -> None:
    path = tmp_path / "fields.jsonl"
    path.write_text('{"text": "ok ok ok ok ok ok"}\n\n{"body": "x", "id": 3}\n', encoding="utf-8")
    message = error_of(lambda: list(open_source("file", path=path).rows()))
    assert message == (
        f"{path}, line 3: no field 'text' (fields: 'body', 'id'); "
        "set text_field to read another field"
    )


@pytest.mark.parametrize(
    ("value", "described"),
    [("null", "null"), ("42", "a number"), ("true", "a boolean"), ('["a"]', "an array"), ("{}", "an object")],
)
def test_non_string_text(tmp_path: Path, value: str, described: str) -> None:
    path = tmp_path / "types.jsonl"
    path.write_text(f'{{"text": {value}}}\n', encoding="utf-8")
    message = error_of(lambda: list(open_source("file", path=path).rows()))
    assert message == f"{path}, line 1: field 'text' is {described}, expected a string"


def test_parquet_without_the_column(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "cols.parquet", TEXTS, field="body")
    message = error_of(lambda: open_source("file", path=path))
    assert message == (
        f"{path}: parquet file has no column 'text' (columns: 'id', 'body'); "
        "set text_field to read another column"
    )


def test_parquet_column_of_the_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    message = error_of(lambda: open_source("file", path=path))
    assert message == f"{path}: parquet column 'text' has type int64, expected strings"


def test_parquet_null_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a fine row of text", None]}), path)
    message = error_of(lambda: list(open_source("file", path=path).rows()))
    assert message == f"{path}, row 2: column 'text' is null, expected a string"


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("this is not parquet at all", encoding="utf-8")
    message = error_of(lambda: open_source("file", path=path))
    assert message.startswith(f"{path}: not a readable parquet file (")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_invalid_utf8_names_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"latin1{suffix}"
    good = b'{"text": "fine row number one"}' if suffix == ".jsonl" else b"fine row number one"
    bad = '{"text": "caf\u00e9"}' if suffix == ".jsonl" else "caf\u00e9 au lait"
    path.write_bytes(good + b"\n" + bad.encode("latin-1") + b"\n")
    source = open_source("file", path=path)
    assert next(iter(source.rows())) == "fine row number one"
    message = error_of(lambda: list(source.rows()))
    column = 14 if suffix == ".jsonl" else 4
    assert message == f"{path}, line 2: not valid UTF-8 (byte 0xe9 at byte {column} of the line)"


def test_invalid_utf8_in_a_parquet_string_column(tmp_path: Path) -> None:
    raw = pa.array([b"good text row here", b"caf\xe9"], pa.binary())
    unchecked = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # skips validation
    path = tmp_path / "latin1.parquet"
    pq.write_table(pa.table({"text": unchecked}), path)
    message = error_of(lambda: list(open_source("file", path=path).rows()))
    assert message == f"{path}, row 2: column 'text' is not valid UTF-8"


def test_unknown_option_and_bad_text_field(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "o.txt", TEXTS)
    assert error_of(lambda: open_source("file", path=path, column="x")) == (
        "unknown option 'column' for a file source; it takes: path, text_field"
    )
    assert error_of(lambda: open_source("file", path=path, text_field="")) == (
        "file source: text_field must be a non-empty string, got ''"
    )


# No usable rows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("", "it is empty"),
        ("short\n", "its only row is blank or too short"),
        ("\n   \nten chars!\n0123456789\n", "all 4 rows are blank or too short"),
    ],
)
def test_no_usable_rows(tmp_path: Path, content: str, detail: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    source = open_source("file", path=path)
    expected = f"file source {path} has no rows with more than 10 characters ({detail})"
    assert error_of(lambda: list(iter_batches(source, 2))) == expected
    assert error_of(lambda: check_usable(source)) == expected


def test_check_usable_limit_and_first_usable_row(tmp_path: Path) -> None:
    path = write_txt(tmp_path / "late.txt", [""] * 50 + ["finally a usable row"])
    source = open_source("file", path=path)
    assert check_usable(source) == 50
    message = error_of(lambda: check_usable(source, limit=20))
    assert message == (
        f"file source {path} has no rows with more than 10 characters in its first 20 rows"
    )
