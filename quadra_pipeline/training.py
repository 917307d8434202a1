"""A training run: text source -> batches -> trainer -> checkpoints and per-batch metrics.

Shared by `quadra train` and the Dagster assets, and free of both: callers pass callbacks for
progress and for where metrics go. Checkpoints carry the position in the text stream, so a
run resumed from one continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from .data import DataSourceError, TextSource, check_usable, iter_batches, open_source
from .model import BatchMetrics, FieldTrainer, QuadraModel, load_checkpoint, save_checkpoint
from .model.checkpoint import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
METRIC_FIELDS = tuple(f.name for f in fields(BatchMetrics))
#: Settings that must match between a checkpoint and the run that resumes from it.
RESUME_FIXED = ("field_size", "seed", "learning_rate", "rows_per_batch", "source", "source_options")


class TrainingError(Exception):
    """A training run cannot start or continue; the message says why."""


@dataclass(frozen=True)
class TrainingConfig:
    field_size: int = 100
    batches: int = 20
    rows_per_batch: int = 10
    seed: int = 0
    learning_rate: float = 0.001
    source: str = "synthetic"
    source_options: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        checks = {
            "field_size": self.field_size >= 2,
            "batches": self.batches >= 1,
            "rows_per_batch": self.rows_per_batch >= 1,
            "seed": self.seed >= 0,
            "learning_rate": 0 < self.learning_rate <= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise TrainingError(f"invalid {name}: {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def open_source(self) -> TextSource:
        options = dict(self.source_options)
        if self.source == "synthetic":
            options.setdefault("seed", self.seed)
        return open_source(self.source, **options)


@dataclass
class TrainingOutcome:
    checkpoint: Path
    checkpoint_sha256: str
    metrics: list[BatchMetrics]
    batches_done: int
    rows_consumed: int
    seconds: float
    source: dict[str, Any]
    resumed_from: int  # batches already done in the checkpoint we resumed from (0 if fresh)
    rows_trained: int  # rows read by this run (not counting those before a resume)

    @property
    def rows_per_second(self) -> float:
        return self.rows_trained / self.seconds if self.seconds > 0 else 0.0


BatchCallback = Callable[[BatchMetrics, int], None]  # (metrics, rows consumed so far)


def run_training(
    config: TrainingConfig,
    out_dir: str | os.PathLike[str],
    resume: str | os.PathLike[str] | None = None,
    on_batch: Sequence[BatchCallback] = (),
    on_checkpoint: Callable[[Path, str, int], None] | None = None,
    origin: Mapping[str, Any] | None = None,
) -> TrainingOutcome:
    """Train `config.batches` batches (counting those already in `resume`), checkpointing
    every `config.checkpoint_every` batches and at the end, into `out_dir/checkpoint.pt`.

    `origin` (JSON-able: which run wrote the checkpoint, e.g. its Dagster and MLflow run ids)
    is kept in every checkpoint's progress, so a run resumed from it knows whose history the
    batches before it belong to."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops dominate: one thread is fastest (spec section 9)
    try:
        return _run(config, Path(out_dir), resume, on_batch, on_checkpoint, dict(origin or {}))
    finally:
        torch.set_num_threads(threads)


def _run(
    config: TrainingConfig,
    out: Path,
    resume: str | os.PathLike[str] | None,
    on_batch: Sequence[BatchCallback],
    on_checkpoint: Callable[[Path, str, int], None] | None,
    origin: dict[str, Any],
) -> TrainingOutcome:
    checkpoint_path = out / CHECKPOINT_NAME
    trainer, rows_consumed, resumed_from, saved_source = _start(config, resume)
    try:
        source = config.open_source()
        check_usable(source)  # fail fast, before any training, on a source without usable text
        source_description = {**source.describe(), "fingerprint": source.fingerprint()}
    except DataSourceError as exc:
        raise TrainingError(str(exc)) from None
    saved_fingerprint = (saved_source or {}).get("fingerprint")
    if saved_fingerprint and saved_fingerprint != source_description["fingerprint"]:
        raise TrainingError(
            f"{resume}: the text source's data changed since the checkpoint (fingerprint "
            f"{saved_fingerprint[:12]} then, {source_description['fingerprint'][:12]} now); an exact resume needs the same data"
        )

    metrics: list[BatchMetrics] = []
    started = time.perf_counter()
    rows_at_start = rows_consumed
    digest = ""
    last_saved = -1

    def save() -> str:
        progress = {"rows_consumed": rows_consumed, "batches_done": trainer.batches_done}
        if origin:
            progress["origin"] = origin
        try:
            sha = save_checkpoint(checkpoint_path, trainer, _checkpoint_config(config, source_description), progress)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from None
        if on_checkpoint:
            on_checkpoint(checkpoint_path, sha, trainer.batches_done)
        return sha

    try:
        for batch in _batches(source, config, rows_consumed):
            if trainer.batches_done >= config.batches:
                break
            result = trainer.step(batch.texts)
            rows_consumed = batch.next_row
            metrics.append(result)
            for callback in on_batch:
                callback(result, rows_consumed)
            if trainer.batches_done % config.checkpoint_every == 0:
                digest = save()
                last_saved = trainer.batches_done
    except DataSourceError as exc:
        raise TrainingError(str(exc)) from None
    if trainer.batches_done == 0:
        raise TrainingError(f"the text source gave no usable rows ({source_description.get('kind', config.source)})")
    if last_saved != trainer.batches_done:
        digest = save()
    return TrainingOutcome(
        checkpoint=checkpoint_path,
        checkpoint_sha256=digest,
        metrics=metrics,
        batches_done=trainer.batches_done,
        rows_consumed=rows_consumed,
        seconds=time.perf_counter() - started,
        source=source_description,
        resumed_from=resumed_from,
        rows_trained=rows_consumed - rows_at_start,
    )


