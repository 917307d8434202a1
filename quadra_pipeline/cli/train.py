"""`quadra train`: train outside Dagster (debugging, benchmarks), writing a checkpoint and metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, CommandError, _field_size, _learning_rate, _non_negative, _positive


def cmd_train(args: argparse.Namespace) -> int:
    from ..settings import load_settings
    from ..training import MetricsFile, TrainingConfig, config_from_checkpoint, run_training

    settings = load_settings()
    source_options = _source_options(args)
    explicit = {
        "field_size": args.field_size,
        "batches": args.batches,
        "rows_per_batch": args.rows_per_batch,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.source is not None:
        explicit["source"] = args.source
        explicit["source_options"] = source_options
    if args.resume:
        # Settings not given on the command line come from the checkpoint.
        config = config_from_checkpoint(args.resume, **explicit)
    else:
        config = TrainingConfig(
            field_size=args.field_size or settings.field_size,
            batches=args.batches or settings.batches,
            rows_per_batch=args.rows_per_batch or settings.rows_per_batch,
            seed=settings.seed if args.seed is None else args.seed,
            learning_rate=args.learning_rate or settings.learning_rate,
            source=args.source or "synthetic",
            source_options=source_options,
            checkpoint_every=args.checkpoint_every or 10,
        )
    out = Path(args.out)
    from ..training import CHECKPOINT_NAME

    if not args.resume and not args.force and (out / CHECKPOINT_NAME).exists():
        raise CommandError(
            f"{out} already holds a checkpoint; continue it with --resume {out / CHECKPOINT_NAME}, "
            "or start afresh with --force (it replaces the checkpoint and the metrics)"
        )
    metrics_path = out / f"metrics.{args.metrics_format}"
    resumed_batches = _checkpoint_batches(args.resume) if args.resume else 0
    progress = _progress_bar(config.batches, resumed_batches)
    with MetricsFile(metrics_path, keep_through_batch=resumed_batches) as metrics_file:
        try:
            outcome = run_training(config, out, resume=args.resume, on_batch=[metrics_file, progress.update])
        finally:
            progress.close()
    last = outcome.metrics[-1] if outcome.metrics else None
    summary = {
        "checkpoint": str(outcome.checkpoint),
        "checkpoint_sha256": outcome.checkpoint_sha256,
        "metrics": str(metrics_path),
        "batches": outcome.batches_done,
        "rows": outcome.rows_consumed,
        "seconds": round(outcome.seconds, 3),
        "rows_per_second": round(outcome.rows_per_second, 2),
        "final_loss": last.loss if last else None,
        "final_reward": last.reward if last else None,
    }
    if outcome.batches_done < config.batches:
        print(f"quadra: warning: the source ran out after {outcome.batches_done} of {config.batches} batches", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.source_option or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--source-option must look like KEY=VALUE, got {item!r}")
        options[key] = _parse_value(value)
    return options


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _checkpoint_batches(path: str) -> int:
    from ..model import load_checkpoint

    loaded = load_checkpoint(path)
    return loaded.trainer.batches_done if loaded.trainer else 0


class _Progress:
    """A tqdm bar on a terminal, nothing otherwise."""

    def __init__(self, total: int, done: int) -> None:
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="batch", file=sys.stderr, dynamic_ncols=True)

    def update(self, metrics: Any, rows: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{metrics.loss:.4f}", reward=f"{metrics.reward:.2f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress_bar(total: int, done: int) -> _Progress:
    return _Progress(total, done)


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train outside Dagster, writing a checkpoint and metrics into DIR",
                                description="Train the model outside Dagster; write checkpoint.pt and metrics into DIR.")
    train.add_argument("--field-size", type=_field_size, help="field size N (default QUADRA_FIELD_SIZE, 100)")
    train.add_argument("--batches", type=_positive, help="batches to train in total, including any resumed ones")
    train.add_argument("--rows-per-batch", type=_positive, help="rows pulled from the text stream per batch (10)")
    train.add_argument("--seed", type=_non_negative, help="seed for every random draw (QUADRA_SEED, 0)")
    train.add_argument("--learning-rate", type=_learning_rate, help="base learning rate (0.001)")
    train.add_argument("--source", choices=("synthetic", "file", "huggingface"), help="text source (synthetic)")
    train.add_argument("--source-option", action="append", metavar="KEY=VALUE",
                       help="source option, repeatable (e.g. path=corpus.txt, text_field=text)")
    train.add_argument("--checkpoint-every", type=_positive, help="write a checkpoint every K batches (10)")
    train.add_argument("--metrics-format", choices=("jsonl", "csv"), default="jsonl")
    train.add_argument("--out", required=True, metavar="DIR", help="folder for checkpoint.pt and metrics")
    train.add_argument("--resume", metavar="CKPT", help="continue exactly from a checkpoint written by quadra train")
    train.add_argument("--force", action="store_true", help="start afresh even if DIR already holds a checkpoint")
    train.set_defaults(handler=cmd_train)

