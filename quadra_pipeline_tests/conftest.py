"""Suite-wide: a real S3 server (SeaweedFS) for the tests that ask for one; the disaster-recovery
drills report their measured recovery times at the end."""

import pytest

from quadra_pipeline_tests.s3server import seaweedfs


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS's S3 API on loopback, once per session (about 2 s to start)."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process reaches the test S3 server as it would any S3 service: a credentials file
    and an endpoint (the machine's AWS_CA_BUNDLE does not apply to plain HTTP)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


def pytest_terminal_summary(terminalreporter):
    from quadra_pipeline_tests.backup.live_home import DRILL_TIMES

    if not DRILL_TIMES:
        return
    terminalreporter.section("disaster-recovery drills (measured recovery time)")
    terminalreporter.write_line("| scenario | recovery time | checked |")
    terminalreporter.write_line("|---|---|---|")
    for scenario, seconds, checked in DRILL_TIMES:
        terminalreporter.write_line(f"| {scenario} | {seconds:.1f} s | {checked} |")
