"""The off-site copy in the asset graph: each good hourly backup, pushed to a second location.

`offsite_backup` sits downstream of `backup`, with the same hourly partitions, in `backup_job`:
it runs only after a good backup (a bad one is never materialised, so nothing downstream runs)
and pushes what the copy at `QUADRA_BACKUP_OFFSITE` lacks (`backup/offsite.py`: chunks, file
lists, records, the manifests, the head last). Its check `offsite_integrity` (a step of its own, after the push)
then reads the copy
back as a stranger would, with the public keys only: every backup's signature and history, every
chunk present with its size, and the chunks this push wrote re-hashed (plus a rotating share of
the rest). A push that fails (the bucket unreachable, its head not in our history) fails this
step, not the backup: the local backup is good and counted, the run fails (the run-failure
alert), and the next hour's push completes the copy. Not configured (the embedded default): the
step says so and materialises nothing.
"""

from collections.abc import Iterator

import dagster as dg

from ..common import OWNER
from ..resources import DataHome, StoreResource
from .assets import BACKUP, backup_service, hourly_partitions

OFFSITE_BACKUP = dg.AssetKey("offsite_backup")


@dg.asset(
    key=OFFSITE_BACKUP,
    partitions_def=hourly_partitions,
    deps=[BACKUP],
    group_name="backup",
    kinds={"s3"},
    owners=[OWNER],
    pool="backup",
    output_required=False,
    description="The backup repository's off-site copy (QUADRA_BACKUP_OFFSITE: an S3 bucket or a folder on another "
    "host), pushed after each good backup: only what it lacks, the head last, pruned by the same signed retention.",
)
def offsite_backup(context: dg.AssetExecutionContext, data_home: DataHome, store: StoreResource) -> Iterator[dg.MaterializeResult]:
    from ...backup.offsite import OffsiteError, push_after_backup

    service = backup_service(data_home, store, context)
    if not service.settings.backup_offsite:
        context.log.warning("no off-site copy is configured (QUADRA_BACKUP_OFFSITE): the backups stay on this host only; "
                            "nothing pushed, nothing materialised")
        return
    try:
        pushed = push_after_backup(service)
    except OffsiteError as exc:
        raise _failure(exc, service.settings.backup_offsite) from None
    assert pushed is not None  # configured, checked above; the push logged its summary
    yield dg.MaterializeResult(metadata={
        "url": pushed.url,
        "head": pushed.head or "",
        "bytes_written": dg.MetadataValue.int(pushed.bytes_written),
        "chunks_written": pushed.chunks_written,
        "manifests_written": pushed.manifests_written,
        "pruned_backups": dg.MetadataValue.json(pushed.deleted_backups),
        "not_pushed": dg.MetadataValue.json(pushed.skipped),
        "seconds": round(pushed.seconds, 3),
    })


@dg.asset_check(
    asset=OFFSITE_BACKUP,
    name="offsite_integrity",
    description="The copy read back with the public keys only: every backup's signature and history, every chunk present "
    "with its size, the chunks the last push wrote re-hashed (and a rotating share of the rest).",
)
def offsite_integrity(context: dg.AssetCheckExecutionContext, data_home: DataHome,
                      store: StoreResource) -> dg.AssetCheckResult:
    from ...backup.offsite import OffsiteError, check_after_push

    service = backup_service(data_home, store, context)
    try:
        reports = check_after_push(service)  # what the last push wrote, as it recorded
    except OffsiteError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    problems = [f"{r.backup_id}: {p}" for r in reports for p in r.problems]
    return dg.AssetCheckResult(
        passed=not problems,
        description=f"{len(problems)} problem(s): {problems[0]}" if problems else None,
        metadata={"backups_checked": len(reports), "chunks_read": sum(r.chunks_read for r in reports),
                  "bytes_read": dg.MetadataValue.int(sum(r.bytes_checked for r in reports)),
                  "problems": dg.MetadataValue.json(problems[:50])},
    )


def _failure(exc: Exception, url: str | None) -> dg.Failure:
    return dg.Failure(description=f"{exc} (the local backup is good; the next hour's push completes the copy)",
                      metadata={"url": dg.MetadataValue.text(url or "")})