def _batches(source: TextSource, config: TrainingConfig, start_row: int) -> Iterator[Any]:
    return iter_batches(source, config.rows_per_batch, start_row=start_row)


def _checkpoint_config(config: TrainingConfig, source: dict[str, Any]) -> dict[str, Any]:
    return {**config.as_dict(), "source_description": source}


def _start(
    config: TrainingConfig, resume: str | os.PathLike[str] | None
) -> tuple[FieldTrainer, int, int, dict[str, Any] | None]:
    """The trainer to run, rows already consumed, batches already done, the saved source."""
    if resume is None:
        model = QuadraModel(config.field_size, seed=config.seed, learning_rate=config.learning_rate)
        return FieldTrainer(model, base_learning_rate=config.learning_rate), 0, 0, None
    try:
        loaded = load_checkpoint(resume)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    if loaded.trainer is None:
        raise TrainingError(
            f"{resume}: an original-format checkpoint has no training state; it can be probed or "
            "imported, but an exact resume needs a checkpoint written by quadra train"
        )
    saved = loaded.config
    mismatched = [
        f"{key} (checkpoint {saved.get(key)!r}, requested {getattr(config, key)!r})"
        for key in RESUME_FIXED
        if key in saved and _normal(saved[key]) != _normal(getattr(config, key))
    ]
    if mismatched:
        raise TrainingError(f"{resume}: cannot resume with different settings: " + "; ".join(mismatched))
    saved_source = saved.get("source_description")
    return (
        loaded.trainer,
        int(loaded.progress.get("rows_consumed", 0)),
        loaded.trainer.batches_done,
        saved_source if isinstance(saved_source, dict) else None,
    )


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def config_from_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> TrainingConfig:
    """The configuration a checkpoint was trained with, with some fields replaced."""
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    known = {f.name for f in fields(TrainingConfig)}
    base = TrainingConfig(**{k: v for k, v in loaded.config.items() if k in known})
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


# Metric files -----------------------------------------------------------------------------


class MetricsFile:
    """Per-batch metrics as JSON lines or CSV (by the file's suffix).

    On resume, rows past the checkpoint's batch are dropped (a run that died after its last
    checkpoint wrote some). The file is only rewritten once the first new row arrives, so a
    run that fails before training leaves an existing file as it was.
    """

    def __init__(self, path: str | os.PathLike[str], keep_through_batch: int = 0) -> None:
        self.path = Path(path)
        self.format = "csv" if self.path.suffix == ".csv" else "jsonl"
        self._kept = (
            [row for row in read_metrics(self.path) if row["batch_number"] <= keep_through_batch]
            if keep_through_batch and self.path.exists()
            else []
        )
        self._handle: Any = None
        self._writer: csv.DictWriter[str] | None = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "w", newline="", encoding="utf-8")
        if self.format == "csv":
            self._writer = csv.DictWriter(self._handle, METRIC_FIELDS)
            self._writer.writeheader()
        for row in self._kept:
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        if self._writer:
            self._writer.writerow(row)
        else:
            self._handle.write(json.dumps(row) + "\n")

    def __call__(self, metrics: BatchMetrics, rows_consumed: int) -> None:
        if self._handle is None:
            self._open()
        self._write(metrics.as_dict())
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> "MetricsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a metrics file written by `MetricsFile`, with numbers parsed."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix == ".csv":
            rows = [dict(row) for row in csv.DictReader(handle)]
            return [{k: _number(v) for k, v in row.items()} for row in rows]
        return [json.loads(line) for line in handle if line.strip()]


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)
