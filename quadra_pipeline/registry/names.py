"""Names the registry uses: the registered model, the aliases, artifact paths and version tags."""

MODEL_NAME = "quadra-matrix"
EXPERIMENT_NAME = "quadra-matrix"
CHAMPION = "champion"
CHALLENGER = "challenger"

#: Where, inside a version's model artifacts, the checkpoint (our bytes, unchanged) lives.
CHECKPOINT_ARTIFACT = "extra_files/checkpoint.pt"
CHECKPOINT_FILENAME = "checkpoint.pt"
#: Where, inside a version's model artifacts, its signature lives (not itself signed).
SIGNATURE_DIR = "signature"
SIGNATURE_ARTIFACT = f"{SIGNATURE_DIR}/model.sig"
#: Name of the logged model inside its run.
MODEL_ARTIFACT_NAME = "model"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
#: log_batch limits of the MLflow REST API (per call).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100

# Version tags this package writes (callers add dagster_run_id, data_fingerprint, source, ...).
TAG_SHA256 = "checkpoint_sha256"
TAG_FIELD_SIZE = "field_size"
TAG_CODE_VERSION = "code_version"
TAG_CHECKPOINT = "checkpoint_artifact"
TAG_SIGNATURE_SHA256 = "signature_sha256"  # SHA-256 of the signature file
TAG_SIGNATURE_KEY = "signature_key"  # SHA-256 of the public key (PEM) that verifies it
TAG_SIGNED = "signed"  # how the version got its signature: at registration, at import, later by `quadra model sign`
METRIC_TAG_PREFIX = "metric."
