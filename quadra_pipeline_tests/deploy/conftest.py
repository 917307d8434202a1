"""The container deployment's tests. `test_stack.py` builds the image and runs the Compose stack
on Docker: it runs only under `make deploy-test` (QUADRA_DEPLOY_TEST=1), so `make test` stays
free of image builds; the rest (the deployment files read statically) runs everywhere."""

import os

collect_ignore = [] if os.environ.get("QUADRA_DEPLOY_TEST") == "1" else ["test_stack.py"]


def pytest_terminal_summary(terminalreporter):
    from quadra_pipeline_tests.deploy.stack import PHASES

    if not PHASES:
        return
    terminalreporter.section("deployment: measured phases")
    terminalreporter.write_line("| phase | seconds | what |")
    terminalreporter.write_line("|---|---|---|")
    for phase, seconds, what in PHASES:
        terminalreporter.write_line(f"| {phase} | {seconds:.1f} | {what} |")
