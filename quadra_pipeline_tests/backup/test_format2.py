"""Format 2's manifest (still read, verified and restored): JSON round trip, canonical HMAC
signing, validation of every field, its two metadata objects (file list and checksum list);
and the restore-tree rules both formats share (paths, modes, trees, backup ids)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from quadra_pipeline.backup import BackupError, FileEntry, UnsafePathError
from quadra_pipeline.backup.format2 import (
    Manifest,
    ManifestHeader,
    encode_checksum_list,
    sign,
    signature_ok,
)
from quadra_pipeline.backup.names import new_backup_id
from quadra_pipeline.backup.tree import decode_file_list as _decode
from quadra_pipeline.backup.tree import encode_file_list


def decode_file_list(data: bytes):
    return _decode(data, chunked=False)

SHA = hashlib.sha256(b"x").hexdigest()
WHEN = datetime(2026, 11, 29, 16, 0, 0, 123456, tzinfo=UTC)


def make(**changes) -> Manifest:
    fields = dict(
        backup_id="20261129T160000Z-3f9a1c2b",
        created_at=WHEN,
        files=(FileEntry("models/champion.pt", 1, SHA), FileEntry("quadra.db", 1, SHA, 0o600)),
        sources={"mlflow": {"version": "3.17.0"}, "items": [1, 2.5, "x", None, True]},
    )
    fields.update(changes)
    return Manifest(**fields)


def test_json_round_trip_keeps_everything():
    manifest = sign(make(), b"key")
    data = manifest.to_json()
    file_list = manifest.file_list_bytes()
    again = Manifest.from_json(data, file_list)
    assert again == manifest
    assert again.to_json() == data and again.file_list_bytes() == file_list
    assert again.created_at == WHEN and again.created_at.tzinfo is UTC
    assert again.files[1].mode == 0o600
    assert again.total_bytes == 2 and again.file_count == 2
    document = json.loads(data)
    assert document["format"] == "quadra-backup" and document["format_version"] == 2
    assert document["created_at"] == "2026-11-29T16:00:00.123456Z"
    assert "files" not in document
    assert document["files_object"] == hashlib.sha256(file_list).hexdigest() == manifest.files_object
    assert document["checksums_object"] == hashlib.sha256(manifest.checksum_list_bytes()).hexdigest()
    assert document["file_count"] == 2 and document["total_bytes"] == 2
    assert json.loads(file_list)[1] == {"path": "quadra.db", "size": 1, "sha256": SHA, "mode": "0600"}
    assert ManifestHeader.from_json(data) == manifest.header


def test_the_file_list_and_the_checksum_list_have_one_exact_encoding():
    manifest = make()
    assert manifest.file_list_bytes() == (
        b'[\n{"mode":"0644","path":"models/champion.pt","sha256":"' + SHA.encode() + b'","size":1},\n'
        b'{"mode":"0600","path":"quadra.db","sha256":"' + SHA.encode() + b'","size":1}\n]\n'
    )
    assert encode_file_list([]) == b"[]\n" and decode_file_list(b"[]\n") == ()
    # Both files have the same content: one line, `sha256sum -c` format, path relative to the root.
    assert manifest.checksum_list_bytes() == f"{SHA}  objects/{SHA[:2]}/{SHA}\n".encode()
    assert manifest.metadata_object_ids == [manifest.files_object, manifest.checksums_object]
    other = hashlib.sha256(b"y").hexdigest()
    assert encode_checksum_list([other, SHA, other]) == "".join(
        f"{s}  objects/{s[:2]}/{s}\n" for s in sorted([SHA, other])
    ).encode()
    assert encode_checksum_list([]) == b""
    # Files given in any order are kept sorted by path: the same files, the same file list.
    swapped = make(files=tuple(reversed(make().files)))
    assert swapped.files == manifest.files and swapped.files_object == manifest.files_object


def test_the_manifest_file_has_one_field_per_line():
    lines = sign(make(), b"key").to_json().decode().splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    keys = [json.loads("{" + line.rstrip(",") + "}").popitem()[0] for line in lines[1:-1]]
    assert keys == sorted(
        ["backup_id", "checksums_object", "created_at", "file_count", "files_object", "format", "format_version",
         "signature", "sources", "total_bytes"]
    )


def test_signature_is_hmac_sha256_over_canonical_json_without_the_signature():
    manifest = make()
    signed = sign(manifest, "key")
    document = json.loads(signed.to_json())
    del document["signature"]
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert signed.signed_bytes() == canonical
    assert signed.signature == hmac.new(b"key", canonical, hashlib.sha256).hexdigest()
    assert signature_ok(signed, b"key") and signature_ok(signed, "key")
    assert not signature_ok(signed, b"other key")
    assert not signature_ok(manifest, b"key")  # unsigned


@pytest.mark.parametrize(
    "change",
    [
        {"backup_id": "20261129T160000Z-00000000"},
        {"created_at": WHEN + timedelta(seconds=1)},
        {"sources": {"mlflow": {"version": "3.17.1"}}},
        {"files": (FileEntry("models/champion.pt", 2, SHA),)},
        {"files": (FileEntry("models/champion.pt", 1, SHA, 0o777),)},
    ],
)
def test_any_edit_breaks_the_signature(change):
    signed = sign(make(), b"key")
    edited = dataclasses.replace(signed, **change)
    assert not signature_ok(edited, b"key")
    assert signature_ok(sign(edited, b"key"), b"key")


def test_created_at_in_another_zone_is_stored_as_utc():
    manifest = make(created_at=datetime(2026, 11, 29, 17, 0, tzinfo=timezone(timedelta(hours=1))))
    assert manifest.created_at == datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    assert b'"2026-11-29T16:00:00.000000Z"' in manifest.to_json()


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../etc/passwd", "contains '..'"),
        ("models/../../x", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        ("", "empty path"),
        ("a//b", "not normalized"),
        ("./a", "not normalized"),
        ("a/", "not normalized"),
        ("a\nb", "control character"),
        ("a\\..\\b", "backslash"),
    ],
)
def test_unsafe_paths_are_refused(path, words):
    with pytest.raises(UnsafePathError, match=words.replace(".", r"\.")):
        FileEntry(path, 1, SHA)


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        (0o120777, UnsafePathError, "is a symlink"),
        (0o020644, UnsafePathError, "is a device"),
        (0o060644, UnsafePathError, "is a device"),
        (0o010644, UnsafePathError, "not a regular file"),
        (0o4755, BackupError, "setuid"),
        (-1, BackupError, "not a permission number"),
    ],
)
def test_modes_other_than_permission_bits_are_refused(mode, error, words):
    with pytest.raises(error, match=words):
        FileEntry("a", 1, SHA, mode)


def test_regular_file_type_bits_are_accepted_and_dropped():
    assert FileEntry("a", 1, SHA, 0o100640).mode == 0o640


@pytest.mark.parametrize(
    ("files", "error", "words"),
    [
        ((FileEntry("a", 1, SHA), FileEntry("a", 1, SHA)), BackupError, "listed twice"),
        ((FileEntry("a", 1, SHA), FileEntry("a/b", 1, SHA)), UnsafePathError, "lies under 'a'"),
    ],
)
def test_the_files_must_form_a_tree(files, error, words):
    with pytest.raises(error, match=words):
        make(files=files)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"backup_id": "../x"}, "backup id '../x' is not valid"),
        ({"backup_id": ""}, "is not valid"),
        ({"created_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"sources": {"x": object()}}, "not JSON-serialisable"),
        ({"sources": {"x": float("nan")}}, "not JSON-serialisable"),
        ({"format_version": 1}, "format version 1 is not supported \\(this program reads version 2\\)"),
        ({"format_version": 3}, "format version 3 is not supported"),
        ({"signature": "xyz"}, "signature is not 64 lowercase hex"),
    ],
)
def test_invalid_manifests_are_refused(change, words):
    with pytest.raises(BackupError, match=words):
        make(**change)


def test_file_entry_checks_size_and_sha():
    with pytest.raises(BackupError, match="size -1 is not a byte count"):
        FileEntry("a", -1, SHA)
    with pytest.raises(BackupError, match="not 64 lowercase hex"):
        FileEntry("a", 1, SHA.upper())


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: b"not json", "not valid JSON"),
        (lambda d: b"[]", "a JSON list, not an object"),
        (lambda d: d.replace(b'"quadra-backup"', b'"other"'), "not a quadra-backup manifest"),
        (lambda d: d.replace(b'"format_version": 2', b'"format_version": 9'), "format version 9 is not supported"),
        (lambda d: d.replace(b'"sources"', b'"extra": 1, "sources"'), "unknown fields \\['extra'\\]"),
        (lambda d: d.replace(b'"sources"', b'"files": [], "sources"'), "unknown fields \\['files'\\]"),
        (lambda d: d.replace(b'"backup_id"', b'"id"'), "lacks \\['backup_id'\\]"),
        (lambda d: d.replace(b'"files_object"', b'"files"'), "lacks \\['files_object'\\]"),
        (lambda d: d.replace(b"16:00:00.123456Z", b"16:00:00"), "not a UTC time"),
        (lambda d: d.replace(b'"file_count": 2', b'"file_count": -1'), "file_count -1 is not a count"),
        (lambda d: d.replace(b'"total_bytes": 2', b'"total_bytes": "2"'), "total_bytes '2' is not a count"),
        (lambda d: d.replace(b'"files_object": "', b'"files_object": "X'), "files_object .* is not 64 lowercase hex"),
    ],
)
def test_from_json_names_the_problem(edit, words):
    manifest = make()
    data = edit(manifest.to_json())
    with pytest.raises(BackupError, match=words):
        Manifest.from_json(data, manifest.file_list_bytes())
    with pytest.raises(BackupError, match=words):
        ManifestHeader.from_json(data)


def test_a_version_1_manifest_is_refused_clearly():
    version_1 = json.dumps(
        {"format": "quadra-backup", "format_version": 1, "backup_id": "b", "created_at": "2026-11-29T16:00:00Z",
         "sources": {}, "files": []}
    ).encode()
    with pytest.raises(BackupError, match=r"^manifest format version 1 is not supported \(this program reads version 2\)$"):
        ManifestHeader.from_json(version_1)


def _canonical_list(entries: list[dict]) -> bytes:
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")).encode() for e in entries]
    return b"[\n" + b",\n".join(lines) + b"\n]\n"


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (lambda d: b"not json", BackupError, "not valid JSON"),
        (lambda d: b"{}", BackupError, "a JSON dict, not a list of files"),
        (lambda d: d.replace(b'"mode":"0600"', b'"mode":"rw"'), BackupError, "not an octal number"),
        (lambda d: d.replace(b'"quadra.db"', b'"../quadra.db"'), UnsafePathError, "contains '..'"),
        (lambda d: d.replace(b'"quadra.db"', b'"a.db"'), BackupError, "not sorted by path"),
        (lambda d: d.replace(b'"quadra.db"', b'"models/champion.pt/x"'), UnsafePathError, "lies under 'models/champion.pt'"),
        (lambda d: json.dumps(json.loads(d), indent=2).encode(), BackupError, "not in canonical form"),
        (lambda d: d.rstrip(b"\n"), BackupError, "not in canonical form"),
        (lambda d: d.replace(b'"size":1}', b'"size":1,"owner":"x"}', 1), BackupError, "unknown fields \\['owner'\\]"),
    ],
)
def test_decode_file_list_names_the_problem(edit, error, words):
    with pytest.raises(error, match=words):
        decode_file_list(edit(make().file_list_bytes()))


def test_a_file_list_must_be_the_one_the_manifest_names_and_agree_with_it():
    manifest = sign(make(), b"key")
    header = manifest.header
    other = make(files=(FileEntry("models/champion.pt", 1, SHA),)).file_list_bytes()
    with pytest.raises(BackupError, match=rf"file list objects/{header.files_object[:2]}/{header.files_object} hashes to .*, not its name"):
        Manifest.from_header(header, other)
    # A header that names the other file list but keeps this one's counts and checksum list.
    lying = dataclasses.replace(header, files_object=hashlib.sha256(other).hexdigest())
    with pytest.raises(BackupError) as caught:
        Manifest.from_header(lying, other)
    assert "has 1 files, the manifest says 2" in str(caught.value)
    assert "has 1 bytes, the manifest says 2" in str(caught.value)
    three = make(files=(*make().files, FileEntry("z", 5, hashlib.sha256(b"z").hexdigest())))
    lying = dataclasses.replace(three.header, checksums_object=header.checksums_object)  # a checksum list that omits an object
    with pytest.raises(BackupError, match="checksums_object .* is not the checksum list of the files in"):
        Manifest.from_header(lying, three.file_list_bytes())
    # The signature covers the file list through its hash, and the counts.
    for change in ({"files_object": hashlib.sha256(other).hexdigest()}, {"file_count": 3}, {"total_bytes": 3},
                   {"checksums_object": three.checksums_object}):
        assert not signature_ok(dataclasses.replace(header, **change), b"key")
    assert signature_ok(header, b"key")


def test_new_backup_ids_sort_by_time_and_are_unique():
    start = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    times = [start + timedelta(microseconds=i * 7919) for i in range(300)]
    ids = [new_backup_id(t) for t in times]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert ids[0].startswith("20261129T160000Z-") and len(ids[0]) == len("20261129T160000Z-3f9a1c2b")
    # 12 random low bits: 200 ids of one microsecond collide ~5 times on average (birthday
    # bound; > 190 distinct failed ~3% of runs); constant bits would give 1 distinct id.
    assert len({new_backup_id(start) for _ in range(200)}) > 150
    with pytest.raises(BackupError, match="timezone-aware"):
        new_backup_id(datetime(2026, 1, 1))


def test_empty_key_is_refused():
    with pytest.raises(BackupError, match="signing key is empty"):
        sign(make(), b"")
