"""Step outputs in the object store, so a step on one host reads what a step on another wrote.

Dagster's own `FilesystemIOManager` pickles outputs into a folder of the run's host, which a
Celery worker on another host never sees; `dagster-aws`'s S3 IO manager would do, but with the
SDK's default timeouts an unreachable store means minutes of retries and a raw botocore error.
This one pickles into `quadra_pipeline.objectstore` (S3 or a folder, bounded calls, one-line
errors), with Dagster's usual identifiers:

- an op's output: `io/runs/<run id>/<step key>/<output>[/<mapping key>]` (a retried or
  re-executed run reads its parent's outputs where Dagster says so);
- an asset's value: `io/assets/<key path>[/<partition>]/runs/<run id>`, and the same under
  `latest`: a downstream step of the same run reads its own run's value (another run that
  materialised the asset in between cannot change what this run trains on); a step of a later
  run reads `latest`.

Values are small descriptions (a corpus snapshot's reference, a trial's result), never the
checkpoints themselves: those go to the store as files, by key, checked by SHA-256.
"""

from __future__ import annotations

import pickle
from typing import Any

import dagster as dg

from ..settings import load_settings


class ObjectStoreIOManager(dg.ConfigurableIOManager):
    """Pickled step outputs in the object store (QUADRA_OBJECT_STORE)."""

    url: str | None = None

    def _store(self):
        from ..objectstore import open_object_store

        return open_object_store(self.url or load_settings().object_store)

    @staticmethod
    def _op_key(identifier) -> str:
        return "io/runs/" + "/".join(str(part) for part in identifier)

    @staticmethod
    def _asset_base(context) -> str:
        return "io/assets/" + "/".join(context.get_asset_identifier())

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None and context.dagster_type.is_nothing:
            return
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        store = self._store()
        if context.has_asset_key:
            base = self._asset_base(context)
            store.put_bytes(f"{base}/runs/{context.run_id}", data)
            store.put_bytes(f"{base}/latest", data)
            context.add_output_metadata({"stored_at": f"{store.url}/{base}/runs/{context.run_id}"})
        else:
            store.put_bytes(self._op_key(context.get_identifier()), data)

    def load_input(self, context: dg.InputContext) -> Any:
        store = self._store()
        if context.has_asset_key and context.upstream_output is not None and context.upstream_output.has_asset_key:
            base = self._asset_base(context)
            key = f"{base}/latest"
            run_id = _producing_run(context)
            if run_id is not None and store.exists(f"{base}/runs/{run_id}"):
                key = f"{base}/runs/{run_id}"
        else:
            key = self._op_key(context.get_identifier())
        return pickle.loads(store.get_bytes(key))


def _producing_run(context: dg.InputContext) -> str | None:
    """The run that made the upstream value, when it was made in this run or a parent of it."""
    try:
        return context.upstream_output.run_id  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - Dagster raises when the value is from another run
        return None
