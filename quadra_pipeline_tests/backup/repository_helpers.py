"""Shared helpers of the backup-format tests (no tests here)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from quadra_pipeline.backup import BackupRepository, SourceFile
from quadra_pipeline.keys import KeyPair, generate

KEY = "test-secret-key"  # format 2's HMAC key
SIGNING = generate("ed25519")  # format 3's key pair, for the test session
VERIFY_ONLY = KeyPair(SIGNING.public_pem)  # what an off-site verifier holds
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_tree(directory: Path, files: dict[str, bytes]) -> list[SourceFile]:
    """Write `files` under `directory` and return them as SourceFiles (path in tree = relative path)."""
    sources = []
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sources.append(SourceFile(rel, path))
    return sources


def sample_files(seed: int = 0, scale: int = 1) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    return {
        "mlflow/mlflow.db": rnd.randbytes(40_000 * scale),
        "mlflow/artifacts/1/model.pt": rnd.randbytes(120_000 * scale),
        "quadra.db": rnd.randbytes(30_000 * scale),
        "models/champion.pt": rnd.randbytes(80_000 * scale),
        "models/copy-of-champion.pt": b"",  # filled below: same content as champion
        "empty.txt": b"",
    }


def tree(seed: int = 0, scale: int = 1) -> dict[str, bytes]:
    files = sample_files(seed, scale)
    files["models/copy-of-champion.pt"] = files["models/champion.pt"]
    return files


def read_tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def disk_bytes(root: Path) -> int:
    """Bytes allocated on disk under root (files and directories)."""
    total = 0
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def sha256sum_check(root: Path, sidecar: str) -> subprocess.CompletedProcess:
    """The real `sha256sum -c`, run from `root` (relative paths)."""
    return subprocess.run(["sha256sum", "--strict", "-c", sidecar], cwd=root, capture_output=True, text=True)


def file_list_of(root: Path, backup_id: str) -> str:
    """The file-list object's path, as the sidecar's second line names it."""
    lines = (root / "manifests" / f"{backup_id}.sha256").read_text().splitlines()
    return lines[1].split("  ", 1)[1]


#: The by-hand check of docs/BACKUP_FORMAT.md ("Checking a repository by hand"), verbatim.
HAND_CHECK = r"""
id=$1
sha256sum --strict -c "manifests/$id.sha256" || exit 1
list=$(sed -n 2p "manifests/$id.sha256" | cut -c67-)
jq -r '.[].chunks[][0]' "$list" | sort -u | while read -r c; do
  f=chunks/$(printf %s "$c" | cut -c1-2)/$c
  if [ "$(head -c4 "$f" | xxd -p)" = 28b52ffd ]; then zstd -dcq "$f"; else cat "$f"; fi     | sha256sum | grep -q "^$c " && echo "$f: OK" || { echo "$f: FAILED"; exit 1; }
