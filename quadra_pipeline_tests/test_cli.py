"""`quadra` as a user runs it: the installed console script, exit codes, one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quadra_pipeline_tests.model.test_checkpoint import write_original

QUADRA = shutil.which("quadra", path=str(Path(sys.executable).parent)) or "quadra"


def quadra(*args, cwd, env=None, check=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("QUADRA_", "DATABASE_URL", "MLFLOW_"))}
    environment.update(env or {})
    result = subprocess.run([QUADRA, *map(str, args)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_console_script_is_installed():
    assert Path(QUADRA).exists(), "pip install must put a 'quadra' script next to the interpreter"


@pytest.mark.parametrize("command", [[], ["train"], ["model"], ["model", "probe"], ["db"], ["db", "upgrade"], ["db", "current"]])
def test_help_on_every_command(tmp_path, command):
    result = quadra(*command, "--help", cwd=tmp_path, check=0)
    assert "usage: quadra" in result.stdout


def test_train_then_resume_then_probe(tmp_path):
    out = tmp_path / "run"
    result = quadra("train", "--field-size", 20, "--batches", 3, "--seed", 4, "--out", out, "--checkpoint-every", 2, cwd=tmp_path, check=0)
    summary = json.loads(result.stdout)
    assert summary["batches"] == 3 and Path(summary["checkpoint"]).exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch_number"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) >= {"loss", "reward", "reward_per_item", "variance", "field_mean", "learning_rate", "k_clusters",
                            "speedup_factor", "resonance", "stability", "throttle_events", "texts", "batch_seconds"}

    resumed = quadra("train", "--batches", 5, "--out", out, "--resume", out / "checkpoint.pt", cwd=tmp_path, check=0)
    assert json.loads(resumed.stdout)["batches"] == 5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch_number"] for r in rows] == [1, 2, 3, 4, 5]

    probe = quadra("model", "probe", out / "checkpoint.pt", "--json", cwd=tmp_path, check=0)
    values = json.loads(probe.stdout)
    assert values["format"] == "quadra-pipeline" and values["field_size"] == 20
    assert set(values) >= {"update_field", "adjust_syntropy", "penalize_variance", "spike_rate"}


def test_csv_metrics(tmp_path):
    quadra("train", "--field-size", 16, "--batches", 2, "--out", tmp_path / "r", "--metrics-format", "csv", cwd=tmp_path, check=0)
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("batch_number,loss,reward")


@pytest.mark.parametrize("n", [100, 150])
def test_probe_an_original_checkpoint(tmp_path, n):
    write_original(tmp_path / "orig.pth", n)
    result = quadra("model", "probe", tmp_path / "orig.pth", cwd=tmp_path, check=0)
    assert f"original format, field size {n}" in result.stdout
    assert "penalize_variance" in result.stdout


def test_errors_are_one_line_and_touch_nothing(tmp_path):
    out = tmp_path / "run"
    quadra("train", "--field-size", 16, "--batches", 2, "--out", out, cwd=tmp_path, check=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    line = one_error_line(quadra("train", "--out", out, "--resume", bad, cwd=tmp_path))
    assert line.startswith("quadra: error:") and str(bad) in line
    line = one_error_line(quadra("model", "probe", tmp_path / "nope.pt", cwd=tmp_path))
    assert "no such file" in line
    # --force replaces a run only once a new one has trained: a missing source replaces nothing.
    line = one_error_line(quadra("train", "--out", out, "--force", "--source", "file", "--source-option", f"path={tmp_path / 'none.txt'}", cwd=tmp_path))
    assert "none.txt" in line
    line = one_error_line(quadra("train", "--field-size", 16, "--batches", 2, "--out", out, cwd=tmp_path))
    assert "already holds a checkpoint" in line and "--resume" in line
    line = one_error_line(quadra("train", "--out", out, "--source-option", "novalue", cwd=tmp_path))
    assert "KEY=VALUE" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_usage_errors_exit_2_with_one_line(tmp_path):
    result = quadra("train", "--out", tmp_path, "--rows-per-batch", 0, cwd=tmp_path)
    assert result.returncode == 2 and "--rows-per-batch: must be at least 1" in one_error_line(result)
    result = quadra("train", "--out", tmp_path, "--batches", "abc", cwd=tmp_path)
    assert result.returncode == 2 and "must be a whole number, got 'abc'" in one_error_line(result)
    result = quadra("bogus", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in one_error_line(result)
    result = quadra("train", cwd=tmp_path)
    assert result.returncode == 2 and "--out" in one_error_line(result)


@pytest.mark.parametrize("command", [["train", "--out", "r"], ["model", "probe", "x.pt"], ["db", "current", "--database-url", "sqlite://"]])
def test_production_with_a_bad_secret_refuses_every_command(tmp_path, command):
    """A secret that is set is checked before any command runs, in every process."""
    result = quadra(*command, cwd=tmp_path, env={"QUADRA_ENV": "production", "QUADRA_SECRET_KEY": "too-short"})
    assert "QUADRA_SECRET_KEY is shorter than 32 bytes" in one_error_line(result)
    missing = tmp_path / "secrets" / "quadra-secret-key"
    result = quadra(*command, cwd=tmp_path, env={"QUADRA_ENV": "production", "QUADRA_SECRET_KEY_FILE": str(missing)})
    assert one_error_line(result) == (
        f"quadra: error: invalid settings: QUADRA_SECRET_KEY_FILE={missing}: cannot read the file (No such file or directory)")


def test_production_without_secrets_runs_what_needs_none_and_refuses_what_needs_one(tmp_path):
    """Least privilege: each secret is required by the command that uses it, named with its _FILE form."""
    from quadra_pipeline.keys import generate

    env = {"QUADRA_ENV": "production", "QUADRA_HOME": str(tmp_path / "home")}
    quadra("db", "current", "--database-url", f"sqlite:///{tmp_path / 'q.db'}", cwd=tmp_path, env=env, check=0)
    refused = one_error_line(quadra("backup", "create", cwd=tmp_path, env=env))
    assert "no backup signing key is configured: set QUADRA_BACKUP_SIGNING_KEY_FILE (or QUADRA_BACKUP_SIGNING_KEY)" in refused
    (tmp_path / "backup.pem").write_bytes(generate("ed25519").private_pem)
    refused = one_error_line(quadra("backup", "create", cwd=tmp_path,
                                    env={**env, "QUADRA_BACKUP_SIGNING_KEY_FILE": str(tmp_path / "backup.pem")}))
    assert refused == ("quadra: error: QUADRA_SECRET_KEY (or QUADRA_SECRET_KEY_FILE) is not set (required when "
                       "QUADRA_ENV=production to create a backup)")
    write_original(tmp_path / "old.pth", 16)
    refused = one_error_line(quadra("model", "import", tmp_path / "old.pth", cwd=tmp_path, env=env))
    assert "cannot import a checkpoint: no model-signing key is configured (QUADRA_MODEL_SIGNING_KEY_FILE" in refused
    assert not (tmp_path / "home" / "keys").exists() and not (tmp_path / "home" / "mlflow.db").exists()


def test_db_upgrade_and_current(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    before = quadra("db", "current", "--database-url", url, cwd=tmp_path, check=0)
    assert "empty" in before.stdout
    quadra("db", "upgrade", "--database-url", url, cwd=tmp_path, check=0)
    after = quadra("db", "current", "--database-url", url, cwd=tmp_path, check=0)
    assert "up to date" in after.stdout
    # The default database lives under the data home.
    quadra("db", "upgrade", cwd=tmp_path, env={"QUADRA_HOME": str(tmp_path / "home")}, check=0)
    assert (tmp_path / "home" / "quadra.db").exists()


def test_db_bad_url_is_one_line(tmp_path):
    line = one_error_line(quadra("db", "upgrade", "--database-url", "notadb://x", cwd=tmp_path))
    assert line.startswith("quadra: error:")
