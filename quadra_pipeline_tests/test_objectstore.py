"""The object store steps on different hosts share: a folder, and a real S3 server (SeaweedFS)."""

import time
import uuid

import pytest

from quadra_pipeline.objectstore import (
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    S3ObjectStore,
    open_object_store,
    sha256_file,
)
from quadra_pipeline_tests.s3server import free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    server = request.getfixturevalue("s3_env")
    bucket = server.make_bucket(f"t-{uuid.uuid4().hex[:12]}")
    return open_object_store(f"s3://{bucket}/some/prefix")


def test_objects_round_trip_by_key_with_their_bytes_intact(store, tmp_path):
    payload = bytes(range(256)) * 5000  # 1.28 MB
    source = tmp_path / "checkpoint.pt"
    source.write_bytes(payload)
    store.put_file("runs/r1/trials/0/checkpoint.pt", source)
    store.put_bytes("runs/r1/result.json", b'{"ok": true}')
    assert store.exists("runs/r1/trials/0/checkpoint.pt") and not store.exists("runs/r1/trials/1/checkpoint.pt")
    fetched = store.get_file("runs/r1/trials/0/checkpoint.pt", tmp_path / "out" / "c.pt")
    assert sha256_file(fetched) == sha256_file(source)
    assert store.get_bytes("runs/r1/result.json") == b'{"ok": true}'
    assert sorted(store.keys("runs/r1")) == ["runs/r1/result.json", "runs/r1/trials/0/checkpoint.pt"]
    store.delete("runs/r1/result.json")
    with pytest.raises(ObjectNotFoundError, match="no object runs/r1/result.json"):
        store.get_bytes("runs/r1/result.json")
    with pytest.raises(ObjectNotFoundError):
        store.get_file("runs/r1/missing", tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("key", ["", "/", "a/../b", "./x"])
def test_a_key_that_climbs_out_is_refused(tmp_path, key):
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        LocalObjectStore(tmp_path).put_bytes(key, b"x")


def test_wrong_credentials_are_one_clear_error(s3_env, tmp_path):
    bucket = s3_env.make_bucket(f"t-{uuid.uuid4().hex[:12]}")
    (tmp_path / "wrong").write_text("[default]\naws_access_key_id = quadra-test\naws_secret_access_key = wrong\n")
    import os

    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "wrong")  # monkeypatch (s3_env) restores it
    store = S3ObjectStore(bucket)
    with pytest.raises(ObjectStoreError, match=f"object store s3://{bucket} refused writing k: SignatureDoesNotMatch") as caught:
        store.put_bytes("k", b"x")
    assert "\n" not in str(caught.value)


def test_an_unreachable_store_fails_within_seconds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = S3ObjectStore("quadra", endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError, match=r"object store s3://quadra \(http://127\.0\.0\.1:\d+\) is unreachable"):
        store.check_available()
    assert time.monotonic() - started < 30  # bounded retries, never a wait for ever


def test_urls_pick_the_store(tmp_path):
    assert isinstance(open_object_store(str(tmp_path)), LocalObjectStore)
    assert open_object_store(f"file://{tmp_path}").root == tmp_path
    s3 = open_object_store("s3://bucket/a/b/")
    assert isinstance(s3, S3ObjectStore) and (s3.bucket, s3.prefix, s3.url) == ("bucket", "a/b", "s3://bucket/a/b")
    with pytest.raises(ObjectStoreError, match="unsupported object store 'gs://x'"):
        open_object_store("gs://x")
    with pytest.raises(ObjectStoreError, match="needs a bucket"):
        open_object_store("s3:///prefix")


def test_a_mirror_fetches_only_what_changed_and_drops_what_is_gone(store, tmp_path):
    from quadra_pipeline.objectstore import mirror

    store.put_bytes("a/1", b"one")
    store.put_bytes("a/2", b"two" * 1000)
    local = tmp_path / "mirror" / "copy"
    first = mirror(store, local)
    assert (first.objects, first.fetched, first.removed) == (2, 2, 0)
    assert (local / "a" / "1").read_bytes() == b"one" and (local / "a" / "2").stat().st_size == 3000
    again = mirror(store, local)
    assert (again.objects, again.fetched, again.fetched_bytes) == (2, 0, 0)  # an unchanged store: nothing fetched
    store.put_bytes("a/1", b"ONE!")
    store.delete("a/2")
    changed = mirror(store, local)
    assert (changed.objects, changed.fetched, changed.removed) == (1, 1, 1)
    assert (local / "a" / "1").read_bytes() == b"ONE!" and not (local / "a" / "2").exists()
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == [".copy.mirror.json", "copy"]  # its index beside it
