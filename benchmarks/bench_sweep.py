"""Sweep throughput on Dagster's Celery executor: 1 worker vs 2, and the same trials as separate training_job runs.

    .venv/bin/python benchmarks/bench_sweep.py [--trials 8] [--batches 600] [--field-size 150]
                                               [--rows-per-batch 10] [--repeats 1]

What is measured, in one run on one machine, each configuration on fresh, empty databases and
in the order below (compare the ratios: these machines are noisy):

  * `sweep_job` on Dagster's Celery executor (QUADRA_RUN_EXECUTOR=celery) with 1 `quadra worker`,
    then with 2 (fresh workers each time): the same grid of --trials trials (`grid: {seed:
    [0..T-1]}`, the same field size, batches, rows per batch and learning rate for all), run as a
    user runs it: `dagster job execute -m quadra_pipeline.definitions -j sweep_job -c run.yaml`.
    Timed: from starting that command to its exit, so the command's own imports, the corpus
    step, planning, every trial, picking the best, registering it and the champion step. Not
    timed: making the databases and their schemas, and starting the workers, which are ready
    ("<name> ready." in their log) before the timer starts, with nothing run on them yet (a
    worker's first steps import the pipeline, MLflow and torch: that is in the span).
  * the same trials as --trials separate `training_job` runs in process (QUADRA_RUN_EXECUTOR
    unset), back to back: `dagster job execute -m quadra_pipeline.definitions -j training_job`,
    each with one trial's seed, field size, batches and rows per batch, the trial's checkpoint
    interval, MLflow flush and progress-log interval, and the champion gate at tolerance 1.0 (a
    seed worse than the champion still ends its run as a success having done the whole job: the
    gate is not what is measured). Timed: from starting the first command to the last one's exit.
  * per-trial overhead on Celery, for every trial of both sweeps (the target is for the 2-worker
    run): the step's time on its worker, from the worker's "Executing steps ... in celery worker"
    event to the step's STEP_SUCCESS in the run's Dagster event log, minus the trial's training
    time; and the queue wait, from the run's "Submitting celery task" event to that one. Training
    time is the trial's own measure of its training loop (`TrialResult.training_seconds`: the
    batches with their metric commits, MLflow flushes and checkpoints), read back from the value
    the IO manager pickled in the object store; the trainer's step time (`training_metrics.
    batch_seconds` summed in the project database, without the logging and checkpoints) is shown
    beside it as a cross-check, and is what the overhead falls back to if a pickle is unreadable.

Defaults: 8 trials of N=150, 600 batches of 10 rows each (a corpus of 6,000 + 200 rows). The
trainer takes ~21 ms a batch at N=150 here (one torch thread), ~24.5 ms in a trial with its
metric commits and checkpoints (measured 2026-12-07 in 100-batch trials), so a trial trains
~13-15 s and the sweep's fixed part (~16 s here: the command's imports, the corpus, planning,
picking the best, registering, champion) is about an eighth of the 1-worker run. It still caps
the 2-worker speed-up (Amdahl): the report prints the ceiling this run's fixed part allows.
With --repeats R the configurations alternate (1 worker, 2 workers, separate runs, again) and
the tables give medians.

Everything is made here and removed at the end, even on failure, Ctrl-C or SIGTERM: PostgreSQL
databases for each configuration's Dagster instance, project database and MLflow store
(QUADRA_BENCH_POSTGRES_URL, default postgres@127.0.0.1:5432), a RabbitMQ virtual host per sweep
(rabbitmqctl; broker QUADRA_BENCH_RABBITMQ_URL, default guest@127.0.0.1:5672), a temp folder with
each configuration's data home (QUADRA_HOME) and object store folder, and the worker processes
(SIGTERM, SIGKILL after 60 s). Run it with the venv's Python on an otherwise idle machine: the
2-worker figure needs two free cores. Exit status 1 if any run failed (the tail of its log is
printed), else 0; the targets are printed, not enforced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pickle
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_URL = os.environ.get("QUADRA_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("QUADRA_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672").rstrip("/")
BROKER_USER = "guest"
BIN = Path(sys.executable).parent

TARGET_SPEEDUP = 1.7  # 2 workers vs 1, on 2 cores
TARGET_OVERHEAD = 3.0  # seconds per trial on Celery, beyond its training
CHECKPOINT_EVERY = 50  # a sweep trial's default (SweepConfig.checkpoint_every); training_job gets the same
FLUSH_EVERY = 10  # MLflow log_batch every k batches, both
LEARNING_RATE = 0.001
HELD_OUT_ROWS = 200
LOG_TAIL = 4000

INSTANCE = """\
storage:
  postgres:
    postgres_url: {url}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""

