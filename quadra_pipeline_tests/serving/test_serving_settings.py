"""The serving settings: the token and the webhook secret are secrets with file twins (one list,
one reader, as every other secret), checked in production; the rest have their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from quadra_pipeline.serving.config import ServingConfig, ServingError
from quadra_pipeline.settings import FILE_TWINS, SettingsError, load_settings


@pytest.fixture
def clean(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith(("QUADRA_", "MLFLOW_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env here
    return tmp_path


@pytest.mark.parametrize("variable, field", [("QUADRA_SERVING_TOKEN", "serving_token"),
                                             ("QUADRA_SERVING_WEBHOOK_SECRET", "serving_webhook_secret")])
def test_the_serving_secrets_come_from_their_files_and_never_show(clean: Path, monkeypatch, variable, field):
    assert field in FILE_TWINS
    value = "s" * 20 + "-" + "x" * 20
    (clean / "secret").write_text(value + "\n")
    monkeypatch.setenv(f"{variable}_FILE", str(clean / "secret"))
    settings = load_settings()
    assert getattr(settings, field).get_secret_value() == value
    assert value not in repr(settings) and value not in repr(ServingConfig.from_settings(settings))
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable} and {variable}_FILE are both set"):
        load_settings()


def test_production_refuses_a_short_token_and_serving_refuses_none(clean: Path, monkeypatch):
    monkeypatch.setenv("QUADRA_ENV", "production")
    monkeypatch.setenv("QUADRA_SERVING_TOKEN", "too-short")
    with pytest.raises(SettingsError, match="QUADRA_SERVING_TOKEN is shorter than 32 bytes") as caught:
        load_settings()
    assert "too-short" not in str(caught.value)
    monkeypatch.delenv("QUADRA_SERVING_TOKEN")
    with pytest.raises(ServingError, match="QUADRA_SERVING_TOKEN_FILE"):
        ServingConfig.from_settings(load_settings()).check()


def test_the_defaults(clean: Path):
    settings = load_settings()
    config = ServingConfig.from_settings(settings)
    assert (config.model, config.alias, config.host, config.port, config.workers) == ("quadra-matrix", "champion",
                                                                                      "127.0.0.1", 8080, 1)
    assert (config.poll_seconds, config.max_body_bytes, config.max_rows) == (2.0, 1 << 20, 4096)
    assert config.cache_dir == settings.home / "serving" and config.token is None
    config.check()  # development, loopback, no token: allowed
    with pytest.raises(ServingError, match="refusing to listen on 0.0.0.0 without a token"):
        ServingConfig.from_settings(settings, host="0.0.0.0").check()
