"""Suite-wide: the disaster-recovery drills report their measured recovery times at the end."""


def pytest_terminal_summary(terminalreporter):
    from quadra_pipeline_tests.backup.live_home import DRILL_TIMES

    if not DRILL_TIMES:
        return
    terminalreporter.section("disaster-recovery drills (measured recovery time)")
    terminalreporter.write_line("| scenario | recovery time | checked |")
    terminalreporter.write_line("|---|---|---|")
    for scenario, seconds, checked in DRILL_TIMES:
        terminalreporter.write_line(f"| {scenario} | {seconds:.1f} s | {checked} |")
