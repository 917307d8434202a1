"""Backups side by side with restic, on the same data in one run.

    python benchmarks/bench_backup.py [--size-mb 1024] [--db-mb 200] [--hours 24]
                                      [--rss-size-mb 2048] [--repeats 3] [--dir /tmp]
                                      [--memory-dir /dev/shm]

restic is the reference (Debian's `restic`, installed for this benchmark only: `apt-get install
restic`; the project does not use it). Without it the restic columns say "absent" and ours are
still measured. What is measured, in one run on one machine (compare the ratios, not the
seconds: these machines are noisy):

  * first backup of a --size-mb data home (four checkpoint-like files of random bytes, 3/4 of
    it, and a text-like file that compresses, 1/4), into an empty repository; alternated with
    `sha256sum` of the same files (which only reads and hashes), with a durable copy of them
    (copy + fsync: the disk's own write speed) and with restic; median of --repeats. Twice: the
    repository on the disk (both tools make every write durable, so the disk's write speed
    bounds both), and on a tmpfs (--memory-dir: what the software itself costs, the disk out of
    the picture). Targets: ours at least restic's speed and at least 0.7x sha256sum's.
  * restore of that backup into an empty folder (ours checks every chunk and every file's
    SHA-256 as it writes). Target: at least 0.7x sha256sum's speed.
  * a --db-mb SQLite database (1 KiB rows of text and numbers), backed up, then 5 rows changed
    at scattered places and backed up again: the bytes the second backup added (repository
    growth on disk, metadata included). Target: ours at most 1.5x restic's.
  * --hours unchanged backups of that database: the bytes they added, against the bytes of one
    backup. Target: one backup plus the unchanged hours at most 1.05x one backup.
  * peak RSS (VmHWM, polled from /proc) of a fresh process backing up a --rss-size-mb file of
    random bytes, and a file an eighth of its size, ours and restic's: bounded means the same
    for both sizes.
  * the chunk-size table behind our 256 KiB average (docs/BACKUP_FORMAT.md, "Chunk size"): for
    averages of 64 KiB, 256 KiB and 1 MiB, the bytes of new chunks after the 5-row change, the
    per-backup file-list size, and the cutting speed.

Our side is `BackupRepository.create` / `restore` (format 3, Ed25519-signed, hash chain), as the
hourly asset calls it, minus the database snapshot (both tools read the same file). Every byte
of source data is in the page cache (24 GB RAM): reading costs no disk time. Prints tables; no
assertion: the exit status is 0 unless something fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESTIC_PASSWORD = "bench-only"  # restic encrypts everything; a throwaway repository password

OUR_CHILD = """
import sys
from pathlib import Path
from quadra_pipeline.backup import BackupRepository, SourceFile
from quadra_pipeline.keys import generate
repo = BackupRepository(Path(sys.argv[1]), keys=generate("ed25519"))
repo.create([SourceFile("big.bin", Path(sys.argv[2]))], sources={})
"""


# Data --------------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(16 << 20, left))
            handle.write(block)
            left -= len(block)


def write_text_like(path: Path, size: int, seed: int = 7) -> None:
    """Lines of words and numbers (a log, a CSV export): compresses about 3x with zstd."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(3, 9)).hex()[: rng.randint(3, 12)] for _ in range(4000)]
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            lines = []
            for _ in range(2000):
                lines.append(f"{rng.randint(0, 10**9)},{rng.random():.6f},{' '.join(rng.choices(words, k=8))}\n")
            block = "".join(lines).encode()[: size - written]
            handle.write(block)
            written += len(block)


