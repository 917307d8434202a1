"""The core registry tests again, against a real `mlflow server` on loopback (REST API,
proxied artifacts): versions come back as strings there, artifacts go through HTTP, and the
server resolves `models:/` sources itself. The server starts once per session (~8 s)."""

from __future__ import annotations

import pytest

from .conftest import Tracking
from .test_registry import *  # noqa: F403 - the same tests, collected again in this module


@pytest.fixture
def tracking(mlflow_server: Tracking) -> Tracking:
    return mlflow_server
