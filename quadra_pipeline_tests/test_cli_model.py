"""`quadra model list / promote / import` as a user runs them, against a temp MLflow store
(MLFLOW_TRACKING_URI), data home (QUADRA_HOME) and database (DATABASE_URL)."""

import json
from pathlib import Path

import pytest

from quadra_pipeline.model.checkpoint import file_sha256
from quadra_pipeline_tests.model.test_checkpoint import write_original
from quadra_pipeline_tests.test_cli import one_error_line, quadra


@pytest.fixture
def env(tmp_path):
    return {
        "QUADRA_HOME": str(tmp_path / "home"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'quadra.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }


@pytest.mark.parametrize("command", [["list"], ["promote"], ["import"]])
def test_help(tmp_path, command):
    result = quadra("model", *command, "--help", cwd=tmp_path, check=0)
    assert "usage: quadra model" in result.stdout


def test_import_promote_rollback_list(tmp_path, env):
    write_original(tmp_path / "orig100.pth", 100)
    write_original(tmp_path / "orig150.pth", 150, seed=1)
    empty = quadra("model", "list", cwd=tmp_path, env=env, check=0)
    assert "no versions of quadra-matrix are registered yet" in empty.stdout
    assert empty.stderr == ""  # no MLflow migration chatter on a new store

    first = quadra("model", "import", "orig100.pth", cwd=tmp_path, env=env, check=0)
    assert "original format, field size 100" in first.stdout and "quadra-matrix version 1" in first.stdout
    assert file_sha256(tmp_path / "orig100.pth") in first.stdout
    second = quadra("model", "import", "orig150.pth", "--description", "the big one", cwd=tmp_path, env=env, check=0)
    assert "quadra-matrix version 2; challenger -> 2" in second.stdout

    promoted = quadra("model", "promote", "2", "--reason", "looks good", cwd=tmp_path, env=env, check=0)
    assert "quadra-matrix@champion -> version 2" in promoted.stdout
    rolled_back = quadra("model", "promote", "v1", "--reason", "rollback", cwd=tmp_path, env=env, check=0)
    assert "quadra-matrix@champion: version 2 -> version 1 (by cli:" in rolled_back.stdout

    refused = quadra("model", "promote", "9", cwd=tmp_path, env=env)
    assert one_error_line(refused) == (
        f"quadra: error: quadra-matrix version 9 does not exist in the MLflow registry at "
        f"{env['MLFLOW_TRACKING_URI']} (known versions: 1, 2)")
    assert refused.returncode == 1 and refused.stdout == ""

    listing = json.loads(quadra("model", "list", "--json", cwd=tmp_path, env=env, check=0).stdout)
    assert listing["aliases"] == {"challenger": 2, "champion": 1}  # unchanged by the refused promote
    versions = {v["version"]: v for v in listing["versions"]}
    assert versions[1]["tags"]["checkpoint_sha256"] == file_sha256(tmp_path / "orig100.pth")
    assert versions[2]["tags"]["field_size"] == "150" and versions[2]["description"] == "the big one"
    assert all(v["tags"]["source"] == "import" and v["mirrored"] for v in versions.values())
    moves = [(m["alias"], m["from_version"], m["to_version"], m["reason"]) for m in listing["history"]]
    assert moves == [
        ("challenger", None, "quadra-matrix/1", "registered version 1"),
        ("challenger", "quadra-matrix/1", "quadra-matrix/2", "registered version 2"),
        ("champion", None, "quadra-matrix/2", "looks good"),
        ("champion", "quadra-matrix/2", "quadra-matrix/1", "rollback"),
    ]
    assert all(m["moved_by"].startswith("cli:") for m in listing["history"]) and listing["drift"] == []

    text = quadra("model", "list", cwd=tmp_path, env=env, check=0)
    assert text.stderr == ""
    assert "      1  champion" in text.stdout and "      2  challenger" in text.stdout
    assert "champion       2 -> 1" in text.stdout and "(rollback)" in text.stdout
    # Artifacts under the data home, nothing in the working directory.
    assert (tmp_path / "home" / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def test_import_refuses_a_file_that_is_no_checkpoint(tmp_path, env):
    (tmp_path / "notes.pth").write_text("hello")
    line = one_error_line(quadra("model", "import", "notes.pth", cwd=tmp_path, env=env))
    assert line.startswith("quadra: error: notes.pth: not a ")
    missing = one_error_line(quadra("model", "import", "absent.pth", cwd=tmp_path, env=env))
    assert missing == "quadra: error: absent.pth: no such file"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "quadra.db").exists()


def test_unreachable_tracking_server_is_one_line_without_the_password(tmp_path, env):
    env = {**env, "MLFLOW_TRACKING_URI": "http://ops:hunter2@127.0.0.1:1"}
    for command in (["list"], ["promote", "1"]):
        line = one_error_line(quadra("model", *command, cwd=tmp_path, env=env))
        assert line == ("quadra: error: MLflow tracking server at http://ops:***@127.0.0.1:1 is unreachable "
                        "after 3 attempts (Connection refused)")
    assert not (tmp_path / "quadra.db").exists()  # refused before the database was touched


def test_promote_usage_errors(tmp_path, env):
    result = quadra("model", "promote", "zero", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "must be a version number such as 3 (or v3), got 'zero'" in one_error_line(result)


def test_history_verify_sign_and_keygen(tmp_path, env):
    """`quadra model history` finds a champion moved with a plain MlflowClient; `verify` exits 0
    until a byte of the stored checkpoint flips, then 1 with one line naming the file, and
    `promote` refuses the version; `keygen` writes a usable pair."""
    from urllib.parse import unquote, urlparse

    from mlflow import MlflowClient

    from quadra_pipeline_tests.registry.test_signing import flip_a_byte

    write_original(tmp_path / "a.pth", 24)
    write_original(tmp_path / "b.pth", 24, seed=1)
    for name in ("a.pth", "b.pth"):
        quadra("model", "import", name, cwd=tmp_path, env=env, check=0)
    quadra("model", "promote", "1", cwd=tmp_path, env=env, check=0)
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    client.set_registered_model_alias("quadra-matrix", "champion", "2")  # as the MLflow UI would

    history = json.loads(quadra("model", "history", "--alias", "champion", "--json", cwd=tmp_path, env=env, check=0).stdout)
    moves = [(m["from_version"], m["to_version"], m["moved_by"]) for m in history["history"]]
    assert moves[-1] == ("quadra-matrix/1", "quadra-matrix/2", "external")
    assert moves[0][2].startswith("cli:")
    text = quadra("model", "history", cwd=tmp_path, env=env, check=0).stdout
    assert "champion       1 -> 2     by external" in text

    ok = quadra("model", "verify", "2", cwd=tmp_path, env=env, check=0)
    assert "every file matches its signature (signed at import" in ok.stdout
    location = client.get_model_version_download_uri("quadra-matrix", "2")
    flip_a_byte(Path(unquote(urlparse(location).path)) / "extra_files" / "checkpoint.pt")
    bad = quadra("model", "verify", "2", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and one_error_line(bad) == (
        "quadra: error: quadra-matrix version 2 does not match its signature: extra_files/checkpoint.pt was changed")
    refused = quadra("model", "promote", "2", cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "extra_files/checkpoint.pt was changed" in one_error_line(refused)

    keys = quadra("model", "keygen", "--out", "k/signing.pem", cwd=tmp_path, env=env, check=0)
    assert "QUADRA_MODEL_SIGNING_KEY_FILE=" in keys.stdout
    assert oct((tmp_path / "k" / "signing.pem").stat().st_mode & 0o777) == "0o600"
    again = quadra("model", "keygen", "--out", "k/signing.pem", cwd=tmp_path, env=env)
    assert "already exists; refusing to overwrite a key" in one_error_line(again)
    signed_elsewhere = quadra("model", "verify", "1", cwd=tmp_path,
                              env={**env, "QUADRA_MODEL_SIGNING_KEY_FILE": str(tmp_path / "k" / "signing.pem")})
    assert "signed with another key" in one_error_line(signed_elsewhere)


def test_a_key_rotation_with_the_cli_keeps_old_versions_promotable(tmp_path, env):
    """docs/DISASTER_RECOVERY.md, "Rotating the signing keys", for model versions: a new pair,
    the old public key into the keyring, the new key signing; `quadra model keys` lists both with
    the versions each signed; the pre-rotation version verifies and is promoted back (rollback);
    taken out of the keyring, it is refused naming its key id."""
    write_original(tmp_path / "a.pth", 16)
    write_original(tmp_path / "b.pth", 16, seed=1)
    quadra("model", "keygen", "--out", "keys/model-1.pem", cwd=tmp_path, env=env, check=0)
    old = {**env, "QUADRA_MODEL_SIGNING_KEY_FILE": str(tmp_path / "keys" / "model-1.pem")}
    quadra("model", "import", "a.pth", cwd=tmp_path, env=old, check=0)
    quadra("model", "promote", "1", cwd=tmp_path, env=old, check=0)

    quadra("model", "keygen", "--out", "keys/model-2.pem", cwd=tmp_path, env=env, check=0)
    (tmp_path / "keyring").mkdir()
    (tmp_path / "keyring" / "model-1.pub").write_bytes((tmp_path / "keys" / "model-1.pub").read_bytes())
    new = {**env, "QUADRA_MODEL_SIGNING_KEY_FILE": str(tmp_path / "keys" / "model-2.pem"),
           "QUADRA_MODEL_VERIFY_KEYS_FILE": str(tmp_path / "keyring")}
    quadra("model", "import", "b.pth", cwd=tmp_path, env=new, check=0)
    quadra("model", "promote", "2", cwd=tmp_path, env=new, check=0)

    listing = json.loads(quadra("model", "keys", "--json", cwd=tmp_path, env=new, check=0).stdout)
    current, retired = listing["keys"]
    assert current["signing"] and current["signed"] == ["2"] and current["origin"].startswith("QUADRA_MODEL_SIGNING_KEY_FILE=")
    assert not retired["signing"] and retired["signed"] == ["1"]
    assert retired["origin"] == f"QUADRA_MODEL_VERIFY_KEYS_FILE={tmp_path / 'keyring' / 'model-1.pub'}"
    assert current["algorithm"] == "ECDSA P-256" and retired["fingerprint"].startswith("SHA256:")
    text = quadra("model", "keys", cwd=tmp_path, env=new, check=0).stdout
    assert f"key {retired['key_id']}\n" in text and "1 version (1)" in text

    quadra("model", "verify", "1", cwd=tmp_path, env=new, check=0)
    rolled_back = quadra("model", "promote", "1", "--reason", "rollback", cwd=tmp_path, env=new, check=0)
    assert "version 2 -> version 1" in rolled_back.stdout

    forgetful = {k: v for k, v in new.items() if k != "QUADRA_MODEL_VERIFY_KEYS_FILE"}
    refused = quadra("model", "verify", "1", cwd=tmp_path, env=forgetful)
    assert f"was signed with another key ({retired['key_id']}), which is not in the model keyring" in one_error_line(refused)
    listing = json.loads(quadra("model", "keys", "--json", cwd=tmp_path, env=forgetful, check=0).stdout)
    assert [(k["key_id"], k["in_keyring"], k["signed"]) for k in listing["keys"]] == [
        (current["key_id"], True, ["2"]), (retired["key_id"], False, ["1"])]
