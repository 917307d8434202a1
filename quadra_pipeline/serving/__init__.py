"""Online scoring of the registered model's champion (`quadra serve`), no Dagster here.

    quadra serve [--host H] [--port P] [--workers N]

Serves the version that the alias (`champion`) names with MLflow's scoring protocol
(`POST /invocations`, `/ping`, `/health`, `/version`), so clients of `mlflow models serve`
work unchanged, behind a bearer token. Only ever a verified version: its files against its
signature (the model keyring), its checkpoint against its SHA-256 tag, its MLmodel signature,
a load that answers its own input example; a version that fails is never served, the last
good one goes on answering and `/health` says `degraded` and why. It follows the alias within
seconds (polling, woken at once by a signed MLflow webhook if one is set up) and swaps the model
by reference, so no request fails during a swap.

Modules: `inputs` (request bodies against the signature), `verify` (what "verified" means, and
loading), `follower` (the alias, one thread per service), `holder` (the model each process
answers with), `app` (the routes), `metrics`, `webhook`, `cache` (the run folder they share),
`service` (processes and signals), `config`.
"""

from .config import ServingConfig, ServingError

__all__ = ["ServingConfig", "ServingError"]