done
"""


#: docs/BACKUP_FORMAT.md, "Checking by hand": a signature (manifest, head.json or a history
#: record) checked with the public key alone, by the standard library's json and openssl.
HAND_SIGNATURE_CHECK = r"""
python3 -c 'import base64, json, sys
d = json.load(open(sys.argv[1])); s = d.pop("signature")
open("sig.bin", "wb").write(base64.b64decode(s["value"]))
sys.stdout.write(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True))' "$1" > payload.json &&
openssl pkeyutl -verify -pubin -inkey "$2" -rawin -in payload.json -sigfile sig.bin
"""

#: docs/BACKUP_FORMAT.md: a restored tree checked against the backup's file list.
HAND_TREE_CHECK = r"""jq -r '.[] | "\(.sha256)  \(.path)"' "$1" | sha256sum --strict -c"""


def hand_check_signature(document: Path, public_key: Path, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", HAND_SIGNATURE_CHECK, "sh", str(document), str(public_key)], cwd=work,
                          capture_output=True, text=True)


def hand_check_tree(file_list: Path, restored: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", HAND_TREE_CHECK, "sh", str(file_list)], cwd=restored, capture_output=True, text=True)


def sha256sum_check_backup(root: Path, backup_id: str) -> subprocess.CompletedProcess:
    """The by-hand check of a format-3 backup with the real tools (sha256sum, jq, zstd), as a
    user types it in `root`."""
    return subprocess.run(["sh", "-c", HAND_CHECK, "sh", backup_id], cwd=root, capture_output=True, text=True)


def chunks_of(repo: BackupRepository, backup_id: str, path: str) -> list[Path]:
    """The chunk files of one file of a backup, in order."""
    entry = next(e for e in repo.read_manifest(backup_id).files if e.path == path)
    return [repo.chunks.path(sha) for sha, _, _ in entry.chunks]


def write_format2_backup(root: Path, files: dict[str, bytes], key: str | None, backup_id: str, created_at) -> str:
    """A format-2 backup, laid out as format 2 writes it (docs/BACKUP_FORMAT.md, "Format 2"),
    with the format-2 classes the reader itself uses: whole-file objects, file list, checksum
    list, HMAC-signed manifest, three-line sidecar. Returns the backup id."""
    from quadra_pipeline.backup import format2
    from quadra_pipeline.backup.tree import FileEntry

    def put(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = root / "objects" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return sha

    entries = tuple(FileEntry(rel, len(data), put(data), 0o644) for rel, data in sorted(files.items()))
    manifest = format2.Manifest(backup_id, created_at, entries, {"format": 2})
    if key is not None:
        manifest = format2.sign(manifest, key)
    put(manifest.file_list_bytes())
    put(manifest.checksum_list_bytes())
    data = manifest.to_json()
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / f"{backup_id}.json").write_bytes(data)
    (root / "manifests" / f"{backup_id}.sha256").write_bytes(format2.sidecar_text(manifest, hashlib.sha256(data).hexdigest()))
    return backup_id


def rewrite_manifest(repo: BackupRepository, backup_id: str, change, *, sign: bool = False, policy=None) -> None:
    """Edit a format-3 manifest's fields (`change(document)`), keeping it canonical and its
    sidecar consistent (what a forger with file access but without the key can do); with
    `sign`, signed again with `policy` (a forger holding a key)."""
    from quadra_pipeline.backup.format3 import Header, sidecar_text

    document = json.loads(repo.manifest_path(backup_id).read_bytes())
    change(document)
    if sign:
        document = (policy or repo.policy).sign({k: v for k, v in document.items() if k != "signature"})
    data = Header.from_document(document).to_json()
    repo.manifest_path(backup_id).write_bytes(data)
    repo.sidecar_path(backup_id).write_bytes(sidecar_text(Header.from_document(document), hashlib.sha256(data).hexdigest()))


def run_python(code: str, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (sys.argv[1:] = args)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


def flip_byte(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def assert_untouched(repo: BackupRepository, ids: list[str]) -> None:
    """Every backup in `ids` still verifies and is exactly what the repository lists."""
    assert repo.backup_ids() == ids
    for backup_id in ids:
        report = repo.verify(backup_id)
        assert report.ok, report.problems
        checked = sha256sum_check_backup(repo.root, backup_id)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert repo.history_problems() == []


def fill_disk(directory: Path, leave_pages: int = 0) -> Path:
    """Fill the file system of `directory` with one file, then free `leave_pages` 4 KiB pages."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = b"\xff" * 4096
        while True:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_pages * 4096))
    return filler


def backup(repo: BackupRepository, tmp_path: Path, seed: int = 0, name: str = "src", **kwargs):
    """A backup of `tree(seed)` written under tmp_path/name: (CreateResult, the files)."""
    files = tree(seed)
    sources = write_tree(tmp_path / name, files)
    return repo.create(sources, sources={"seed": seed, "mlflow": "3.17.0"}, **kwargs), files


def stored_chunks(repo: BackupRepository) -> dict[str, bytes]:
    """Every stored chunk's bytes, by name."""
    return {p.name: p.read_bytes() for p in repo.chunks.dir.rglob("*") if p.is_file()}