def build_home(root: Path, size: int) -> list[Path]:
    """A data home of `size` bytes: 3/4 checkpoints (random), 1/4 text-like."""
    root.mkdir(parents=True)
    files = []
    for index in range(4):
        path = root / f"checkpoint-{index}.pt"
        write_random(path, size * 3 // 16)
        files.append(path)
    text = root / "metrics.csv"
    write_text_like(text, size - 4 * (size * 3 // 16))
    files.append(text)
    return files


def build_database(path: Path, size: int) -> None:
    rng = random.Random(3)
    db = sqlite3.connect(path)
    db.execute("create table metric (id integer primary key, run text, step integer, value real, note text)")
    rows = size // 1024
    db.executemany(
        "insert into metric values (?, ?, ?, ?, ?)",
        ((i, f"run-{i // 5000}", i % 5000, rng.random(), rng.randbytes(450).hex()) for i in range(rows)),
    )
    db.commit()
    db.close()


def change_rows(path: Path, count: int, seed: int = 1) -> None:
    db = sqlite3.connect(path)
    total = db.execute("select count(*) from metric").fetchone()[0]
    rng = random.Random(seed)
    for row in rng.sample(range(total), count):
        db.execute("update metric set value = ?, note = ? where id = ?", (rng.random(), rng.randbytes(450).hex(), row))
    db.commit()
    db.close()


# The two tools -------------------------------------------------------------------------------


class Ours:
    name = "ours"

    def __init__(self, root: Path) -> None:
        from quadra_pipeline.backup import BackupRepository
        from quadra_pipeline.keys import generate

        self.repo = BackupRepository(root, keys=generate("ed25519"), require_signature=True)
        self.root = root

    def backup(self, files: list[Path]) -> float:
        from quadra_pipeline.backup import SourceFile

        started = time.perf_counter()
        self.repo.create([SourceFile(p.name, p) for p in files], sources={})
        return time.perf_counter() - started

    def restore(self, target: Path) -> float:
        started = time.perf_counter()
        self.repo.restore(self.repo.backup_ids()[-1], target)
        return time.perf_counter() - started

    def child(self, source: Path) -> list[str]:
        return [sys.executable, "-c", textwrap.dedent(OUR_CHILD), str(self.root), str(source)]


class Restic:
    name = "restic"

    def __init__(self, root: Path, cache: Path) -> None:
        self.root = root
        self.env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_CACHE_DIR": str(cache)}
        self.run("init", "--repository-version", "2")

    @staticmethod
    def available() -> bool:
        return shutil.which("restic") is not None

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["restic", "--repo", str(self.root), "--quiet", *args], env=self.env, cwd=cwd,
                              check=True, capture_output=True, text=True)

    def backup(self, files: list[Path]) -> float:
        started = time.perf_counter()
        self.run("backup", *[p.name for p in files], cwd=files[0].parent)
        return time.perf_counter() - started

    def restore(self, target: Path) -> float:
        started = time.perf_counter()
        self.run("restore", "latest", "--target", str(target))
        return time.perf_counter() - started

    def child(self, source: Path) -> list[str]:
        return ["restic", "--repo", str(self.root), "--quiet", "backup", source.name]


def sha256sum(files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)
    return time.perf_counter() - started


def durable_copy(files: list[Path], folder: Path) -> float:
    """Copy the files and fsync them: what writing these bytes durably costs this disk."""
    folder.mkdir()
    started = time.perf_counter()
    for path in files:
        target = folder / path.name
        shutil.copyfile(path, target)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return seconds


def disk_bytes(root: Path) -> int:
    """Allocated bytes under `root` (what the repository costs on disk)."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def peak_rss_mb(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(VmHWM in MB, seconds) of a process, polled from /proc until it exits."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while process.poll() is None:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"{argv[0]} failed: {err.decode()[-500:]}")
    return peak, time.perf_counter() - started


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.file_digest(open(p, "rb"), "sha256").hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# Chunk size ---------------------------------------------------------------------------------


def chunk_size_table(before: Path, after: Path) -> list[tuple[str, str, str, str, str]]:
    from quadra_pipeline.backup.chunks import READ_BLOCK, Cutter

    def cut(path: Path, average: int) -> tuple[dict[str, int], float]:
        cutter, chunks = Cutter(average // 4, average, average * 4), {}
        started = time.perf_counter()
        with open(path, "rb") as handle:
            while True:
                block = handle.read(READ_BLOCK)
                for piece in cutter.feed(block, final=not block):
                    chunks[hashlib.sha256(piece).hexdigest()] = len(piece)
                if not block:
                    break
        return chunks, time.perf_counter() - started

    entry_bytes = len(json.dumps(["0" * 64, 262144, 262144], separators=(",", ":"))) + 1
    rows = []
    size_mb = after.stat().st_size / 1e6
    for average in (64 << 10, 256 << 10, 1 << 20):
        old, _ = cut(before, average)
        new, seconds = cut(after, average)
        added = sum(length for sha, length in new.items() if sha not in old)
        rows.append((f"{average >> 10} KiB", f"{len(new)}", f"{added / 1e6:.2f} MB",
                     f"{len(new) * entry_bytes / 1e3:.0f} KB", f"{size_mb / seconds:.0f} MB/s"))
    return rows


# Report -------------------------------------------------------------------------------------


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def ratio(a: float | None, b: float | None, fmt: str = "{:.2f}x") -> str:
    return fmt.format(a / b) if a and b else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--db-mb", type=int, default=200)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rss-size-mb", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to put the work files (default: the temp folder)")
    parser.add_argument("--memory-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="a tmpfs for the in-memory repositories (default /dev/shm; '' to skip)")
    args = parser.parse_args()
    have_restic = Restic.available()
    if not have_restic:
        print("restic is not installed (Debian: apt-get install restic, for this benchmark only): "
              "the comparison is skipped, ours is measured alone\n")
    tools = [Ours] + ([Restic] if have_restic else [])
    work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.dir))
    memory = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.memory_dir)) if args.memory_dir else None
    try:
        return run(args, tools, work, memory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if memory:
            shutil.rmtree(memory, ignore_errors=True)


def make(tool, work: Path, name: str):
    root = work / f"{tool.name}-{name}"
    return tool(root) if tool is Ours else tool(root, work / "restic-cache")


def run(args, tools, work: Path, memory: Path | None) -> int:
    size = args.size_mb << 20
    print(f"building a {args.size_mb} MB data home and a {args.db_mb} MB SQLite database in {work} ...", flush=True)
    files = build_home(work / "home", size)
    mb = size / 1e6

    # 1. First backup, alternated with sha256sum and a durable copy; 2. restore. The repository
    # on the disk (both tools make it durable: the disk's write speed bounds them), and in memory
    # (tmpfs: what the software itself costs).
    places = {"disk": work} | ({"memory": memory} if memory else {})
    times: dict[str, list[float]] = {"sha256sum": [], "durable copy": []}
    restores: dict[str, list[float]] = {}
    first_bytes: dict[str, int] = {}
    for repeat in range(args.repeats):
        times["sha256sum"].append(sha256sum(files))
        times["durable copy"].append(durable_copy(files, work / "copy"))
        for place, folder in places.items():
            for tool in tools:
                instance = make(tool, folder, f"first{repeat}")
                times.setdefault(f"{tool.name} {place}", []).append(instance.backup(files))
                first_bytes[tool.name] = disk_bytes(instance.root)
                target = work / f"restored-{tool.name}"
                restores.setdefault(f"{tool.name} {place}", []).append(instance.restore(target))
                if tool is Ours and repeat == 0:
                    assert tree_digest(target) == tree_digest(files[0].parent), "the restore differs from the source"
                shutil.rmtree(target)
                shutil.rmtree(instance.root)
    speed = {name: mb / statistics.median(values) for name, values in times.items()}
    restore_speed = {name: mb / statistics.median(values) for name, values in restores.items()}

    # 3. The database: 5 rows changed; 4. unchanged hours.
    db = work / "db" / "quadra.db"
    db.parent.mkdir()
    build_database(db, args.db_mb << 20)
    before = work / "db-before.db"
    shutil.copyfile(db, before)
    changed, unchanged, one_backup, unchanged_seconds = {}, {}, {}, {}
    db_copy = work / "db-pristine.db"
    shutil.copyfile(db, db_copy)
    for tool in tools:
        shutil.copyfile(db_copy, db)
        instance = make(tool, work, "db")
        instance.backup([db])
        one_backup[tool.name] = disk_bytes(instance.root)
        change_rows(db, 5)
        grown = disk_bytes(instance.root)
        instance.backup([db])
        changed[tool.name] = disk_bytes(instance.root) - grown
        after_change = disk_bytes(instance.root)
        started = time.perf_counter()
        for _ in range(args.hours):
            instance.backup([db])
        unchanged_seconds[tool.name] = (time.perf_counter() - started) / args.hours
        unchanged[tool.name] = disk_bytes(instance.root) - after_change
        shutil.rmtree(instance.root)
    changed_db = work / "db-after.db"
    shutil.copyfile(db, changed_db)

    # 5. Peak RSS on a large file, and on an eighth of it (bounded: it must not grow with the file).
    big = work / "rss" / "big.bin"
    big.parent.mkdir()
    print(f"writing a {args.rss_size_mb} MB file for the memory test ...", flush=True)
    write_random(big, args.rss_size_mb << 20)
    small = work / "rss-small" / "big.bin"
    small.parent.mkdir()
    with open(big, "rb") as source, open(small, "wb") as target:
        target.write(source.read((args.rss_size_mb << 20) // 8))
    rss, rss_small = {}, {}
    for tool in tools:
        for path, into in ((small, rss_small), (big, rss)):
            instance = make(tool, work, "rss")
            into[tool.name] = peak_rss_mb(instance.child(path), path.parent, getattr(instance, "env", None))
            shutil.rmtree(instance.root)
    big.unlink()
    small.unlink()

    # Report.
    ours, theirs = "ours", "restic" if "restic" in first_bytes else None
    print(f"\nbench_backup: {args.size_mb} MB data home, {args.db_mb} MB SQLite database, median of {args.repeats}; "
          f"{os.cpu_count()} cores; restic {'present' if theirs else 'absent'}\n")
    rows = []
    for place in places:
        where = "repository on disk" if place == "disk" else f"repository in memory ({args.memory_dir})"
        mine, other = speed[f"{ours} {place}"], speed.get(f"{theirs} {place}")
        rows.append((f"first backup, {where} (MB/s)", f"{mine:.0f}", f"{other:.0f}" if other else "absent",
                     f"{speed['sha256sum']:.0f}", f"{ratio(mine, other)} restic, {ratio(mine, speed['sha256sum'])} sha256sum"
                     + (f", {ratio(mine, speed['durable copy'])} durable copy" if place == "disk" else ""),
                     ">= 1x restic, >= 0.7x sha256sum"))
    for place in places:
        where = "from disk" if place == "disk" else "from memory"
        mine, other = restore_speed[f"{ours} {place}"], restore_speed.get(f"{theirs} {place}")
        rows.append((f"restore {where}, to disk (MB/s)", f"{mine:.0f}", f"{other:.0f}" if other else "absent",
                     f"{speed['sha256sum']:.0f}", f"{ratio(mine, other)} restic, {ratio(mine, speed['sha256sum'])} sha256sum",
                     ">= 0.7x sha256sum"))
    rows += [
            ("durable copy of the same files (MB/s)", "-", "-", f"{speed['durable copy']:.0f}",
             "the disk's own write speed: copy, fsync", "-"),
            ("first backup, stored (MB)", f"{first_bytes[ours] / 1e6:.0f}", f"{first_bytes[theirs] / 1e6:.0f}" if theirs else "absent",
             "-", ratio(first_bytes[ours], first_bytes.get(theirs or '')), "-"),
            (f"{args.db_mb} MB database, 5 rows changed: added (MB)", f"{changed[ours] / 1e6:.2f}",
             f"{changed[theirs] / 1e6:.2f}" if theirs else "absent", "-", ratio(changed[ours], changed.get(theirs or '')), "<= 1.5x restic"),
            (f"{args.hours} unchanged hours: added (KB)", f"{unchanged[ours] / 1e3:.0f}",
             f"{unchanged[theirs] / 1e3:.0f}" if theirs else "absent", "-",
             f"1 backup + {args.hours} h = {(one_backup[ours] + unchanged[ours]) / one_backup[ours]:.3f}x one backup"
             + (f" (restic {(one_backup[theirs] + unchanged[theirs]) / one_backup[theirs]:.3f}x)" if theirs else ""), "<= 1.05x"),
            ("unchanged hour: seconds each", f"{unchanged_seconds[ours]:.2f}",
             f"{unchanged_seconds[theirs]:.2f}" if theirs else "absent", "-", "-", "-"),
            (f"peak RSS, {args.rss_size_mb // 8} MB file (MB)", f"{rss_small[ours][0]:.0f}",
             f"{rss_small[theirs][0]:.0f}" if theirs else "absent", "-", "-", "-"),
            (f"peak RSS, {args.rss_size_mb} MB file (MB)", f"{rss[ours][0]:.0f}", f"{rss[theirs][0]:.0f}" if theirs else "absent",
             "-", f"{rss[ours][0] / rss_small[ours][0]:.2f}x the {args.rss_size_mb // 8} MB file's, ours"
             + (f"; restic {rss[theirs][0] / rss_small[theirs][0]:.2f}x" if theirs else ""),
             "bounded (not growing with the file)")]
    print_table(("", "ours", "restic", "sha256sum", "ratio", "target"), rows)
    print("Chunk size (our cutter; the same database before and after its 5-row change):\n")
    print_table(("average chunk", "chunks", "new chunk bytes", "file list per backup", "cutting speed"),
                chunk_size_table(before, changed_db))
    print("runs (s): " + "; ".join(f"{name} " + ", ".join(f"{t:.2f}" for t in values) for name, values in times.items())
          + "; restore " + "; ".join(f"{name} " + ", ".join(f"{t:.2f}" for t in values) for name, values in restores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
