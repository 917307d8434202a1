"""The five scenarios of docs/DISASTER_RECOVERY.md, each broken for real and recovered with the
commands the document gives, checking that nothing was lost and measuring recovery time."""

import datetime as dt
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from quadra_pipeline_tests.backup.live_home import DRILL_TIMES, QUADRA, build_live_home, cli_env, quadra, row_counts
from quadra_pipeline_tests.defs.conftest import REPO_ROOT
from quadra_pipeline_tests.defs.crash import (
    batches_in_sql,
    kill_group,
    last_batch_logged,
    mlflow_status,
    mlflow_steps,
    run_yaml,
    runs_of,
    start,
    the_run,
    training_run,
    wait_for_line,
)
from quadra_pipeline_tests.defs.test_dagster_cli import BIN, environment

DAGSTER = BIN / "dagster"
EXECUTE = ["dagster", "job", "execute", "-m", "quadra_pipeline.definitions", "-j", "training_job"]

pytestmark = pytest.mark.slow


@pytest.fixture
def live(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_BACKUP_DIR", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    build_live_home(home)
    return home


def state_of(home: Path) -> dict:
    """What must survive: table row counts, the registry listing, the champion."""
    listing = json.loads(quadra(home, "model", "list", "--json").stdout)
    return {
        "project": row_counts(home / "quadra.db"),
        "mlflow": row_counts(home / "mlflow.db"),
        "versions": sorted((v["version"], v["tags"]["checkpoint_sha256"]) for v in listing["versions"]),
        "aliases": listing["aliases"],
    }


def champion_loads(home: Path) -> bool:
    code = (
        "import mlflow, numpy as np, sys; mlflow.set_tracking_uri(sys.argv[1]);"
        "m = mlflow.pyfunc.load_model('models:/quadra-matrix@champion');"
        "print(m.predict(np.zeros((1, 16), dtype=np.float32)).shape)"
    )
    result = subprocess.run([str(Path(QUADRA).parent / "python"), "-c", code, f"sqlite:///{home / 'mlflow.db'}"],
                            capture_output=True, text=True, timeout=300, env=cli_env(home))
    return result.returncode == 0 and "(1, 3)" in result.stdout


def recover(scenario: str, checked: str, *commands, home: Path) -> float:
    started = time.monotonic()
    for command in commands:
        quadra(home, *command)
    seconds = time.monotonic() - started
    DRILL_TIMES.append((scenario, seconds, checked))
    return seconds


def test_1_application_crash_a_dagster_training_run_killed_resumes_and_nothing_wedges(tmp_path):
    """The runbook's scenario 1 with a Dagster run: `dagster job execute` killed with SIGKILL
    between two checkpoints; every finished batch is in SQL; resumed with the runbook's command,
    the killed run is failed and its pool slot freed without anyone touching the UI, its MLflow
    run is completed from the database, the resumed run holds batches 1..60 in both, and the next
    hourly backup runs too."""
    env = environment(tmp_path)
    log = tmp_path / "killed.log"
    process = start([*EXECUTE, "-c", str(run_yaml(tmp_path / "run.yaml", 60))], env, log)
    wait_for_line(log, r"checkpoint after batch 20", process)
    wait_for_line(log, r"batch 2[4-9] of 60", process)
    kill_group(process)  # the crash: SIGKILL, no clean-up of any kind
    logged = last_batch_logged(log)
    assert 24 <= logged < 30  # the kill landed after the second checkpoint, well before the last batch
    [killed] = runs_of(env)
    assert killed.status == dg.DagsterRunStatus.STARTED  # as a SIGKILL leaves it
    dead = training_run(env, killed.run_id)
    finished = batches_in_sql(env, dead["id"])
    assert finished == list(range(1, len(finished) + 1)) and logged <= len(finished) <= logged + 1
    assert mlflow_steps(env, dead["mlflow_run_id"]) == list(range(1, 21))  # its last group of 10 never went

    checkpoint = Path(env["QUADRA_HOME"]) / "checkpoints" / killed.run_id / "checkpoint.pt"
    resume = run_yaml(tmp_path / "resume.yaml", 60, resume_from=str(checkpoint))
    started = time.monotonic()
    result = subprocess.run([str(DAGSTER), *EXECUTE[1:], "-c", str(resume)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    DRILL_TIMES.append(("1. application crash (Dagster training run killed, resumed)", seconds,
                        "killed run failed and its slot freed; batches 1..60 once each in SQL and MLflow"))

    assert the_run(env, killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert training_run(env, killed.run_id)["status"] == "failed"
    assert mlflow_steps(env, dead["mlflow_run_id"]) == finished  # completed from the database
    assert mlflow_status(env, dead["mlflow_run_id"]) == "FAILED"
    [resumed] = [r for r in runs_of(env) if r.run_id != killed.run_id]
    row = training_run(env, resumed.run_id)
    assert batches_in_sql(env, row["id"]) == mlflow_steps(env, row["mlflow_run_id"]) == list(range(1, 61))
    assert "resuming from" in result.stderr and "carried over the metrics of batches 1..20" in result.stderr
    assert "Asset check 'one_row_per_batch' on 'training_metrics' passed" in result.stderr

    hour = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")  # the hour that ended
    backup = subprocess.run([str(DAGSTER), "asset", "materialize", "--select", "backup", "--partition", hour,
                             "-m", "quadra_pipeline.definitions"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert backup.returncode == 0, backup.stderr[-3000:]


def test_1b_application_crash_mid_quadra_train_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("QUADRA_HOME", str(home))
    out = tmp_path / "run"
    args = ["train", "--field-size", 40, "--batches", 30, "--checkpoint-every", 5, "--out", out]
    process = subprocess.Popen([QUADRA, *map(str, args)], env=cli_env(home), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # the crash
    process.wait()
    assert (out / "checkpoint.pt").exists()
    written = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert 5 <= len(written) < 30  # the kill landed after a checkpoint and before the last batch
    assert not process.stdout.read()  # no summary: it never finished
    recover("1b. quadra train killed, resumed", "metrics 1..30 once each, equal to an uninterrupted run",
            ["train", "--batches", 30, "--out", out, "--resume", out / "checkpoint.pt"], home=home)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch_number"] for r in rows] == list(range(1, 31))
    quadra(home, "train", "--field-size", 40, "--batches", 30, "--out", tmp_path / "straight")
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "batch_seconds"}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in straight]


def test_2_database_corruption(live):
    quadra(live, "backup", "create")
    before = state_of(live)
    db = live / "quadra.db"
    data = bytearray(db.read_bytes())
    data[len(data) // 3: len(data) // 3 + 4096] = b"\x00\xff" * 2048
    data[:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))
    broken = quadra(live, "db", "current", check=None)
    assert broken.returncode != 0
    recover("2. database corruption", "row counts of both databases, registry and aliases",
            ["backup", "verify", "latest"], ["backup", "restore", "latest", "--in-place"], ["db", "current"], home=live)
    assert state_of(live) == before
    assert list((live / "restore-aside").rglob("quadra.db"))  # the damaged file was kept aside, not destroyed


def test_3_lost_model_artifacts(live):
    quadra(live, "backup", "create")
    before = state_of(live)
    shutil.rmtree(live / "mlartifacts")
    shutil.rmtree(live / "checkpoints")
    (live / "mlartifacts").mkdir()
    (live / "checkpoints").mkdir()
    assert not champion_loads(live)
    started = time.monotonic()
    quadra(live, "backup", "verify", "latest")
    restored = live.parent / "quadra-restore"
    quadra(live, "backup", "restore", "latest", "--target", restored)
    for folder in ("mlartifacts", "checkpoints"):
        subprocess.run(["cp", "-a", f"{restored / folder}/.", f"{live / folder}/"], check=True)
    quadra(live, "model", "list")
    DRILL_TIMES.append(("3. lost model artifacts", time.monotonic() - started,
                        "files only (databases untouched); champion loads with mlflow.pyfunc; every version's SHA-256"))
    assert state_of(live) == before
    assert champion_loads(live)


def test_4_complete_loss_of_the_machine(live, tmp_path):
    quadra(live, "backup", "create")
    before = state_of(live)
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    quadra(live, "backup", "export", "latest", "--out", offsite / "quadra.tar")
    check = subprocess.run(["sha256sum", "-c", "quadra.tar.sha256"], cwd=offsite, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.rmtree(live)  # the machine is gone, backups included
    recover("4. complete loss of the machine", "import of the off-site archive; both databases, registry, champion",
            ["backup", "import", offsite / "quadra.tar"], ["backup", "restore", "latest", "--in-place"], ["db", "current"], home=live)
    assert state_of(live) == before
    assert champion_loads(live)


def test_5_configuration_corruption(live, tmp_path, monkeypatch):
    quadra(live, "backup", "create")
    before = state_of(live)
    env_file = tmp_path / ".env"
    env_file.write_text("QUADRA_FIELD_SIZE=one hundred\nQUADRA_ENV=production\n")
    broken = quadra(live, "db", "current", check=None, cwd=tmp_path)
    assert broken.returncode != 0
    assert "QUADRA_FIELD_SIZE" in broken.stderr and len(broken.stderr.strip().splitlines()) == 1
    env_file.write_text(f"QUADRA_ENV=production\nQUADRA_SECRET_KEY_FILE={tmp_path / 'lost-secret'}\n")  # a secret file gone
    broken = quadra(live, "db", "current", check=None, cwd=tmp_path)
    assert broken.returncode != 0 and len(broken.stderr.strip().splitlines()) == 1
    assert f"QUADRA_SECRET_KEY_FILE={tmp_path / 'lost-secret'}: cannot read the file" in broken.stderr
    env_file.write_text("QUADRA_FIELD_SIZE=one hundred\nQUADRA_ENV=production\n")
    started = time.monotonic()
    shutil.copy(env_file, tmp_path / ".env.broken")
    shutil.copy(Path(__file__).resolve().parents[2] / ".env.example", env_file)
    quadra(live, "db", "current", cwd=tmp_path)
    quadra(live, "backup", "verify", "latest", cwd=tmp_path)
    DRILL_TIMES.append(("5. configuration corruption", time.monotonic() - started,
                        "every command refuses with one line naming the variable; fixed from .env.example"))
    assert state_of(live) == before