TRIAL_STEP = re.compile(r"run_trial\[(?P<trial>[^\]]+)\]$")


class BenchFailure(Exception):
    """A run failed: the message says which, `log` is the tail to print."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


# Scratch resources ---------------------------------------------------------------------------


class Scratch:
    """Everything the benchmark makes, removed by `close()` whatever happened."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-sweep-{self.tag}-"))
        self.databases: list[str] = []
        self.vhosts: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self._admin = None

    # PostgreSQL
    def admin(self):
        import sqlalchemy as sa

        if self._admin is None:
            self._admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        return self._admin

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        name = f"bench_sweep_{self.tag}_{name}"
        with self.admin().connect() as conn:
            conn.execute(sa.text(f'create database "{name}"'))
        self.databases.append(name)
        return sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        import sqlalchemy as sa

        name = sa.make_url(url).database
        with self.admin().connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        if name in self.databases:
            self.databases.remove(name)

    # RabbitMQ
    def create_vhost(self, name: str) -> str:
        vhost = f"quadra-bench-{self.tag}-{name}"
        rabbitmqctl("add_vhost", vhost)
        self.vhosts.append(vhost)
        rabbitmqctl("set_permissions", "-p", vhost, BROKER_USER, ".*", ".*", ".*")
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        rabbitmqctl("delete_vhost", vhost)
        self.vhosts.remove(vhost)

    # Processes (each in its own process group)
    def start(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 60) -> bool:
        """SIGTERM to its process group (a worker's warm shutdown), SIGKILL if it hangs."""
        stopped = True
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stopped = False
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:  # the group's stragglers (a pool process whose parent is gone)
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process in self.processes:
            self.processes.remove(process)
        return stopped

    def close(self) -> list[str]:
        """Stop processes, delete vhosts, drop databases, remove the folder; the problems, if any."""
        problems = []
        for process in list(self.processes):
            try:
                if not self.stop(process):
                    problems.append(f"process {process.pid} ignored SIGTERM for 60 s (killed)")
            except Exception as exc:  # noqa: BLE001 - go on cleaning
                problems.append(f"process {process.pid}: {exc}")
        for vhost in list(self.vhosts):
            try:
                self.delete_vhost(vhost)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"vhost {vhost}: {exc}")
        for name in list(self.databases):
            try:
                self.drop_database(f"postgresql://x/{name}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"database {name}: {str(exc).splitlines()[0]}")
        if self._admin is not None:
            self._admin.dispose()
        shutil.rmtree(self.work, ignore_errors=True)
        return problems


def rabbitmqctl(*args: str) -> None:
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], check=False, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BenchFailure("rabbitmqctl not found: the benchmark needs the machine's RabbitMQ") from None
    if done.returncode:
        raise BenchFailure(f"rabbitmqctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def tail(path: Path, chars: int = LOG_TAIL) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return f"({path} was never written)"


# One configuration's world --------------------------------------------------------------------


@dataclass
class World:
    """A Dagster instance, project database, MLflow store, data home and object store of its own."""

    name: str
    folder: Path
    env: dict[str, str]
    urls: dict[str, str]

    @property
    def dagster_home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    @property
    def objects(self) -> Path:
        return Path(self.env["QUADRA_OBJECT_STORE"])


def make_world(scratch: Scratch, name: str, celery_vhost: str | None) -> World:
    folder = scratch.work / name
    (folder / "dagster_home").mkdir(parents=True)
    urls = {role: scratch.create_database(f"{name}_{role}") for role in ("dagster", "quadra", "mlflow")}
    (folder / "dagster_home" / "dagster.yaml").write_text(INSTANCE.format(url=urls["dagster"]))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QUADRA_", "DAGSTER_", "MLFLOW_")) and k != "DATABASE_URL"}
    env.update(
        DAGSTER_HOME=str(folder / "dagster_home"),
        QUADRA_HOME=str(folder / "home"),
        QUADRA_OBJECT_STORE=str(folder / "objects"),
        DATABASE_URL=urls["quadra"],
        MLFLOW_TRACKING_URI=urls["mlflow"],
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    if celery_vhost:
        env.update(QUADRA_RUN_EXECUTOR="celery", QUADRA_CELERY_BROKER_URL=f"{BROKER}/{celery_vhost}")
    world = World(name, folder, env, urls)
    init_schemas(world)
    return world


def init_schemas(world: World) -> None:
    """Create the three schemas before any timer (a fresh store's migrations are not a sweep's cost)."""
    import logging

    import dagster as dg
    from mlflow import MlflowClient

    from quadra_pipeline.store import ensure_schema

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "Creating initial MLflow database tables"

    with dg.DagsterInstance.from_config(str(world.dagster_home)):
        pass
    ensure_schema(world.urls["quadra"])
    MlflowClient(world.urls["mlflow"]).search_experiments(max_results=1)


# Runs -------------------------------------------------------------------------------------------


def corpus_config(args) -> str:
    rows = args.batches * args.rows_per_batch
    return (f"  corpus: {{config: {{training_rows: {rows}, held_out_rows: {HELD_OUT_ROWS}, "
            f"source_options: {{seed: 0}}}}}}\n")


def sweep_yaml(args) -> str:
    seeds = ", ".join(str(s) for s in range(args.trials))
    return (
        "ops:\n" + corpus_config(args)
        + f"  hyperparameter_sweep: {{config: {{grid: {{seed: [{seeds}]}}, fixed: {{field_size: {args.field_size}, "
        f"batches: {args.batches}, rows_per_batch: {args.rows_per_batch}, learning_rate: {LEARNING_RATE}}}, "
        f"checkpoint_every: {CHECKPOINT_EVERY}, metrics_flush_every: {FLUSH_EVERY}}}}}\n"
    )


def training_yaml(args, seed: int) -> str:
    """One trial as a training_job run: the same hyperparameters, checkpoints, flushes and log lines."""
    return (
        "ops:\n" + corpus_config(args)
        + f"  train_model: {{config: {{field_size: {args.field_size}, batches: {args.batches}, "
        f"rows_per_batch: {args.rows_per_batch}, seed: {seed}, learning_rate: {LEARNING_RATE}, "
        f"checkpoint_every: {min(CHECKPOINT_EVERY, args.batches)}, metrics_flush_every: {FLUSH_EVERY}, "
        f"log_every: {max(1, args.batches // 4)}}}}}\n"
        "  registered_model: {config: {tolerance: 1.0}}\n"
    )


def execute(scratch: Scratch, world: World, job: str, config: Path, log: Path, timeout: float) -> tuple[float, float, float]:
    """`dagster job execute` of `job`: (wall seconds, start, end as epoch seconds)."""
    argv = [str(BIN / "dagster"), "job", "execute", "-m", "quadra_pipeline.definitions", "-j", job, "-c", str(config)]
    started_epoch, started = time.time(), time.perf_counter()
    process = scratch.start(argv, world.env, world.folder, log)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        scratch.stop(process)
        raise BenchFailure(f"{job} in {world.name} did not finish in {timeout:.0f} s", tail(log)) from None
    wall = time.perf_counter() - started
    scratch.processes.remove(process)
    if code != 0:
        raise BenchFailure(f"{job} in {world.name} failed (exit status {code})", tail(log))
    return wall, started_epoch, started_epoch + wall


class Worker:
    def __init__(self, scratch: Scratch, world: World, index: int) -> None:
        self.name = f"w{index}@bench-sweep"
        self.log = world.folder / f"worker{index}.log"
        self.process = scratch.start([str(BIN / "quadra"), "worker", "--name", self.name], world.env, world.folder, self.log)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while f"{self.name} ready." not in tail(self.log, 10**7):
            if self.process.poll() is not None:
                raise BenchFailure(f"worker {self.name} exited with status {self.process.returncode} before it was ready",
                                   tail(self.log))
            if time.monotonic() > deadline:
                raise BenchFailure(f"worker {self.name} not ready in {timeout:.0f} s", tail(self.log))
            time.sleep(0.2)


# What a run left: the event log, the project database, the object store --------------------------


@dataclass
class Trial:
    key: str
    worker: str = ""
    submitted: float | None = None  # the run's "Submitting celery task" (epoch s)
    on_worker: float | None = None  # the worker's "Executing steps ... in celery worker"
    step_start: float | None = None
    step_success: float | None = None
    first_on_worker: bool = False  # the first trial its worker ran (it imports the training code)
    loop_seconds: float | None = None  # TrialResult.training_seconds (the training loop)
    step_seconds: float | None = None  # training_metrics.batch_seconds summed (the trainer's steps)
    batches: int = 0

    @property
    def queue_wait(self) -> float:
        return self.on_worker - self.submitted

    @property
    def on_worker_seconds(self) -> float:
        return self.step_success - self.on_worker

    @property
    def training(self) -> float:
        return self.loop_seconds if self.loop_seconds is not None else self.step_seconds

    @property
    def overhead(self) -> float:
        return self.on_worker_seconds - self.training

    @property
    def overhead_vs_steps(self) -> float:
        return self.on_worker_seconds - self.step_seconds


@dataclass
class Result:
    config: str
    repeat: int
    wall: float
    started: float
    ended: float
    trials: list[Trial] = field(default_factory=list)
    run_walls: list[float] = field(default_factory=list)  # training_job: each command's wall
    run_training: list[float] = field(default_factory=list)  # training_job: each run's trainer-step seconds
    first_submit: float | None = None
    last_trial_done: float | None = None
    steps_by_worker: dict[str, list[str]] = field(default_factory=dict)  # a sweep: the steps each worker ran, in order


def dagster_runs(world: World, job: str) -> list:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(world.dagster_home)) as instance:
        return list(reversed(instance.get_runs(filters=dg.RunsFilter(job_name=job))))


def check_runs_succeeded(world: World, job: str, expected: int, log: Path) -> list[str]:
    import dagster as dg

    runs = dagster_runs(world, job)
    bad = [f"{r.run_id[:8]} {r.status.value}" for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    if len(runs) != expected or bad:
        raise BenchFailure(f"{job} in {world.name}: {len(runs)} run(s), expected {expected}; not successful: {bad}", tail(log))
    return [r.run_id for r in runs]


def training_rows(world: World) -> dict[str, tuple[str, float, int]]:
    """external_run_id -> (status, trainer-step seconds summed, batches with a row)."""
    import sqlalchemy as sa

    engine = sa.create_engine(world.urls["quadra"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "select r.external_run_id, r.status, coalesce(sum(m.batch_seconds), 0), count(m.id) "
                "from training_runs r left join training_metrics m on m.training_run_id = r.id "
                "group by r.id, r.external_run_id, r.status"
            )).all()
    finally:
        engine.dispose()
    return {external: (status, float(seconds), int(batches)) for external, status, seconds, batches in rows}


def pickled_trial_results(world: World, run_id: str) -> dict[str, float]:
    """trial key -> TrialResult.training_seconds, from the IO manager's `io/runs/<run id>/<step key>/...`."""
    found = {}
    base = world.objects / "io" / "runs" / run_id
    for path in base.rglob("*") if base.is_dir() else ():
        if not path.is_file() or path.name.startswith(".") or "run_trial[" not in str(path.relative_to(base)):
            continue
        try:
            result = pickle.loads(path.read_bytes())
            found[result.trial.key] = float(result.training_seconds)
        except Exception:  # noqa: BLE001, S112 - unreadable: the SQL figure stands in
            continue
    return found


def _worker_of(event) -> str:
    data = getattr(event, "engine_event_data", None)
    value = (getattr(data, "metadata", None) or {}).get("Celery worker")
    return str(getattr(value, "value", value) or "")


def sweep_trials(world: World, run_id: str, args, log: Path) -> tuple[list[Trial], float | None, float | None, dict]:
    """Each trial's timings from the run's event log, its training from the store; checks every
    trial succeeded with all its batches."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(world.dagster_home)) as instance:
        entries = sorted(instance.all_logs(run_id), key=lambda e: e.timestamp)
    trials: dict[str, Trial] = {}
    trial_workers: set[str] = set()
    steps_by_worker: dict[str, list[str]] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        kind, message = event.event_type_value, event.message or entry.user_message or ""
        executing = kind == "ENGINE_EVENT" and "in celery worker" in message
        worker = _worker_of(event) if executing else ""
        match = TRIAL_STEP.search(entry.step_key)
        if executing:
            steps_by_worker.setdefault(worker, []).append(match["trial"] if match else entry.step_key.split(".")[-1])
        if not match:
            continue
        first = executing and worker not in trial_workers
        if executing:
            trial_workers.add(worker)
        trial = trials.setdefault(match["trial"], Trial(match["trial"]))
        if kind == "ENGINE_EVENT" and message.startswith("Submitting celery task") and trial.submitted is None:
            trial.submitted = entry.timestamp
        elif executing and trial.on_worker is None:
            trial.on_worker, trial.worker, trial.first_on_worker = entry.timestamp, worker, first
        elif kind == "STEP_START" and trial.step_start is None:
            trial.step_start = entry.timestamp
        elif kind == "STEP_SUCCESS" and trial.step_success is None:
            trial.step_success = entry.timestamp
    loops = pickled_trial_results(world, run_id)
    rows = training_rows(world)
    problems = []
    for key, trial in trials.items():
        done = [(status, seconds, batches) for external, (status, seconds, batches) in rows.items()
                if external.startswith(f"{run_id}/{key}#") and status == "succeeded"]
        if len(done) != 1 or done[0][2] != args.batches:
            problems.append(f"{key}: succeeded training rows {done}")
            continue
        trial.step_seconds, trial.batches = done[0][1], done[0][2]
        trial.loop_seconds = loops.get(key)
        if None in (trial.submitted, trial.on_worker, trial.step_success):
            problems.append(f"{key}: events missing (submitted {trial.submitted}, on worker {trial.on_worker}, "
                            f"success {trial.step_success})")
    if len(trials) != args.trials:
        problems.append(f"{len(trials)} trial steps in the event log, expected {args.trials}")
    if problems:
        raise BenchFailure(f"sweep in {world.name}: " + "; ".join(problems), tail(log))
    ordered = sorted(trials.values(), key=lambda t: t.key)
    first_submit = min(t.submitted for t in ordered) if ordered else None
    last_done = max(t.step_success for t in ordered) if ordered else None
    return ordered, first_submit, last_done, steps_by_worker


# The three configurations ----------------------------------------------------------------------


SWEEP_1, SWEEP_2, SEPARATE = "sweep_job, Celery, 1 worker", "sweep_job, Celery, 2 workers", "training_job x {n}, in process"


def run_sweep(scratch: Scratch, args, workers: int, repeat: int) -> Result:
    name = f"r{repeat}_w{workers}"
    vhost = scratch.create_vhost(name)
    world = make_world(scratch, name, vhost)
    config = world.folder / "run.yaml"
    config.write_text(sweep_yaml(args))
    log = world.folder / "execute.log"
    started = [Worker(scratch, world, i + 1) for i in range(workers)]
    try:
        for worker in started:
            worker.wait_ready()
        print(f"  {name}: {workers} worker(s) ready; sweep_job of {args.trials} trials ...", flush=True)
        try:
            wall, begin, end = execute(scratch, world, "sweep_job", config, log, args.timeout)
        except BenchFailure as exc:
            exc.log += "".join(f"\n--- {w.name} log (tail) ---\n{tail(w.log, 2000)}" for w in started)
            raise
    finally:
        for worker in started:
            scratch.stop(worker.process)
    [run_id] = check_runs_succeeded(world, "sweep_job", 1, log)
    trials, first_submit, last_done, steps = sweep_trials(world, run_id, args, log)
    result = Result(SWEEP_1 if workers == 1 else SWEEP_2, repeat, wall, begin, end, trials,
                    first_submit=first_submit, last_trial_done=last_done, steps_by_worker=steps)
    print(f"  {name}: {wall:.1f} s", flush=True)
    scratch.delete_vhost(vhost)
    for url in world.urls.values():
        scratch.drop_database(url)
    return result


def run_separate(scratch: Scratch, args, repeat: int) -> Result:
    name = f"r{repeat}_jobs"
    world = make_world(scratch, name, None)
    configs = []
    for seed in range(args.trials):
        configs.append(world.folder / f"trial_{seed:03d}.yaml")
        configs[-1].write_text(training_yaml(args, seed))
    print(f"  {name}: {args.trials} training_job runs in process, back to back ...", flush=True)
    walls, begin = [], time.time()
    started = time.perf_counter()
    for seed, config in enumerate(configs):
        log = world.folder / f"execute_{seed:03d}.log"
        walls.append(execute(scratch, world, "training_job", config, log, args.timeout)[0])
    wall = time.perf_counter() - started
    run_ids = check_runs_succeeded(world, "training_job", args.trials, log)
    rows = training_rows(world)
    seconds = []
    for run_id in run_ids:
        status, trained, batches = rows.get(run_id, ("missing", 0.0, 0))
        if status != "succeeded" or batches != args.batches:
            raise BenchFailure(f"training_job {run_id[:8]} in {name}: training row {status}, {batches} batches", tail(log))
        seconds.append(trained)
    print(f"  {name}: {wall:.1f} s", flush=True)
    for url in world.urls.values():
        scratch.drop_database(url)
    return Result(SEPARATE.format(n=args.trials), repeat, wall, begin, begin + wall, run_walls=walls, run_training=seconds)


# Report -----------------------------------------------------------------------------------------


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def report(args, results: list[Result], command: str, when: str) -> None:
    by_config: dict[str, list[Result]] = {}
    for result in results:
        by_config.setdefault(result.config, []).append(result)
    walls = {config: statistics.median(r.wall for r in rs) for config, rs in by_config.items()}
    base = walls.get(SWEEP_1)
    spans = {
        SWEEP_1: "`dagster job execute` of sweep_job, start to exit (1 worker ready before)",
        SWEEP_2: "`dagster job execute` of sweep_job, start to exit (2 workers ready before)",
        SEPARATE.format(n=args.trials): f"{args.trials} `dagster job execute` of training_job, first start to last exit",
    }
    print(f"\nbench_sweep: {args.trials} trials of N={args.field_size}, {args.batches} batches x {args.rows_per_batch} rows "
          f"(corpus {args.batches * args.rows_per_batch} + {HELD_OUT_ROWS} rows); "
          f"{'median of ' + str(args.repeats) if args.repeats > 1 else 'one run each'}; {os.cpu_count()} cores\n")
    rows = []
    for config, wall in walls.items():
        rows.append((config, f"{wall:.1f}", f"{args.trials * 60 / wall:.2f}",
                     f"{base / wall:.2f}x" if base else "-", spans[config]))
    print_table(("configuration", "wall s", "trials/min", "speed-up vs 1 worker", "timed span"), rows)

    rows = []
    for config in (SWEEP_1, SWEEP_2):
        trials = [t for r in by_config.get(config, []) for t in r.trials]
        if not trials:
            continue
        overheads = [t.overhead for t in trials]
        warm = [t.overhead for t in trials if not t.first_on_worker]
        worst = max(trials, key=lambda t: t.overhead)
        rows.append((config, str(len(trials)), f"{statistics.median(overheads):.2f}", f"{max(overheads):.2f}",
                     worst.key + (" (its worker's first trial)" if worst.first_on_worker else ""),
                     f"{statistics.median(warm):.2f} / {max(warm):.2f}" if warm else "-",
                     spread([t.overhead_vs_steps for t in trials]),
                     spread([t.queue_wait for t in trials])))
    print("Per-trial overhead on Celery: the step on its worker (\"Executing steps ... in celery worker\" to "
          "STEP_SUCCESS) minus the trial's training loop (TrialResult.training_seconds); queue wait: \"Submitting "
          "celery task\" to the worker's event (with 1 worker, trials wait for each other). A worker's first trial "
          "also imports the training code (torch, the trainer).\n")
    print_table(("configuration", "trials", "overhead s (median)", "overhead s (max)", "max at",
                 "median / max without workers' first trials", "overhead vs trainer steps s (min / median / max)",
                 "queue wait s (min / median / max)"), rows)

    rows = []
    for config, rs in by_config.items():
        if rs[0].trials:
            loops = [t.training for r in rs for t in r.trials]
            steps = [t.step_seconds for r in rs for t in r.trials]
        else:
            loops, steps = [], [s for r in rs for s in r.run_training]
        per_batch = [1000 * s / args.batches for s in steps]
        rows.append((config, spread(loops), spread(steps), spread(per_batch, "{:.1f}")))
    print("Trial training time (min / median / max):\n")
    print_table(("configuration", "training loop s", "trainer steps s", "ms per batch (trainer steps)"), rows)

    # Targets.
    two = walls.get(SWEEP_2)
    if base and two:
        speedup = base / two
        print(f"2 workers vs 1: {speedup:.2f}x {'meets' if speedup >= TARGET_SPEEDUP else 'MISSES'} the target of "
              f">= {TARGET_SPEEDUP}x")
        ones = by_config[SWEEP_1]
        span = statistics.median(r.last_trial_done - r.first_submit for r in ones)
        fixed = base - span
        print(f"  (1 worker: {fixed:.1f} s of the sweep is outside its trials (before the first is submitted, after the "
              f"last is done); with that fixed and the {span:.1f} s of trials split perfectly in two, 2 workers would "
              f"reach at most {base / (fixed + span / 2):.2f}x)")
    trials2 = [t for r in by_config.get(SWEEP_2, []) for t in r.trials]
    if trials2:
        median, worst = statistics.median(t.overhead for t in trials2), max(t.overhead for t in trials2)
        print(f"per-trial overhead, 2 workers: median {median:.2f} s, max {worst:.2f} s: "
              f"{'meets' if worst <= TARGET_OVERHEAD else ('median meets, max MISSES' if median <= TARGET_OVERHEAD else 'MISSES')}"
              f" the target of <= {TARGET_OVERHEAD:.0f} s")
    separate = walls.get(SEPARATE.format(n=args.trials))
    if separate and two:
        print(f"the sweep on 2 workers takes {two / separate:.2f}x the time of {args.trials} separate training_job runs "
              f"({separate / two:.2f}x their speed)")

    # Raw numbers.
    print("\nRaw numbers (seconds; epoch timestamps relative to the command's start):")
    for result in results:
        if result.trials:
            t0 = result.started
            print(f"\n{result.config}, repeat {result.repeat}: wall {result.wall:.2f}; first trial submitted at "
                  f"+{result.first_submit - t0:.2f}, last trial done at +{result.last_trial_done - t0:.2f}, command "
                  f"exited at +{result.wall:.2f} (before the trials {result.first_submit - t0:.2f}, trials "
                  f"{result.last_trial_done - result.first_submit:.2f}, after {result.ended - result.last_trial_done:.2f})")
            print("steps on each worker, in order: " + "; ".join(
                f"{worker}: {', '.join(steps)}" for worker, steps in sorted(result.steps_by_worker.items())))
            print_table(
                ("trial", "worker", "submitted", "on worker", "STEP_START", "STEP_SUCCESS", "queue wait", "on worker s",
                 "training loop s", "trainer steps s", "overhead s", "worker's first trial"),
                [(t.key, t.worker, f"+{t.submitted - t0:.2f}", f"+{t.on_worker - t0:.2f}",
                  f"+{t.step_start - t0:.2f}" if t.step_start else "-", f"+{t.step_success - t0:.2f}",
                  f"{t.queue_wait:.2f}", f"{t.on_worker_seconds:.2f}",
                  f"{t.loop_seconds:.2f}" if t.loop_seconds is not None else "unread (trainer steps used)",
                  f"{t.step_seconds:.2f}", f"{t.overhead:.2f}", "yes" if t.first_on_worker else "")
                 for t in result.trials])
        else:
            print(f"\n{result.config}, repeat {result.repeat}: wall {result.wall:.2f}; each run (wall / trainer steps / "
                  "rest): " + ", ".join(f"{w:.2f} / {s:.2f} / {w - s:.2f}" for w, s in zip(result.run_walls, result.run_training)))
    print(f"\ncommand: {command}\ndate: {when}")


# Main -----------------------------------------------------------------------------------------------


def preflight() -> None:
    for tool in ("dagster", "quadra"):
        if not (BIN / tool).exists():
            raise BenchFailure(f"{BIN / tool} not found: run this with the project venv's Python (.venv/bin/python)")
    if shutil.which("rabbitmqctl") is None:
        raise BenchFailure("rabbitmqctl not found: the benchmark needs the machine's RabbitMQ")


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials of the sweep, and training_job runs (8)")
    parser.add_argument("--batches", type=int, default=600,
                        help="batches per trial (600: ~13 s of trainer steps, ~15 s with logging, at N=150 here)")
    parser.add_argument("--field-size", type=int, default=150, help="field size N of every trial (150)")
    parser.add_argument("--rows-per-batch", type=int, default=10, help="rows per batch (10)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, alternated; medians (1)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one command counts as failed (3600)")
    args = parser.parse_args()
    if min(args.trials, args.batches, args.field_size, args.rows_per_batch, args.repeats) < 1 or args.field_size < 2:
        parser.error("--trials, --batches, --rows-per-batch and --repeats must be >= 1, --field-size >= 2")
    command = shlex.join([sys.executable, *sys.argv])
    when = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"{command}\n{when}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where it was ignored (a background job)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    scratch = None
    status = 0
    try:
        preflight()
        scratch = Scratch()
        print(f"scratch: {scratch.work}, databases bench_sweep_{scratch.tag}_*, vhosts quadra-bench-{scratch.tag}-*",
              flush=True)
        results = []
        for repeat in range(args.repeats):
            results.append(run_sweep(scratch, args, 1, repeat))
            results.append(run_sweep(scratch, args, 2, repeat))
            results.append(run_separate(scratch, args, repeat))
        report(args, results, command, when)
    except BenchFailure as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        if exc.log:
            print(f"--- log (tail) ---\n{exc.log}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        status = 130
    except Exception:  # noqa: BLE001 - print it, clean up, fail
        traceback.print_exc()
        status = 1
    finally:
        if scratch is not None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # cleaning up is not to be interrupted
            problems = scratch.close()
            for problem in problems:
                print(f"cleanup: {problem}", file=sys.stderr)
            if problems:
                status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
