"""Registering a trained checkpoint as a version and the champion gate, shared by every asset
that registers one (`registered_model` for `training_job`, `sweep_registered_model` for the
sweep's best trial): one gate, whichever path a model took.

The gate is decided before the materialisation is recorded, so that `champion_model` can refuse
a version that failed it even when it is materialised on its own later. A version whose files
do not match its signature never passes. The champion is re-evaluated in the same step with the
same code as the challenger (its gate score, the policy's loss on the spec's fixed probe
vectors, needs no corpus), so the comparison does not depend on when or how it was trained.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ...model import file_sha256, load_checkpoint
from ...model.evaluation import evaluate


class GateConfig(dg.Config):
    tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="A challenger passes if its gate score is at most the champion's plus this."
    )


def gate_check_specs(asset: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "checkpoint_sha256_matches",
            asset=asset,
            description="The SHA-256 tagged on the version equals the SHA-256 of the checkpoint downloaded from the registry.",
        ),
        dg.AssetCheckSpec(
            "not_worse_than_champion",
            asset=asset,
            blocking=True,
            description="The gate: the version's files match its signature, and its evaluation is not worse than "
            "the current champion's on the same data.",
        ),
    ]


@dataclass(frozen=True)
class Candidate:
    """A trained checkpoint to register: where it is, what it scored, what to tag it with."""

    checkpoint: Path
    checkpoint_sha256: str
    mlflow_run_id: str  # the run the version links to
    training_run_id: int | None
    gate_score: float
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    description: str
    held_out_texts: Sequence[str]


def register_and_gate(
    context: dg.AssetExecutionContext,
    reg: Any,  # quadra_pipeline.registry.ModelRegistry
    engine: Any,
    candidate: Candidate,
    tolerance: float,
    ui_base: str,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Register `candidate` (or reuse the version that already holds its bytes), decide the
    gate, then yield the materialisation and the two checks."""
    from ...registry import CHAMPION as CHAMPION_ALIAS
    from ...registry import SignatureError
    from ...registry.service import register_and_mirror

    reg.check_available()
    model = load_checkpoint(candidate.checkpoint).model
    champion_before = reg.alias_version(CHAMPION_ALIAS)
    existing = [v for v in reg.list_versions() if v.checkpoint_sha256 == candidate.checkpoint_sha256]
    if existing:
        # The same bytes are already a version (a re-run, or an identical retraining): reuse it.
        version_number, model_uri, version_run = existing[0].version, "", existing[0].run_id
        context.log.info(f"checkpoint {candidate.checkpoint_sha256[:12]} is already version {version_number}; not registering it again")
    else:
        version = register_and_mirror(
            reg,
            engine,
            run_id=candidate.mlflow_run_id,
            model=model,
            checkpoint_path=candidate.checkpoint,
            tags=dict(candidate.tags),
            description=candidate.description,
            metrics=dict(candidate.metrics),
            training_run=candidate.training_run_id,
        )
        version_number, model_uri, version_run = version.version, version.model_uri, version.run_id
        context.log.info(f"registered {reg.model_name} version {version_number} (challenger)")

    score = float(candidate.gate_score)
    try:
        reg.verify_version(version_number)
        signature_problem = None
    except SignatureError as exc:
        signature_problem = str(exc)
    if signature_problem:
        passed, champion_score, reason = False, None, signature_problem
    elif champion_before is None or champion_before == version_number:
        passed, champion_score = True, None
        reason = "no champion yet" if champion_before is None else "it is the champion already"
    else:
        champion_score = evaluate(reg.load_model(champion_before), list(candidate.held_out_texts)).gate_score
        passed = score <= champion_score + tolerance
        reason = f"gate score {score:.5f} vs champion v{champion_before} {champion_score:.5f} (tolerance {tolerance})"
    context.log.info(f"champion gate: {'passed' if passed else 'FAILED'}: {reason}")

    yield dg.MaterializeResult(
        metadata={
            "version": version_number,
            "model_uri": model_uri or f"models:/{reg.model_name}/{version_number}",
            "checkpoint_sha256": candidate.checkpoint_sha256,
            "mlflow_run": dg.MetadataValue.url(reg.run_url(version_run, ui_base)),
            "gate_score": score,
            "gate_passed": passed,
            "gate_reason": reason,
            "signature": "verified" if signature_problem is None else signature_problem,
            "champion_before": champion_before if champion_before is not None else "none",
            **(extra_metadata or {}),
        }
    )

    with tempfile.TemporaryDirectory() as tmp:
        downloaded = reg.download_checkpoint(version_number, Path(tmp), verify=False)
        actual = file_sha256(downloaded)
    tagged = reg.version_tags(version_number).get("checkpoint_sha256", "")
    yield dg.AssetCheckResult(
        check_name="checkpoint_sha256_matches",
        passed=tagged == actual == candidate.checkpoint_sha256,
        metadata={"tagged": tagged, "downloaded": actual, "trained": candidate.checkpoint_sha256},
    )
    yield dg.AssetCheckResult(
        check_name="not_worse_than_champion",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=reason,
        metadata={
            "version": version_number,
            "gate_score": score,
            "champion_version": champion_before if champion_before is not None else "none",
            "champion_gate_score": champion_score if champion_score is not None else "none",
        },
    )


def numeric(metrics: Mapping[str, Any], keep: Callable[[str], bool] = lambda _: True) -> dict[str, float]:
    """The numeric figures of a metadata or metrics mapping (booleans are not figures)."""
    return {k: float(v) for k, v in metrics.items() if keep(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
