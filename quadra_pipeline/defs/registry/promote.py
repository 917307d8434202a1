"""Rollback and manual promotion from Dagster: move an alias to a named version.

A move of `champion` is recorded in the asset graph too: the op materialises `champion_model`
(version, previous version, who and why), so the UI's champion is the one the registry serves,
not the one the last training run promoted.
"""


import dagster as dg
from pydantic import Field

from ..common import CHAMPION, identity_tags
from ..resources import RegistryResource, StoreResource


class PromoteConfig(dg.Config):
    version: int = Field(..., ge=1, description="Registry version of 'quadra-matrix' to move the alias to.")
    alias: str = Field("champion", description="The alias to move.")
    reason: str = Field("manual promotion", description="Why (kept in the alias history).")


@dg.op(description="Move an alias of the registered model to a version (recorded in model_alias_events); a move of "
       "champion materialises champion_model.")
def promote_version(context: dg.OpExecutionContext, config: PromoteConfig, registry: RegistryResource, store: StoreResource):
    from ...registry import CHAMPION as CHAMPION_ALIAS
    from ...registry.service import promote

    moved_by = f"dagster:{context.run.run_id}"
    previous = promote(
        registry.registry(), store.engine(), config.version, alias=config.alias, moved_by=moved_by, reason=config.reason,
    )
    context.log.info(f"{config.alias}: version {previous} -> {config.version}")
    if config.alias == CHAMPION_ALIAS:
        yield dg.AssetMaterialization(
            asset_key=CHAMPION,
            description=f"champion moved to version {config.version} by promote_model_job ({config.reason})",
            metadata={"version": config.version, "previous_version": previous if previous is not None else "none",
                      "reason": config.reason, "moved_by": moved_by},
        )
    yield dg.Output(config.version)


@dg.job(description="Promote (or roll back) the champion to a named version; the asset graph shows the new champion.",
        tags={"quadra/kind": "registry", **identity_tags("training")})
def promote_model_job():
    promote_version()
