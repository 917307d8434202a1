"""A backup-signing key rotated: backups signed before and after it verify and restore with the
keyring (the new signing key plus the retired public key), the hash chain goes on across the
rotation, and a key taken out of the keyring fails what it signed, naming its key id."""

from __future__ import annotations

import json

import pytest

from quadra_pipeline.backup import BackupError, BackupRepository, IntegrityError
from quadra_pipeline.keys import Keyring, KeyPair, generate

from .repository_helpers import KEY, read_tree, write_tree

OLD, NEW = generate("ed25519"), generate("ed25519")


def keyring(*pairs: KeyPair) -> Keyring:
    return Keyring("ed25519", [KeyPair(p.public_pem, origin="QUADRA_BACKUP_VERIFY_KEYS_FILE=/k/retired.pem") for p in pairs])


def signer_of(repo: BackupRepository, backup_id: str) -> str:
    return json.loads(repo.manifest_path(backup_id).read_bytes())["signature"]["key"]


@pytest.fixture
def rotated(tmp_path):
    """Two backups signed with OLD, then the rotation (NEW signs, OLD retired into the keyring)
    and two more. Returns (repository after the rotation, old ids, new ids, tree of each id)."""
    root = tmp_path / "repo"
    sources = write_tree(tmp_path / "src", {"db/quadra.db": b"", "checkpoints/c.pt": b"weights" * 5000})
    trees, ids = {}, []

    def backup(repo: BackupRepository, hour: int) -> None:
        (tmp_path / "src" / "db" / "quadra.db").write_bytes(bytes([hour]) * 60_000)
        backup_id = repo.create(sources, sources={"hour": hour}).manifest.backup_id
        trees[backup_id] = read_tree(tmp_path / "src")
        ids.append(backup_id)

    before = BackupRepository(root, keys=OLD, hmac_key=KEY, require_signature=True)
    backup(before, 0)
    backup(before, 1)
    after = BackupRepository(root, keys=NEW, keyring=keyring(OLD), hmac_key=KEY, require_signature=True)
    backup(after, 2)
    backup(after, 3)
    return after, ids[:2], ids[2:], trees


def test_backups_from_before_and_after_a_rotation_verify_and_the_chain_goes_on(rotated):
    repo, old, new, _ = rotated
    assert [signer_of(repo, i) for i in old + new] == [OLD.key_id, OLD.key_id, NEW.key_id, NEW.key_id]
    assert all(repo.verify(i).ok for i in old + new)
    assert repo.history_problems() == []
    headers = [json.loads(repo.manifest_path(i).read_bytes()) for i in old + new]
    assert [h["sequence"] for h in headers] == [1, 2, 3, 4]
    # The first backup after the rotation names the last one before it: one chain, not two.
    assert headers[2]["previous"] == {"backup_id": old[-1], "manifest_sha256": repo.manifest_sha256(old[-1])}
    assert json.loads(repo.history.head_path.read_bytes())["signature"]["key"] == NEW.key_id


def test_a_backup_from_before_the_rotation_restores(rotated, tmp_path):
    repo, old, _, trees = rotated
    repo.restore(old[0], tmp_path / "restored")
    assert read_tree(tmp_path / "restored") == trees[old[0]]


def test_pruning_across_the_rotation_keeps_the_history_legal(rotated):
    """The pruned record is signed with the new key and names backups the old key signed."""
    repo, old, new, _ = rotated
    repo.delete_many(old)
    assert repo.history_problems() == []
    assert all(repo.verify(i).ok for i in new)


