"""The text corpus snapshot: the rows training reads, frozen with a held-out split."""


from typing import Any, Literal

import dagster as dg
from pydantic import Field, ValidationError

from ...data import open_source
from ...data.snapshot import SnapshotRef, publish_snapshot, write_snapshot
from ..common import CORPUS, MODEL, OWNER, SWEEP
from ..resources import DataHome, ObjectStoreResource


class CorpusConfig(dg.Config):
    source: Literal["synthetic", "file", "huggingface"] = Field(
        "synthetic", description="Text source: the seeded wikitext-shaped generator, local files, or Hugging Face datasets."
    )
    source_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Source options. synthetic: seed. file: path (file, folder or glob), text_field. "
        "huggingface: name, config, split, text_field.",
    )
    training_rows: int = Field(2000, ge=10, le=50_000_000, description="Rows taken for training (in order).")
    held_out_rows: int = Field(200, ge=10, le=1_000_000, description="Rows after those, kept for evaluation only.")


def refuse_bad_training_config(context: dg.AssetExecutionContext, config: CorpusConfig) -> None:
    """Check the run's training hyperparameters before any step does work.

    Dagster's config schema checks types in the Launchpad, not bounds; the bounds live on the
    pydantic fields of `TrainingRunConfig`. This first step of the run validates them, so a
    bad value stops the run before the corpus is written or anything trains.
    """
    from ..training.assets import TrainingRunConfig, check_corpus_is_large_enough

    ops = (context.run.run_config or {}).get("ops", {})
    in_this_run = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    if "train_model" not in ops and MODEL not in in_this_run:
        return
    try:
        training = TrainingRunConfig(**(ops.get("train_model", {}).get("config") or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise dg.Failure(f"train_model config refused before anything ran: {problems}") from None
    check_corpus_is_large_enough(config.training_rows, training)


def refuse_bad_sweep_config(context: dg.AssetExecutionContext, config: CorpusConfig) -> None:
    """The same for a run that sweeps: its search space is checked, each problem one line, and
    the corpus's size against the hungriest trial, before the corpus is written."""
    from ..sweep.config import SweepConfig, planned_trials

    ops = (context.run.run_config or {}).get("ops", {})
    in_this_run = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    if "hyperparameter_sweep" not in ops and SWEEP not in in_this_run:
        return
    try:
        sweep = SweepConfig(**(ops.get("hyperparameter_sweep", {}).get("config") or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise dg.Failure(f"sweep refused before any trial ran: {problems}") from None
    planned_trials(sweep, config.training_rows)


@dg.asset(
    key=CORPUS,
    group_name="data",
    kinds={"python", "parquet"},
    owners=[OWNER],
    description="Snapshot of the training text (train and held-out parquet files, named by the SHA-256 of their rows), "
    "in the data home and in the object store, where steps on other hosts fetch it.",
)
def corpus(
    context: dg.AssetExecutionContext, config: CorpusConfig, data_home: DataHome, objects: ObjectStoreResource
) -> dg.Output[SnapshotRef]:
    refuse_bad_training_config(context, config)
    refuse_bad_sweep_config(context, config)
    source = open_source(config.source, **config.source_options)
    snapshot = write_snapshot(source, data_home.corpus_dir(), config.training_rows, config.held_out_rows)
    ref = publish_snapshot(snapshot, objects.store())
    context.log.info(f"corpus snapshot {snapshot.fingerprint[:16]}: {snapshot.training_rows} + {snapshot.held_out_rows} rows")
    return dg.Output(
        ref,
        metadata={
            "path": dg.MetadataValue.path(str(snapshot.path)),
            "store_key": ref.store_key,
            "fingerprint": snapshot.fingerprint,
            "source": dg.MetadataValue.json(snapshot.source),
            "training_rows": snapshot.training_rows,
            "held_out_rows": snapshot.held_out_rows,
            "usable_training_rows": snapshot.usable_training_rows,
            "usable_held_out_rows": snapshot.usable_held_out_rows,
            "bytes": snapshot.bytes,
        },
    )
