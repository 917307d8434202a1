"""Streaming: memory does not grow with file size, measured in a fresh process.

The peak is the kernel's high-water mark of the process's resident set (`VmHWM` in
/proc/self/status), reset before each step (`echo 5 > /proc/self/clear_refs`). Not `ru_maxrss`:
Linux carries the parent's peak over `exec`, so a child of a large pytest process would start
"at" the parent's size and a real growth could hide below it.

The 2 GB figure (< 300 MB) is in benchmarks/bench_backup.py; here a 200 MB file keeps the test
quick: backing it up, verifying, restoring, exporting and importing it must each stay far below
the file's size.
"""

from __future__ import annotations

import json

from .repository_helpers import run_python

SIZE = 200 << 20

CODE = """
import json, os, sys
from pathlib import Path
from quadra_pipeline.backup import BackupRepository, SourceFile

work = Path(sys.argv[1]); size = int(sys.argv[2])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

source = work / "big.bin"
with open(source, "wb") as handle:  # varied content, written in small pieces
    block = os.urandom(1 << 20)
    for i in range(size >> 20):
        handle.write(block[i % 7:] + block[: i % 7])
del block
from quadra_pipeline.keys import generate
keys = generate("ed25519")
repo = BackupRepository(work / "repo", keys=keys, require_signature=True)
other = BackupRepository(work / "other", keys=keys)
steps = {}

def measure(name, call):
    before = status("VmRSS")
    reset_peak()
    value = call()
    steps[name] = {"before_mb": before, "peak_mb": status("VmHWM")}
    return value

result = measure("create", lambda: repo.create([SourceFile("big.bin", source)], sources={}))
backup_id = result.manifest.backup_id
assert measure("verify", lambda: repo.verify(backup_id)).ok
measure("restore", lambda: repo.restore(backup_id, work / "restored"))
archive = measure("export", lambda: repo.export(backup_id, work / "x.tar"))
measure("import", lambda: other.import_archive(archive))
print(json.dumps({"steps": steps, "total": result.total_bytes}))
"""


def test_memory_does_not_grow_with_file_size(tmp_path):
    done = run_python(CODE, str(tmp_path), str(SIZE), timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["total"] == SIZE
    for step, memory in figures["steps"].items():
        growth = memory["peak_mb"] - memory["before_mb"]
        assert growth < 64, f"{step}: resident memory grew by {growth:.0f} MB for a {SIZE >> 20} MB file ({figures})"
        assert memory["peak_mb"] < 150, f"{step}: peak resident memory {memory['peak_mb']:.0f} MB ({figures})"
