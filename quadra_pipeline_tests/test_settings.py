"""Settings: zero-config development, `.env` and environment, production's secret-key rules."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from quadra_pipeline_tests.production import set_production, signing_keys

from quadra_pipeline.settings import (
    EXAMPLE_SECRET_KEY,
    MIN_SECRET_KEY_BYTES,
    Environment,
    Settings,
    SettingsError,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = REPO_ROOT / ".env.example"
GOOD_KEY = "0123456789abcdef" * 4  # 64 characters, 64 bytes
ALIASES = sorted(field.alias for field in Settings.model_fields.values() if field.alias)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No QUADRA_* / DATABASE_URL[_FILE] / MLFLOW_TRACKING_* variables and no stray `.env`."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("QUADRA_", "MLFLOW_TRACKING_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error(**env: str) -> str:
    """The SettingsError message load_settings gives under these environment variables."""
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(SettingsError) as info:
            load_settings()
        return str(info.value)
    finally:
        mp.undo()


# Development without configuration ------------------------------------------------------------


def test_development_works_with_no_configuration(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.env is Environment.development
    assert settings.secret_key is None
    assert settings.home == (clean_env / ".quadra").resolve()
    assert settings.home.is_absolute()


def test_defaults_live_under_the_data_home(clean_env: Path) -> None:
    settings = load_settings()
    home = settings.home
    assert settings.database_url == f"sqlite:///{home / 'quadra.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.mlflow_artifact_root == home / "mlartifacts"
    assert settings.checkpoint_dir == home / "checkpoints"
    assert settings.backup_dir == home / "backups"
    assert (settings.field_size, settings.batches, settings.rows_per_batch) == (100, 20, 10)
    assert (settings.seed, settings.learning_rate) == (0, 0.001)
    assert not home.exists()  # reading settings creates nothing
    assert settings.ensure_home() == home
    assert settings.checkpoint_dir.is_dir()


def test_quadra_home_moves_every_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUADRA_HOME", str(tmp_path / "elsewhere"))
    settings = load_settings()
    assert settings.home == tmp_path / "elsewhere"
    assert settings.database_url == f"sqlite:///{tmp_path / 'elsewhere' / 'quadra.db'}"
    assert settings.backup_dir == tmp_path / "elsewhere" / "backups"


# `.env` and environment -----------------------------------------------------------------------


def test_dotenv_in_the_working_directory_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "QUADRA_FIELD_SIZE=150\n"
        "QUADRA_ROWS_PER_BATCH=7\n"
        "DATABASE_URL=sqlite:///from-dotenv.db\n"
        "QUADRA_BACKUP_DIR=bk\n"
        "SOMETHING_ELSE=ignored\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.field_size == 150
    assert settings.rows_per_batch == 7
    assert settings.database_url == "sqlite:///from-dotenv.db"
    assert settings.backup_dir == (clean_env / "bk").resolve()


def test_environment_variables_override_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("QUADRA_FIELD_SIZE=150\nQUADRA_SEED=5\n", encoding="utf-8")
    monkeypatch.setenv("QUADRA_FIELD_SIZE", "64")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("QUADRA_LEARNING_RATE", "0.01")
    settings = load_settings()
    assert settings.field_size == 64  # environment beats .env
    assert settings.seed == 5  # .env still fills the rest
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.learning_rate == 0.01


def test_blank_urls_mean_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    settings = load_settings()
    assert settings.database_url.endswith("/quadra.db")
    assert settings.mlflow_tracking_uri.endswith("/mlflow.db")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUADRA_FIELD_SIZE", "lots"),
        ("QUADRA_FIELD_SIZE", "1"),
        ("QUADRA_BATCHES", "0"),
        ("QUADRA_ROWS_PER_BATCH", "ten"),
        ("QUADRA_SEED", "-1"),
        ("QUADRA_LEARNING_RATE", "0"),
        ("QUADRA_LEARNING_RATE", "fast"),
        ("QUADRA_ENV", "staging"),
    ],
)
def test_invalid_values_name_their_variable(variable: str, value: str) -> None:
    message = _error(**{variable: value})
    assert message.startswith("invalid settings: ")
    assert variable in message
    assert "\n" not in message


# Production and the secret key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("too-short-secret-value", f"shorter than {MIN_SECRET_KEY_BYTES} bytes"),
        ("x" * (MIN_SECRET_KEY_BYTES - 1), f"shorter than {MIN_SECRET_KEY_BYTES} bytes"),
        (EXAMPLE_SECRET_KEY, "example value"),
    ],
)
def test_production_refuses_a_bad_secret_key(secret: str, reason: str) -> None:
    """A secret key that is set is checked when the settings load, whoever loads them."""
    message = _error(QUADRA_ENV="production", QUADRA_SECRET_KEY=secret)
    assert "QUADRA_SECRET_KEY" in message
    assert reason in message
    assert "\n" not in message
    assert secret not in message


def test_production_loads_without_any_secret() -> None:
    """Least privilege: a process whose job needs no secret (the Dagster code server loading the
    definitions) holds none; each secret is required by the operation that uses it."""
    settings = load_settings(QUADRA_ENV="production")
    assert settings.secret_key is None and settings.model_signing_key is None and settings.backup_signing_key is None
    from quadra_pipeline.keys import backup_keyring, backup_signing_keys, model_keyring, model_signing_keys

    assert model_signing_keys(settings) is None  # no pair of the data home's own in production
    assert backup_signing_keys(settings) is None
    assert len(model_keyring(settings)) == 0 and len(backup_keyring(settings)) == 0
    assert not (settings.home / "keys").exists()


def test_the_secret_key_is_required_by_what_uses_it_in_production() -> None:
    settings = load_settings(QUADRA_ENV="production")
    with pytest.raises(SettingsError) as caught:
        settings.require_secret_key("to create a backup")
    assert str(caught.value) == (
        "QUADRA_SECRET_KEY (or QUADRA_SECRET_KEY_FILE) is not set (required when QUADRA_ENV=production to create a backup)"
    )
    assert load_settings().require_secret_key("to create a backup") is None  # development: optional
    assert load_settings(QUADRA_ENV="production", QUADRA_SECRET_KEY=GOOD_KEY).require_secret_key("x") == GOOD_KEY


def test_production_refuses_the_example_key_from_a_dotenv(clean_env: Path) -> None:
    shutil.copy(ENV_EXAMPLE, clean_env / ".env")
    message = _error(QUADRA_ENV="production")
    assert "QUADRA_SECRET_KEY is the example value" in message
    assert EXAMPLE_SECRET_KEY not in message


def test_production_accepts_a_good_key(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch, GOOD_KEY)
    settings = load_settings()
    assert settings.env is Environment.production
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == GOOD_KEY


def test_exactly_min_bytes_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch, "k" * MIN_SECRET_KEY_BYTES)
    assert load_settings().env is Environment.production


def test_development_and_test_do_not_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("development", "test"):
        monkeypatch.setenv("QUADRA_ENV", env)
        monkeypatch.setenv("QUADRA_SECRET_KEY", "short")
        assert load_settings().env.value == env


def test_the_secret_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch, GOOD_KEY)
    private_pem = signing_keys()["QUADRA_MODEL_SIGNING_KEY"]
    settings = load_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert GOOD_KEY not in text
        assert GOOD_KEY[:16] * 2 not in text
        assert private_pem.splitlines()[1] not in text  # the private signing key neither


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("QUADRA_MODEL_SIGNING_KEY_FILE", "/nonexistent/key.pem", "QUADRA_MODEL_SIGNING_KEY_FILE=/nonexistent/key.pem: cannot read the file (No such file or directory)"),
        ("QUADRA_MODEL_SIGNING_KEY", "not a key", "QUADRA_MODEL_SIGNING_KEY is not a PEM key"),
        ("QUADRA_MODEL_SIGNING_KEY", "ed25519", "QUADRA_MODEL_SIGNING_KEY is not an ECDSA P-256 key"),
    ],
)
def test_production_refuses_an_unusable_signing_key(monkeypatch: pytest.MonkeyPatch, setting: str, value: str, reason: str) -> None:
    from quadra_pipeline.keys import generate

    monkeypatch.setenv("QUADRA_ENV", "production")
    monkeypatch.setenv("QUADRA_SECRET_KEY", GOOD_KEY)
    monkeypatch.setenv(setting, generate("ed25519").private_pem.decode() if value == "ed25519" else value)
    message = _error()
    assert reason in message and "\n" not in message and "PRIVATE KEY" not in message


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("QUADRA_BACKUP_SIGNING_KEY", "ec-p256", "QUADRA_BACKUP_SIGNING_KEY is not an Ed25519 key"),
        ("QUADRA_BACKUP_VERIFY_KEY", "ed25519-public", "QUADRA_BACKUP_VERIFY_KEY is not the public key of QUADRA_BACKUP_SIGNING_KEY"),
        ("QUADRA_BACKUP_VERIFY_KEY_FILE", "/nonexistent/backup.pub", "QUADRA_BACKUP_VERIFY_KEY_FILE=/nonexistent/backup.pub: cannot read the file (No such file or directory)"),
        ("QUADRA_BACKUP_VERIFY_KEYS_FILE", "/nonexistent/keyring", "QUADRA_BACKUP_VERIFY_KEYS_FILE=/nonexistent/keyring: cannot read the keyring (No such file or directory)"),
    ],
)
def test_production_refuses_an_unusable_backup_key(monkeypatch: pytest.MonkeyPatch, setting: str, value: str, reason: str) -> None:
    from quadra_pipeline.keys import generate

    set_production(monkeypatch, GOOD_KEY)
    text = {"ec-p256": lambda: generate("ec-p256").private_pem.decode(),
            "ed25519-public": lambda: generate("ed25519").public_pem.decode()}.get(value, lambda: value)()
    monkeypatch.setenv(setting, text)
    message = _error()
    assert reason in message and "\n" not in message and "PRIVATE KEY" not in message


def test_production_checks_a_keyring_when_the_settings_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from quadra_pipeline.keys import generate

    keyring = tmp_path / "model-keyring.pem"
    keyring.write_bytes(generate("ec-p256").private_pem)
    message = _error(QUADRA_ENV="production", QUADRA_MODEL_VERIFY_KEYS_FILE=str(keyring))
    assert f"QUADRA_MODEL_VERIFY_KEYS_FILE={keyring}" in message and "private key" in message and "\n" not in message
    assert load_settings(QUADRA_MODEL_VERIFY_KEYS_FILE=str(keyring)).env is Environment.development  # checked at use there


def test_a_verify_key_that_is_not_the_signing_keys_own_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from quadra_pipeline.keys import generate

    set_production(monkeypatch, GOOD_KEY)
    monkeypatch.setenv("QUADRA_MODEL_VERIFY_KEY", generate("ec-p256").public_pem.decode())
    assert "QUADRA_MODEL_VERIFY_KEY is not the public key of QUADRA_MODEL_SIGNING_KEY" in _error()


# Secrets as files -------------------------------------------------------------------------------

#: Every secret setting, and a value it can hold (read back through the field).
SECRET_VALUES = {
    "DATABASE_URL": ("database_url_override", "postgresql://quadra:hunter2@db:5432/quadra"),
    "QUADRA_SECRET_KEY": ("secret_key", GOOD_KEY),
    "QUADRA_MLFLOW_BACKEND_URI": ("mlflow_backend_uri", "postgresql://mlflow:swordfish@db:5432/mlflow"),
    "MLFLOW_TRACKING_PASSWORD": ("mlflow_tracking_password", "correct horse battery staple"),
    "QUADRA_CELERY_BROKER_URL": ("celery_broker_url", "redis://:tr0ub4dor@redis:6379/0"),
    "QUADRA_CELERY_BACKEND_URL": ("celery_backend_url", "redis://:tr0ub4dor@redis:6379/1"),
}


def _plain(value: object) -> object:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def test_every_secret_has_a_file_twin_declared_in_one_place() -> None:
    from quadra_pipeline.settings import FILE_TWINS

    fields = Settings.model_fields
    for variable, (field, _) in SECRET_VALUES.items():
        assert field in FILE_TWINS, f"{variable} has no _FILE twin"
    for field, twin in FILE_TWINS.items():
        assert fields[twin].alias == fields[field].alias + "_FILE"
    assert {fields[f].alias for f in FILE_TWINS} >= {
        "QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY", "QUADRA_BACKUP_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY"}


@pytest.mark.parametrize("variable", sorted(SECRET_VALUES))
def test_a_secret_read_from_its_file(variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    field, value = SECRET_VALUES[variable]
    secret = tmp_path / "secret"
    secret.write_text(value + "\n")  # as `echo` and editors leave it: the newline is not part of it
    monkeypatch.setenv(f"{variable}_FILE", str(secret))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "quadra")
    settings = load_settings()
    assert _plain(getattr(settings, field)) == value
    for text in (repr(settings), str(settings)):
        assert value not in text


def test_only_the_trailing_newlines_are_stripped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"  spaced key with a tab\t inside" + b"x" * 40 + b"\r\n\n")
    monkeypatch.setenv("QUADRA_SECRET_KEY_FILE", str(secret))
    assert load_settings().secret_key.get_secret_value() == "  spaced key with a tab\t inside" + "x" * 40


@pytest.mark.parametrize("variable", sorted(SECRET_VALUES) + ["QUADRA_MODEL_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY"])
def test_a_secret_set_both_as_a_value_and_as_a_file_is_refused(variable: str, tmp_path: Path) -> None:
    value = SECRET_VALUES.get(variable, (None, "-----BEGIN PRIVATE KEY-----"))[1]
    (tmp_path / "secret").write_text(value)
    message = _error(**{variable: value, f"{variable}_FILE": str(tmp_path / "secret"), "MLFLOW_TRACKING_USERNAME": "quadra"})
    assert message == f"invalid settings: {variable} and {variable}_FILE are both set; set one"
    assert value not in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, ": cannot read the file (No such file or directory)"), ("", " is empty"), (" \n\t\n", " is empty"),
     ("dir", ": cannot read the file (Is a directory)")],
)
def test_a_secret_file_that_is_missing_or_empty_names_the_variable_and_the_file(
    content: str | None, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "secrets" / "quadra-secret-key"
    if content == "dir":
        path.mkdir(parents=True)
    elif content is not None:
        path.parent.mkdir()
        path.write_text(content)
    for env in ("development", "production"):
        message = _error(QUADRA_ENV=env, QUADRA_SECRET_KEY_FILE=str(path))
        assert message == f"invalid settings: QUADRA_SECRET_KEY_FILE={path}{reason}"


def test_a_secret_file_is_read_at_load_and_checked_like_the_value(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("too-short\n")
    message = _error(QUADRA_ENV="production", QUADRA_SECRET_KEY_FILE=str(tmp_path / "short"))
    assert "QUADRA_SECRET_KEY is shorter than 32 bytes" in message and "too-short" not in message


def test_an_unreadable_secret_file(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file" / "secret"  # a path through a file: ENOTDIR, for root too
    (tmp_path / "a-file").write_text("")
    assert _error(DATABASE_URL_FILE=str(blocked)) == (
        f"invalid settings: DATABASE_URL_FILE={blocked}: cannot read the file (Not a directory)")


def test_the_mlflow_password_needs_its_username(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("swordfish\n")
    message = _error(MLFLOW_TRACKING_PASSWORD_FILE=str(tmp_path / "pw"))
    assert "MLFLOW_TRACKING_USERNAME" in message and "swordfish" not in message
    settings = load_settings(MLFLOW_TRACKING_PASSWORD_FILE=str(tmp_path / "pw"), MLFLOW_TRACKING_USERNAME="quadra")
    assert settings.mlflow_credentials == ("quadra", "swordfish")
    assert load_settings().mlflow_credentials is None


# .env.example ---------------------------------------------------------------------------------


def _documented_variables() -> dict[str, str]:
    """Variables `.env.example` shows, set or commented out (NAME=value lines)."""
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_env_example_documents_every_setting() -> None:
    documented = _documented_variables()
    assert ALIASES, "Settings declares no aliases?"
    missing = [alias for alias in ALIASES if alias not in documented]
    assert not missing, f".env.example does not document {missing}"
    unknown = sorted(set(documented) - set(ALIASES))
    assert not unknown, f".env.example documents variables Settings does not read: {unknown}"


def test_env_example_comments_every_variable() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for alias in ALIASES:
        index = next(i for i, line in enumerate(lines) if re.match(rf"^#?\s*{alias}=", line))
        assert index > 0 and lines[index - 1].startswith("#"), f"{alias} has no comment above it"


def test_env_example_ships_the_example_key_and_how_to_make_one() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert _documented_variables()["QUADRA_SECRET_KEY"] == EXAMPLE_SECRET_KEY
    assert 'python -c "import secrets; print(secrets.token_hex(32))"' in text


def test_env_example_as_dotenv_gives_the_defaults(clean_env: Path) -> None:
    shutil.copy(ENV_EXAMPLE, clean_env / ".env")
    settings = load_settings()
    defaults = Settings.model_construct()
    assert settings.env is Environment.development
    assert settings.home == (clean_env / ".quadra").resolve()
    assert settings.backup_dir == settings.home / "backups"
    assert settings.database_url == f"sqlite:///{settings.home / 'quadra.db'}"
    for name in ("field_size", "batches", "rows_per_batch", "seed", "learning_rate"):
        assert getattr(settings, name) == getattr(defaults, name), name


# Fixes found while writing the tests above ---------------------------------------------------


def test_overrides_by_field_name_or_variable_name(clean_env):
    from quadra_pipeline.settings import SettingsError, load_settings

    assert load_settings(field_size=3).field_size == 3
    assert load_settings(QUADRA_FIELD_SIZE=4).field_size == 4
    with pytest.raises(SettingsError, match="unknown setting"):
        load_settings(feild_size=3)


def test_blank_paths_mean_the_defaults(clean_env, monkeypatch, tmp_path):
    from quadra_pipeline.settings import load_settings

    monkeypatch.setenv("QUADRA_HOME", "")
    monkeypatch.setenv("QUADRA_BACKUP_DIR", "  ")
    settings = load_settings()
    assert settings.home == (tmp_path / ".quadra").resolve()
    assert settings.backup_dir == settings.home / "backups"


def test_environment_name_in_any_case_and_blank_secret(clean_env, monkeypatch):
    from quadra_pipeline.settings import SettingsError, load_settings

    monkeypatch.setenv("QUADRA_ENV", "Production")
    monkeypatch.setenv("QUADRA_SECRET_KEY", " " * 40)
    with pytest.raises(SettingsError, match="QUADRA_SECRET_KEY is blank"):
        load_settings()


def test_urls_with_passwords_stay_out_of_repr(clean_env, monkeypatch):
    from quadra_pipeline.settings import load_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/quadra")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://m:swordfish@db/mlflow")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "swordfish" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert settings.database_url == "postgresql://u:hunter2@db/quadra"
