"""Backup format speed: throughput against `sha256sum`, unchanged repeat, restore, peak memory.

    python benchmarks/bench_backup.py [--size-mb 1024] [--rss-size-mb 2048] [--repeats 3] [--dir /tmp]

In one run, on the same file:
  * `sha256sum FILE` (the reference: it only reads and hashes) and `BackupRepository.create` of the
    same file into an empty repository (reads, hashes, writes the object, fsyncs it, writes the
    file-list and checksum-list objects, the sidecar and the signed manifest). Alternated, `sync` before each, median of --repeats.
    Target: backup speed at least 0.7x sha256sum's.
  * an unchanged repeat backup of the same file: the hash-first path (re-hash, no copy), and with
    `use_stat_cache=True` (no read at all). Target: under 1 s.
  * restore of the backup (verify = re-hash everything, then copy + hash + fsync + rename).
  * peak RSS of a fresh process backing up a --rss-size-mb file (sparse: the content does not
    change the memory a stream needs). Target: under 300 MB. Measured as VmHWM (the process's
    own resident high-water mark); ru_maxrss is printed too, but Linux carries the parent's peak
    over exec into it, so it reads at least this benchmark's own size.
Prints a table with the ratios; no assertion, the exit status is 0 unless something fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RSS_CHILD = """
import json, resource, sys, time
from pathlib import Path
from quadra_pipeline.backup import BackupRepository, SourceFile

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

work, size = Path(sys.argv[1]), int(sys.argv[2])
source = work / "sparse.bin"
with open(source, "wb") as handle:
    handle.truncate(size)
baseline = status("VmRSS")
started = time.perf_counter()
result = BackupRepository(work / "repo", "bench-key").create([SourceFile("big.bin", source)], sources={})
seconds = time.perf_counter() - started
print(json.dumps({
    "baseline_mb": baseline,
    "peak_mb": status("VmHWM"),
    "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "seconds": seconds,
    "bytes": result.total_bytes,
}))
"""


def _sync() -> None:
    os.sync()
    time.sleep(0.5)


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(16 << 20)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            # vary every block, so no two blocks are equal (dedup must not help inside the file)
            handle.write(written.to_bytes(8, "little") + chunk[8:])
            written += len(chunk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rss-size-mb", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to put the work files (default: a temp dir)")
    args = parser.parse_args()

    from quadra_pipeline.backup import BackupRepository, SourceFile

    work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.dir))
    try:
        size = args.size_mb << 20
        source = work / "big.bin"
        print(f"writing a {args.size_mb} MB test file in {work} ...", flush=True)
        _make_file(source, size)
        files = [SourceFile("models/big.bin", source)]

        sha_times, create_times = [], []
        for repeat in range(args.repeats):
            _sync()
            started = time.perf_counter()
            subprocess.run(["sha256sum", str(source)], check=True, capture_output=True)
            sha_times.append(time.perf_counter() - started)
            root = work / f"repo{repeat}"
            _sync()
            started = time.perf_counter()
            BackupRepository(root, "bench-key").create(files, sources={})
            create_times.append(time.perf_counter() - started)
            if repeat < args.repeats - 1:
                shutil.rmtree(root)
        repo = BackupRepository(work / f"repo{args.repeats - 1}", "bench-key")

        _sync()
        unchanged = []
        for _ in range(args.repeats):
            result = repo.create(files, sources={})
            assert result.stored_bytes == 0
            unchanged.append(result.seconds)
        repo.create(files, sources={}, use_stat_cache=True)  # fills the cache (the file is old enough)
        cached = []
        for _ in range(args.repeats):
            result = repo.create(files, sources={}, use_stat_cache=True)
            assert result.files_read == 0, "stat cache missed"
            cached.append(result.seconds)

        backup_id = repo.backup_ids()[0]
        restores = []
        for repeat in range(args.repeats):
            target = work / f"restored{repeat}"
            _sync()
            started = time.perf_counter()
            repo.restore(backup_id, target)
            restores.append(time.perf_counter() - started)
            shutil.rmtree(target)
        shutil.rmtree(repo.root)

        print(f"backing up a sparse {args.rss_size_mb} MB file in a fresh process ...", flush=True)
        rss_dir = work / "rss"
        rss_dir.mkdir()
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(RSS_CHILD), str(rss_dir), str(args.rss_size_mb << 20)],
            capture_output=True,
            text=True,
            check=True,
        )
        rss = json.loads(child.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sha = statistics.median(sha_times)
    create = statistics.median(create_times)
    mb = size / (1 << 20)
    rows = [
        ("sha256sum (read + hash)", f"{sha:.2f} s", f"{mb / sha:.0f} MB/s", "reference"),
        ("backup, new content", f"{create:.2f} s", f"{mb / create:.0f} MB/s",
         f"{sha / create:.2f}x sha256sum's speed (target >= 0.70x)"),
        ("backup, unchanged (re-hash, no copy)", f"{statistics.median(unchanged):.2f} s",
         f"{mb / statistics.median(unchanged):.0f} MB/s", "target < 1 s"),
        ("backup, unchanged, stat cache", f"{statistics.median(cached) * 1000:.1f} ms", "-", "target < 1 s (file not read)"),
        ("restore (verify + copy + fsync)", f"{statistics.median(restores):.2f} s",
         f"{mb / statistics.median(restores):.0f} MB/s", f"{statistics.median(restores) / create:.2f}x the backup time"),
        (f"peak RSS, {args.rss_size_mb} MB file backup", f"{rss['peak_mb']:.0f} MB",
         f"{(args.rss_size_mb << 20) / (1 << 20) / rss['seconds']:.0f} MB/s",
         f"+{rss['peak_mb'] - rss['baseline_mb']:.0f} MB over {rss['baseline_mb']:.0f} MB at start; "
         f"ru_maxrss {rss['ru_maxrss_mb']:.0f} MB (target < 300 MB)"),
    ]
    print(f"\n{args.size_mb} MB file, median of {args.repeats}; CPU: {os.cpu_count()} cores\n")
    widths = [max(len(str(row[i])) for row in rows + [("what", "time", "rate", "ratio / target")]) for i in range(4)]
    header = ("what", "time", "rate", "ratio / target")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(
        "\nruns: sha256sum " + ", ".join(f"{t:.2f}" for t in sha_times)
        + " s; backup " + ", ".join(f"{t:.2f}" for t in create_times)
        + " s; unchanged " + ", ".join(f"{t:.2f}" for t in unchanged)
        + " s; restore " + ", ".join(f"{t:.2f}" for t in restores) + " s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
