"""A snapshot of the asset graph: a lineage change shows up as a diff of asset_graph.json.

Regenerate after an intended change: QUADRA_UPDATE_SNAPSHOTS=1 pytest quadra_pipeline_tests/defs/test_asset_graph.py
"""

import json
import os
from pathlib import Path

import dagster as dg

from quadra_pipeline.definitions import defs as load_defs

SNAPSHOT = Path(__file__).with_name("asset_graph.json")


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "owners": sorted(node.owners),
            "has_description": bool(node.description),
            "checks": sorted(
                f"{c.name}{' (blocking)' if graph.get(c).blocking else ''}" for c in node.check_keys
            ),
        }
    jobs = {job.name: sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys) if job.asset_layer else []
            for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    schedules = {s.name: {"job": s.job_name, "cron": s.cron_schedule, "default_status": s.default_status.value}
                 for s in defs.schedules}
    sensors = {s.name: {"interval_seconds": s.minimum_interval_seconds, "default_status": s.default_status.value}
               for s in defs.sensors}
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_asset_graph_matches_snapshot():
    current = graph_snapshot(load_defs())
    if os.environ.get("QUADRA_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), f"{SNAPSHOT.name} is missing: QUADRA_UPDATE_SNAPSHOTS=1 writes it"
    assert current == json.loads(SNAPSHOT.read_text())


def test_the_code_location_loads_from_a_plain_copy_of_the_package(tmp_path):
    """A wheel install has no pyproject.toml beside the package: the defs folder still loads."""
    import shutil
    import subprocess
    import sys

    import quadra_pipeline

    shutil.copytree(Path(quadra_pipeline.__file__).parent, tmp_path / "quadra_pipeline")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import quadra_pipeline, json;"
        "assert quadra_pipeline.__file__.startswith(sys.argv[1]);"
        "from quadra_pipeline.definitions import defs;"
        "print(json.dumps(sorted(k.to_user_string() for k in defs().resolve_all_asset_keys())))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == sorted(graph_snapshot(load_defs())["assets"])


def test_every_asset_has_description_owner_kind_and_group():
    for key, node in graph_snapshot(load_defs())["assets"].items():
        assert node["has_description"] and node["owners"] and node["kinds"] and node["group"] != "default", key


def test_definitions_validate():
    dg.Definitions.validate_loadable(load_defs())


def test_daily_schedule_trains_on_a_new_seed_each_day():
    import datetime as dt

    schedule = load_defs().resolve_schedule_def("daily_training_schedule")
    requests = []
    for day in (dt.datetime(2026, 11, 29, 3, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 30, 3, tzinfo=dt.timezone.utc)):
        with dg.build_schedule_context(scheduled_execution_time=day) as context:
            [request] = schedule.evaluate_tick(context).run_requests
        requests.append(request)
    seeds = [r.run_config["ops"]["train_model"]["config"]["seed"] for r in requests]
    assert seeds == [20261129, 20261130]
    assert requests[0].run_config["ops"]["corpus"]["config"]["source_options"] == {"seed": 20261129}
    dg.validate_run_config(load_defs().resolve_job_def("training_job"), requests[0].run_config)
