"""Rollback and manual promotion from Dagster: move an alias to a named version."""


import dagster as dg
from pydantic import Field

from ..common import identity_tags
from ..resources import RegistryResource, StoreResource


class PromoteConfig(dg.Config):
    version: int = Field(..., ge=1, description="Registry version of 'quadra-matrix' to move the alias to.")
    alias: str = Field("champion", description="The alias to move.")
    reason: str = Field("manual promotion", description="Why (kept in the alias history).")


@dg.op(description="Move an alias of the registered model to a version (recorded in model_alias_events).")
def promote_version(context: dg.OpExecutionContext, config: PromoteConfig, registry: RegistryResource, store: StoreResource) -> int:
    from ...registry.service import promote

    previous = promote(
        registry.registry(), store.engine(), config.version, alias=config.alias,
        moved_by=f"dagster:{context.run.run_id}", reason=config.reason,
    )
    context.log.info(f"{config.alias}: version {previous} -> {config.version}")
    return config.version


@dg.job(description="Promote (or roll back) the champion to a named version.",
        tags={"quadra/kind": "registry", **identity_tags("training")})
def promote_model_job():
    promote_version()
