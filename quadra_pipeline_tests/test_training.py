"""Training runs: checkpoints every k batches, exact resume through the data, bad inputs."""

import json

import pytest

from quadra_pipeline.model import load_checkpoint
from quadra_pipeline.training import (
    MetricsFile,
    TrainingConfig,
    TrainingError,
    config_from_checkpoint,
    read_metrics,
    run_training,
)

FIELDS_WITHOUT_TIME = lambda m: {k: v for k, v in m.as_dict().items() if k != "batch_seconds"}  # noqa: E731


def test_checkpoints_every_k_batches_and_at_the_end(tmp_path):
    saved = []
    outcome = run_training(
        TrainingConfig(field_size=20, batches=5, checkpoint_every=2, seed=1),
        tmp_path,
        on_checkpoint=lambda path, sha, batches: saved.append(batches),
    )
    assert saved == [2, 4, 5]
    assert outcome.batches_done == 5 and len(outcome.metrics) == 5
    loaded = load_checkpoint(outcome.checkpoint)
    assert loaded.trainer.batches_done == 5
    assert loaded.progress["rows_consumed"] == outcome.rows_consumed >= 50
    assert loaded.config["source_description"]["fingerprint"] == outcome.source["fingerprint"]


def test_resume_from_a_checkpoint_gives_the_uninterrupted_metrics(tmp_path):
    config = TrainingConfig(field_size=24, batches=6, checkpoint_every=3, seed=2)
    straight = run_training(config, tmp_path / "straight")

    # A run that "died" after its checkpoint at batch 3.
    first = run_training(TrainingConfig(field_size=24, batches=3, checkpoint_every=3, seed=2), tmp_path / "first")
    resumed = run_training(config, tmp_path / "resumed", resume=first.checkpoint)
    assert resumed.resumed_from == 3
    combined = [FIELDS_WITHOUT_TIME(m) for m in first.metrics + resumed.metrics]
    assert combined == [FIELDS_WITHOUT_TIME(m) for m in straight.metrics]
    assert resumed.rows_consumed == straight.rows_consumed


def test_resume_refuses_different_settings(tmp_path):
    first = run_training(TrainingConfig(field_size=24, batches=2, seed=2), tmp_path / "a")
    with pytest.raises(TrainingError, match=r"different settings: seed \(checkpoint 2, requested 3\)"):
        run_training(TrainingConfig(field_size=24, batches=4, seed=3), tmp_path / "b", resume=first.checkpoint)
    config = config_from_checkpoint(first.checkpoint, batches=4)
    assert config.seed == 2 and config.field_size == 24 and config.batches == 4


def test_resume_from_an_original_checkpoint_is_refused(tmp_path):
    from quadra_pipeline_tests.model.test_checkpoint import write_original

    write_original(tmp_path / "orig.pth", 100)
    with pytest.raises(TrainingError, match="original-format checkpoint has no training state"):
        run_training(TrainingConfig(batches=1), tmp_path / "out", resume=tmp_path / "orig.pth")


def test_file_source_and_its_end(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"row number {i} has enough words in it" for i in range(25)) + "\n")
    outcome = run_training(
        TrainingConfig(field_size=16, batches=10, rows_per_batch=10, source="file", source_options={"path": str(corpus)}),
        tmp_path / "out",
    )
    assert outcome.batches_done == 3  # 25 rows: two full batches and a short one, then the file ends
    assert outcome.source["kind"] == "file"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file|does not exist|not found"), ("", "no rows with more than 10 characters"), ("short\n\n  tiny\n", "no rows with more than 10 characters")],
)
def test_missing_or_empty_source_fails_before_training(tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_text(content)
    with pytest.raises(TrainingError, match=message):
        run_training(TrainingConfig(source="file", source_options={"path": str(corpus)}), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_bad_config_is_refused_naming_the_field():
    with pytest.raises(TrainingError, match="invalid rows_per_batch: 0"):
        TrainingConfig(rows_per_batch=0)
    with pytest.raises(TrainingError, match="invalid learning_rate"):
        TrainingConfig(learning_rate=0.0)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_metrics_file_round_trip_and_resume_truncation(tmp_path, suffix):
    path = tmp_path / f"metrics.{suffix}"
    outcome = run_training(TrainingConfig(field_size=16, batches=4, seed=1), tmp_path / "run")
    with MetricsFile(path) as sink:
        for m in outcome.metrics:
            sink(m, 0)
    rows = read_metrics(path)
    assert [r["batch_number"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["loss"] == pytest.approx(outcome.metrics[2].loss)
    # Resuming from batch 2 drops rows 3-4 once the first new row arrives, keeps 1-2.
    sink = MetricsFile(path, keep_through_batch=2)
    assert [r["batch_number"] for r in read_metrics(path)] == [1, 2, 3, 4]  # untouched until a row comes
    sink(outcome.metrics[2], 0)
    sink.close()
    assert [r["batch_number"] for r in read_metrics(path)] == [1, 2, 3]
    if suffix == "jsonl":
        assert json.loads(path.read_text().splitlines()[0])["batch_number"] == 1


def test_resume_refuses_changed_data(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"row number {i} has enough words in it" for i in range(60)) + "\n")
    config = TrainingConfig(field_size=16, batches=2, source="file", source_options={"path": str(corpus)})
    first = run_training(config, tmp_path / "a")
    corpus.write_text(corpus.read_text().replace("row number 30", "row NUMBER 30"))
    with pytest.raises(TrainingError, match="data changed since the checkpoint"):
        run_training(TrainingConfig(field_size=16, batches=4, source="file", source_options={"path": str(corpus)}), tmp_path / "b", resume=first.checkpoint)


def test_thread_count_is_restored(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_training(TrainingConfig(field_size=16, batches=1), tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
