"""The off-site copy on a realistic repository: push, a second push of the unchanged repository,
an hourly push after a small change, verify (every chunk; the hourly share), restore from the
copy. On a real S3 server (SeaweedFS on loopback, as the tests use) and on a folder.

    python benchmarks/bench_offsite.py [--mb 512]

The repository: a data home of `--mb` MB (a SQLite-like file of 3/8, random checkpoints of 3/8,
text of 1/4), backed up, then 5 scattered changes in the database file, backed up again.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quadra_pipeline.backup import (
    BackupRepository,
    SourceFile,
    offsite,
)
from quadra_pipeline.keys import KeyPair, generate
from quadra_pipeline.objectstore import LocalObjectStore, open_object_store


def make_home(root: Path, mb: int) -> list[SourceFile]:
    rnd = random.Random(7)
    files: list[SourceFile] = []
    size = mb << 20
    db = root / "project-db" / "quadra.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(rnd.randbytes(size * 3 // 8))
    files.append(SourceFile("project-db/quadra.db", db))
    for i in range(6):
        path = root / "checkpoints" / f"run-{i}" / "ckpt.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(rnd.randbytes(size * 3 // 8 // 6))
        files.append(SourceFile(f"checkpoints/run-{i}/ckpt.pt", path))
    words = [rnd.randbytes(6).hex() for _ in range(5000)]
    text = root / "mlartifacts" / "1" / "metrics.txt"
    text.parent.mkdir(parents=True)
    with text.open("w") as handle:
        while handle.tell() < size // 4:
            handle.write(" ".join(rnd.choices(words, k=2000)) + "\n")
    files.append(SourceFile("mlartifacts/1/metrics.txt", text))
    return files


def change_rows(db: Path, count: int = 5) -> None:
    rnd = random.Random(11)
    with db.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        for _ in range(count):
            handle.seek(rnd.randrange(size - 100))
            handle.write(rnd.randbytes(100))


def timed(what: str, action):
    started = time.perf_counter()
    value = action()
    seconds = time.perf_counter() - started
    print(f"  {what}: {seconds:.2f} s", flush=True)
    return value, seconds


def run(store, repo: BackupRepository, public: KeyPair, sources: list[SourceFile], workdir: Path) -> dict:
    row = {}
    first, row["push_s"] = timed("first push", lambda: offsite.push(repo, store))
    row["push_mb"] = first.bytes_written / 1e6
    again, row["again_s"] = timed("second push, unchanged", lambda: offsite.push(repo, store))
    row["again_bytes"] = again.bytes_written
    change_rows(sources[0].source)
    repo.create(sources, sources={})
    hourly, row["hourly_s"] = timed("push after 5 changed rows", lambda: offsite.push(repo, store))
    row["hourly_bytes"] = hourly.bytes_written
    options = {"keys": public, "require_signature": True}
    reports, row["verify_all_s"] = timed("verify --all (every chunk fetched, re-hashed)",
                                         lambda: offsite.verify(store, read="all", **options))
    assert all(r.ok for r in reports), [r.problems for r in reports if not r.ok]
    row["verify_all_mb"] = sum(r.bytes_checked for r in reports[:-1]) / 1e6
    reports, row["verify_share_s"] = timed("verify, the hourly share (1/24) + the pushed chunks",
                                           lambda: offsite.verify(store, read=set(hourly.written_chunks) | {
                                               s for s in repo.chunks.known() if int(s[:8], 16) % 24 == 0}, **options))
    assert all(r.ok for r in reports)
    _, row["restore_s"] = timed("restore latest from the copy",
                                lambda: offsite.restore(store, "latest", workdir / f"restored-{uuid.uuid4().hex[:6]}", **options))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=512)
    args = parser.parse_args()
    signing = generate("ed25519")
    public = KeyPair(signing.public_pem)
    with tempfile.TemporaryDirectory(prefix="bench-offsite-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        sources = make_home(tmp / "home", args.mb)
        results = {}
        for kind in ("s3", "folder"):
            repo = BackupRepository(tmp / f"repo-{kind}", keys=signing, require_signature=True)
            shutil.copyfile(sources[0].source, tmp / "db-orig")
            repo.create(sources, sources={})
            stored = sum(p.stat().st_size for p in (repo.root / "chunks").rglob("*") if p.is_file())
            print(f"{kind}: repository {stored / 1e6:.0f} MB stored, {len(repo.chunks.known())} chunks", flush=True)
            if kind == "s3":
                from quadra_pipeline_tests.s3server import seaweedfs

                with seaweedfs(tmp / "seaweedfs") as server:
                    os.environ.update(server.env())
                    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
                        os.environ.pop(name, None)
                    bucket = server.make_bucket("offsite")
                    results[kind] = run(open_object_store(f"s3://{bucket}/backups"), repo, public, sources, tmp)
            else:
                results[kind] = run(LocalObjectStore(tmp / "offsite"), repo, public, sources, tmp)
            shutil.copyfile(tmp / "db-orig", sources[0].source)
        print()
        print(f"| {args.mb} MB data home | S3 (SeaweedFS, loopback) | folder |")
        print("|---|---|---|")
        labels = [("first push (s)", "push_s", "{:.2f}"), ("first push (MB written)", "push_mb", "{:.0f}"),
                  ("second push, unchanged (s)", "again_s", "{:.2f}"),
                  ("second push, unchanged (bytes written)", "again_bytes", "{:d}"),
                  ("push after 5 changed rows (s)", "hourly_s", "{:.2f}"),
                  ("push after 5 changed rows (bytes written)", "hourly_bytes", "{:d}"),
                  ("verify, every chunk fetched and re-hashed (s)", "verify_all_s", "{:.2f}"),
                  ("verify, the hourly share (s)", "verify_share_s", "{:.2f}"),
                  ("restore latest from the copy (s)", "restore_s", "{:.2f}")]
        for label, key, fmt in labels:
            print(f"| {label} | {fmt.format(results['s3'][key])} | {fmt.format(results['folder'][key])} |")


if __name__ == "__main__":
    main()
