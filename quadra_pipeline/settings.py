"""One settings object for the whole project, read from the environment and `.env`.

Development works with no configuration at all: everything lives under the data home
(`QUADRA_HOME`, default `.quadra/` under the working directory).

Secrets: every secret setting can come from a file instead (`<VARIABLE>_FILE`, as Docker and
Kubernetes mount secrets), declared once in `FILE_TWINS` and read by one validator. Errors name
the variable (and the file), never the value.

Least privilege in production: loading the settings requires no secret, so a process whose job
needs none (the Dagster code server loading the definitions) holds none. Each secret is required,
with one line naming the variable and its `_FILE` form, by the operation that uses it:
`QUADRA_SECRET_KEY` by the backup service (`require_secret_key`), the signing keys by signing
(`keys.py`, the registry and the backup repository). A secret that is set is still checked when
the settings load (a short or example secret key, a key that is not a usable PEM).
"""

from __future__ import annotations

import enum
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The value `.env.example` ships with; production refuses it.
EXAMPLE_SECRET_KEY = "change-me-to-64-random-hex-characters-from-secrets-token-hex-32"
MIN_SECRET_KEY_BYTES = 32


class SettingsError(ValueError):
    """The configuration cannot be used; the message says which variable and why."""


class Environment(str, enum.Enum):
    development = "development"
    production = "production"
    test = "test"


class RunExecutor(str, enum.Enum):
    """How a run executes its steps: all in the run's own process (the default, and what the
    pools' waits are tuned for), each step in its own Kubernetes Job (`dagster-k8s`), or each
    step as a Celery task on whichever worker host takes it (`dagster-celery`)."""

    in_process = "in_process"
    k8s_job = "k8s_job"
    celery = "celery"


#: Settings that may be read from a file instead: value field -> its twin, the field of
#: `<VARIABLE>_FILE` (a path). Both set is an error; the file's content (trailing newlines
#: stripped) becomes the value. The one list of secrets with a file form.
FILE_TWINS: dict[str, str] = {
    "database_url_override": "database_url_file",
    "secret_key": "secret_key_file",
    "mlflow_backend_uri": "mlflow_backend_uri_file",
    "backup_database_url": "backup_database_url_file",
    "mlflow_tracking_password": "mlflow_tracking_password_file",
    "celery_broker_url": "celery_broker_url_file",
    "celery_backend_url": "celery_backend_url_file",
    "wal_url": "wal_url_file",
    "alert_webhook_url": "alert_webhook_url_file",
    "alert_smtp_password": "alert_smtp_password_file",
    "model_signing_key": "model_signing_key_file",
    "model_verify_key": "model_verify_key_file",
    "backup_signing_key": "backup_signing_key_file",
    "backup_verify_key": "backup_verify_key_file",
    "serving_token": "serving_token_file",
    "serving_webhook_secret": "serving_webhook_secret_file",
}
#: Settings that name a file or folder (blank means unset).
_PATHS = (*FILE_TWINS.values(), "model_verify_keys_file", "backup_verify_keys_file", "wal_archive", "serving_cache_dir_override")
MAX_SECRET_FILE_BYTES = 1 << 20