def test_a_key_removed_from_the_keyring_fails_what_it_signed_naming_the_key_id(rotated, tmp_path):
    repo, old, new, _ = rotated
    forgetful = BackupRepository(repo.root, keys=NEW, hmac_key=KEY, require_signature=True)
    for backup_id in old:
        report = forgetful.verify(backup_id)
        assert not report.ok
        assert report.problems == [(
            f"manifests/{backup_id}.json is signed with another key ({OLD.key_id}), which is not in the backup "
            f"keyring ({NEW.key_id[:12]}...)"
        )]
    assert all(forgetful.verify(i).ok for i in new)
    with pytest.raises(IntegrityError, match=OLD.key_id):
        forgetful.restore(old[0], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_a_record_signed_with_a_removed_key_fails_the_history_naming_it(rotated):
    repo, old, _, _ = rotated
    before = BackupRepository(repo.root, keys=OLD, keyring=keyring(NEW), hmac_key=KEY, require_signature=True)
    before.delete(old[0])  # a pruned record signed with OLD (as a prune before the rotation was)
    after_only = BackupRepository(repo.root, keys=NEW, hmac_key=KEY, require_signature=True)
    problems = after_only.history_problems()
    assert any(p.startswith("history/") and OLD.key_id in p for p in problems)
    assert BackupRepository(repo.root, keys=NEW, keyring=keyring(OLD), hmac_key=KEY).history_problems() == []


def test_a_verify_only_host_checks_with_the_keyring_alone_and_cannot_write(rotated, tmp_path):
    repo, old, new, _ = rotated
    verifier = BackupRepository(repo.root, keyring=keyring(OLD, NEW), require_signature=True)
    assert all(verifier.verify(i).ok for i in old + new) and verifier.history_problems() == []
    sources = write_tree(tmp_path / "more", {"a": b"a"})
    with pytest.raises(BackupError, match="this host verifies backups and cannot write them"):
        verifier.create(sources, sources={})
    with pytest.raises(BackupError, match="this host verifies backups and cannot write them"):
        verifier.delete(old[0])  # pruning writes a signed record: the signing key's job too
    assert verifier.backup_ids() == old + new


def test_without_any_key_a_repository_that_requires_signatures_checks_none_and_writes_none(rotated, tmp_path):
    """Production with no backup key at all (a process that never backs up): nothing it reads
    passes unchecked, and it cannot write; the messages name the variables to set."""
    repo, old, _, _ = rotated
    keyless = BackupRepository(repo.root, require_signature=True)
    report = keyless.verify(old[0])
    assert not report.ok and "no backup verification key is configured" in report.problems[0]
    assert "QUADRA_BACKUP_VERIFY_KEYS_FILE" in report.problems[0]
    with pytest.raises(BackupError) as caught:
        keyless.create(write_tree(tmp_path / "more", {"a": b"a"}), sources={})
    assert "QUADRA_BACKUP_SIGNING_KEY_FILE" in str(caught.value) and "QUADRA_BACKUP_SIGNING_KEY" in str(caught.value)


def test_the_rotation_runbook_with_the_cli(tmp_path):
    """docs/DISASTER_RECOVERY.md, "Rotating the signing keys", for backups, command by command:
    a new pair, the old public key into the keyring, the new key signing; old and new backups
    verify and the old one restores; `quadra backup keys` lists both keys with what each signed;
    without the old key, what it signed fails naming its key id."""
    from .live_home import quadra

    home = tmp_path / "home"
    (home / "checkpoints" / "run0").mkdir(parents=True)
    (home / "checkpoints" / "run0" / "checkpoint.pt").write_bytes(b"weights" * 10_000)
    backups = {"QUADRA_BACKUP_DIR": str(tmp_path / "backups")}
    quadra(home, "backup", "keygen", "--out", tmp_path / "keys" / "backup-1.pem")
    old = {**backups, "QUADRA_BACKUP_SIGNING_KEY_FILE": str(tmp_path / "keys" / "backup-1.pem")}
    first = quadra(home, "backup", "create", **old).stdout.strip()

    quadra(home, "backup", "keygen", "--out", tmp_path / "keys" / "backup-2.pem")
    keyring = tmp_path / "backup-keyring.pem"
    keyring.write_bytes((tmp_path / "keys" / "backup-1.pub").read_bytes())
    new = {**backups, "QUADRA_BACKUP_SIGNING_KEY_FILE": str(tmp_path / "keys" / "backup-2.pem"),
           "QUADRA_BACKUP_VERIFY_KEYS_FILE": str(keyring)}
    (home / "checkpoints" / "run0" / "checkpoint.pt").write_bytes(b"better weights" * 10_000)
    second = quadra(home, "backup", "create", **new).stdout.strip()
    verified = quadra(home, "backup", "verify", **new).stdout.splitlines()
    assert [line.split()[:2] for line in verified if not line.startswith("read")] == [[first, "OK"], [second, "OK"], ["history", "OK"]]
    quadra(home, "backup", "restore", first, "--target", tmp_path / "restored", **new)
    assert (tmp_path / "restored" / "checkpoints" / "run0" / "checkpoint.pt").read_bytes() == b"weights" * 10_000

    listing = json.loads(quadra(home, "backup", "keys", "--json", **new).stdout)
    current, retired = listing["keys"]
    assert current["signing"] and current["signed"] == [second, "head.json"] and current["algorithm"] == "Ed25519"
    assert retired["signed"] == [first] and retired["origin"] == f"QUADRA_BACKUP_VERIFY_KEYS_FILE={keyring}"
    assert listing["other"] == {}
    text = quadra(home, "backup", "keys", **new).stdout
    assert f"key {retired['key_id']}\n" in text and f"1 backup ({first})" in text
    assert f"1 backup ({second}); 1 history document (head.json)" in text

    forgetful = {k: v for k, v in new.items() if k != "QUADRA_BACKUP_VERIFY_KEYS_FILE"}
    failed = quadra(home, "backup", "verify", check=1, **forgetful)
    assert f"{first}  FAILED  manifests/{first}.json is signed with another key ({retired['key_id']})" in failed.stdout
    assert f"{second}  OK" in failed.stdout
    text = quadra(home, "backup", "keys", **forgetful).stdout
    assert f"key {retired['key_id']}  NOT IN THE KEYRING" in text and "QUADRA_BACKUP_VERIFY_KEYS_FILE" in text
