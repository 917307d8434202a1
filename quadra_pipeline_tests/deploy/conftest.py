"""The container deployment's tests. `test_stack.py` builds the image and runs the Compose stack
on Docker, then `test_stack_monitoring.py` faults it to alerts and `test_stack_faults.py` breaks its parts on the same stack: they run only under
`make deploy-test` (QUADRA_DEPLOY_TEST=1), so `make test` stays free of image builds; the rest
(the deployment files read statically) runs everywhere."""

import os

import pytest

from .stack import Stack, docker_available, free_port, left_by_an_earlier_test, leftovers, remove_leftovers

collect_ignore = [] if os.environ.get("QUADRA_DEPLOY_TEST") == "1" else ["test_stack.py", "test_stack_monitoring.py", "test_stack_faults.py"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    problem = docker_available()
    if problem:
        pytest.fail(f"make deploy-test needs Docker: {problem}")  # never skipped: CI must run it
    existing = leftovers()
    if existing and left_by_an_earlier_test():
        print(f"make deploy-test: removing the stack an earlier test run left: {', '.join(existing[:6])}")
        existing = remove_leftovers()
    if existing:
        pytest.fail("a stack named 'quadra' already exists on this Docker host and this test would replace it: "
                    f"{', '.join(existing[:6])}; stop it first (make deploy-down, then docker volume rm ...)")
    the_stack = Stack(secrets_dir=tmp_path_factory.mktemp("deploy") / "secrets", image="quadra-pipeline:deploy-test",
                      dagster_port=free_port(), mlflow_port=free_port())
    try:
        yield the_stack
    finally:
        left = the_stack.remove_everything()
        assert not left, f"the test could not remove: {left}"


@pytest.fixture(scope="session")
def runs() -> dict[str, str]:
    """Run ids by job, shared by the phases below."""
    return {}


def pytest_terminal_summary(terminalreporter):
    from quadra_pipeline_tests.deploy.stack import PHASES

    if not PHASES:
        return
    terminalreporter.section("deployment: measured phases")
    terminalreporter.write_line("| phase | seconds | what |")
    terminalreporter.write_line("|---|---|---|")
    for phase, seconds, what in PHASES:
        terminalreporter.write_line(f"| {phase} | {seconds:.1f} | {what} |")