class Settings(BaseSettings):
    """Every knob the project reads from its environment (see `.env.example`)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    env: Environment = Field(Environment.development, alias="QUADRA_ENV")
    home: Path = Field(Path(".quadra"), alias="QUADRA_HOME")
    # URLs may carry passwords: kept out of repr() (and so out of logs).
    database_url_override: str | None = Field(None, alias="DATABASE_URL", repr=False)
    database_url_file: Path | None = Field(None, alias="DATABASE_URL_FILE")
    mlflow_tracking_uri_override: str | None = Field(None, alias="MLFLOW_TRACKING_URI", repr=False)
    # An MLflow server with authentication (basic-auth): MLflow's client reads these two only from
    # the environment; the registry sets them around each of its calls (registry/connection.py).
    mlflow_tracking_username: str | None = Field(None, alias="MLFLOW_TRACKING_USERNAME")
    mlflow_tracking_password: SecretStr | None = Field(None, alias="MLFLOW_TRACKING_PASSWORD")
    mlflow_tracking_password_file: Path | None = Field(None, alias="MLFLOW_TRACKING_PASSWORD_FILE")
    mlflow_ui_url_override: str | None = Field(None, alias="QUADRA_MLFLOW_UI_URL")
    secret_key: SecretStr | None = Field(None, alias="QUADRA_SECRET_KEY")
    secret_key_file: Path | None = Field(None, alias="QUADRA_SECRET_KEY_FILE")
    backup_dir_override: Path | None = Field(None, alias="QUADRA_BACKUP_DIR")
    # Model-version signing (keys.py): the private key signs, the public key verifies; the keyring
    # (retired public keys) verifies versions signed before a rotation.
    model_signing_key: SecretStr | None = Field(None, alias="QUADRA_MODEL_SIGNING_KEY")
    model_signing_key_file: Path | None = Field(None, alias="QUADRA_MODEL_SIGNING_KEY_FILE")
    model_verify_key: str | None = Field(None, alias="QUADRA_MODEL_VERIFY_KEY")
    model_verify_key_file: Path | None = Field(None, alias="QUADRA_MODEL_VERIFY_KEY_FILE")
    model_verify_keys_file: Path | None = Field(None, alias="QUADRA_MODEL_VERIFY_KEYS_FILE")
    # Backup-manifest signing (Ed25519): the private key signs, the public key alone verifies.
    backup_signing_key: SecretStr | None = Field(None, alias="QUADRA_BACKUP_SIGNING_KEY")
    backup_signing_key_file: Path | None = Field(None, alias="QUADRA_BACKUP_SIGNING_KEY_FILE")
    backup_verify_key: str | None = Field(None, alias="QUADRA_BACKUP_VERIFY_KEY")
    backup_verify_key_file: Path | None = Field(None, alias="QUADRA_BACKUP_VERIFY_KEY_FILE")
    backup_verify_keys_file: Path | None = Field(None, alias="QUADRA_BACKUP_VERIFY_KEYS_FILE")
    # The MLflow server's own database, when MLFLOW_TRACKING_URI is that server (http) and this
    # process can reach its database: backups then include it.
    mlflow_backend_uri: str | None = Field(None, alias="QUADRA_MLFLOW_BACKEND_URI", repr=False)
    mlflow_backend_uri_file: Path | None = Field(None, alias="QUADRA_MLFLOW_BACKEND_URI_FILE")
    # The project database as the backup reads it: a read-only role (default DATABASE_URL).
    backup_database_url: str | None = Field(None, alias="QUADRA_BACKUP_DATABASE_URL", repr=False)
    backup_database_url_file: Path | None = Field(None, alias="QUADRA_BACKUP_DATABASE_URL_FILE")
    # Where the MLflow server keeps its artifacts when not in the data home (an S3 URL, as its
    # --artifacts-destination): the backup mirrors them from there.
    mlflow_artifacts_store: str | None = Field(None, alias="QUADRA_MLFLOW_ARTIFACTS_STORE")
    backup_dump_timeout: float = Field(3600.0, alias="QUADRA_BACKUP_DUMP_TIMEOUT", gt=0, le=7 * 24 * 3600)
    # Deep verification re-reads 1/N of the stored chunks each run, all of them within N runs.
    backup_verify_runs: int = Field(24, alias="QUADRA_BACKUP_VERIFY_RUNS", ge=1, le=100_000)
    # The off-site copy of the backup repository (backup/offsite.py), pushed after each backup:
    # s3://bucket[/prefix] (credentials and endpoint the AWS way) or a folder. Unset: none.
    backup_offsite: str | None = Field(None, alias="QUADRA_BACKUP_OFFSITE")
    # Continuous replication of the SQLite databases with Litestream (replication/): a folder or
    # s3://bucket[/prefix]; unset: off. Its check fails when a database's lag passes the limit (s).
    replica: str | None = Field(None, alias="QUADRA_REPLICA")
    replication_max_lag: float = Field(60.0, alias="QUADRA_REPLICATION_MAX_LAG", gt=0, le=7 * 24 * 3600)

    @field_validator("backup_offsite", "replica", mode="before")
    @classmethod
    def _blank_location_is_unset(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value
    # Continuous archiving of PostgreSQL (backup/wal.py): the archive folder (base backups and the
    # streamed WAL; another host's volume) and a role with REPLICATION for base backups.
    wal_archive: Path | None = Field(None, alias="QUADRA_WAL_ARCHIVE")
    wal_url: str | None = Field(None, alias="QUADRA_WAL_URL", repr=False)
    wal_url_file: Path | None = Field(None, alias="QUADRA_WAL_URL_FILE")
    # Step isolation on Kubernetes: QUADRA_RUN_EXECUTOR=k8s_job runs each step as its own pod.
    run_executor: RunExecutor = Field(RunExecutor.in_process, alias="QUADRA_RUN_EXECUTOR")
    # QUADRA_RUN_EXECUTOR=celery: the broker and result backend (URLs may carry passwords).
    celery_broker_url: str | None = Field(None, alias="QUADRA_CELERY_BROKER_URL", repr=False)
    celery_broker_url_file: Path | None = Field(None, alias="QUADRA_CELERY_BROKER_URL_FILE")
    celery_backend_url: str | None = Field(None, alias="QUADRA_CELERY_BACKEND_URL", repr=False)
    celery_backend_url_file: Path | None = Field(None, alias="QUADRA_CELERY_BACKEND_URL_FILE")
    # Where steps on different hosts share files (sweep checkpoints, corpus snapshots):
    # s3://bucket[/prefix] (credentials and endpoint the AWS way: AWS_SHARED_CREDENTIALS_FILE,
    # AWS_ENDPOINT_URL_S3), or a folder; default: $QUADRA_HOME/objects.
    object_store_override: str | None = Field(None, alias="QUADRA_OBJECT_STORE")
    # A sweep refuses a search space of more trials than this, before any trial starts.
    sweep_max_trials: int = Field(200, alias="QUADRA_SWEEP_MAX_TRIALS", ge=1, le=100_000)
    # `quadra serve` (quadra_pipeline/serving/): the bearer token its clients send (required in
    # production), the HMAC secret of MLflow's registry webhooks (optional: polling otherwise),
    # what it serves and how it follows the alias, its limits and where it keeps verified versions.
    serving_token: SecretStr | None = Field(None, alias="QUADRA_SERVING_TOKEN")
    serving_token_file: Path | None = Field(None, alias="QUADRA_SERVING_TOKEN_FILE")
    serving_webhook_secret: SecretStr | None = Field(None, alias="QUADRA_SERVING_WEBHOOK_SECRET")
    serving_webhook_secret_file: Path | None = Field(None, alias="QUADRA_SERVING_WEBHOOK_SECRET_FILE")
    serving_model: str = Field("quadra-matrix", alias="QUADRA_SERVING_MODEL", min_length=1, max_length=256)
    serving_alias: str = Field("champion", alias="QUADRA_SERVING_ALIAS", min_length=1, max_length=256)
    serving_host: str = Field("127.0.0.1", alias="QUADRA_SERVING_HOST", min_length=1)
    serving_port: int = Field(8080, alias="QUADRA_SERVING_PORT", ge=1, le=65535)
    serving_workers: int = Field(1, alias="QUADRA_SERVING_WORKERS", ge=1, le=64)
    serving_poll_seconds: float = Field(2.0, alias="QUADRA_SERVING_POLL_SECONDS", ge=0.2, le=300)
    serving_max_body_bytes: int = Field(1 << 20, alias="QUADRA_SERVING_MAX_BODY_BYTES", ge=1024, le=1 << 30)
    serving_max_rows: int = Field(4096, alias="QUADRA_SERVING_MAX_ROWS", ge=1, le=1_000_000)
    serving_cache_dir_override: Path | None = Field(None, alias="QUADRA_SERVING_CACHE_DIR")

    # Model defaults (spec: field size 100, batch size ~10 rows, lr 0.001).
    field_size: int = Field(100, alias="QUADRA_FIELD_SIZE", ge=2, le=4096)
    batches: int = Field(20, alias="QUADRA_BATCHES", ge=1, le=1_000_000)
    rows_per_batch: int = Field(10, alias="QUADRA_ROWS_PER_BATCH", ge=1, le=100_000)
    seed: int = Field(0, alias="QUADRA_SEED", ge=0, le=2**63 - 1)
    learning_rate: float = Field(0.001, alias="QUADRA_LEARNING_RATE", gt=0, le=1)

    # Alerts (quadra_pipeline/monitoring/notify.py): where the Dagster run-failure sensor sends a
    # failed run, as JSON to a webhook (its URL may hold a token: a secret) and/or as e-mail
    # through an SMTP server. None configured: the sensor says so in its ticks and sends nothing.
    alert_webhook_url: SecretStr | None = Field(None, alias="QUADRA_ALERT_WEBHOOK_URL")
    alert_webhook_url_file: Path | None = Field(None, alias="QUADRA_ALERT_WEBHOOK_URL_FILE")
    alert_smtp_host: str | None = Field(None, alias="QUADRA_ALERT_SMTP_HOST")
    alert_smtp_port: int = Field(587, alias="QUADRA_ALERT_SMTP_PORT", ge=1, le=65535)
    alert_smtp_tls: str = Field("starttls", alias="QUADRA_ALERT_SMTP_TLS")  # starttls, ssl or none
    alert_smtp_user: str | None = Field(None, alias="QUADRA_ALERT_SMTP_USER")
    alert_smtp_password: SecretStr | None = Field(None, alias="QUADRA_ALERT_SMTP_PASSWORD")
    alert_smtp_password_file: Path | None = Field(None, alias="QUADRA_ALERT_SMTP_PASSWORD_FILE")
    alert_smtp_from: str | None = Field(None, alias="QUADRA_ALERT_SMTP_FROM")
    alert_smtp_to: str | None = Field(None, alias="QUADRA_ALERT_SMTP_TO")  # comma-separated addresses
    # An Alertmanager (its base address, e.g. http://alertmanager:9093): each failed run is posted
    # to its API as the alert QuadraRunFailed and Alertmanager delivers it to its receivers, so the
    # receivers' secrets stay with Alertmanager alone (the Compose stack does this).
    alertmanager_url: str | None = Field(None, alias="QUADRA_ALERTMANAGER_URL")
    # Seconds each delivery attempt may take (one retry after a failure).
    alert_timeout: float = Field(5.0, alias="QUADRA_ALERT_TIMEOUT", gt=0, le=60)
    # The Dagster UI's base address, for the run's link in an alert (none: no link).
    dagster_ui_url: str | None = Field(None, alias="QUADRA_DAGSTER_UI_URL")

    @field_validator("home", "backup_dir_override", *_PATHS, mode="before")
    @classmethod
    def _blank_path_is_default(cls, value: object, info: object) -> object:
        if isinstance(value, str) and not value.strip():
            return Path(".quadra") if getattr(info, "field_name", "") == "home" else None
        return value

    @field_validator("env", "run_executor", mode="before")
    @classmethod
    def _env_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("home", "backup_dir_override", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator(*_PATHS, mode="after")
    @classmethod
    def _absolute_as_given(cls, value: Path | None) -> Path | None:
        # Not resolved: messages name the path as configured (a secret mount's symlinks stay).
        return None if value is None else value.expanduser().absolute()

    @field_validator("database_url_override", "mlflow_tracking_uri_override", "mlflow_ui_url_override",
                     "celery_broker_url", "celery_backend_url", "object_store_override", "mlflow_tracking_username",
                     "mlflow_artifacts_store", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("secret_key", "model_signing_key", "model_verify_key", "backup_signing_key", "backup_verify_key",
                     "mlflow_backend_uri", "mlflow_tracking_password", "backup_database_url", "serving_token",
                     "serving_webhook_secret", "wal_url", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        return value or None

    @model_validator(mode="after")
    def _read_files_then_check(self) -> "Settings":
        self._read_secret_files()
        if self.mlflow_tracking_password is not None and not self.mlflow_tracking_username:
            raise ValueError("MLFLOW_TRACKING_PASSWORD is set but MLFLOW_TRACKING_USERNAME is not (MLflow's basic "
                             "authentication needs both)")
        if self.env is Environment.production:
            self._check_what_is_set()
        return self

    def _read_secret_files(self) -> None:
        """Each `<VARIABLE>_FILE` that is set becomes its variable's value (FILE_TWINS)."""
        for name, twin in FILE_TWINS.items():
            path: Path | None = getattr(self, twin)
            variable = type(self).model_fields[name].alias
            if path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"{variable} and {variable}_FILE are both set; set one")
            text = read_secret_file(path, f"{variable}_FILE")
            # As the field's own type (SecretStr stays SecretStr: kept out of repr()).
            object.__setattr__(self, name, TypeAdapter(type(self).model_fields[name].annotation).validate_python(text))

    def _check_what_is_set(self) -> None:
        """Production: every secret that is set is checked now, so a bad one stops the process at
        start and not at its first backup. What is not set is required later, by its user."""
        if self.secret_key is not None:
            problem = secret_key_problem(self.secret_key)
            if problem:
                raise ValueError(f"QUADRA_SECRET_KEY {problem} (required when QUADRA_ENV=production)")
        for name in ("serving_token", "serving_webhook_secret"):
            value = getattr(self, name)
            if value is not None and len(value.get_secret_value().encode("utf-8")) < MIN_SECRET_KEY_BYTES:
                variable = type(self).model_fields[name].alias
                raise ValueError(f"{variable} is shorter than {MIN_SECRET_KEY_BYTES} bytes (QUADRA_ENV=production)")
        from .keys import KeyProblem, backup_keyring, model_keyring

        try:
            model_keyring(self)  # the signing pair (one key at a time: readable, the right kind,
            backup_keyring(self)  # its public key its own) and the keyring files
        except KeyProblem as exc:
            raise ValueError(str(exc)) from None

    @field_validator("alert_webhook_url", "alert_smtp_password", "alert_smtp_host", "alert_smtp_user",
                     "alert_smtp_from", "alert_smtp_to", "dagster_ui_url", mode="before")
    @classmethod
    def _blank_alert_setting_is_unset(cls, value: object) -> object:
        return value.strip() or None if isinstance(value, str) else value

    @field_validator("alert_smtp_tls", mode="before")
    @classmethod
    def _smtp_tls(cls, value: object) -> object:
        text = str(value or "starttls").strip().lower()
        if text not in SMTP_TLS_MODES:
            raise ValueError(f"must be one of {', '.join(SMTP_TLS_MODES)}, got {text!r}")
        return text

    @model_validator(mode="after")
    def _check_alert_receivers(self) -> "Settings":
        """After the secret files are read: a webhook URL that is a URL, an SMTP server with
        its sender and recipients (and a password only with a user). Messages name the
        variables, never the URL (it may hold a token) or the password."""
        problem = alert_settings_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def alert_smtp_recipients(self) -> list[str]:
        """QUADRA_ALERT_SMTP_TO as a list of addresses."""
        return [a.strip() for a in (self.alert_smtp_to or "").split(",") if a.strip()]

    def require_secret_key(self, purpose: str) -> str | None:
        """The secret key for `purpose` ("to create a backup"): required in production (one line
        naming QUADRA_SECRET_KEY and its _FILE form), optional elsewhere (None when unset)."""
        if self.secret_key is None:
            if self.env is Environment.production:
                raise SettingsError(
                    f"QUADRA_SECRET_KEY (or QUADRA_SECRET_KEY_FILE) is not set (required when QUADRA_ENV=production {purpose})"
                )
            return None
        return self.secret_key.get_secret_value()

    @property
    def mlflow_credentials(self) -> tuple[str, str] | None:
        """(username, password) for an MLflow server with basic authentication, or None."""
        if self.mlflow_tracking_password is None or not self.mlflow_tracking_username:
            return None
        return self.mlflow_tracking_username, self.mlflow_tracking_password.get_secret_value()

    # Derived locations -------------------------------------------------------------------

    @cached_property
    def database_url(self) -> str:
        return self.database_url_override or f"sqlite:///{self.home / 'quadra.db'}"

    @cached_property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri_override or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_ui_url(self) -> str:
        """Where links to MLflow runs point: the server itself, or `make mlflow-ui`'s address."""
        if self.mlflow_ui_url_override:
            return self.mlflow_ui_url_override.rstrip("/")
        if self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return self.mlflow_tracking_uri.rstrip("/")
        return "http://127.0.0.1:5000"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def backup_source_url(self) -> str:
        """The project database as the backup and its drill read it."""
        return self.backup_database_url or self.database_url

    @property
    def object_store(self) -> str:
        """Where steps share files: an s3:// URL, or a local folder (default under the data home)."""
        if self.object_store_override:
            return self.object_store_override
        return str(self.home / "objects")

    @property
    def serving_cache_dir(self) -> Path:
        """Where `quadra serve` keeps the versions it verified (a private folder per process)."""
        return self.serving_cache_dir_override or self.home / "serving"

    @property
    def backup_dir(self) -> Path:
        return self.backup_dir_override or self.home / "backups"

    def ensure_home(self) -> Path:
        """Create the data home (and its checkpoint folder) if missing."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self.home


def secret_key_problem(secret: SecretStr | None) -> str | None:
    """Why this secret key is unusable in production, or None if it is fine."""
    if secret is None:
        return "is not set"
    value = secret.get_secret_value()
    if not value.strip():
        return "is blank"
    if value == EXAMPLE_SECRET_KEY:
        return "is the example value from .env.example"
    if len(value.encode("utf-8")) < MIN_SECRET_KEY_BYTES:
        return f"is shorter than {MIN_SECRET_KEY_BYTES} bytes"
    return None


SMTP_TLS_MODES = ("starttls", "ssl", "none")


def alert_settings_problem(settings: "Settings") -> str | None:
    """What is wrong with the alert receivers' settings (None: nothing)."""
    if settings.alert_webhook_url is not None:
        url = settings.alert_webhook_url.get_secret_value()
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0] or any(c.isspace() for c in url):
            return ("QUADRA_ALERT_WEBHOOK_URL (or its _FILE) is not an http(s) URL (its value is not shown: it may hold "
                    "a token)")
    if settings.alertmanager_url and not settings.alertmanager_url.lower().startswith(("http://", "https://")):
        return f"QUADRA_ALERTMANAGER_URL must start with http:// or https://, got {settings.alertmanager_url!r}"
    if settings.dagster_ui_url and not settings.dagster_ui_url.lower().startswith(("http://", "https://")):
        return f"QUADRA_DAGSTER_UI_URL must start with http:// or https://, got {settings.dagster_ui_url!r}"
    smtp = {"QUADRA_ALERT_SMTP_USER": settings.alert_smtp_user,
            "QUADRA_ALERT_SMTP_PASSWORD": settings.alert_smtp_password,
            "QUADRA_ALERT_SMTP_FROM": settings.alert_smtp_from, "QUADRA_ALERT_SMTP_TO": settings.alert_smtp_to}
    if not settings.alert_smtp_host:
        given = [name for name, value in smtp.items() if value is not None]
        if given:
            return f"{given[0]} is set but QUADRA_ALERT_SMTP_HOST is not (e-mail alerts need the SMTP server)"
        return None
    if settings.alert_smtp_password is not None and not settings.alert_smtp_user:
        return "QUADRA_ALERT_SMTP_PASSWORD is set but QUADRA_ALERT_SMTP_USER is not"
    if settings.alert_smtp_user and settings.alert_smtp_password is None:
        return "QUADRA_ALERT_SMTP_USER is set but QUADRA_ALERT_SMTP_PASSWORD (or QUADRA_ALERT_SMTP_PASSWORD_FILE) is not"
    if not settings.alert_smtp_from:
        return "QUADRA_ALERT_SMTP_HOST is set but QUADRA_ALERT_SMTP_FROM (the sender's address) is not"
    if not settings.alert_smtp_to:
        return "QUADRA_ALERT_SMTP_HOST is set but QUADRA_ALERT_SMTP_TO (the recipients, comma-separated) is not"
    for name, value in (("QUADRA_ALERT_SMTP_FROM", settings.alert_smtp_from),
                        *(("QUADRA_ALERT_SMTP_TO", a) for a in settings.alert_smtp_recipients)):
        local, at, domain = str(value).rpartition("@")
        if not at or not local or not domain or any(c.isspace() for c in str(value)):
            return f"{name}: {value!r} is not an e-mail address"
    if settings.alert_smtp_tls == "ssl" and settings.alert_smtp_port == 587:
        return "QUADRA_ALERT_SMTP_TLS=ssl with QUADRA_ALERT_SMTP_PORT=587: SMTP over TLS is port 465 (587 is starttls)"
    return None


def read_secret_file(path: Path, variable: str) -> str:
    """A secret's file: its text without the trailing newlines. One line naming the variable and
    the file (never the content) when it is missing, unreadable, too large, empty or blank."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{variable}={path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{variable}={path} is larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{variable}={path} is not UTF-8 text") from None
    if not text.strip():
        raise ValueError(f"{variable}={path} is empty")
    return text.rstrip("\r\n")


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value raises `SettingsError` with one clear line.

    Overrides may use field names (`field_size=150`) or variable names (`QUADRA_FIELD_SIZE=150`).
    """
    aliases = {name: info.alias for name, info in Settings.model_fields.items() if info.alias}
    unknown = sorted(set(overrides) - set(aliases) - set(aliases.values()))
    if unknown:
        raise SettingsError(f"invalid settings: unknown setting(s) {', '.join(unknown)}")
    try:
        return Settings(**{aliases.get(key, key): value for key, value in overrides.items()})
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__")
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "invalid settings: " + "; ".join(parts)
