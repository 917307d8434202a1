"""The text corpus snapshot: the rows training reads, frozen with a held-out split."""


from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ...data import open_source
from ...data.snapshot import write_snapshot
from ..common import CORPUS, OWNER
from ..resources import DataHome


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


@dg.asset(
    key=CORPUS,
    group_name="data",
    kinds={"python", "parquet"},
    owners=[OWNER],
    description="Snapshot of the training text (train and held-out parquet files, named by the SHA-256 of their rows).",
)
def corpus(context: dg.AssetExecutionContext, config: CorpusConfig, data_home: DataHome) -> dg.MaterializeResult:
    source = open_source(config.source, **config.source_options)
    snapshot = write_snapshot(source, data_home.corpus_dir(), config.training_rows, config.held_out_rows)
    context.log.info(f"corpus snapshot {snapshot.fingerprint[:16]}: {snapshot.training_rows} + {snapshot.held_out_rows} rows")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(snapshot.path)),
            "fingerprint": snapshot.fingerprint,
            "source": dg.MetadataValue.json(snapshot.source),
            "training_rows": snapshot.training_rows,
            "held_out_rows": snapshot.held_out_rows,
            "usable_training_rows": snapshot.usable_training_rows,
            "usable_held_out_rows": snapshot.usable_held_out_rows,
            "bytes": snapshot.bytes,
        },
    )
