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
    """No QUADRA_* / DATABASE_URL / MLFLOW_TRACKING_URI variables and no stray `.env`."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("QUADRA_") or upper in {"DATABASE_URL", "MLFLOW_TRACKING_URI"}:
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
        (None, "is not set"),
        ("", "is not set"),
        ("too-short-secret-value", f"shorter than {MIN_SECRET_KEY_BYTES} bytes"),
        ("x" * (MIN_SECRET_KEY_BYTES - 1), f"shorter than {MIN_SECRET_KEY_BYTES} bytes"),
        (EXAMPLE_SECRET_KEY, "example value"),
    ],
)
def test_production_refuses_a_bad_secret_key(secret: str | None, reason: str) -> None:
    env = {"QUADRA_ENV": "production"}
    if secret is not None:
        env["QUADRA_SECRET_KEY"] = secret
    message = _error(**env)
    assert "QUADRA_SECRET_KEY" in message
    assert reason in message
    assert "\n" not in message
    if secret:
        assert secret not in message


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


def test_production_requires_a_model_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUADRA_ENV", "production")
    monkeypatch.setenv("QUADRA_SECRET_KEY", GOOD_KEY)
    message = _error()
    assert "QUADRA_MODEL_SIGNING_KEY (or QUADRA_MODEL_SIGNING_KEY_FILE) is not set" in message and "\n" not in message


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("QUADRA_MODEL_SIGNING_KEY_FILE", "/nonexistent/key.pem", "QUADRA_MODEL_SIGNING_KEY_FILE=/nonexistent/key.pem: cannot read the key"),
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


def test_production_requires_a_backup_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch, GOOD_KEY)
    monkeypatch.delenv("QUADRA_BACKUP_SIGNING_KEY")
    message = _error()
    assert "QUADRA_BACKUP_SIGNING_KEY (or QUADRA_BACKUP_SIGNING_KEY_FILE) is not set" in message and "\n" not in message


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("QUADRA_BACKUP_SIGNING_KEY", "ec-p256", "QUADRA_BACKUP_SIGNING_KEY is not an Ed25519 key"),
        ("QUADRA_BACKUP_VERIFY_KEY", "ed25519-public", "QUADRA_BACKUP_VERIFY_KEY is not the public key of QUADRA_BACKUP_SIGNING_KEY"),
        ("QUADRA_BACKUP_VERIFY_KEY_FILE", "/nonexistent/backup.pub", "QUADRA_BACKUP_VERIFY_KEY_FILE=/nonexistent/backup.pub: cannot read the key"),
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


def test_a_verify_key_that_is_not_the_signing_keys_own_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from quadra_pipeline.keys import generate

    set_production(monkeypatch, GOOD_KEY)
    monkeypatch.setenv("QUADRA_MODEL_VERIFY_KEY", generate("ec-p256").public_pem.decode())
    assert "QUADRA_MODEL_VERIFY_KEY is not the public key of QUADRA_MODEL_SIGNING_KEY" in _error()


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
